//! End to end: the `chat` server on 127.0.0.1:0, real WebSocket clients over real sockets.
//!
//! One test binary with shared helpers, to save link time. The tests of the Lambda mode's own
//! parts need the `lambda` feature (`scripts/test` turns it on); `CHAT_TEST_BACKEND=lambda` runs
//! the whole suite on that back end.

mod actions;
mod api;
mod bad_input;
mod binary;
mod changes;
mod connecting;
mod gateway;
#[cfg(feature = "lambda")]
mod lambda_binary;
mod large_rooms;
mod metrics;
#[cfg(feature = "lambda")]
mod notifiers;
mod pipelined;
mod private;
mod reads;
mod recovery;
mod replies;
mod strict;
mod support;
