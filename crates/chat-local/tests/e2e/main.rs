//! End to end: the `chat` server on 127.0.0.1:0, real WebSocket clients over real sockets.
//!
//! One test binary with shared helpers, to save link time.

mod actions;
mod bad_input;
mod binary;
mod connecting;
mod gateway;
mod lambda_binary;
mod notifiers;
mod pipelined;
mod recovery;
mod replies;
mod strict;
mod support;
