//! The classic server models oneloop is compared against, driving the very same protocol code.
//!
//! Python's `socketserver` gives the seeds three ways to serve many clients: one at a time
//! (`TCPServer`), a thread per client (`ThreadingMixIn`), a process per client (`ForkingMixIn`);
//! a fixed pool of worker threads is the usual fourth. Here they are in Rust, with blocking std
//! sockets on purpose: they are the foil for the reactor, and the point of the comparison is what
//! blocking costs — a stack and a kernel task per waiting client, a context switch per request.
//!
//! Every model starts from the same [`BoundListener`](crate::net::BoundListener)s as the reactor and serves each connection
//! with [`serve_blocking`], which feeds the same [`Session`] state machines the reactor uses. So
//! a benchmark of two models compares the models, not two implementations of a protocol. They
//! accept through the same [`Acceptor`], which keeps the backlog moving when the process runs out
//! of file descriptors, as the reactor does (see [`acceptor`]).
//!
//! What a blocking model does not need: `--output-limit` (a thread blocked in `write` stops
//! reading, and the kernel's socket buffers are the bound) and fairness budgets (the kernel
//! scheduler shares the CPU between threads). `--max-line` applies unchanged: it lives in the
//! protocol. `--idle-timeout` becomes the socket's read and write timeouts (a blocked `read` or
//! `write` that long means no byte moved that long), and `--max-connections` a count of the
//! connections being served (threads or child processes). Graceful shutdown is the reactor's
//! alone: the models keep the default action for SIGINT and SIGTERM and end at once.

pub mod acceptor;
pub mod datagram;
pub mod forking;
pub mod pool;
pub mod serial;
pub mod threaded;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::clock::Clock;
use crate::net::{BlockingStream, Peer, LINGER, TOO_MANY_CONNECTIONS_REPLY};
use crate::protocol::{Arrival, Flow, Limits, ProtocolKind, Session};

pub use acceptor::Acceptor;

/// How `serve` serves its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// One thread, one mio event loop, every connection (the point of oneloop).
    Reactor,
    /// One connection at a time, to completion (Python's `TCPServer`).
    Serial,
    /// A thread per connection (`ThreadingMixIn`).
    Threaded,
    /// `--threads` worker threads taking accepted connections from a queue.
    Pool,
    /// A process per connection (`ForkingMixIn`).
    Forking,
}

impl Model {
    /// The name used by `--model`.
    pub fn name(self) -> &'static str {
        match self {
            Model::Reactor => "reactor",
            Model::Serial => "serial",
            Model::Threaded => "threaded",
            Model::Pool => "pool",
            Model::Forking => "forking",
        }
    }
}

/// The options the blocking models honour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Limits every protocol session gets.
    pub limits: Limits,
    /// `--idle-timeout`: a connection blocked this long in one `read` or `write` is closed.
    pub idle_timeout: Option<Duration>,
    /// `--max-connections`: connections served at once; one more is refused.
    pub max_connections: usize,
}

/// Counts the connections being served, for `--max-connections`: a slot is taken before a
/// connection is handed to its thread and given back when [`Slot`] is dropped.
#[derive(Clone, Debug)]
pub struct Admission {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl Admission {
    /// Admits up to `max` connections at once.
    pub fn new(max: usize) -> Admission {
        Admission {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot for `accepted`, or `None` after refusing it (the `error too many connections`
    /// line, then close), as the reactor does.
    pub fn admit(&self, accepted: &mut Accepted) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            debug!("{}: too many connections; refusing", accepted.peer);
            refuse(accepted);
            return None;
        }
        Some(Slot(Arc::clone(&self.open)))
    }
}

/// One admitted connection's place in the count; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection over the limit: one best-effort line, then close.
pub fn refuse(accepted: &mut Accepted) {
    let _ = accepted.stream.set_nonblocking(true);
    let _ = accepted.stream.write(TOO_MANY_CONNECTIONS_REPLY);
}

/// Bytes one blocking connection reads at a time: std's `BufReader` default. The buffer is on
/// the serving thread's stack, so it is part of what each blocked client costs.
pub const BLOCKING_READ_BYTES: usize = 8 * 1024;

/// An accepted connection, as a blocking std socket, and the protocol it speaks.
#[derive(Debug)]
pub struct Accepted {
    /// The client's socket (TCP or Unix), in blocking mode.
    pub stream: BlockingStream,
    /// The protocol of the listener it arrived on.
    pub protocol: ProtocolKind,
    /// The client's address, for logs.
    pub peer: Peer,
}

/// Serves one connection on a blocking socket until it ends: read, feed the session, write the
/// replies, repeat. This is the whole protocol driver of the blocking models.
pub fn serve_blocking(accepted: Accepted, settings: &Settings) {
    let Accepted {
        mut stream,
        protocol,
        peer,
    } = accepted;
    if stream.set_read_timeout(settings.idle_timeout).is_err()
        || stream.set_write_timeout(settings.idle_timeout).is_err()
    {
        return;
    }
    let Some(mut session) = Session::new(protocol, settings.limits) else {
        warn!("{peer}: {protocol} is not served by this model; closing");
        return;
    };
    let mut clock = Clock::default();
    let mut input = [0u8; BLOCKING_READ_BYTES];
    let mut replies = Vec::new();
    loop {
        let count = match stream.read(&mut input) {
            Ok(0) => {
                replies.clear();
                session.on_end(&clock.now(), &mut replies);
                let _ = stream.write_all(&replies);
                return;
            }
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                debug!("{peer}: idle timeout; closing");
                return;
            }
            Err(e) => {
                debug!("{peer}: read failed: {e}");
                return;
            }
        };
        // As in the reactor, a short read has taken everything there was: the peer has paused.
        // A full read may have emptied the socket exactly, and the next blocking read would wait
        // for ever for a client that is waiting for us: look first, without blocking.
        let arrival = if count < input.len() || !more_input_waiting(&stream) {
            Arrival::Drained
        } else {
            Arrival::Partial
        };
        replies.clear();
        let flow = session.on_input(&input[..count], arrival, &clock.now(), &mut replies);
        if let Err(e) = stream.write_all(&replies) {
            debug!("{peer}: write failed: {e}");
            return;
        }
        if flow == Flow::Close {
            linger(&mut stream, &mut input);
            return;
        }
    }
}

/// Whether bytes are waiting to be read, checked without blocking.
fn more_input_waiting(stream: &BlockingStream) -> bool {
    stream.input_waiting()
}

/// The lingering close, blocking version: shut down our sending side, then read and discard until
/// the peer closes or [`LINGER`] passes, so unread input does not turn the close into an RST.
fn linger(stream: &mut BlockingStream, scratch: &mut [u8]) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
