//! The local binary's metrics, at `GET /metrics` in the Prometheus text format.
//!
//! Everything is counted through the `metrics` facade (the chat core counts its messages,
//! deliveries, errors and store latency the same way, whatever the back end); this module
//! installs the process's Prometheus recorder and renders it. Counters are process-wide: two
//! servers in one process (tests) share them.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Connections open now (a gauge).
pub const CONNECTIONS: &str = "chat_connections";
/// Data frames received from clients.
pub const FRAMES_RECEIVED: &str = "chat_frames_received_total";
/// Frames written to clients (replies and events).
pub const FRAMES_SENT: &str = "chat_frames_sent_total";
/// Connections closed as slow consumers (a full send queue, or a socket that took nothing).
pub const SLOW_CONSUMERS: &str = "chat_slow_consumers_total";
/// Handshakes refused, by HTTP `status`.
pub const HANDSHAKES_REFUSED: &str = "chat_handshakes_refused_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder, once; later calls do nothing. Call before anything is
/// counted: what is counted before it is lost.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
            .and_then(|builder| builder.install_recorder());
        match recorder {
            Ok(handle) => {
                // Histogram samples wait in the recorder until a scrape or an upkeep folds them
                // into their buckets: without a scraper they would pile up.
                let upkeep = handle.clone();
                std::thread::Builder::new()
                    .name("metrics-upkeep".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(std::time::Duration::from_secs(5));
                            upkeep.run_upkeep();
                        }
                    })
                    .ok();
                Some(handle)
            }
            Err(e) => {
                // Another recorder is installed (an embedder's): ours has nothing to render.
                tracing::warn!(error = %e, "cannot install the metrics recorder");
                None
            }
        }
    });
}

/// `GET /metrics`: loopback clients only, like the management API (counts of a server are not
/// for the whole network; scrape from the same host or through a proxy).
pub async fn scrape(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if !peer.ip().is_loopback() {
        return StatusCode::FORBIDDEN.into_response();
    }
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
