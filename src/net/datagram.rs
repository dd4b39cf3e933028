//! How every driver receives and answers a datagram, the rules it applies before answering, and
//! the counts it keeps. The reactor and the blocking models' UDP threads share them, so a
//! datagram is treated the same whoever receives it.
//!
//! **The reply's source address.** A reply leaves from the address its request was sent to: a
//! connected UDP client (`oneloop client udp:...`, socat) drops a datagram from any other. A
//! socket bound to one address sends from it anyway; one bound to a wildcard address
//! (`0.0.0.0`, `[::]`) receives for every address of the host, and `send_to` would let routing
//! pick the source (a request to 127.0.0.2 answered from 127.0.0.1). So a wildcard socket is
//! asked to report each datagram's destination ([`answer_from_destination`]), [`receive`]
//! reads it with the datagram (`recvmsg`, in place of `recv_from`), and [`answer`] gives it
//! back as the reply's source (`sendmsg`, in place of `send_to`): no extra system call and no
//! allocation per datagram.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use log::{debug, trace};

use crate::protocol::datagram::MAX_DATAGRAM_PAYLOAD;
use crate::sys::{self, ReceivedDatagram};

/// Makes `socket` report each datagram's destination when it is bound to a wildcard address, so
/// that [`answer`] can reply from it. A socket bound to one address needs nothing: its replies
/// leave from that address.
pub(crate) fn answer_from_destination(socket: &UdpSocket) -> io::Result<()> {
    let local = socket.local_addr()?;
    if local.ip().is_unspecified() {
        sys::report_datagram_destinations(socket.as_fd(), local.is_ipv6())?;
    }
    Ok(())
}

/// A datagram in the caller's buffer, and where its reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes received.
    pub length: usize,
    /// Its sender, where the reply goes.
    pub from: SocketAddr,
    /// The source the reply leaves from: the request's destination on a wildcard socket, `None`
    /// (the socket's own address) otherwise.
    reply_source: Option<IpAddr>,
}

/// Receives one datagram into `buffer` (`flags` as for `recvmsg`). `Ok(None)` for a wake-up
/// with no sender — what a reader blocked on a socket whose reading side is shut down gets —
/// which is not a datagram and gets no reply.
pub(crate) fn receive(
    socket: &impl AsFd,
    buffer: &mut [u8],
    flags: i32,
) -> io::Result<Option<Request>> {
    let ReceivedDatagram { length, from, to } =
        sys::receive_datagram(socket.as_fd(), buffer, flags)?;
    Ok(from.map(|from| Request {
        length,
        from,
        reply_source: to.filter(|to| can_be_a_source(*to)),
    }))
}

/// Whether a datagram's destination can be its reply's source: not a multicast address (an IPv6
/// wildcard socket receives ff02::1) nor the IPv4 broadcast address (a dual-stack socket is told
/// it v4-mapped; an IPv4 socket is told the interface's own address instead). For those,
/// routing picks the source.
fn can_be_a_source(destination: IpAddr) -> bool {
    match destination.to_canonical() {
        IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}

/// Sends `reply` to `request`'s sender, from the address the request was sent to (`flags` as
/// for `sendmsg`; `MSG_DONTWAIT` so that a blocking socket does not wait for buffer space).
pub(crate) fn answer(
    socket: &impl AsFd,
    reply: &[u8],
    request: &Request,
    flags: i32,
) -> io::Result<usize> {
    sys::send_datagram(
        socket.as_fd(),
        reply,
        request.from,
        request.reply_source,
        flags,
    )
}

/// Source ports below this (the well-known ports) get no reply: a spoofed datagram "from"
/// another well-known UDP service (echo to chargen, say) would otherwise start two servers
/// answering each other for ever. FreeBSD's inetd refuses them the same way.
pub(crate) const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// What a datagram endpoint has done, for the log at shutdown (and the tests that read it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DatagramStats {
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
    /// Payload bytes of the datagrams received (the metrics' received bytes).
    pub received_bytes: u64,
    /// Payload bytes of the replies sent.
    pub sent_bytes: u64,
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
    pub(crate) fn admit(
        &mut self,
        service: &dyn fmt::Display,
        length: usize,
        from: SocketAddr,
    ) -> bool {
        self.received += 1;
        self.received_bytes += length as u64;
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

    /// Counts the outcome of one reply's [`answer`]. A reply that could not go at once is
    /// dropped, never queued or retried: UDP is lossy, and a queue would grow without bound
    /// under a flood. `service` names the socket in the log, as for [`admit`](Self::admit).
    pub(crate) fn sent(
        &mut self,
        service: &dyn fmt::Display,
        result: io::Result<usize>,
        to: SocketAddr,
    ) {
        match result {
            Ok(count) => {
                self.answered += 1;
                self.sent_bytes += count as u64;
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
