//! The transport layer the reactor, the comparison models, `client` and `load` share: binding
//! TCP, Unix and UDP sockets, one stream type for TCP and Unix connections, writing to
//! non-blocking sockets, what every server does when a connection has to be turned away, and
//! systemd's side of it all: sockets passed in by socket activation, and readiness notifications
//! ([`systemd`]).
//!
//! None of it knows about the event loop or about threads, which is why both drivers can use it:
//! the reactor and the blocking models differ in *how they wait*, not in how a socket is bound,
//! how a refused client is told, or how a process out of file descriptors keeps its backlog
//! moving.

pub(crate) mod datagram;
pub(crate) mod listener;
pub(crate) mod nonblocking;
pub(crate) mod reserve;
pub(crate) mod stream;
pub mod systemd;
pub mod tls;
pub mod tls_client;
pub(crate) mod unix;

use std::time::Duration;

pub use listener::Bound;
pub(crate) use listener::{bind_services, BoundDatagram, BoundListener, Listening, StreamListener};
pub(crate) use nonblocking::write_until_blocked;
pub(crate) use reserve::{log_fd_limit, ReserveFd, Shed};
pub(crate) use stream::{BlockingStream, Peer, Relayed, Stream};

/// How long a lingering close waits for the peer to finish sending before closing anyway.
/// Apache's lingering close uses the same two seconds.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// The reply a connection over `--max-connections` gets before it is closed.
pub(crate) const TOO_MANY_CONNECTIONS_REPLY: &[u8] = b"error too many connections\n";

/// Whether `error` is a blocking socket's timeout running out (`SO_RCVTIMEO`/`SO_SNDTIMEO`):
/// Linux reports it as `EAGAIN`, which std calls `WouldBlock`, and some paths as `TimedOut`.
pub(crate) fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
