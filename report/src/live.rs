//! The coordinator's pages besides a sweep's report: the list of sweeps
//! with their progress and failures, and the workers connected.
//!
//! A sweep's own page is its report ([`crate::render`]) with
//! [`crate::ReportInput::refresh_s`] set, so it reloads while runs finish.

use std::fmt::Write as _;

use gradsweep_proto::v1 as pb;

use crate::format::{html, utc};
use crate::html::STYLE;

/// The sweep list at `/`: each sweep's state, progress and failures (a
/// link to its page at `sweeps/{id}`), then the workers. It reloads every
/// `refresh_s` seconds.
pub fn index_page(sweeps: &[pb::SweepStatus], workers: &[pb::WorkerInfo], made_at_ms: i64, refresh_s: u32) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>gradsweep coordinator</title>\
         <meta http-equiv=\"refresh\" content=\"{refresh_s}\"><style>{STYLE}</style></head><body><h1>gradsweep coordinator</h1>\
         <p>{} sweep(s), {} worker(s); as of {}.</p><h2>Sweeps</h2>",
        sweeps.len(),
        workers.len(),
        utc(made_at_ms)
    );
    out.push_str(
        "<table id=\"sweeps\"><thead><tr><th>sweep</th><th>name</th><th>state</th><th>progress</th><th>runs</th>\
         <th>completed</th><th>diverged</th><th>failed</th><th>running</th><th>queued</th><th>submitted</th>\
         </tr></thead><tbody>",
    );
    for s in sweeps {
        let _ = write!(
            out,
            "<tr data-sweep=\"{0}\"><td class=\"text\"><a href=\"sweeps/{0}\">{0}</a></td><td class=\"text\">{1}</td>\
             <td class=\"text\">{2}</td><td><progress max=\"1\" value=\"{3}\"></progress> {4:.0} %</td><td>{5}</td>\
             <td>{6}</td><td>{7}</td><td>{8}</td><td>{9}</td><td>{10}</td><td class=\"text\">{11}</td></tr>",
            html(&s.sweep_id),
            html(&s.name),
            html(s.state().word()),
            s.progress,
            100.0 * s.progress,
            s.runs_total,
            s.runs_completed,
            s.runs_diverged,
            s.runs_failed,
            s.runs_running,
            s.runs_queued,
            utc(s.created_at_ms)
        );
        for f in &s.failures {
            let _ = write!(
                out,
                "<tr class=\"failure\"><td></td><td class=\"text\" colspan=\"10\">{} run(s) failed: {} (e.g. {})</td></tr>",
                f.runs,
                html(&f.error),
                html(&f.example_run_id)
            );
        }
    }
    out.push_str("</tbody></table><h2>Workers</h2>");
    out.push_str(
        "<table id=\"workers\"><thead><tr><th>worker</th><th>name</th><th>host</th><th>slots</th><th>state</th>\
         <th>runs</th><th>last heartbeat</th></tr></thead><tbody>",
    );
    for w in workers {
        let _ = write!(
            out,
            "<tr data-worker=\"{}\"><td class=\"text\">{0}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td>{}</td><td class=\"text\">{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
            html(&w.worker_id),
            html(&w.name),
            html(&w.hostname),
            w.slots,
            html(w.state().word()),
            w.runs.len(),
            utc(w.last_heartbeat_ms)
        );
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}
