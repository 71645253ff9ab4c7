//! Serving the coordinator: both gRPC services and the lease reaper on one
//! listener until a shutdown future resolves.

use std::future::Future;

use gradsweep_proto::MAX_MESSAGE_BYTES;
use gradsweep_proto::v1::control_service_server::ControlServiceServer;
use gradsweep_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::{ControlApi, WorkerApi};
use crate::state::{Coordinator, CoordinatorConfig};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening the state failed.
    #[error(transparent)]
    State(#[from] crate::error::CoordinatorError),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight
/// calls and returns. Tests pass a listener bound to port 0.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let state = Coordinator::open(config)?;
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "coordinator listening");
    let (stop_reaper, reaper_stopped) = tokio::sync::oneshot::channel::<()>();
    let reaper = tokio::spawn(state.clone().run_reaper(async move {
        let _ = reaper_stopped.await;
    }));
    let worker = WorkerServiceServer::new(WorkerApi { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let control = ControlServiceServer::new(ControlApi { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let result = tonic::transport::Server::builder()
        .add_service(worker)
        .add_service(control)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    let _ = stop_reaper.send(());
    let _ = reaper.await;
    tracing::info!("coordinator stopped");
    Ok(result?)
}
