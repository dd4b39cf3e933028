//! The rules every driver applies to a received datagram before answering it, and the counts
//! they keep. The reactor and the blocking models' UDP threads share them, so a datagram is
//! treated the same whoever receives it.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use log::{debug, trace};

use crate::protocol::datagram::MAX_DATAGRAM_PAYLOAD;

/// Source ports below this (the well-known ports) get no reply: a spoofed datagram "from"
/// another well-known UDP service (echo to chargen, say) would otherwise start two servers
/// answering each other for ever. FreeBSD's inetd refuses them the same way.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// What a datagram endpoint has done, for the log at shutdown (and the tests that read it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams received.
    pub received: u64,
    /// Replies sent.
    pub answered: u64,
    /// Datagrams over 65,507 bytes, dropped unanswered.
    pub oversize: u64,
    /// Datagrams from a source port below 1024, not answered.
    pub reflection: u64,
    /// Replies the socket would not take at once (full buffer, `ENOBUFS`) or refused, dropped.
    pub replies_dropped: u64,
}

impl fmt::Display for DatagramStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} datagrams received, {} answered, {} oversize dropped, {} from ports below {} \
             not answered, {} replies dropped",
            self.received,
            self.answered,
            self.oversize,
            self.reflection,
            FIRST_UNPRIVILEGED_PORT,
            self.replies_dropped
        )
    }
}

impl DatagramStats {
    /// Counts a datagram of `length` bytes from `from`, and says whether it is to be answered:
    /// not if it is over the size limit or comes from a well-known port. `service` names the
    /// socket in the log (`upper on udp 127.0.0.1:9999`).
    pub fn admit(&mut self, service: &dyn fmt::Display, length: usize, from: SocketAddr) -> bool {
        self.received += 1;
        if length > MAX_DATAGRAM_PAYLOAD {
            self.oversize += 1;
            debug!(
                "{service}: dropped {length} bytes from {from} unanswered: over \
                 {MAX_DATAGRAM_PAYLOAD}, the largest datagram answered"
            );
            return false;
        }
        if from.port() < FIRST_UNPRIVILEGED_PORT {
            self.reflection += 1;
            debug!(
                "{service}: no reply to {from}: a source port below {FIRST_UNPRIVILEGED_PORT} may \
                 be another server, and two servers would answer each other for ever"
            );
            return false;
        }
        true
    }

    /// Counts the outcome of one reply's `send_to`. A reply that could not go at once is
    /// dropped, never queued or retried: UDP is lossy, and a queue would grow without bound
    /// under a flood. `service` names the socket in the log, as for [`admit`](Self::admit).
    pub fn sent(&mut self, service: &dyn fmt::Display, result: io::Result<usize>, to: SocketAddr) {
        match result {
            Ok(count) => {
                self.answered += 1;
                trace!("{service}: a reply of {count} bytes goes back to {to}");
            }
            Err(e) => {
                self.replies_dropped += 1;
                if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
                {
                    trace!(
                        "{service}: reply to {to} dropped: the send buffer is full, and a UDP \
                         reply is never queued"
                    );
                } else {
                    // EMSGSIZE (a reply grown past the limit), EHOSTUNREACH...: that reply only.
                    debug!("{service}: reply to {to} dropped: {e}");
                }
            }
        }
    }
}
