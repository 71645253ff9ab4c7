//! How long the report of a large sweep takes to render, and how big it is.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p gradsweep-tests --example report_bench -- [CELLS] [REPEATS]
//! ```
//!
//! Runs the quickstart (12 cells, 24 runs) with `gradsweep local`, reads
//! its results, spectra and runs back from the database as `gradsweep
//! report --db` would, and copies its cells into a sweep of `CELLS` cells
//! (default 1,000; cell k is the quickstart's cell k mod 12 under a new
//! index, with its runs and spectra), so every cell carries a real probe
//! history, real spectra and real trajectories. Then renders the report
//! `REPEATS` times (default 3) and prints the fastest and slowest render,
//! the size of report.html and of all the figures' SVG, and how many
//! figures — issue 14's target is ≤ 5 s and ≤ 20 MB at 1,000 cells.

#![allow(clippy::print_stdout)] // the report is this tool's output

use std::process::{Command, Stdio};
use std::time::Instant;

use gradsweep_coordinator::offline::Offline;
use gradsweep_report::input::{ReportInput, RunRow};
use gradsweep_report::{ResultsDocument, document::Provenance};
use gradsweep_shared::results::SweepSummary;
use gradsweep_shared::stats::RankThresholds;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u32 = args.first().map_or(Ok(1000), |a| a.parse())?;
    let repeats: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let grid = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.toml");
    let o = Command::new(gradsweep_tests::bin("gradsweep"))
        .arg("local")
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .args(["--format", "csv"])
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(o.status.success(), "the quickstart failed: {}", String::from_utf8_lossy(&o.stderr));

    let db = Offline::open(&out.join("state.db"))?;
    let status = db.status(None)?.remove(0);
    let id = status.sweep_id.clone();
    let (cells, _) = db.results(&id, &RankThresholds::default())?;
    let spectra = db.spectra(&id)?;
    let mut pages = db.runs_with(&id, &[], true)?;
    let mut runs = vec![];
    for page in pages.by_ref() {
        runs.extend(page?.iter().map(|r| RunRow::from_wire(r, &Default::default(), true)));
    }
    let k = cells.len() as u32;

    let mut big_cells = Vec::with_capacity(n as usize);
    let mut big_spectra = vec![];
    let mut big_runs = vec![];
    for i in 0..n {
        let src = i % k;
        let mut c = cells.iter().find(|c| c.index == src).expect("cell").clone();
        c.index = i;
        big_cells.push(c);
        if let Some((_, s)) = spectra.iter().find(|(c, _)| *c == src) {
            big_spectra.push((i, s.clone()));
        }
        for r in runs.iter().filter(|r| r.cell == src) {
            big_runs.push(RunRow { cell: i, run_id: format!("{}-copy{i}", r.run_id), ..r.clone() });
        }
    }
    let mut provenance = Provenance::of(&status);
    provenance.runs.total = big_runs.len() as u32;
    provenance.runs.completed = big_runs.len() as u32;
    let summary = SweepSummary::new(id.clone(), status.name.clone(), big_runs.len(), &big_cells);
    let results = ResultsDocument { provenance, summary, cells: big_cells };
    let detail = gradsweep_report::detail_cells(&results, None)?;
    // As `report` reads them: epochs only for the cells drawn.
    for r in &mut big_runs {
        if detail.binary_search(&r.cell).is_err() {
            r.epochs.clear();
        }
    }
    let input = ReportInput {
        results,
        spectra: big_spectra,
        runs: big_runs,
        made_at_ms: gradsweep_report::format::now_ms(),
        detail_cells: Some(detail.clone()),
        refresh_s: None,
    };

    let mut times = vec![];
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let r = gradsweep_report::render(&input)?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    let r = last.expect("rendered");
    times.sort_by(f64::total_cmp);
    let svg: usize = r.figures.iter().map(|f| f.svg.len()).sum();
    println!(
        "{n} cells ({} runs), {} with figures: render {:.2} s fastest, {:.2} s slowest of {}; report.html {:.1} MB; \
         {} figures, {:.1} MB of SVG",
        input.runs.len(),
        detail.len(),
        times[0],
        times[times.len() - 1],
        times.len(),
        r.html.len() as f64 / 1e6,
        r.figures.len(),
        svg as f64 / 1e6
    );
    Ok(())
}
