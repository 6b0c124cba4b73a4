//! A lingering close for every accepted connection: when the server is done with a socket, it
//! sends FIN after whatever it queued, then reads and drops what the client still sends until
//! the client closes too, or [`LINGER`] passes.
//!
//! Without it, a socket closed while the client's data is still unread (the rest of a message
//! over the limit, frames sent after it, the client's answer to the close frame) makes the
//! kernel answer with a reset, which also discards what the server had queued and not yet
//! sent, the close frame among them: the client then sees 1006 instead of 1009 (RFC 6455 7.1.1
//! has the server close the TCP connection first, and RFC 1122 4.2.2.13 says that a close with
//! data pending resets the connection). Web servers do the same ("lingering close" in Apache's
//! and nginx's documentation).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a closed connection is read for its client's last bytes.
pub const LINGER: Duration = Duration::from_secs(2);

/// A listener whose connections close lingering.
pub struct LingeringListener(pub TcpListener);

impl axum::serve::Listener for LingeringListener {
    type Io = Lingering;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (Lingering(Some(tcp)), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// An accepted connection that closes lingering when it is dropped.
pub struct Lingering(Option<TcpStream>);

impl Lingering {
    pub fn tcp(&self) -> &TcpStream {
        self.0.as_ref().expect("taken only on drop")
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        self.0.as_mut().expect("taken only on drop")
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut tcp) = self.0.take() else { return };
        // Outside a runtime (the server is gone), there is nothing to linger for.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // FIN, after everything queued: the close frame reaches the client.
            let _ = tcp.shutdown().await;
            let mut discard = [0u8; 4096];
            let drain = async { while matches!(tcp.read(&mut discard).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp().is_write_vectored()
    }
}
