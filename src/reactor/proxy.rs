//! `--proxy-protocol` in the loop: a connection's PROXY header is read before its protocol starts.
//!
//! Behind a balancer such as HAProxy, every connection comes from the balancer, and the client's
//! address arrives as a PROXY protocol header at the very start of the byte stream (the parser,
//! and why it is strict and bounded, are in [`crate::protocol::proxy`]). Three rules make that
//! safe in one loop:
//!
//! * **Nothing before the header.** With the flag, an accepted connection is
//!   [`Handler::Header`]: its protocol has not started, so no byte is read as a
//!   request, no greeting is sent (chat's `* welcome`), and a chat member joins its room only
//!   once the header is complete — under the name the header carries, which the others see in
//!   `* NAME joined` and in every line it sends. Bytes that followed the header in the same read
//!   (a balancer may send the header and the client's first request in one segment) are the
//!   protocol's first input, handed over from the shared read buffer before the socket is read
//!   again ([`FirstInput`]).
//! * **Bounded by the protocol, not by the peer.** The parser holds at most a few hundred bytes
//!   and refuses a header at the first byte that proves it wrong, so a peer that is no balancer
//!   (a client that bypassed it, a port scanner speaking HTTP) costs one small allocation, for a
//!   few milliseconds, and is closed without a reply: there is nobody to answer. Whether a header
//!   is expected is configuration only: the bytes are never guessed from, or any client could
//!   claim any address.
//! * **Bounded in time.** A connection that has not sent a whole header within
//!   [`HEADER_TIMEOUT`](crate::protocol::proxy::HEADER_TIMEOUT) (3 s) of its accept is closed: one more deadline in the loop's timer heap
//!   (`Wake::Header`), not a sleep and not a thread. Until then it holds its place in
//!   `--max-connections` like any other connection, and a graceful shutdown simply closes it
//!   (nothing was read from it, so nothing is owed).
//!
//! With `RUST_LOG=oneloop=trace` a relayed connection reads (the same exchange, checked against a
//! real trace, is in `docs/ARCHITECTURE.md`):
//!
//! ```text
//! accept: conn #1 from 127.0.0.1:40000 for upper; token 0, registered for READABLE
//! conn #1: waiting for its PROXY header (at most 3 s) before any byte of upper
//! conn #1: read 50 bytes: 45 complete its PROXY header, 5 are the protocol's first input
//! conn #1: PROXY header: client 203.0.113.7:56324 via 127.0.0.1:40000
//! conn #1: 5 bytes that came with its PROXY header
//! conn #1: wrote 5 reply bytes, all of them, at once
//! ```
//!
//! (the `PROXY header` line is at debug level, the others at trace), and one that never sends a
//! header:
//!
//! ```text
//! accept: conn #2 from 127.0.0.1:40002 for upper; token 1, registered for READABLE
//! conn #2: waiting for its PROXY header (at most 3 s) before any byte of upper
//! conn #2: no complete PROXY header from 127.0.0.1:40002 within 3 s; closing
//! conn #2: closing: PROXY header deadline
//! ```

use log::{debug, warn};

use crate::clock::Now;
use crate::net::Relayed;
use crate::protocol::Session;
use crate::service::ProtocolKind;

use super::connection::FirstInput;
use super::counters::EndCause;
use super::handler::header::{self, HeaderDone, HeaderRead};
use super::handler::{Client, Handler};
use super::Reactor;

impl Reactor {
    /// Drives connection `key` while it reads its PROXY header: on to its protocol once the
    /// header is complete, closed if it is refused.
    pub(super) fn drive_header(&mut self, key: usize, now: &Now) {
        let Client {
            conn,
            handler: Handler::Header(waiting),
        } = &mut self.clients[key]
        else {
            return;
        };
        match header::read_header(conn, waiting, &mut self.shared, now) {
            HeaderRead::Pending | HeaderRead::Closed => self.settle(key, false),
            HeaderRead::Done(done) => self.start_after_header(key, done, now),
        }
    }

    /// The header is complete: the client it names becomes the connection's peer, its protocol
    /// starts (a chat member joins its room now), and the bytes that followed the header are
    /// its first input.
    fn start_after_header(&mut self, key: usize, done: HeaderDone, now: &Now) {
        let HeaderDone {
            header,
            via,
            endpoint,
            first,
        } = done;
        let peer = via.relayed_client(&header);
        let client = &mut self.clients[key];
        if let Some(record) = client.conn.access_mut() {
            record.peer = peer.to_string();
        }
        let (id, header) = (client.conn.id, &header);
        debug!(
            "conn #{id}: PROXY header: {}",
            Relayed {
                header,
                via,
                client: peer
            }
        );
        if self.endpoints[endpoint].local.is_tls() {
            // Its TLS handshake comes next; the bytes that followed the header begin it.
            client.handler = Handler::handshake(peer, endpoint);
            let early = self.shared.read[..first.len].to_vec();
            self.start_handshake(key, endpoint, &early, now);
            if !self.clients[key].conn.is_closed() {
                self.drive_handshake(key, now);
            }
            return;
        }
        let first = (first.len > 0).then_some(first);
        self.start_protocol(key, endpoint, &peer.to_string(), first, now);
    }

    /// Starts connection `key`'s protocol (that of `endpoint`) now that nothing comes before
    /// it — a chat member joins its room as `name` — and reads on at once: `first`, if any, is
    /// its first input, and the socket may hold more that no new readiness edge will announce.
    pub(super) fn start_protocol(
        &mut self,
        key: usize,
        endpoint: usize,
        name: &str,
        first: Option<FirstInput>,
        now: &Now,
    ) {
        let client = &mut self.clients[key];
        let protocol = self.endpoints[endpoint].protocol;
        match protocol {
            ProtocolKind::Chat => {
                let Some(chat) = self.rooms[endpoint].as_ref() else {
                    return self.refuse_to_start(key, protocol); // Not a chat endpoint: cannot be.
                };
                client.handler = Handler::chat(endpoint as u32, &chat.log);
                self.join_room(key, endpoint, name);
            }
            ProtocolKind::Upload if self.uploads.is_some() => {
                client.handler = Handler::upload(self.config.limits);
            }
            ProtocolKind::Metrics => client.handler = Handler::Metrics(Default::default()),
            _ => match Session::new(protocol, self.config.limits) {
                Some(session) => client.handler = Handler::stream(session, &self.shared),
                // Upload without storage: refused at the accept already, so cannot be.
                None => return self.refuse_to_start(key, protocol),
            },
        }
        self.drive_connection_from(key, now, first);
    }

    /// Closes connection `key`, whose `protocol` cannot start.
    fn refuse_to_start(&mut self, key: usize, protocol: ProtocolKind) {
        let conn = &mut self.clients[key].conn;
        warn!(
            "conn #{}: {protocol} is not served by this build; closing",
            conn.id
        );
        conn.close(EndCause::Error, "protocol not served");
        self.settle(key, false);
    }
}
