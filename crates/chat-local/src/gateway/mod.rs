//! The local gateway: API Gateway's WebSocket API, emulated on one port.
//!
//! - `GET /{stage}` with an upgrade: the WebSocket. `$connect` runs before the handshake
//!   completes and can refuse it with a status (400, 401, 429), as on AWS.
//! - `/{stage}/@connections/{id}`: the management API ([`management`]).
//! - `/api/...`: the server API, behind a bearer key (`server_api`).
//! - `/`: the web client.
//!
//! It knows the integration behind it only as a [`Backend`], to which it hands every fact of a
//! connection ([`Connection`]); a back end in the same process delivers frames through the
//! [`Outbox`]. [`Gateway::serve`] starts it on a listener and returns a [`Server`]; shutting it
//! down closes every connection with 1001, waits for their `$disconnect`, and flushes the store.
//!
//! - [`backend`]: the [`Backend`] trait and what it is handed.
//! - [`registry`]: the live connections and their bounded send queues; the [`Outbox`].
//! - [`socket`]: one connection after the handshake: its reader and writer.
//! - [`management`]: `@connections` over HTTP.
//! - `admission`: the per-IP handshake rate; `query`: the handshake's query string.

mod admission;
pub mod backend;
pub mod integration;
mod linger;
pub mod management;
mod query;
pub mod registry;
mod server_api;
mod socket;

pub use backend::{
    Accepted, ApiCall, Backend, Closed, Connection, Handshake, IntegrationError, Refusal,
};
pub use registry::{Outbox, Posted};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use chat_core::clock::now_ms;
use chat_core::domain::ConnectionId;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use registry::Registry;

/// API Gateway's limits on what a client sends.
pub const MAX_FRAME_BYTES: usize = 32 * 1024;
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// How long shutdown waits for connections to finish their `$disconnect`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub registry: Arc<Registry>,
    pub settings: Arc<Settings>,
    /// Cancelled when the server stops: every connection closes with 1001.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so that shutdown can wait for their `$disconnect`.
    pub connections: TaskTracker,
    /// The per-IP connection rate.
    admission: Arc<admission::Admission>,
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Asks the server to stop; [`Server::wait`] returns once it has.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }

    /// The live connections' ids (tests read them, as a back end would from `$connect`).
    pub fn connection_ids(&self) -> Vec<ConnectionId> {
        self.registry.ids()
    }
}

/// The gateway before it serves: its connections exist first, so that a back end can be given
/// their [`Outbox`] before the gateway is given the back end.
pub struct Gateway {
    registry: Arc<Registry>,
}

impl Gateway {
    pub fn new(settings: &Settings) -> Self {
        Self {
            registry: Arc::new(Registry::new(settings.max_connections, settings.send_queue)),
        }
    }

    /// How an in-process back end delivers to this gateway's connections.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.registry.clone())
    }

    /// Serves on `listener`, with `backend` behind, until `shutdown` is cancelled.
    pub fn serve(
        self,
        listener: TcpListener,
        settings: Settings,
        backend: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Server> {
        let local_addr = listener.local_addr()?;
        let admission = Arc::new(admission::Admission::new(settings.ip_connect_rate()));
        let state = AppState {
            backend,
            registry: self.registry.clone(),
            settings: Arc::new(settings),
            shutdown: shutdown.clone(),
            connections: TaskTracker::new(),
            admission,
        };
        let task = tokio::spawn(run(listener, state));
        Ok(Server {
            local_addr,
            registry: self.registry,
            shutdown,
            task,
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::telemetry::scrape))
        .route("/{stage}", get(websocket))
        .route(
            "/{stage}/@connections/{connection_id}",
            get(management::get)
                .post(management::post)
                .delete(management::delete),
        )
        .route("/api/{*path}", any(server_api::serve))
        .merge(crate::web::routes())
        // Any other path (`/dev/@connections` without an id, `/dev/anything`): API Gateway's 403.
        .fallback(|| async { management::forbidden() })
        // Room for a posted message over the limit, so that the handler can answer 413 itself.
        .layer(DefaultBodyLimit::max(management::MAX_POST_BYTES + 1))
        .with_state(state)
}

async fn run(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let send_buffer = state.settings.send_buffer;
    let listener = linger::LingeringListener(listener).tap_io(move |io| {
        let tcp = io.tcp();
        // Chat frames are small and latency matters more than packet count.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if send_buffer > 0
            && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer)
        {
            tracing::debug!(error = %e, "cannot set SO_SNDBUF");
        }
    });
    let shutdown = state.shutdown.clone();
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    // New connections are refused now; close the live ones and let them say goodbye.
    state
        .registry
        .close_all(registry::close_code::GOING_AWAY, "server shutting down");
    state.connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    state.backend.shutdown().await;
    tracing::info!("server stopped");
    Ok(())
}

