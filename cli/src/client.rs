//! Client helpers for talking to a coordinator (CLI and tests).

use gradsweep_proto::transport::{AuthChannel, ClientSecurity, TransportError};
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_client::ControlServiceClient;
use gradsweep_proto::{Assembly, MAX_MESSAGE_BYTES};
use gradsweep_shared::results::{CellResult, SweepSummary};
use gradsweep_shared::stats::RankThresholds;

/// Errors talking to a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address, TLS or token settings are unusable.
    #[error(transparent)]
    Settings(#[from] TransportError),
    /// No connection could be made.
    #[error("cannot reach the coordinator at {0}: {1}")]
    Connect(String, String),
    /// The coordinator answered with an error: its message, then its code
    /// (`NotFound`, `InvalidArgument`, `FailedPrecondition`, …).
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// A results message could not be read.
    #[error("unreadable results from the coordinator: {0}")]
    Decode(String),
    /// What arrived could not be kept locally.
    #[error("{0}")]
    Write(String),
    /// What arrived could not be printed (a closed pipe among others).
    #[error("cannot print: {0}")]
    Output(#[source] std::io::Error),
}

/// A control client whose calls carry the token when one is configured.
pub type ControlClient = ControlServiceClient<AuthChannel>;

/// Where a coordinator is and how to reach it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `host:port` or URL.
    pub addr: String,
    /// TLS and token.
    pub security: ClientSecurity,
}

impl Remote {
    /// Plain connection settings (loopback, no TLS, no token).
    pub fn plain(addr: impl Into<String>) -> Remote {
        Remote { addr: addr.into(), security: ClientSecurity::default() }
    }

