//! Serving the coordinator: both gRPC services, the gRPC health service and
//! server reflection on one listener, an optional Prometheus endpoint on
//! another, the lease reaper and the cell merger, until a shutdown future
//! resolves.
//!
//! Security is decided here, once: the token check wraps both services, TLS
//! wraps the listener, and a non-loopback listener without a token is refused
//! unless the operator opted out explicitly.

use std::future::Future;
use std::net::SocketAddr;

use gradsweep_proto::MAX_MESSAGE_BYTES;
use gradsweep_proto::transport::{TOKEN_HEADER, Token};
use gradsweep_proto::v1::control_service_server::ControlServiceServer;
use gradsweep_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::error::CoordinatorError;
use crate::service::{ControlApi, WorkerApi};
use crate::state::{Coordinator, CoordinatorConfig};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening the state failed.
    #[error(transparent)]
    State(#[from] CoordinatorError),
    /// Listening off loopback without a token.
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach this address could submit, cancel and \
         read sweeps. Give a token (--token-file or $GRADSWEEP_TOKEN), listen on 127.0.0.1, or pass \
         --insecure-no-auth if the network is private"
    )]
    NoToken(SocketAddr),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Checks the shared token on each call; a no-op without a token.
#[derive(Clone)]
pub struct TokenCheck(Option<Token>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.0 else { return Ok(req) };
        match req.metadata().get(TOKEN_HEADER) {
            Some(v) if token.matches_header(v.as_bytes()) => Ok(req),
            Some(_) => Err(CoordinatorError::Unauthenticated("wrong token").into()),
            None => Err(CoordinatorError::Unauthenticated("this coordinator requires a token (--token-file)").into()),
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight
/// calls and returns. Tests pass a listener bound to port 0.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], plus Prometheus metrics on `metrics` when given.
pub async fn serve_with_metrics(
    config: CoordinatorConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let security = config.security.clone();
    let config_nodelay = config.tcp_nodelay;
    if !addr.ip().is_loopback() && security.token.is_none() && !security.allow_unauthenticated {
        return Err(ServeError::NoToken(addr));
    }
    if !addr.ip().is_loopback() && security.token.is_none() {
        tracing::warn!(%addr, "listening off loopback without a token (--insecure-no-auth)");
    }
    // Opening runs SQLite I/O and an integrity check: off the async workers.
    let state = tokio::task::spawn_blocking(move || Coordinator::open(config))
        .await
        .map_err(|e| CoordinatorError::Internal(format!("opening the state failed: {e}")))??;
    tracing::info!(
        %addr,
        tls = security.tls.is_some(),
        token = security.token.is_some(),
        metrics = ?metrics.as_ref().and_then(|l| l.local_addr().ok()),
        "coordinator listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let reaper = tokio::spawn(state.clone().run_reaper(stopped()));
    let merger = tokio::spawn(state.clone().run_merger(stopped()));
    let metrics_task = match metrics {
        Some(l) => {
            let st = state.clone();
            let render = move || {
                let st = st.clone();
                async move {
                    st.render_metrics().await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "cannot read counts for metrics");
                        String::new()
                    })
                }
            };
            let access = crate::pages::Access::for_address(
                l.local_addr()?,
                security.token.clone(),
                security.allow_unauthenticated,
            );
            if matches!(access, crate::pages::Access::Refused) {
                tracing::warn!(
                    addr = ?l.local_addr().ok(),
                    "live pages off: the metrics port is off loopback and there is no token (--insecure-no-auth)"
                );
            }
            let app =
                gradsweep_proto::metrics::metrics_router(render).merge(crate::pages::router(state.clone(), access));
            Some(tokio::spawn(gradsweep_proto::metrics::serve_router(l, app, stopped())))
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    health_reporter.set_serving::<ControlServiceServer<ControlApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gradsweep_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Internal(format!("reflection: {e}")))?;

    let check = TokenCheck(security.token.clone());
    let worker = InterceptedService::new(
        WorkerServiceServer::new(WorkerApi { state: state.clone() })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        check.clone(),
    );
    let control = InterceptedService::new(
        ControlServiceServer::new(ControlApi { state: state.clone() })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        check,
    );
    let tcp_nodelay = config_nodelay;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)))?;
    }
    // A storage failure halts the coordinator: health says NOT_SERVING.
    let mut halted = state.halted();
    let halt_reporter = health_reporter.clone();
    let halt_watch = tokio::spawn(async move {
        if halted.wait_for(|h| h.is_some()).await.is_ok() {
            halt_reporter.set_not_serving::<WorkerServiceServer<WorkerApi>>().await;
            halt_reporter.set_not_serving::<ControlServiceServer<ControlApi>>().await;
        }
    });
    let reporter = health_reporter.clone();
    let result = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(worker)
        .add_service(control)
        // TCP_NODELAY on every accepted connection: without it, Nagle's
        // algorithm holds a response's last frame until the client's
        // delayed ACK, about 40 ms per call.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(tcp_nodelay)), async move {
            shutdown.await;
            reporter.set_not_serving::<WorkerServiceServer<WorkerApi>>().await;
            reporter.set_not_serving::<ControlServiceServer<ControlApi>>().await;
        })
        .await;
    let _ = stop_tx.send(true);
    halt_watch.abort();
    let _ = reaper.await;
    let _ = merger.await;
    if let Some(t) = metrics_task {
        match t.await {
            Ok(Err(e)) => tracing::error!(error = %e, "metrics endpoint failed"),
            Err(e) => tracing::error!(error = %e, "metrics task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("coordinator stopped");
    Ok(result?)
}