/// A refused handshake, as API Gateway answers it.
fn refuse(status: StatusCode, message: &str) -> Response {
    metrics::counter!(crate::telemetry::HANDSHAKES_REFUSED, "status" => status.as_u16().to_string())
        .increment(1);
    (status, axum::Json(json!({ "message": message }))).into_response()
}

fn refuse_with(refusal: Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    refuse(status, &refusal.message)
}

/// The handshake: the authorizer, `$connect`, then the upgrade.
async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stage): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if stage != state.settings.stage {
        return refuse(StatusCode::FORBIDDEN, "Forbidden");
    }
    if state.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    if !state.admission.admit(peer.ip(), now_ms()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address; slow down",
        );
    }
    let raw_query = query.unwrap_or_default();
    if query::first_is_not_utf8(&raw_query, "name") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid name: it is not valid UTF-8",
        );
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let handshake = Handshake {
        query: query::pairs(&raw_query),
        headers: headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
    };
    let mut facts = Connection {
        id: ConnectionId::random(),
        connected_at_ms: now_ms(),
        source_ip: peer.ip(),
        user_agent,
        authorizer: None,
    };
    // The authorizer runs before `$connect`, as on API Gateway; its context then goes with
    // every call about the connection.
    match state.backend.authorize(&facts, &handshake).await {
        Ok(context) => facts.authorizer = context,
        Err(refusal) => return refuse_with(refusal),
    }
    let connection_id = facts.id.clone();
    // Registered before `$connect`, so that frames sent to it from then on wait in its queue.
    let Ok((handle, queue)) = state.registry.register(facts) else {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too many connections");
    };
    let connect =
        async { Ok::<_, IntegrationError>(state.backend.connect(&handle.facts, &handshake).await) };
    let accepted = match integration::invoke(state.settings.integration_timeout, connect).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(refusal)) => {
            state.registry.remove(&connection_id);
            return refuse_with(refusal);
        }
        // A `$connect` function that fails (or panics, or runs past the integration timeout)
        // refuses the handshake. AWS documents no status for WebSocket APIs; a function that
        // throws is seen by clients as 502 ("Unexpected server response: 502" in wscat), as
        // for REST APIs' Lambda proxy integrations.
        Err(failure) => {
            tracing::error!(connection = %connection_id, ?failure, "$connect failed");
            state.registry.remove(&connection_id);
            return refuse(StatusCode::BAD_GATEWAY, "Internal server error");
        }
    };
    handle.mark_connected();
    let failed_state = state.clone();
    let failed_id = connection_id.clone();
    let tracker = state.connections.clone();
    // A subprotocol is negotiated only when the `$connect` response names it in its
    // `Sec-WebSocket-Protocol` header ("Set up a $connect route that requires a WebSocket
    // subprotocol", API Gateway developer guide,
    // https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-connect-route-subprotocol.html),
    // and here only one the client offered (RFC 6455 4.2.2). Nothing else of the response
    // reaches the client.
    let upgrade = match accepted.subprotocol {
        Some(protocol) => upgrade.protocols([protocol]),
        None => upgrade,
    };
    upgrade
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        // Most frames are small; a large one grows the buffer for as long as it needs.
        .read_buffer_size(4 * 1024)
        .on_failed_upgrade(move |e| {
            tracing::debug!(error = %e, "upgrade failed after $connect");
            let Some(handle) = failed_state.registry.get(&failed_id) else {
                return;
            };
            failed_state.registry.remove(&failed_id);
            let backend = failed_state.backend.clone();
            let closed = Closed {
                status_code: 1006,
                reason: "connection lost".into(),
            };
            tokio::spawn(async move { backend.disconnect(&handle.facts, &closed).await });
        })
        .on_upgrade(move |socket| tracker.track_future(socket::run(socket, state, handle, queue)))
}
