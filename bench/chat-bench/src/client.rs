//! Opening WebSocket connections the way the scenarios need them: TCP_NODELAY, small buffers,
//! a chosen source address on 127.0.0.0/8, and each protocol's own handshake.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::proto::{Frame, Proto};

pub type Ws = WebSocketStream<TcpStream>;

/// How long one connection's handshakes (TCP, WebSocket, protocol, join) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections per source address before the next one is used (the ephemeral ports of one
/// source address run out near 28,000).
pub const PER_SOURCE: usize = 20_000;

/// The source address of the `index`-th connection of a run of `total`: 127.0.0.1 while one
/// address has ports enough, else spread over 127.0.0.1, 127.0.0.2, ...
pub fn source_for(index: usize, total: usize) -> Option<Ipv4Addr> {
    if total <= PER_SOURCE {
        return None;
    }
    let n = (index / PER_SOURCE) as u32 + 1;
    Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

/// Options of one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub source: Option<Ipv4Addr>,
    /// SO_RCVBUF, to make a client that stops reading push back on the server quickly.
    pub recv_buffer: Option<u32>,
}

/// Opens a connection and completes the protocol's own handshake (Engine.IO open + connect).
pub async fn open(addr: SocketAddr, proto: Proto, options: Options) -> anyhow::Result<Ws> {
    timeout(HANDSHAKE_TIMEOUT, open_inner(addr, proto, options))
        .await
        .context("handshake timed out")?
}

async fn open_inner(addr: SocketAddr, proto: Proto, options: Options) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = options.source {
        set_bind_address_no_port(&socket);
        socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    }
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}{}", proto.path());
    // Small read buffers: the 128 KiB default costs 128 MB on 1,000 connections.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("WebSocket handshake")?;
    if proto == Proto::SocketIo {
        // Engine.IO open packet, then the Socket.IO connect of the main namespace.
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got {open:?}");
        }
        ws.send(Message::text("40")).await?;
        loop {
            let frame = next_text(&mut ws).await?;
            if frame.starts_with("40") {
                break;
            }
            if frame == "2" {
                ws.send(Message::text("3")).await?;
            }
        }
    }
    Ok(ws)
}

/// Joins a room and waits for the server to confirm it.
pub async fn join(ws: &mut Ws, proto: Proto, room: &str) -> anyhow::Result<()> {
    ws.send(Message::text(proto.join_frame(room))).await?;
    timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let frame = next_text(ws).await?;
            match proto.classify(&frame) {
                Frame::Joined => return Ok(()),
                Frame::Ping => ws.send(Message::text("3")).await?,
                _ => {}
            }
        }
    })
    .await
    .context("join timed out")?
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Lets `bind` leave the port to `connect`, which can then reuse a port towards another
/// destination: without it, every bound socket holds a port of its own.
fn set_bind_address_no_port(socket: &TcpSocket) {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_only_past_one_address() {
        assert_eq!(source_for(5, 1000), None);
        assert_eq!(source_for(0, 50_000), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_for(20_000, 50_000),
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            source_for(45_000, 50_000),
            Some(Ipv4Addr::new(127, 0, 0, 3))
        );
    }
}
