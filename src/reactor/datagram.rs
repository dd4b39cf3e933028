//! A UDP socket in the loop: an endpoint with no connections.
//!
//! A listener's readiness means "clients are waiting to become connections"; a datagram socket's
//! means "messages are waiting to be answered". Each datagram is a whole request, answered on the
//! spot with one `sendmsg` to its sender, from the address the request was sent to (see
//! `net::datagram`: on a wildcard address `recvmsg` tells it), so there is nothing to remember
//! about any peer — no slab entry, no timer, no buffer. The endpoint needs only the loop's
//! shared read buffer (64 KiB, more than the largest datagram the contract answers, so an
//! oversize one is *seen* to be oversize rather than silently cut) and the shared reply buffer.
//! A reply that would not fit one datagram is the one datagram `error reply too large`.
//!
//! The edge-triggered rules carry over with one change:
//!
//! * **Drain or budget**: receive until `WouldBlock` or [`MAX_DATAGRAMS_PER_TURN`], then go on
//!   the still-ready queue, so a flood of datagrams cannot starve the TCP clients.
//! * **Never wait to write**: a reply the socket cannot take at once (`WouldBlock`, or `ENOBUFS`
//!   from a full interface queue) is dropped and counted — UDP is lossy, and a queue would grow
//!   without bound under a flood. No retry, no `WRITABLE` interest, no spin (the classic libuv
//!   ENOBUFS busy loop).
//! * **No reflection**: a datagram whose source port is below 1024 gets no reply. A spoofed
//!   datagram "from" another well-known UDP service (echo to chargen, say) would otherwise start
//!   two servers answering each other for ever; FreeBSD's inetd refuses them the same way.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use log::{debug, log_enabled, trace, Level};
use mio::net::UdpSocket;

use crate::clock::Now;
use crate::net::datagram::{self as net_datagram, DatagramStats};
use crate::protocol::datagram::{self, Reply, MAX_DATAGRAM_PAYLOAD};
use crate::service::ProtocolKind;

use super::buffers::{SharedBuffers, READ_BUFFER_BYTES};

/// Datagrams one socket may take per loop turn before the others get their turn: enough to
/// keep the syscall cost per turn low, few enough that a flood cannot hold the loop.
pub(super) const MAX_DATAGRAMS_PER_TURN: usize = 64;

// The shared read buffer must be able to hold one byte more than the largest answered datagram,
// or an oversize datagram could not be told from a full one.
const _: () = assert!(READ_BUFFER_BYTES > MAX_DATAGRAM_PAYLOAD);

/// Receives and answers datagrams on `socket` until it would block or the turn's budget is
/// spent. Returns whether it stopped on the budget (more datagrams may be waiting).
pub(super) fn serve_datagrams(
    socket: &UdpSocket,
    protocol: ProtocolKind,
    shared: &mut SharedBuffers,
    stats: &mut DatagramStats,
    now: &Now,
) -> bool {
    // The log names the service as the learner started it; its address costs a `getsockname`,
    // asked only when its lines are logged at all.
    let service = Service {
        protocol,
        local: if log_enabled!(Level::Debug) {
            socket.local_addr().ok()
        } else {
            None
        },
    };
    for handled in 0..MAX_DATAGRAMS_PER_TURN {
        let request = match net_datagram::receive(socket, &mut shared.read, 0) {
            Ok(Some(request)) => request,
            // No sender: not a datagram (only a shut-down reading side gives it).
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                trace!(
                    "{service}: no more datagrams waiting (recvmsg would block); {handled} \
                     handled this turn"
                );
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNREFUSED (an ICMP error for an earlier reply) and its kind are about one
            // datagram, not the socket: note it and take the next.
            Err(e) => {
                debug!("{service}: receive error about an earlier reply, not the socket: {e}");
                continue;
            }
        };
        let (length, from) = (request.length, request.from);
        trace!("{service}: a datagram of {length} bytes from {from}");
        if !stats.admit(&service, length, from) {
            continue;
        }
        shared.replies.clear();
        match datagram::reply(protocol, &shared.read[..length], now, &mut shared.replies) {
            Some(Reply::Answer) => {}
            Some(Reply::TooLarge) => debug!(
                "{service}: the reply to {length} bytes from {from} would not fit one datagram; \
                 it gets `error reply too large`"
            ),
            None => continue, // Not a datagram protocol; `serve` refuses such services first.
        }
        let sent = net_datagram::answer(socket, &shared.replies, &request, 0);
        stats.sent(&service, sent, from);
    }
    trace!(
        "{service}: {MAX_DATAGRAMS_PER_TURN} datagrams this turn, its budget; serving the others \
         before reading more"
    );
    true
}

/// How the log names a datagram service: `upper on udp 127.0.0.1:9999`, as the endpoint's
/// own line at start-up does.
struct Service {
    protocol: ProtocolKind,
    /// Its address; `None` when not logged (or unknown).
    local: Option<SocketAddr>,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on udp", self.protocol)?;
        match self.local {
            Some(local) => write!(f, " {local}"),
            None => Ok(()),
        }
    }
}
