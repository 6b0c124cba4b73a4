//! `chat-relay`: a bare broadcast relay, the baseline of the benchmark.
//!
//! tokio-tungstenite's own broadcast example, with rooms: `{"action":"joinRoom","room":R}` joins
//! R (answered `{"type":"joined","room":R}`), and `{"action":"sendMessage","room":R,...}` is
//! relayed verbatim to every member of R, the sender included. No persistence, no validation,
//! no limits: what the WebSocket stack alone costs on this machine.
//!
//!     chat-relay --addr 127.0.0.1:0
//!
//! prints `relay listening on http://ADDR/` once it accepts connections.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(
    name = "chat-relay",
    about = "A bare WebSocket broadcast relay with rooms (the benchmark's baseline)"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

type Tx = mpsc::UnboundedSender<Message>;
type Rooms = Arc<Mutex<HashMap<String, HashMap<u64, Tx>>>>;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.addr).await?;
    println!("relay listening on http://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    let rooms: Rooms = Arc::default();
    let next_id = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, id, rooms.clone()));
    }
}

async fn connection(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut outgoing, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // The writer: what `rx.forward(outgoing)` does, written out: send what is queued, flush
    // when the queue is empty.
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if outgoing.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = rx.try_recv() {
                if outgoing.feed(message).await.is_err() {
                    return;
                }
            }
            if outgoing.flush().await.is_err() {
                return;
            }
        }
    });
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(message)) = incoming.next().await {
        let Message::Text(text) = &message else {
            if message.is_close() {
                break;
            }
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        let Some(room) = frame.room else { continue };
        match &*frame.action {
            "joinRoom" => {
                rooms
                    .lock()
                    .unwrap()
                    .entry(room.to_string())
                    .or_default()
                    .insert(id, tx.clone());
                joined.push(room.to_string());
                let room = serde_json::to_string(&room).unwrap_or_default();
                let _ = tx.send(Message::text(format!(
                    r#"{{"type":"joined","room":{room}}}"#
                )));
            }
            "sendMessage" => {
                let rooms = rooms.lock().unwrap();
                if let Some(members) = rooms.get(&*room) {
                    for member in members.values() {
                        let _ = member.send(message.clone());
                    }
                }
            }
            _ => {}
        }
    }
    {
        let mut rooms = rooms.lock().unwrap();
        for room in joined {
            if let Some(members) = rooms.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
