//! Client helpers for talking to a coordinator (CLI and tests).

use gradsweep_proto::MAX_MESSAGE_BYTES;
use gradsweep_proto::transport::{AuthChannel, ClientSecurity, TransportError};
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_client::ControlServiceClient;
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
    /// The coordinator answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// A results message could not be read.
    #[error("unreadable results from the coordinator: {0}")]
    Decode(String),
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
    let mut stream = client.results(crate::convert::results_request(sweep_id, th)).await?.into_inner();
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
