//! The protocols, as sans-I/O state machines.
//!
//! A protocol here never touches a socket, a clock or a file. The driver (the reactor, or one of
//! the comparison models) reads bytes from wherever they come from and calls
//! [`Session::on_input`]; the session appends its replies to an output buffer the driver owns and
//! says whether the conversation goes on ([`Flow`]). That split is what lets
//!
//! * the same protocol code run under the event loop and under the serial, threaded, pool and
//!   forking models it is compared against, so a benchmark compares *models*, not protocols;
//! * tests feed input split at every offset, with no network, and check that the output does not
//!   depend on how TCP happened to chunk the stream.
//!
//! ## The input contract
//!
//! The driver reports, with every batch of bytes, whether it has now read *everything the peer has
//! sent so far* ([`Arrival::Drained`]) or stopped early because a buffer or a fairness budget ran
//! out ([`Arrival::Partial`]). "Drained" is the "peer paused" signal of the timestamp protocol:
//! the seeds' clients send a message without a newline and wait for the answer, so bytes pending
//! when the peer pauses are a message. Stream transforms (upper, echo) ignore it.
//!
//! At end of stream the driver calls [`Session::on_end`], which flushes anything still held (an
//! unterminated line, an incomplete UTF-8 sequence).
//!
//! ## Memory
//!
//! A session holds only what the protocol must remember between reads — at most three bytes of a
//! split UTF-8 character for `upper`, the unanswered tail of a line (bounded by `--max-line`) for
//! `timestamp`. It keeps no read or write buffer of its own: those belong to the driver, which
//! can share one read buffer among thousands of connections.
//!
//! ## Chat
//!
//! Chat is not a [`Session`]: one member's line is output for the *others*. [`room::Room`] holds
//! every member of one chat service and turns a member's bytes into [`room::Delivery`] orders
//! (broadcast, reply to one, close) that the driver carries out — still no socket inside.
//!
//! ## Upload
//!
//! Upload is not a [`Session`] either: its input is mostly a file's bytes, which belong on disk,
//! not in a reply. [`upload::UploadSession`] reads the input one [`upload::Step`] at a time
//! (header accepted, body bytes to write, body complete, refused) and the driver does the file
//! work, then reports how storing went — still no file inside.
//!
//! ## Metrics
//!
//! The `metrics` service is not a [`Session`] either: its answer is the server's own counters.
//! [`http::read_request`] reads a scrape's request head (bytes in, which answer out) and
//! [`exposition::Exposition`] writes the counters the driver hands it in Prometheus's text
//! format — still no socket, and no counter, inside.
//!
//! ## PROXY header
//!
//! Under `--proxy-protocol`, a stream connection starts with a PROXY protocol header from the
//! load balancer in front, before any protocol byte. [`proxy::ProxyHeader`] reads it (bytes in,
//! the client's address out, bounded, no clock) and says where the session's bytes begin.

pub(crate) mod bus;
pub(crate) mod datagram;
pub(crate) mod echo;
pub mod exposition;
pub mod http;
pub mod proxy;
pub(crate) mod room;
pub(crate) mod timestamp;
pub mod upload;
pub(crate) mod upper;

use crate::clock::Now;

// Owned by `service` (a spec names a kind, and the bottom layer owns what it names); re-exported
// because `Session::new` takes one, so a protocol's reader finds it here too.
#[doc(no_inline)]
pub use crate::service::ProtocolKind;
pub(crate) use echo::Echo;
pub(crate) use timestamp::Timestamp;
pub(crate) use upper::Upper;

/// Whether a batch of input is everything the peer has sent so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The driver stopped early (its buffer filled, or the connection used up its turn): more
    /// bytes may already be waiting.
    Partial,
    /// The driver has read everything available: the peer is now waiting for replies.
    Drained,
}

/// What the driver does after handing input to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    /// Keep reading and serving.
    Continue,
    /// The protocol has ended the conversation (its last reply, e.g. an `error ...` line, is in
    /// the output): write what is pending, then close without reading more requests.
    Close,
}

/// Per-session limits from the command line.
///
/// One struct for every protocol, although each reads only its own fields: the drivers (the
/// reactor and the models, through the options they share, `options::ServeOptions`) already
/// carry it to every session they create, so a new limit reaches all of them by adding a field
/// here rather than a parameter to each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, in bytes not counting its `\n`, that line protocols accept (`--max-line`).
    /// For upload it bounds the header line.
    pub max_line: usize,
    /// Largest upload, in bytes, that the upload protocol accepts (`--max-upload`): a header
    /// announcing more is refused before any body byte is read.
    pub max_upload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: DEFAULT_MAX_LINE,
            max_upload: DEFAULT_MAX_UPLOAD,
        }
    }
}

/// Default for `--max-line`: 64 KiB, Redis's inline-request limit.
pub(crate) const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Default for `--max-upload`: 1 GiB, the contract's default.
pub(crate) const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// The reply a line protocol sends before closing a connection whose line passed `--max-line`.
pub(crate) const LINE_TOO_LONG_REPLY: &[u8] = b"error line too long\n";

/// One connection's protocol state, for the protocols that map a byte stream to a byte stream.
///
/// An enum rather than a trait object: the reactor keeps one per connection in a slab, and an
/// enum needs no extra allocation and dispatches with a jump table.
#[derive(Debug)]
pub enum Session {
    /// An `upper` session.
    Upper(Upper),
    /// A `timestamp` session.
    Timestamp(Timestamp),
    /// An `echo` session.
    Echo(Echo),
}

impl Session {
    /// A fresh session of `kind`, or `None` for protocols that are not byte-stream transforms:
    /// chat ([`room::Room`]), upload ([`upload::UploadSession`]) and metrics (the driver's own
    /// counters, through [`http`] and [`exposition`]).
    pub fn new(kind: ProtocolKind, limits: Limits) -> Option<Session> {
        match kind {
            ProtocolKind::Upper => Some(Session::Upper(Upper::default())),
            ProtocolKind::Timestamp => Some(Session::Timestamp(Timestamp::new(limits.max_line))),
            ProtocolKind::Echo => Some(Session::Echo(Echo)),
            ProtocolKind::Chat | ProtocolKind::Upload | ProtocolKind::Metrics => None,
        }
    }

    /// Consumes all of `input`, appending replies to `out`.
    pub fn on_input(
        &mut self,
        input: &[u8],
        arrival: Arrival,
        now: &Now,
        out: &mut Vec<u8>,
    ) -> Flow {
        match self {
            Session::Upper(upper) => {
                upper.on_input(input, out);
                Flow::Continue
            }
            Session::Timestamp(timestamp) => timestamp.on_input(input, arrival, now, out),
            Session::Echo(_) => {
                out.extend_from_slice(input);
                Flow::Continue
            }
        }
    }

    /// The peer will send nothing more: appends the replies to anything still held.
    pub fn on_end(&mut self, now: &Now, out: &mut Vec<u8>) {
        match self {
            Session::Upper(upper) => upper.on_end(out),
            Session::Timestamp(timestamp) => timestamp.on_end(now, out),
            Session::Echo(_) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the protocol unit tests.
    use super::*;
    use std::time::Instant;

    /// A fixed moment, so expected output can be written down.
    pub(crate) fn fixed_now() -> Now {
        Now::with_ctime(Instant::now(), "Wed Sep  9 16:42:46 2026")
    }

    pub(crate) use crate::fuzzing::feed;
}
