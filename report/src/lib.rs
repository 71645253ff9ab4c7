//! The sweep report: the paper's figures drawn from a sweep's results, as
//! SVG files and one self-contained HTML page.
//!
//! One renderer serves `gradsweep report`, the report `gradsweep local`
//! writes, and the coordinator's live page: all three are [`render`] of a
//! [`ReportInput`] built from the same [`ResultsDocument`] that
//! `results --format json` prints, so they never disagree with it. The
//! crate does no I/O: callers fetch the input and write the output.
//!
//! # Layout
//! * [`document`] — results.json: [`ResultsDocument`] and its [`document::Provenance`].
//! * [`input`] — what a report is drawn from, and the wire's run rows made the report's.
//! * [`figures`] — the figures, each a [`plot::Plot`] of the results.
//! * [`plot`] — one chart as data, drawn to SVG by `plotters`.
//! * [`html`] — the page: header, tables, figures inlined.
//! * [`live`] — the coordinator's pages: the sweep list.
//! * [`format`] — how numbers read, in tables and pages alike.

pub mod document;
pub mod figures;
pub mod format;
pub mod html;
pub mod input;
pub mod live;
pub mod plot;

pub use document::ResultsDocument;
pub use figures::Figure;
pub use input::ReportInput;

use gradsweep_shared::results::CellResult;

/// Most cells with a section of their own figures when the caller does not
/// choose ([`ReportInput::detail_cells`]): beyond it the page would pass
/// tens of megabytes. Every cell is in the tables and the η/b figures.
pub const DETAIL_CELLS: usize = 48;

/// What can stop a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A figure had nothing a reader could see.
    #[error("figure {0:?} has no point to draw")]
    Empty(String),
    /// The drawing library refused a figure.
    #[error("cannot draw figure {figure:?}: {reason}")]
    Draw {
        /// The figure's title.
        figure: String,
        /// What the library said.
        reason: String,
    },
    /// `--cells` named a cell the sweep does not have.
    #[error("the sweep has no cell {cell} (its cells are 0 to {last})")]
    UnknownCell {
        /// The cell asked for.
        cell: u32,
        /// The sweep's last cell.
        last: usize,
    },
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Report {
    /// report.html: everything inlined.
    pub html: String,
    /// Every figure (its SVG is also inlined in `html`).
    pub figures: Vec<Figure>,
}

/// Every cell of the sweep `doc` describes, by index, sorted: from its η/b
/// rows, which have one per cell, so a document that holds only the cells
/// a report draws ([`report_cells`]) still knows them all; from its cells
/// when the rows are fewer.
pub fn all_cells(doc: &ResultsDocument) -> Vec<u32> {
    let rows = &doc.summary.by_eta_over_b;
    let mut all: Vec<u32> = if rows.len() >= doc.cells.len() {
        rows.iter().map(|r| r.cell).collect()
    } else {
        doc.cells.iter().map(|c| c.index).collect()
    };
    all.sort_unstable();
    all.dedup();
    all
}

/// The cells that get sections of their own figures: those in `asked`
/// (each must exist), or every cell up to [`DETAIL_CELLS`], or that many
/// spread evenly over η/b. Sorted.
pub fn detail_cells(doc: &ResultsDocument, asked: Option<&[u32]>) -> Result<Vec<u32>, ReportError> {
    detail_cells_among(&all_cells(doc), &doc.summary.by_eta_over_b, asked)
}

/// [`detail_cells`] of a sweep whose cells are `all` (sorted indices) and
/// whose η/b rows are `rows`: what a caller that streams the cells past
/// chooses before it keeps any.
pub fn detail_cells_among(
    all: &[u32],
    rows: &[gradsweep_shared::results::EtaOverBRow],
    asked: Option<&[u32]>,
) -> Result<Vec<u32>, ReportError> {
    let last = all.len().saturating_sub(1);
    if let Some(asked) = asked {
        let mut v = asked
            .iter()
            .map(|&i| all.binary_search(&i).is_ok().then_some(i).ok_or(ReportError::UnknownCell { cell: i, last }))
            .collect::<Result<Vec<u32>, _>>()?;
        v.sort_unstable();
        v.dedup();
        return Ok(v);
    }
    if all.len() <= DETAIL_CELLS {
        return Ok(all.to_vec());
    }
    let order: Vec<u32> = rows.iter().map(|r| r.cell).collect();
    let order: Vec<u32> = if order.len() == all.len() { order } else { all.to_vec() };
    let mut picked: Vec<u32> = (0..DETAIL_CELLS).map(|k| order[k * (order.len() - 1) / (DETAIL_CELLS - 1)]).collect();
    picked.sort_unstable();
    picked.dedup();
    Ok(picked)
}

/// The cells a report of a sweep whose cells are `all` shows whole: the
/// sections of figures (`detailed`) and the rows of its cells table
/// ([`html::table_cells`]). Its document needs no other cell, so a caller
/// that streams a large sweep keeps only these.
pub fn report_cells(all: &[u32], detailed: &[u32]) -> std::collections::BTreeSet<u32> {
    let detailed: std::collections::BTreeSet<u32> = detailed.iter().copied().collect();
    let mut keep = html::table_cells(all, &detailed);
    keep.extend(detailed);
    keep
}

/// The report of `input`: every figure, and the page that holds them.
pub fn render(input: &ReportInput) -> Result<Report, ReportError> {
    let sweep = figures::sweep_figures(input)?;
    let wanted = detail_cells(&input.results, input.detail_cells.as_deref())?;
    let detailed: Vec<(&CellResult, Vec<Figure>)> = input
        .results
        .cells
        .iter()
        .filter(|c| wanted.binary_search(&c.index).is_ok())
        .map(|c| figures::cell_figures(input, c).map(|f| (c, f)))
        .collect::<Result<_, _>>()?;
    let html = html::page(input, &sweep, &detailed);
    let mut all = sweep;
    all.extend(detailed.into_iter().flat_map(|(_, f)| f));
    Ok(Report { html, figures: all })
}
