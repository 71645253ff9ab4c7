//! Issue 14: the report a person opens. `gradsweep local` on the quickstart
//! writes report.html and figures/*.svg; headless Chromium opens the page
//! offline and the test checks what it shows: no console message, no
//! request, every figure drawn (from the DOM, and each SVG file from a
//! screenshot), and every number in the cells table equal to results.json.
//! The coordinator's live page gets the same checks while a sweep runs and
//! after it ends, and its pages need the token off loopback.
//! CI installs Debian's `chromium` and sets `GRADSWEEP_REQUIRE_BROWSER=1`,
//! so there these tests cannot skip.

use std::path::Path;
use std::process::{Command, Stdio};

use gradsweep_shared::results::CellResult;
use gradsweep_tests::browser::{Browser, Pixels};
use gradsweep_tests::{CoordinatorProc, WorkerProc, bin, cli, grids, http_get, read_port_file, signal};

/// The `<tag …>…</tag>` elements of `dom` whose opening tag holds `marker`,
/// as (opening tag, inner text) — enough of a parser for the page's own
/// markup, which nests no element of the same tag.
fn elements<'a>(dom: &'a str, tag: &str, marker: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag} "), format!("</{tag}>"));
    let mut out = vec![];
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i..];
        let end_open = after.find('>').expect("tag closes");
        let head = &after[..=end_open];
        let body_end = after.find(&close).expect("element closes");
        if head.contains(marker) {
            out.push((head, &after[end_open + 1..body_end]));
        }
        rest = &after[body_end..];
    }
    out
}

/// The value of attribute `name` in an opening tag.
fn attr<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = head.find(&key)? + key.len();
    Some(&head[i..i + head[i..].find('"')?])
}

/// Text with its tags removed and entities read.
fn text(inner: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// A number as the page writes it (`{:?}` of an f64) equals the JSON's (NaN: null).
fn same_number(page: &str, json: &serde_json::Value) -> bool {
    match json.as_f64() {
        Some(v) => page.parse::<f64>().is_ok_and(|p| p == v),
        None => page == "NaN",
    }
}

/// Checks the cells table of `dom` against results.json's cells.
fn numbers_equal_results_json(dom: &str, doc: &serde_json::Value) {
    let cells = doc["cells"].as_array().unwrap();
    let rows = elements(dom, "tr", "data-cell=");
    assert_eq!(rows.len(), cells.len(), "one row per cell");
    for c in cells {
        let parsed: CellResult = serde_json::from_value(c.clone()).unwrap();
        let want = format!("data-cell=\"{}\"", parsed.index);
        let (_, row) = rows.iter().find(|(h, _)| h.contains(&want)).unwrap_or_else(|| panic!("no row {want}"));
        let tds = elements(row, "td", "data-key=");
        let cell = |k: &str| {
            tds.iter().find(|(h, _)| attr(h, "data-key") == Some(k)).unwrap_or_else(|| panic!("cell {want}: no {k}"))
        };
        for (key, json) in [
            ("lr", &c["lr"]),
            ("batch_size", &c["batch_size"]),
            ("eta_over_b", &c["eta_over_b"]),
            ("d", &c["d"]),
            ("test_accuracy", &c["test_accuracy"]["mean"]),
            ("train_loss", &c["train_loss"]["mean"]),
            ("trace", &c["trace"]["mean"]),
            ("area_rate", &c["area_rate"]["mean"]),
            ("grad_norm", &c["grad_norm"]["mean"]),
        ] {
            let (h, _) = cell(key);
            let v = attr(h, "data-value").unwrap();
            assert!(same_number(v, json), "cell {want} {key}: page {v}, results.json {json}");
        }
        let (h, inner) = cell("rank");
        // What a person reads is the bracket as every table prints it.
        assert_eq!(
            text(inner),
            gradsweep_report::format::bracket(parsed.rank_certified.as_ref(), gradsweep_report::format::count)
        );
        if parsed.rank_certified.is_some() {
            assert!(same_number(attr(h, "data-lo").unwrap(), &c["rank_certified"]["lo"]), "{want} rank lo");
            assert!(same_number(attr(h, "data-hi").unwrap(), &c["rank_certified"]["hi"]), "{want} rank hi");
        }
    }
}

/// Checks each figure in the DOM holds a drawn SVG (marks and text), and
/// (given `figures_dir`) that the figures are exactly the SVG files written.
fn figures_are_drawn(dom: &str, figures_dir: Option<&Path>) -> Vec<String> {
    let figs = elements(dom, "figure", "data-figure=");
    assert!(!figs.is_empty(), "no figure in the page");
    let mut ids = vec![];
    for (head, inner) in &figs {
        let id = attr(head, "data-figure").unwrap().to_string();
        assert!(inner.contains("<svg"), "figure {id} has no SVG");
        let marks = ["<polyline", "<circle", "<polygon", "<path", "<line"]
            .iter()
            .map(|m| inner.matches(m).count())
            .sum::<usize>();
        assert!(marks >= 5, "figure {id} draws {marks} marks");
        assert!(inner.contains("<text"), "figure {id} has no axis labels");
        assert!(inner.contains("<figcaption>"), "figure {id} has no caption");
        ids.push(id);
    }
    let Some(figures_dir) = figures_dir else { return ids };
    let mut files: Vec<String> = std::fs::read_dir(figures_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".svg").to_string())
        .collect();
    files.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, files, "the page's figures are the SVG files");
    ids
}

