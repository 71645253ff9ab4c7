//! The live pages, on the HTTP port that serves `/metrics`: `/` lists the
//! sweeps (progress, failures) and the workers; `/sweeps/{id}` is the
//! sweep's report — the same renderer and the same results as
//! `gradsweep report` and `results --format json` — reloading every
//! [`REFRESH_S`] seconds while runs remain.
//!
//! The pages show sweep data, so off loopback they need the coordinator's
//! token ([`Access`]): sent as `Authorization: Bearer …`, or once in the
//! address (`/?token=…`), which sets a cookie for the rest of the visit.
//! Without a token they are served off loopback only with
//! `--insecure-no-auth`. `/metrics` and `/healthz` stay open.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use gradsweep_proto::transport::Token;
use gradsweep_proto::v1 as pb;
use gradsweep_report::input::{ReportInput, RunRow, hosts};
use gradsweep_report::{ResultsDocument, document::Provenance};
use gradsweep_shared::results::SweepSummary;
use gradsweep_shared::stats::RankThresholds;

use crate::convert;
use crate::error::CoordinatorError;
use crate::state::{Coordinator, Read};

/// Seconds between reloads of a page whose sweep has work.
pub const REFRESH_S: u32 = 5;

/// The cookie that carries the token after `?token=…`.
const COOKIE: &str = "gradsweep_token";

/// Who may see the pages.
#[derive(Clone, Debug)]
pub enum Access {
    /// Anyone who reaches the port (loopback, or `--insecure-no-auth`).
    Open,
    /// Whoever presents the coordinator's token.
    Token(Token),
    /// No one: the port is off loopback and there is no token.
    Refused,
}

impl Access {
    /// The access for pages on `addr`, given the coordinator's token and
    /// whether it may run without one.
    pub fn for_address(addr: std::net::SocketAddr, token: Option<Token>, allow_unauthenticated: bool) -> Access {
        match token {
            _ if addr.ip().is_loopback() => Access::Open,
            Some(t) => Access::Token(t),
            None if allow_unauthenticated => Access::Open,
            None => Access::Refused,
        }
    }
}

#[derive(Clone)]
struct Pages {
    state: Coordinator,
    access: Access,
}

/// A page's answer when it cannot be shown: status and a sentence.
fn refusal(code: StatusCode, text: impl Into<String>) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.into() + "\n").into_response()
}

/// The `name` parameter of a query string.
fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

impl Pages {
    /// `None` when the request may see the page; else the answer to give (a
    /// refusal, or the redirect that turns `?token=` into a cookie).
    fn check(&self, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
        let token = match &self.access {
            Access::Open => return None,
            Access::Refused => {
                return Some(refusal(
                    StatusCode::FORBIDDEN,
                    "the live pages are off: this port is not on loopback and the coordinator has no token; start it \
                     with --token-file (then open /?token=TOKEN) or with --insecure-no-auth",
                ));
            }
            Access::Token(t) => t,
        };
        let presents = |v: &str| token.matches_header(format!("Bearer {v}").as_bytes());
        if headers.get(header::AUTHORIZATION).is_some_and(|h| token.matches_header(h.as_bytes()))
            || cookie(headers, COOKIE).is_some_and(presents)
        {
            return None;
        }
        if let Some(v) = query_param(uri, "token").filter(|v| presents(v)) {
            // Keep the token out of the address bar and the history.
            let set = format!("{COOKIE}={v}; HttpOnly; SameSite=Strict; Path=/");
            return Some(
                (StatusCode::SEE_OTHER, [(header::LOCATION, uri.path().to_string()), (header::SET_COOKIE, set)])
                    .into_response(),
            );
        }
        Some(refusal(
            StatusCode::UNAUTHORIZED,
            "this page needs the coordinator's token: open it once as /?token=TOKEN, or send Authorization: Bearer \
             TOKEN",
        ))
    }
}

/// A coordinator error as a page's answer.
fn failed(e: CoordinatorError) -> Response {
    let status = tonic::Status::from(e);
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refusal(code, status.message().to_string())
}

/// The routes `/` and `/sweeps/{id}`.
pub fn router(state: Coordinator, access: Access) -> axum::Router {
    axum::Router::new().route("/", get(index)).route("/sweeps/{id}", get(sweep)).with_state(Pages { state, access })
}

