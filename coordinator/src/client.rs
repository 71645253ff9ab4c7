//! Client helpers for talking to a coordinator (CLI and tests).

use gradsweep_proto::MAX_MESSAGE_BYTES;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_client::ControlServiceClient;
use gradsweep_shared::results::{CellResult, SweepSummary};
use tonic::transport::{Channel, Endpoint};

/// Errors talking to a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URL.
    #[error("invalid coordinator address `{0}`: {1}")]
    Address(String, String),
    /// No connection could be made.
    #[error("cannot reach the coordinator at {0}: {1}")]
    Connect(String, String),
    /// The coordinator answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// A results message could not be read.
    #[error("unreadable results from the coordinator: {0}")]
    Decode(String),
}

/// Normalises `host:port` into `http://host:port`.
pub fn normalize_url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

/// Connects the control client.
pub async fn connect_control(addr: &str) -> Result<ControlServiceClient<Channel>, ClientError> {
    let url = normalize_url(addr);
    let ep = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Address(addr.to_string(), e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let ch = ep.connect().await.map_err(|e| ClientError::Connect(url, e.to_string()))?;
    Ok(ControlServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Fetches the per-cell results and the summary of a sweep.
pub async fn fetch_results(
    client: &mut ControlServiceClient<Channel>,
    sweep_id: &str,
) -> Result<(Vec<CellResult>, SweepSummary), ClientError> {
    let mut stream = client.results(pb::ResultsRequest { sweep_id: sweep_id.to_string() }).await?.into_inner();
    let mut cells = vec![];
    let mut summary = None;
    while let Some(chunk) = stream.message().await? {
        match chunk.body {
            Some(pb::results_chunk::Body::CellJson(j)) => {
                cells.push(serde_json::from_str(&j).map_err(|e| ClientError::Decode(e.to_string()))?)
            }
            Some(pb::results_chunk::Body::SummaryJson(j)) => {
                summary = Some(serde_json::from_str(&j).map_err(|e| ClientError::Decode(e.to_string()))?)
            }
            None => {}
        }
    }
    let summary = summary.ok_or_else(|| ClientError::Decode("results stream ended without a summary".into()))?;
    Ok((cells, summary))
}