/// Screenshots every SVG file laid out on a grid and checks each tile has
/// ink of several colours: each file renders as a figure, not blank.
fn every_svg_renders(browser: &Browser, out: &Path, ids: &[String]) {
    const W: usize = 320;
    const H: usize = 200;
    const COLS: usize = 4;
    let mut page = String::from("<!DOCTYPE html><html><body style=\"margin:0;background:#fff\">");
    for (k, id) in ids.iter().enumerate() {
        let (x, y) = ((k % COLS) * W, (k / COLS) * H);
        page.push_str(&format!(
            "<img src=\"figures/{id}.svg\" style=\"position:absolute;left:{x}px;top:{y}px;width:{}px;height:{}px\">",
            W - 4,
            H - 4
        ));
    }
    page.push_str("</body></html>");
    let grid = out.join("grid.html");
    std::fs::write(&grid, page).unwrap();
    let png = out.join("grid.png");
    let rows = ids.len().div_ceil(COLS);
    browser.screenshot(&format!("file://{}", grid.display()), ((COLS * W) as u32, (rows * H) as u32), &png);
    let px = Pixels::read(&png);
    for (k, id) in ids.iter().enumerate() {
        let (x, y) = ((k % COLS) * W, (k / COLS) * H);
        let (ink, colours) = px.ink(x, y, W - 4, H - 4);
        let area = (W - 4) * (H - 4);
        assert!(
            ink * 50 > area && colours >= 3,
            "figure {id} looks blank: {ink} of {area} pixels inked, {colours} colours"
        );
    }
}

#[test]
fn the_browser_check_sees_console_messages_and_requests() {
    // The checks below can fail: a page that logs and fetches is caught.
    let Some(browser) = Browser::find() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><p>x</p><img src=\"http://example.invalid/a.png\"><script>console.error('boom')</script>",
    )
    .unwrap();
    let v = browser.visit(&format!("file://{}", page.display()));
    assert!(v.console.iter().any(|l| l.contains("boom")), "{:?}", v.console);
    assert_eq!(v.requests, vec!["http://example.invalid/a.png".to_string()]);
}