async fn index(State(p): State<Pages>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(r) = p.check(&headers, &uri) {
        return r;
    }
    let read = p
        .state
        .read_store(Read::Quick, |s| {
            let workers = s.workers()?.into_iter().map(convert::worker_to_wire).collect::<Vec<_>>();
            Ok((convert::all_sweep_statuses(s)?, workers))
        })
        .await;
    match read {
        Ok((sweeps, workers)) => {
            Html(gradsweep_report::live::index_page(&sweeps, &workers, gradsweep_report::format::now_ms(), REFRESH_S))
                .into_response()
        }
        Err(e) => failed(e),
    }
}

async fn sweep(State(p): State<Pages>, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(r) = p.check(&headers, &uri) {
        return r;
    }
    let input = match report_input(&p.state, &id).await {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    match tokio::task::spawn_blocking(move || gradsweep_report::render(&input)).await {
        Ok(Ok(r)) => Html(r.html).into_response(),
        Ok(Err(e)) => refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, format!("the report task failed: {e}")),
    }
}

/// Everything the sweep's report is drawn from, read as `results`,
/// `ExportSpectra`, `ListRuns` and `ListWorkers` read it.
pub async fn report_input(state: &Coordinator, id: &str) -> Result<ReportInput, CoordinatorError> {
    let id2 = id.to_string();
    let (status, workers, plan) = state
        .read_store(Read::Bulk, move |s| {
            let workers: Vec<pb::WorkerInfo> = s.workers()?.into_iter().map(convert::worker_to_wire).collect();
            Ok((convert::sweep_status(s, &id2)?, workers, s.plan(&id2)?))
        })
        .await?;
    let merged = state.cell_results_keeping(id.to_string(), RankThresholds::default(), true).await?;
    let (cells, spectra) = crate::offline::split_spectra(merged);
    let summary = SweepSummary::new(status.sweep_id.clone(), status.name.clone(), status.runs_total as usize, &cells);
    let results = ResultsDocument { provenance: Provenance::of(&status), summary, cells };
    let detail =
        gradsweep_report::detail_cells(&results, None).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let hosts = hosts(&workers);
    let plan = std::sync::Arc::new(plan);
    // Every run without its epochs (their total time comes along), then the
    // epochs of the drawn cells' runs only: a page of a million-run sweep
    // reads no epoch table beyond those.
    let (mut runs, mut after) = (Vec::<RunRow>::new(), None);
    loop {
        let (id, plan) = (id.to_string(), plan.clone());
        let page = state.read_store(Read::Bulk, move |s| convert::runs_page(s, &id, &[], after, &plan, false)).await?;
        runs.extend(page.runs.iter().map(|r| RunRow::from_wire(r, &hosts, false)));
        after = page.last;
        if !page.full {
            break;
        }
    }
    let index: std::collections::HashMap<String, usize> =
        runs.iter().enumerate().map(|(i, r)| (r.run_id.clone(), i)).collect();
    for &cell in &detail {
        // Seeds are stored as i64: past the previous cell's largest.
        let mut after = cell.checked_sub(1).map(|c| (c, i64::MAX as u64));
        loop {
            let (id, plan) = (id.to_string(), plan.clone());
            let page =
                state.read_store(Read::Bulk, move |s| convert::runs_page(s, &id, &[], after, &plan, true)).await?;
            let mine: Vec<&pb::RunInfo> = page.runs.iter().filter(|r| r.cell == cell).collect();
            for r in &mine {
                if let Some(&i) = index.get(r.run_id.as_str()) {
                    runs[i] = RunRow::from_wire(r, &hosts, true);
                }
            }
            after = page.last;
            if !page.full || mine.len() < page.runs.len() {
                break;
            }
        }
    }
    Ok(ReportInput {
        results,
        spectra,
        runs,
        made_at_ms: gradsweep_report::format::now_ms(),
        detail_cells: Some(detail),
        refresh_s: Some(REFRESH_S),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_open_on_loopback_and_need_the_token_elsewhere() {
        let token = Token::new("s3cret", "test").unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:9".parse().unwrap();
        assert!(matches!(Access::for_address(lo, Some(token.clone()), false), Access::Open));
        assert!(matches!(Access::for_address(any, Some(token), false), Access::Token(_)));
        assert!(matches!(Access::for_address(any, None, true), Access::Open));
        assert!(matches!(Access::for_address(any, None, false), Access::Refused));
    }

    #[test]
    fn tokens_are_read_from_the_query_and_the_cookie() {
        let uri: Uri = "/sweeps/x?a=1&token=abc".parse().unwrap();
        assert_eq!(query_param(&uri, "token"), Some("abc"));
        assert_eq!(query_param(&"/".parse().unwrap(), "token"), None);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; gradsweep_token=xyz".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
    }
}
