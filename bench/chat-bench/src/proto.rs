//! The three wire protocols the load generator speaks, reduced to what the scenarios need:
//! join a room, publish a message with an acknowledgement, and recognise deliveries, acks and
//! pings without parsing whole frames.
//!
//! - `Chat`: this project's protocol (PROTOCOL.md): `joinRoom`/`joined`, `sendMessage`/`ack`,
//!   `message` to every member, the sender included.
//! - `SocketIo`: Engine.IO v4 over WebSocket: `0{...}` open, `40` connect, `42[...]` events,
//!   `42<id>[...]`/`43<id>[...]` acknowledgements, ping `2` answered with `3`.
//! - `Relay`: the bare relay: the chat's `joinRoom` and `sendMessage` frames, relayed verbatim to
//!   every member, the sender included (the sender's own copy is its acknowledgement).
//!
//! Each message's text carries a marker, `~B~step~publisher~seq~intended_ns~`, padded to the
//! message size; the servers pass it through untouched.

/// Which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Chat,
    SocketIo,
    Relay,
}

/// What the marker in a delivered message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub step: u32,
    pub publisher: u32,
    pub seq: u32,
    /// The message's intended send time, in ns since the load generator's epoch.
    pub intended_ns: u64,
}

/// One frame from the server, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Delivery(Marker),
    Ack {
        step: u32,
        seq: u32,
    },
    Joined,
    /// Engine.IO ping: answer `3`.
    Ping,
    /// The chat's `error` frame: the server refused a frame (PROTOCOL.md, Errors).
    Error,
    Other,
}

/// Acknowledgement ids carry the step and the sequence number.
const ACK_STEP: u64 = 100_000_000;

pub fn ack_id(step: u32, seq: u32) -> u64 {
    u64::from(step) * ACK_STEP + u64::from(seq)
}

fn split_ack_id(id: u64) -> (u32, u32) {
    ((id / ACK_STEP) as u32, (id % ACK_STEP) as u32)
}

/// The text of a message: the marker, padded with `x` to `len` bytes.
pub fn message_text(marker: Marker, len: usize) -> String {
    let mut text = format!(
        "~B~{}~{}~{}~{}~",
        marker.step, marker.publisher, marker.seq, marker.intended_ns
    );
    while text.len() < len {
        text.push('x');
    }
    text
}

/// Finds and reads the marker in a frame.
pub fn find_marker(frame: &str) -> Option<Marker> {
    let start = frame.find("~B~")? + 3;
    let mut fields = frame[start..].splitn(5, '~');
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok());
    Some(Marker {
        step: next()? as u32,
        publisher: next()? as u32,
        seq: next()? as u32,
        intended_ns: next()?,
    })
}

fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