#[test]
fn the_quickstarts_report_opens_offline_with_every_figure_and_the_numbers_of_results_json() {
    let Some(browser) = Browser::find() else { return };
    let dir = tempfile::tempdir().unwrap();
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.toml");
    let out = dir.path().join("out");
    let o = Command::new(bin("gradsweep"))
        .arg("local")
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .args(["--slots", "2", "--format", "csv"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("report.html"), "local does not say it wrote the report: {stderr}");

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for outside in ["http://", "https://", "<script", "src=", "url("] {
        // SVG's namespace is a name, not a fetch.
        let n = html.matches(outside).count()
            - html.matches("http://www.w3.org/2000/svg").count() * (outside == "http://") as usize;
        assert_eq!(n, 0, "report.html refers to something outside it: {outside}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();

    let url = format!("file://{}", out.join("report.html").display());
    let v = browser.visit(&url);
    assert!(v.console.is_empty(), "console: {:?}", v.console);
    assert!(v.requests.is_empty(), "the page fetched {:?}", v.requests);
    let ids = figures_are_drawn(&v.dom, Some(&out.join("figures")));
    // The quickstart's 12 cells each have their spectrum and learning curves.
    for c in 0..12 {
        for f in ["spectrum", "rank-epoch", "trace-epoch", "train-loss", "test-accuracy", "grad-norm"] {
            assert!(ids.contains(&format!("cell{c}-{f}")), "no figure cell{c}-{f}");
        }
    }
    for f in ["eta-b-rank-d-bracket", "eta-b-tr-d", "eta-b-test-acc"] {
        assert!(ids.iter().any(|i| i == f), "no figure {f}: {ids:?}");
    }
    assert!(doc["cells"].as_array().unwrap().iter().all(|c| !c["rank_certified"].is_null()), "every cell probed");
    numbers_equal_results_json(&v.dom, &doc);
    let (_, runs) = elements(&v.dom, "dd", "data-key=\"runs\"")[0];
    assert!(text(runs).starts_with("24 in all: 24 completed"), "{}", text(runs));

    // The page as a person sees it: drawn, not blank.
    let png = dir.path().join("page.png");
    browser.screenshot(&url, (1400, 4000), &png);
    let px = Pixels::read(&png);
    let (ink, colours) = px.ink(0, 0, px.width, px.height);
    assert!(ink * 20 > px.width * px.height && colours > 50, "the page looks blank: {ink} pixels, {colours} colours");
    every_svg_renders(&browser, &out, &ids);

    // `report` into the same folder for one cell: the figures of the other
    // cells go, so the files stay the page's.
    let sweep = doc["provenance"]["sweep_id"].as_str().unwrap();
    let db = out.join("state.db");
    let o = cli(&["report", sweep, "--db", db.to_str().unwrap(), "--out", out.to_str().unwrap(), "--cells", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = browser.visit(&url);
    let ids = figures_are_drawn(&v.dom, Some(&out.join("figures")));
    assert!(ids.iter().all(|i| i.starts_with("eta-b-") || i.starts_with("cell3-")), "{ids:?}");
    assert!(ids.iter().any(|i| i == "cell3-spectrum"), "{ids:?}");
    let o = cli(&["report", sweep, "--db", db.to_str().unwrap(), "--out", out.to_str().unwrap(), "--cells", "12"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no cell 12 (its cells are 0 to 11)"), "{err}");
}

/// The sweep's results as `results --format json` prints them.
fn results_json(addr: &str, sweep: &str) -> serde_json::Value {
    let o = cli(&["results", sweep, "--format", "json", "--coordinator", addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Loads the live page of `sweep` and checks it as the report is checked:
/// no console message, no request, figures drawn, numbers of `doc`.
fn check_live_page(browser: &Browser, mport: u16, sweep: &str, doc: &serde_json::Value) -> (String, Vec<String>) {
    let v = browser.visit(&format!("http://127.0.0.1:{mport}/sweeps/{sweep}"));
    assert!(v.console.is_empty(), "console: {:?}", v.console);
    assert!(v.requests.is_empty(), "the live page fetched {:?}", v.requests);
    let ids = figures_are_drawn(&v.dom, None);
    assert!(ids.iter().any(|i| i.ends_with("-spectrum")), "no spectrum among {ids:?}");
    numbers_equal_results_json(&v.dom, doc);
    (v.dom, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_running_sweep_and_then_its_end() {
    let Some(browser) = Browser::find() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mport_file = dir.path().join("metrics.port");
    let coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", mport_file.to_str().unwrap()],
        dir.path(),
    );
    let mport = read_port_file(&mport_file, "coordinator metrics");
    let addr = format!("127.0.0.1:{}", coord.port);
    let grid = dir.path().join("live.toml");
    std::fs::write(&grid, grids::mlp("live", "[0, 1]", 80, "", 40)).unwrap();
    let o = cli(&["submit", grid.to_str().unwrap(), "--coordinator", &addr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sweep =
        String::from_utf8_lossy(&o.stdout).split_whitespace().find(|w| w.starts_with("live-")).unwrap().to_string();
    let mut client = gradsweep_cli::client::connect_control(&addr).await.unwrap();
    let status = |client: &mut gradsweep_cli::client::ControlClient| {
        let mut c = client.clone();
        let id = sweep.clone();
        async move { c.status(gradsweep_proto::v1::StatusRequest { sweep_id: id }).await.unwrap().into_inner() }
    };

    let worker = WorkerProc::start(&coord.url(), "live-w", 1, dir.path());
    gradsweep_tests::wait_until(std::time::Duration::from_secs(120), "two runs done", || {
        let f = status(&mut client);
        async move { f.await.runs_completed >= 2 }
    })
    .await;
    // Hold the sweep still mid-way (the worker stopped, not gone), so the
    // page and results.json describe the same moment.
    signal(worker.child.id(), libc::SIGSTOP);
    let mid = status(&mut client).await;
    assert!(mid.runs_completed < mid.runs_total, "the sweep ended before it could be seen running");
    let doc = results_json(&addr, &sweep);
    let (dom, _) = check_live_page(&browser, mport, &sweep, &doc);
    assert!(dom.contains("http-equiv=\"refresh\""), "a running sweep's page reloads");
    assert!(dom.contains("running ("), "the page says the sweep runs");
    let index = browser.visit(&format!("http://127.0.0.1:{mport}/"));
    assert!(index.console.is_empty() && index.requests.is_empty(), "{:?} {:?}", index.console, index.requests);
    assert!(index.dom.contains(&format!("data-sweep=\"{sweep}\"")), "the sweep list shows the sweep");
    assert!(index.dom.contains("data-worker="), "the sweep list shows the worker");
    signal(worker.child.id(), libc::SIGCONT);

    gradsweep_tests::wait_until(std::time::Duration::from_secs(180), "the sweep ends", || {
        let f = status(&mut client);
        async move {
            let s = f.await;
            s.runs_completed == s.runs_total
        }
    })
    .await;
    let doc = results_json(&addr, &sweep);
    let (dom, ids) = check_live_page(&browser, mport, &sweep, &doc);
    assert!(!dom.contains("http-equiv=\"refresh\""), "an ended sweep's page stays still");
    // The learning curves come from the epochs the page reads for its cells.
    for c in 0..4 {
        assert!(ids.contains(&format!("cell{c}-train-loss")), "no learning curve of cell {c}: {ids:?}");
    }
    let (_, runs) = elements(&dom, "dd", "data-key=\"runs\"")[0];
    assert!(text(runs).starts_with("8 in all: 8 completed"), "{}", text(runs));
    let (code, _, body) = http_get(mport, "/sweeps/no-such-sweep");
    assert!(code.contains("404") && body.contains("no-such-sweep"), "{code}: {body}");
}

#[test]
fn off_loopback_the_live_pages_need_the_token_and_metrics_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "page-s3cret\n").unwrap();
    let mport_file = dir.path().join("metrics.port");
    let _coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--metrics-listen",
            "0.0.0.0:0",
            "--metrics-port-file",
            mport_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    let mport = read_port_file(&mport_file, "coordinator metrics");
    let (code, _, _) = http_get(mport, "/metrics");
    assert!(code.contains("200"), "{code}");
    let (code, _, body) = http_get(mport, "/");
    assert!(code.contains("401") && body.contains("token"), "{code}: {body}");
    let (code, _, _) = http_get(mport, "/?token=wrong");
    assert!(code.contains("401"), "{code}");
    // The token in the address once: a cookie for the visit, and the
    // address without it.
    let (code, headers, _) = http_get(mport, "/?token=page-s3cret");
    assert!(code.contains("303"), "{code}");
    assert!(headers.contains("set-cookie: gradsweep_token=page-s3cret; httponly; samesite=strict"), "{headers}");
    assert!(headers.contains("location: /\r") || headers.ends_with("location: /"), "{headers}");
    use std::io::{Read, Write};
    for auth in ["Cookie: gradsweep_token=page-s3cret", "Authorization: Bearer page-s3cret"] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("gradsweep coordinator"), "{auth}: {text}");
    }
}
