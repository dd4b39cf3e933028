//! `--proxy-protocol` under the blocking models: the PROXY header is read before anything else.
//!
//! The same rules as in the reactor (see [`crate::protocol::proxy`] for the header itself): no
//! byte is the protocol's until the header is complete, so a chat member joins its room only
//! then, under the name the header carries; the bytes that followed the header in the same read
//! are the protocol's first input; a header that is malformed, or not complete within
//! [`HEADER_TIMEOUT`] of the start, closes the connection without a reply.
//!
//! A blocking model has no timer heap, and needs none: the deadline is the socket's read
//! timeout, set before each read to what is left of the 3 s, so a client that sends half a
//! header and waits (or nothing at all) costs its thread 3 s at most. The serving code sets its
//! own timeouts (`--idle-timeout`) once the header is read. The 3 s count from when the
//! connection's service starts, which is its accept except under `pool` (a connection queued for
//! a worker is not read at all until a worker takes it) and `serial` (where, as any slow client
//! does, a client that sends no header holds the one connection being served for its 3 s).

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use log::debug;

use crate::net::{BlockingStream, Peer, Relayed};
use crate::protocol::proxy::{Parse, ProxyHeader, HEADER_TIMEOUT};

use crate::options::ServeOptions;

/// The client a connection from `peer` serves, and how many of its first bytes are already at
/// the start of `buffer`: under `--proxy-protocol`, after reading its PROXY header (see the
/// module docs); otherwise `peer` itself, and none. `None`: the connection is to be closed (no
/// valid header in time, or the server is stopping).
pub(super) fn client(
    stream: &BlockingStream,
    peer: Peer,
    options: &ServeOptions,
    stopping: &AtomicBool,
    buffer: &mut [u8],
) -> Option<(Peer, usize)> {
    if !options.proxy_protocol {
        return Some((peer, 0));
    }
    read_header(stream, peer, stopping, buffer)
}

/// Reads a PROXY header from `stream` (who connected: `via`) within [`HEADER_TIMEOUT`]: the
/// client it names, and how many bytes that followed it are now at the start of `buffer`.
fn read_header(
    mut stream: &BlockingStream,
    via: Peer,
    stopping: &AtomicBool,
    buffer: &mut [u8],
) -> Option<(Peer, usize)> {
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let mut parser = ProxyHeader::new();
    loop {
        if stopping.load(Ordering::Acquire) {
            // Nothing of its protocol has started, so nothing is owed to it.
            debug!("{via}: shutting down before its PROXY header was complete; closing");
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            debug!(
                "{via}: no complete PROXY header within {} s; closing",
                HEADER_TIMEOUT.as_secs()
            );
            return None;
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            debug!("{via}: cannot set the PROXY header's deadline: {e}; closing");
            return None;
        }
        let count = match stream.read(buffer) {
            // The shutdown's SHUT_RD, or the peer: the loop's next check tells which.
            Ok(0) if stopping.load(Ordering::Acquire) => continue,
            Ok(0) => {
                debug!("{via}: closed before its PROXY header was complete");
                return None;
            }
            Ok(count) => count,
            // The deadline: the loop's next check ends it.
            Err(e) if crate::net::is_timeout(&e) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("{via}: read of the PROXY header failed: {e}; closing");
                return None;
            }
        };
        match parser.on_input(&buffer[..count]) {
            Parse::NeedMore => {}
            Parse::Done { header, consumed } => {
                let client = via.relayed_client(&header);
                let header = &header;
                debug!(
                    "PROXY header: {}",
                    Relayed {
                        header,
                        via,
                        client
                    }
                );
                buffer.copy_within(consumed..count, 0);
                return Some((client, count - consumed));
            }
            Parse::Invalid(reason) => {
                debug!("refusing {via}: {reason}; closing");
                return None;
            }
        }
    }
}