impl Proto {
    /// The WebSocket path (and query) to connect to.
    pub fn path(self) -> &'static str {
        match self {
            Proto::Chat => "/dev",
            Proto::SocketIo => "/socket.io/?EIO=4&transport=websocket",
            Proto::Relay => "/",
        }
    }

    pub fn join_frame(self, room: &str) -> String {
        match self {
            Proto::Chat => format!(r#"{{"action":"joinRoom","room":"{room}","requestId":"join"}}"#),
            // Ack id 0 is the join's; publishes use ids from 1 up.
            Proto::SocketIo => format!(r#"420["join","{room}"]"#),
            Proto::Relay => format!(r#"{{"action":"joinRoom","room":"{room}"}}"#),
        }
    }

    pub fn publish_frame(self, room: &str, text: &str, step: u32, seq: u32) -> String {
        let id = ack_id(step, seq);
        match self {
            Proto::Chat => format!(
                r#"{{"action":"sendMessage","room":"{room}","text":"{text}","requestId":"{id}"}}"#
            ),
            Proto::SocketIo => format!(r#"42{id}["send",{{"room":"{room}","text":"{text}"}}]"#),
            Proto::Relay => {
                format!(r#"{{"action":"sendMessage","room":"{room}","text":"{text}"}}"#)
            }
        }
    }

    /// Classifies a frame by its first bytes; only deliveries and acks are read further.
    pub fn classify(self, frame: &str) -> Frame {
        match self {
            Proto::Chat => {
                if frame.starts_with(r#"{"type":"message""#) {
                    find_marker(frame).map_or(Frame::Other, Frame::Delivery)
                } else if let Some(rest) = frame.strip_prefix(r#"{"type":"ack","requestId":""#) {
                    match leading_number(rest) {
                        Some(id) => {
                            let (step, seq) = split_ack_id(id);
                            Frame::Ack { step, seq }
                        }
                        None => Frame::Other,
                    }
                } else if frame.starts_with(r#"{"type":"joined""#) {
                    Frame::Joined
                } else if frame.starts_with(r#"{"type":"error""#) {
                    Frame::Error
                } else {
                    Frame::Other
                }
            }
            Proto::SocketIo => {
                if frame == "2" {
                    Frame::Ping
                } else if frame.starts_with(r#"42["message""#) {
                    find_marker(frame).map_or(Frame::Other, Frame::Delivery)
                } else if let Some(rest) = frame.strip_prefix("43") {
                    match leading_number(rest) {
                        Some(0) => Frame::Joined,
                        Some(id) => {
                            let (step, seq) = split_ack_id(id);
                            Frame::Ack { step, seq }
                        }
                        None => Frame::Other,
                    }
                } else {
                    Frame::Other
                }
            }
            Proto::Relay => {
                if frame.starts_with(r#"{"action":"sendMessage""#) {
                    find_marker(frame).map_or(Frame::Other, Frame::Delivery)
                } else if frame.starts_with(r#"{"type":"joined""#) {
                    Frame::Joined
                } else {
                    Frame::Other
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Marker = Marker {
        step: 3,
        publisher: 917,
        seq: 42,
        intended_ns: 123_456_789_012,
    };

    #[test]
    fn the_text_is_padded_and_the_marker_reads_back() {
        let text = message_text(M, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(find_marker(&text), Some(M));
    }

    #[test]
    fn chat_frames_are_classified() {
        let text = message_text(M, 100);
        let delivery = format!(
            r#"{{"type":"message","room":"r1","id":"0190a0b0-0000-7000-8000-000000000000","ts":1,"sender":{{"name":"guest-1"}},"text":"{text}"}}"#
        );
        assert_eq!(Proto::Chat.classify(&delivery), Frame::Delivery(M));
        let ack = format!(
            r#"{{"type":"ack","requestId":"{}","room":"r1","id":"x","ts":1}}"#,
            ack_id(3, 42)
        );
        assert_eq!(Proto::Chat.classify(&ack), Frame::Ack { step: 3, seq: 42 });
        assert_eq!(
            Proto::Chat.classify(r#"{"type":"joined","requestId":"join","room":"r1"}"#),
            Frame::Joined
        );
        assert_eq!(
            Proto::Chat.classify(r#"{"type":"presence","room":"r1"}"#),
            Frame::Other
        );
        assert_eq!(
            Proto::Chat.classify(
                r#"{"type":"error","requestId":"7","code":"rate_limited","message":"slow down"}"#
            ),
            Frame::Error
        );
        let publish = Proto::Chat.publish_frame("r1", &text, 3, 42);
        let v: serde_json::Value = serde_json::from_str(&publish).unwrap();
        assert_eq!(v["text"], text);
    }

    #[test]
    fn socketio_frames_are_classified() {
        let text = message_text(M, 100);
        let delivery = format!(r#"42["message",{{"room":"r1","text":"{text}","ts":1}}]"#);
        assert_eq!(Proto::SocketIo.classify(&delivery), Frame::Delivery(M));
        assert_eq!(
            Proto::SocketIo.classify(&format!(r#"43{}[{{"ts":1}}]"#, ack_id(3, 42))),
            Frame::Ack { step: 3, seq: 42 }
        );
        assert_eq!(
            Proto::SocketIo.classify(r#"430[{"room":"r1"}]"#),
            Frame::Joined
        );
        assert_eq!(Proto::SocketIo.classify("2"), Frame::Ping);
        assert_eq!(
            Proto::SocketIo.publish_frame("r1", "t", 3, 42),
            format!(r#"42{}["send",{{"room":"r1","text":"t"}}]"#, ack_id(3, 42))
        );
    }

    #[test]
    fn relay_frames_are_classified() {
        let text = message_text(M, 100);
        let frame = Proto::Relay.publish_frame("r1", &text, 3, 42);
        assert_eq!(Proto::Relay.classify(&frame), Frame::Delivery(M));
        assert_eq!(
            Proto::Relay.classify(r#"{"type":"joined","room":"r1"}"#),
            Frame::Joined
        );
    }
}