    /// Connects the control client.
    pub async fn connect(&self) -> Result<ControlClient, ClientError> {
        let ep = self.security.endpoint(&self.addr)?;
        let url = self.security.url(&self.addr);
        let ch = ep.connect().await.map_err(|e| ClientError::Connect(url, error_chain(&e)))?;
        Ok(ControlServiceClient::new(self.security.authorize(ch))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// An error with its sources, so "transport error" says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Connects a control client without TLS or token.
pub async fn connect_control(addr: &str) -> Result<ControlClient, ClientError> {
    Remote::plain(addr).connect().await
}

/// Fetches the per-cell results and the summary of a sweep.
pub async fn fetch_results(
    client: &mut ControlClient,
    sweep_id: &str,
) -> Result<(Vec<CellResult>, SweepSummary), ClientError> {
    fetch_results_with(client, sweep_id, &RankThresholds::default()).await
}

/// Fetches a sweep's results with ranks at extra thresholds `th` too.
pub async fn fetch_results_with(
    client: &mut ControlClient,
    sweep_id: &str,
    th: &RankThresholds,
) -> Result<(Vec<CellResult>, SweepSummary), ClientError> {
    let mut cells = vec![];
    let summary = stream_results(client, sweep_id, th, &mut |c| {
        cells.push(c);
        Ok(())
    })
    .await?;
    Ok((cells, summary))
}

/// Streams a sweep's results, with ranks at extra thresholds `th` too:
/// hands each cell to `on_cell` as it arrives (in index order; the
/// coordinator sends them a page at a time), keeping only its η/b row, and
/// returns the summary with those rows, which the coordinator leaves out.
pub async fn stream_results(
    client: &mut ControlClient,
    sweep_id: &str,
    th: &RankThresholds,
    on_cell: &mut dyn FnMut(CellResult) -> std::io::Result<()>,
) -> Result<SweepSummary, ClientError> {
    use gradsweep_shared::results::{eta_over_b_row, sort_by_eta_over_b};
    let mut stream = client.results(crate::convert::results_request(sweep_id, th)).await?.into_inner();
    let (mut rows, mut summary) = (vec![], None::<SweepSummary>);
    while let Some(chunk) = stream.message().await? {
        match chunk.body {
            Some(pb::results_chunk::Body::Cell(c)) => {
                let index = c.index;
                let c =
                    crate::convert::cell_from_wire(c).map_err(|e| ClientError::Decode(format!("cell {index}: {e}")))?;
                rows.push(eta_over_b_row(&c));
                on_cell(c).map_err(ClientError::Output)?;
            }
            Some(pb::results_chunk::Body::Summary(s)) => summary = Some(crate::convert::sweep_summary_from_wire(s)),
            // What a coordinator of another release sends (JSON strings
            // before protocol 7): nothing here can read it.
            None => {
                return Err(ClientError::Decode(
                    "a results message of another release (the coordinator and this command must be of the same \
                     gradsweep version)"
                        .into(),
                ));
            }
        }
    }
    let mut summary = summary.ok_or_else(|| ClientError::Decode("results stream ended without a summary".into()))?;
    sort_by_eta_over_b(&mut rows);
    summary.by_eta_over_b = rows;
    Ok(summary)
}

/// Largest blob (a cell's spectra, a gradient file) the client puts
/// together from a coordinator's chunks: 4 GiB.
const CLIENT_BLOB_LIMIT: usize = 1 << 32;

/// Every cell's spectra ([`gradsweep_shared::digest::CellSpectra`]), by
/// cell, reassembled from their chunks and checked (CRC) as they arrive.
pub async fn export_spectra(
    client: &mut ControlClient,
    sweep_id: &str,
) -> Result<Vec<(u32, gradsweep_shared::digest::CellSpectra)>, ClientError> {
    let req = pb::ExportSpectraRequest { sweep_id: sweep_id.into() };
    let mut stream = client.export_spectra(req).await?.into_inner();
    let decode = |e: gradsweep_proto::AssemblyError| ClientError::Decode(e.0);
    let (mut out, mut blob) = (vec![], Assembly::new("spectra", CLIENT_BLOB_LIMIT));
    while let Some(c) = stream.message().await? {
        if blob.is_empty() {
            blob = Assembly::new(format!("spectra of cell {}", c.cell), CLIENT_BLOB_LIMIT);
        }
        if blob.push(c.chunk_index, c.chunk_count, &c.data).map_err(decode)? {
            let bytes = blob.take("spectra").map_err(decode)?;
            let sp = gradsweep_shared::digest::CellSpectra::decode(&bytes)
                .map_err(|e| ClientError::Decode(format!("spectra of cell {}: {e}", c.cell)))?;
            out.push((c.cell, sp));
        }
    }
    if !blob.is_empty() {
        blob.finish().map_err(decode)?;
    }
    Ok(out)
}

/// One NPY file a probe kept ([`export_gradients`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedGradientsFile {
    /// The run's cell.
    pub cell: u32,
    /// The run's seed.
    pub seed: u64,
    /// The probe's index within the run.
    pub probe_index: u32,
    /// Epochs completed at the probe.
    pub epoch: u32,
    /// The weights (shape d) rather than the gradient rows (rows × d).
    pub weights: bool,
    /// The whole NPY file.
    pub npy: Vec<u8>,
}

impl SavedGradientsFile {
    /// The file's name, made of numbers only (no path from the wire):
    /// `c{cell}-s{seed}-probe{index}-epoch{epoch}.{gradients|weights}.npy`.
    pub fn file_name(&self) -> String {
        let what = if self.weights { "weights" } else { "gradients" };
        format!("c{}-s{}-probe{}-epoch{}.{what}.npy", self.cell, self.seed, self.probe_index, self.epoch)
    }
}

/// Streams the gradient rows and weights that `sweep_id`'s probes kept
/// (`[probe] save_gradients`), handing each whole file to `on_file` as
/// soon as its last chunk arrives; returns how many files there were.
pub async fn export_gradients(
    client: &mut ControlClient,
    sweep_id: &str,
    on_file: &mut dyn FnMut(SavedGradientsFile) -> std::io::Result<()>,
) -> Result<usize, ClientError> {
    let req = pb::ExportGradientsRequest { sweep_id: sweep_id.into() };
    let mut stream = client.export_gradients(req).await?.into_inner();
    let decode = |e: gradsweep_proto::AssemblyError| ClientError::Decode(e.0);
    let mut current = None::<(SavedGradientsFile, Assembly)>;
    let mut files = 0usize;
    while let Some(c) = stream.message().await? {
        let (file, blob) = current.get_or_insert_with(|| {
            let file = SavedGradientsFile {
                cell: c.cell,
                seed: c.seed,
                probe_index: c.probe_index,
                epoch: c.epoch,
                weights: c.weights,
                npy: vec![],
            };
            let blob = Assembly::new(format!("gradient file {}", file.file_name()), CLIENT_BLOB_LIMIT);
            (file, blob)
        });
        // Chunks of one file arrive in order, file after file.
        if (file.cell, file.seed, file.probe_index, file.weights) != (c.cell, c.seed, c.probe_index, c.weights) {
            return Err(ClientError::Decode(format!(
                "gradient file {}: a chunk of another file arrived before its last",
                file.file_name()
            )));
        }
        if blob.push(c.chunk_index, c.chunk_count, &c.data).map_err(decode)?
            && let Some((mut done, blob)) = current.take()
        {
            done.npy = blob.finish().map_err(decode)?;
            let name = done.file_name();
            on_file(done).map_err(|e| ClientError::Write(format!("cannot write gradient file {name}: {e}")))?;
            files += 1;
        }
    }
    if let Some((_, blob)) = current {
        blob.finish().map_err(decode)?;
    }
    Ok(files)
}

/// What [`list_runs`] hands each page to: the grid's axis keys and the
/// page's runs; an error (a closed pipe) stops the listing.
pub type RunsPageSink<'a> = dyn FnMut(&[String], &[pb::RunInfo]) -> std::io::Result<()> + 'a;

/// Streams a sweep's runs (only those in `states`, unless empty) in (cell,
/// seed) order, handing each page to `on_page` with the grid's axis keys;
/// returns how many runs there were. A page is at most a thousand runs, so
/// a sweep of any size streams in bounded memory.
pub async fn list_runs(
    client: &mut ControlClient,
    sweep_id: &str,
    states: &[pb::RunState],
    with_epochs: bool,
    on_page: &mut RunsPageSink<'_>,
) -> Result<usize, ClientError> {
    let req = pb::ListRunsRequest {
        sweep_id: sweep_id.into(),
        states: states.iter().map(|&s| s as i32).collect(),
        with_epochs,
    };
    let mut stream = client.list_runs(req).await?.into_inner();
    let (mut axes, mut n) = (None::<Vec<String>>, 0usize);
    while let Some(page) = stream.message().await? {
        let axes = axes.get_or_insert(page.axes);
        on_page(axes, &page.runs).map_err(ClientError::Output)?;
        n += page.runs.len();
    }
    Ok(n)
}
