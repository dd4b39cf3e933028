//! The PROXY-header phase (`--proxy-protocol`): the step before a connection's handler.
//!
//! Until its header is complete, a connection is nobody's: no byte is the protocol's, nothing
//! is owed to it. [`read_header`] reads until the socket is drained or the header is complete
//! or refused; the loop then gives the connection its real handler (`reactor::proxy`) and
//! hands it the bytes that followed the header in the same read ([`FirstInput`]).

use log::{debug, trace};

use crate::clock::Now;
use crate::net::Peer;
use crate::protocol::proxy::{Header, Parse, ProxyHeader, HEADER_TIMEOUT};

use super::super::buffers::SharedBuffers;
use super::super::connection::{Connection, FirstInput};
use super::super::counters::EndCause;

/// A connection waiting for its PROXY protocol header: the parser, and what starting its
/// protocol will need once the header is read.
#[derive(Debug)]
pub(crate) struct AwaitingHeader {
    /// The header so far. It holds at most a few hundred bytes, whatever the peer sends (see
    /// [`crate::protocol::proxy`]).
    parser: ProxyHeader,
    /// Who connected: the balancer, normally. Named in logs until the header says who the
    /// client is, and kept as the client's name when it does not (LOCAL, UNKNOWN).
    via: Peer,
    /// The endpoint it was accepted on, whose protocol starts once the header is read.
    endpoint: usize,
}

impl AwaitingHeader {
    /// A connection from `via`, accepted on `endpoint`, with nothing of its header read yet.
    pub(crate) fn new(via: Peer, endpoint: usize) -> AwaitingHeader {
        AwaitingHeader {
            parser: ProxyHeader::new(),
            via,
            endpoint,
        }
    }

    /// Who connected (the balancer, normally).
    pub(crate) fn via(&self) -> Peer {
        self.via
    }
}

/// What [`read_header`] made of the bytes that had arrived.
#[derive(Debug)]
pub(crate) enum HeaderRead {
    /// Every byte read so far is header, and the header is not complete: wait for more (until
    /// its deadline).
    Pending,
    /// The header is complete: the protocol can start.
    Done(HeaderDone),
    /// No header: refused as malformed, the peer left, or the read failed. The connection is
    /// closed, without a reply.
    Closed,
}

/// A complete PROXY header, and what the connection's protocol starts with.
#[derive(Debug)]
pub(crate) struct HeaderDone {
    /// What the header says.
    pub header: Header,
    /// Who connected (the balancer, normally).
    pub via: Peer,
    /// The endpoint the connection was accepted on.
    pub endpoint: usize,
    /// The bytes that followed the header in the same read, for the protocol.
    pub first: FirstInput,
}

/// Reads the PROXY header: until the socket is drained or the header is complete or refused. A
/// short read means drained, as for requests. Every byte before the end of the header goes to
/// the parser, whose own bounds refuse a header that grows past a few hundred held bytes, so a
/// peer cannot make this loop run long; its deadline is the loop's (a `Wake::Header` timer,
/// [`on_deadline`]).
///
/// When the header is complete, the rest of that read is moved to the start of the shared read
/// buffer and described by [`HeaderDone::first`]: the protocol's first bytes.
pub(crate) fn read_header(
    conn: &mut Connection,
    waiting: &mut AwaitingHeader,
    shared: &mut SharedBuffers,
    now: &Now,
) -> HeaderRead {
    let read = read_header_bytes(conn, waiting, shared);
    conn.note_activity(now);
    read
}

/// The body of [`read_header`].
fn read_header_bytes(
    conn: &mut Connection,
    waiting: &mut AwaitingHeader,
    shared: &mut SharedBuffers,
) -> HeaderRead {
    if !conn.is_serving() {
        return HeaderRead::Closed;
    }
    loop {
        let asked = shared.read.len();
        let count = match conn.read_raw(&mut shared.read[..]) {
            Ok(0) => {
                debug!(
                    "conn #{}: {} closed before its PROXY header was complete",
                    conn.id, waiting.via
                );
                conn.close(
                    EndCause::ProxyHeader,
                    "end of stream before the PROXY header",
                );
                return HeaderRead::Closed;
            }
            Ok(count) => count,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return HeaderRead::Pending,
            Err(e) => {
                conn.close_on_error("read of the PROXY header", &e);
                return HeaderRead::Closed;
            }
        };
        match waiting.parser.on_input(&shared.read[..count]) {
            Parse::NeedMore => {
                trace!(
                    "conn #{}: read {count} bytes of its PROXY header; not complete yet",
                    conn.id
                );
                if count < asked && !conn.peer_closing() {
                    return HeaderRead::Pending; // drained: wait for the next edge
                }
            }
            Parse::Done { header, consumed } => {
                if consumed < count {
                    trace!(
                        "conn #{}: read {count} bytes: {consumed} complete its PROXY header, {} \
                         are the protocol's first input",
                        conn.id,
                        count - consumed
                    );
                } else {
                    trace!(
                        "conn #{}: read {count} bytes, which complete its PROXY header",
                        conn.id
                    );
                }
                shared.read.copy_within(consumed..count, 0);
                return HeaderRead::Done(HeaderDone {
                    header,
                    via: waiting.via,
                    endpoint: waiting.endpoint,
                    first: FirstInput {
                        len: count - consumed,
                        room: asked - consumed,
                    },
                });
            }
            Parse::Invalid(reason) => {
                debug!(
                    "conn #{}: refusing {}: {reason}; closing",
                    conn.id, waiting.via
                );
                conn.close(EndCause::ProxyHeader, "no valid PROXY header");
                return HeaderRead::Closed;
            }
        }
    }
}

/// The PROXY header's deadline has passed: the connection, still waiting for it, is closed.
pub(crate) fn on_deadline(conn: &mut Connection, waiting: &AwaitingHeader) {
    if !conn.is_closed() {
        debug!(
            "conn #{}: no complete PROXY header from {} within {} s; closing",
            conn.id,
            waiting.via,
            HEADER_TIMEOUT.as_secs()
        );
        conn.close(EndCause::ProxyHeader, "PROXY header deadline");
    }
}
