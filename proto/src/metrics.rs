//! The Prometheus side of the contract: metric primitives, the text
//! exposition format (version 0.0.4), and the HTTP endpoint that serves it.
//! The coordinator and the worker each keep their own metrics and render
//! them through [`Exposition`], so both speak exactly the same format.
//!
//! The endpoint answers `GET /metrics` (the exposition) and `GET /healthz`
//! (`ok`, for plain HTTP probes); anything else is 404.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((f64::from_bits(b) + d).to_bits()));
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum: Gauge,
}

/// Bucket bounds in seconds for latencies from 1 ms to 1 min.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// Bucket bounds in seconds for calls answered in well under a
/// millisecond to a few seconds (gRPC calls, store commits): fine enough to
/// tell a 50 ms target from 20 ms and 100 ms.
pub const CALL_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

impl Histogram {
    /// An empty histogram over increasing `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: Gauge::default(),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.add(v);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Kinds of metric families.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition(String);

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', r"\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, v: f64) -> &mut Self {
        self.family(name, help, kind, "", &[(String::new(), v)])
    }

    /// A family with one label: `(label value, sample)` pairs.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind, label: &str, rows: &[(String, f64)]) -> &mut Self {
        self.header(name, help, if matches!(kind, Kind::Counter) { "counter" } else { "gauge" });
        for (lv, v) in rows {
            if label.is_empty() {
                let _ = writeln!(self.0, "{name} {}", number(*v));
            } else {
                let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {}", escape_label(lv), number(*v));
            }
        }
        self
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.header(name, help, "histogram");
        self.histogram_samples(name, "", h);
        self
    }

    /// A histogram family with one label: a histogram per `(label value,
    /// histogram)` pair.
    pub fn histograms(&mut self, name: &str, help: &str, label: &str, rows: &[(&str, &Histogram)]) -> &mut Self {
        self.header(name, help, "histogram");
        for (lv, h) in rows {
            self.histogram_samples(name, &format!("{label}=\"{}\",", escape_label(lv)), h);
        }
        self
    }

    /// One histogram's samples; `labels` (empty, or `k="v",`) go before
    /// `le` on the buckets and alone on the sum and count.
    fn histogram_samples(&mut self, name: &str, labels: &str, h: &Histogram) {
        let mut cum = 0;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{{{labels}le=\"{}\"}} {cum}", number(*b));
        }
        let n = h.count();
        let _ = writeln!(self.0, "{name}_bucket{{{labels}le=\"+Inf\"}} {n}");
        let own = labels.trim_end_matches(',');
        let own = if own.is_empty() { String::new() } else { format!("{{{own}}}") };
        let _ = writeln!(self.0, "{name}_sum{own} {}", number(h.sum.get()));
        let _ = writeln!(self.0, "{name}_count{own} {n}");
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.0
    }
}

/// Binds the metrics listener on `addr` and, when asked, writes the bound
/// port to `port_file` (useful with port 0).
pub async fn bind(addr: &str, port_file: Option<&std::path::Path>) -> std::io::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} for metrics: {e}")))?;
    if let Some(f) = port_file {
        std::fs::write(f, l.local_addr()?.port().to_string())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write port file {}: {e}", f.display())))?;
    }
    Ok(l)
}

/// The routes `GET /metrics` (rendered by `render` on each scrape) and
/// `GET /healthz`, for a server to serve alone ([`serve_metrics`]) or
/// beside routes of its own.
pub fn metrics_router<F, Fut>(render: F) -> axum::Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    use axum::http::header;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], render().await) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Serves [`metrics_router`] on `listener` until `shutdown` resolves.
pub async fn serve_metrics<F, Fut>(
    listener: tokio::net::TcpListener,
    render: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    serve_router(listener, metrics_router(render), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let mut e = Exposition::default();
        e.single("x_total", "An x.", Kind::Counter, 3.0);
        e.family("y", "Some \"y\".", Kind::Gauge, "state", &[("a\"b".into(), 1.5), ("c".into(), f64::NAN)]);
        e.histogram("lat_seconds", "Latency.", &h);
        let t = e.finish();
        assert!(t.contains("# TYPE x_total counter\nx_total 3\n"), "{t}");
        assert!(t.contains("y{state=\"a\\\"b\"} 1.5\ny{state=\"c\"} NaN\n"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"1\"} 2\nlat_seconds_bucket{le=\"+Inf\"} 3\nlat_seconds_sum 3.55\nlat_seconds_count 3\n"), "{t}");
    }

    #[test]
    fn a_labelled_histogram_family_puts_its_label_on_every_sample() {
        let (a, b) = (Histogram::new(&[0.1]), Histogram::new(&[0.1]));
        a.observe(0.05);
        b.observe(0.5);
        b.observe(0.2);
        let mut e = Exposition::default();
        e.histograms("call_seconds", "Calls.", "method", &[("Acquire", &a), ("Heart\"beat", &b)]);
        let t = e.finish();
        assert_eq!(t.matches("# TYPE call_seconds histogram").count(), 1, "{t}");
        assert!(
            t.contains(
                "call_seconds_bucket{method=\"Acquire\",le=\"0.1\"} 1\ncall_seconds_bucket{method=\"Acquire\",le=\"+Inf\"} 1\n\
                 call_seconds_sum{method=\"Acquire\"} 0.05\ncall_seconds_count{method=\"Acquire\"} 1\n"
            ),
            "{t}"
        );
        assert!(t.contains("call_seconds_bucket{method=\"Heart\\\"beat\",le=\"0.1\"} 0\n"), "{t}");
        assert!(t.contains("call_seconds_count{method=\"Heart\\\"beat\"} 2\n"), "{t}");
    }
}
