//! What a connection's bytes mean: one handler per kind of client, beside the transport core.
//!
//! Every accepted client is a [`Client`]: its [`Connection`] (bytes on a socket, the same for
//! every kind) and its [`Handler`], which owns the state of what it is serving:
//!
//! | handler | file | state | what its input goes to |
//! |---|---|---|---|
//! | [`Handler::Stream`], [`Handler::Delayed`] | [`stream`] | a protocol [`Session`] (and, under `--reply-delay`, its held replies) | the session, which answers at once |
//! | [`Handler::Chat`] | [`chat`] | a [`ChatMember`]: its place in its room's log | its room ([`ChatSink`]), whose lines go to *other* connections |
//! | [`Handler::Upload`] | [`upload`] | an [`UploadWork`]: the session, its chunks and ops in flight | the I/O threads ([`UploadSink`](super::upload::UploadSink)) |
//! | [`Handler::Header`] | [`header`] | the PROXY header parser (`--proxy-protocol`) | nothing yet: the step *before* one of the others |
//! | [`Handler::Handshake`] | [`handshake`] | who it is and where it will be served (`tls:`) | nothing yet: its TLS handshake comes first |
//! | [`Handler::Metrics`] | [`metrics`] | the request heads not answered yet | the loop's counters, rendered when asked (`reactor::metrics`) |
//!
//! ## Why an enum, not a trait
//!
//! The handlers need different things from the loop while they run — a session needs nothing
//! but the shared buffers, a chat member needs its room, its room's log and the list of
//! deliveries, an upload needs the storage pool — and those are fields of the reactor beside
//! the slab, borrowed for the length of one drive. A `dyn Handler` would have to take one
//! context type that holds all of them (each handler ignoring most), or look its own up. With
//! an enum, the loop matches **once, at the seam** (`Reactor::drive_connection_from`; the two
//! events that concern one kind alone, a storage answer and a PROXY header read, take theirs
//! with one `let … else`): each arm
//! borrows exactly what that kind needs and calls that kind's own `drive`, which takes it by
//! type. So a chat member cannot be handed the storage pool, an upload cannot be driven
//! without it, and the "(kind, sink) pairing that cannot happen" cannot be written at all. The
//! few questions the loop asks of every client (does output wait, does the server make it
//! wait, what happens at a shutdown) are each one `match` here, and nowhere else. The enum is
//! also a slab entry whose size is the memory per idle connection: the rare kinds are boxed so
//! the common ones stay small (`a_client_stays_small`).
//!
//! ## The seam, for what comes next
//!
//! * **TLS** sits between [`Connection`] and the handler: rustls's `ServerConnection` is itself
//!   sans-I/O (ciphertext in with `read_tls`, plaintext out of `reader()`, and back through
//!   `writer()` and `write_tls`), so a TLS connection is a [`Connection`] whose `read_input`
//!   and `send` pass through it. The handlers keep seeing plaintext in the shared read buffer
//!   and keep calling `send`; none of them changes.
//! * **A chat room on a bus** changes only where [`ChatSink`] delivers: a member's lines go to
//!   a room that publishes them and hands back what the bus returns. The member's own state
//!   (its cursor in the log, flow control's parking) stays in [`ChatMember`].
//! * **Metrics** are counted in one type: every read and write of a client socket is a
//!   [`Connection`] method — [`read_input`](Connection::read_input) and
//!   [`read_raw`](Connection::read_raw) (the PROXY header's reads),
//!   [`discard_input`](Connection::discard_input) (lingering), [`send`](Connection::send),
//!   [`flush_unsent`](Connection::flush_unsent) and
//!   [`write_vectored`](Connection::write_vectored) — and the reactor's `reap_finished` is the
//!   one place a connection ends. (The loop touches the socket itself only to register it with
//!   the poller.) Plain integers the loop owns, so counting costs no atomic and no lock; under
//!   TLS the plaintext the handler sees and the ciphertext on the wire are both at hand there.

pub(super) mod chat;
pub(super) mod handshake;
pub(super) mod header;
pub(super) mod metrics;
pub(super) mod stream;
pub(super) mod upload;

use std::time::Instant;

use log::debug;
use mio::Interest;

use crate::clock::Now;
use crate::net::Peer;
use crate::protocol::{Limits, Session};

use super::buffers::SharedBuffers;
use super::connection::Connection;
use super::counters::EndCause;
use super::fanout::RoomLog;
use upload::UploadWork;

pub(super) use chat::{ChatMember, ChatSink, HeldInput};
pub(super) use header::AwaitingHeader;
pub(super) use stream::Delayed;

/// What a client's input goes to: the state of the kind of service it is using.
#[derive(Debug)]
pub(super) enum Handler {
    /// A byte-stream protocol: input in, replies out, all within this connection.
    Stream(Session),
    /// A byte-stream protocol whose replies wait `--reply-delay` before they are sent (the
    /// tutorial's demonstration of concurrency). Boxed: only that mode pays for the held bytes.
    Delayed(Box<Delayed>),
    /// A chat member: its input goes to its room, and the loop routes what the room decides —
    /// lines for other members land in *their* [`ChatMember`].
    Chat(ChatMember),
    /// An upload: its session, and its file operations in flight with the I/O threads (boxed:
    /// the rarer kind of connection should not make every other one bigger).
    Upload(Box<UploadWork>),
    /// Not started yet: reading its PROXY protocol header (`--proxy-protocol`). Boxed: the
    /// parser's few hundred bytes are needed for a few milliseconds after the accept, and
    /// every connection past its header (all of them, in the steady state) should not carry
    /// them.
    Header(Box<AwaitingHeader>),
    /// Not started yet: in its TLS handshake (a `tls:` service). Its session is the
    /// connection's; this is only what starting its protocol will need.
    Handshake(Box<handshake::AwaitingHandshake>),
    /// A Prometheus scraper: its HTTP requests, answered with the loop's counters.
    Metrics(metrics::MetricsRequests),
}

impl Handler {
    /// A byte-stream protocol's handler: its replies held if `--reply-delay` asks for it.
    pub(super) fn stream(session: Session, shared: &SharedBuffers) -> Handler {
        match shared.reply_delay {
            None => Handler::Stream(session),
            Some(_) => Handler::Delayed(Box::new(Delayed::new(session))),
        }
    }

    /// A member of endpoint `room`'s room joining now: owed the lines appended to `log` from
    /// here on (none sent before it joined).
    pub(super) fn chat(room: u32, log: &RoomLog) -> Handler {
        Handler::Chat(ChatMember::joining(room, log))
    }

    /// An upload connection's handler.
    pub(super) fn upload(limits: Limits) -> Handler {
        Handler::Upload(Box::new(UploadWork::new(limits)))
    }

    /// A connection accepted from `via` on `endpoint` under `--proxy-protocol`: its protocol
    /// starts once its header is read.
    pub(super) fn awaiting_header(via: Peer, endpoint: usize) -> Handler {
        Handler::Header(Box::new(AwaitingHeader::new(via, endpoint)))
    }

    /// A connection of `endpoint` (a `tls:` service) from `peer`, starting its TLS handshake.
    pub(super) fn handshake(peer: Peer, endpoint: usize) -> Handler {
        Handler::Handshake(Box::new(handshake::AwaitingHandshake { peer, endpoint }))
    }
}

/// One accepted client: its socket, and what its bytes mean.
#[derive(Debug)]
pub(super) struct Client {
    /// The transport: bytes on a socket, the same for every kind.
    pub conn: Connection,
    /// The kind of service it is using, and that service's state for it.
    pub handler: Handler,
}

/// The questions the loop asks of every client, each answered by kind here and nowhere else.
impl Client {
    /// A client just accepted and registered, on its connection, served by `handler`.
    pub(super) fn new(conn: Connection, handler: Handler) -> Client {
        Client { conn, handler }
    }

    /// Output the handler still owes besides the connection's queue: lines owed to a chat
    /// member, replies held for `--reply-delay`, the answer to an upload being stored. A
    /// draining or ending connection stays until they have gone.
    pub(super) fn handler_pending(&self) -> bool {
        if self.conn.is_closed() {
            return false; // Whatever it was owed went with the connection.
        }
        match &self.handler {
            Handler::Chat(member) => member.is_owed(),
            Handler::Upload(work) => work.is_storing(),
            Handler::Delayed(delayed) => delayed.holds_replies(),
            Handler::Stream(_)
            | Handler::Header(_)
            | Handler::Handshake(_)
            | Handler::Metrics(_) => false,
        }
    }

    /// The interest the client needs registered now (see [`Connection::wanted_interest`]):
    /// held replies wait for their timer, not for the socket.
    pub(super) fn wanted_interest(&self, output_limit: usize) -> Option<Interest> {
        let writes = match &self.handler {
            Handler::Delayed(_) => false,
            _ => self.handler_pending(),
        };
        self.conn.wanted_interest(output_limit, writes)
    }

    /// Whether the server, not the client, keeps this connection quiet — an upload waiting for
    /// the disk, replies held for `--reply-delay`, a chat member its room has parked: the idle
    /// timeout does not run meanwhile.
    pub(super) fn server_is_waiting(&self) -> bool {
        match &self.handler {
            Handler::Upload(work) => work.waits_for_disk(),
            Handler::Delayed(delayed) => delayed.holds_replies(),
            Handler::Chat(member) => member.is_parked(),
            Handler::Stream(_)
            | Handler::Header(_)
            | Handler::Handshake(_)
            | Handler::Metrics(_) => false,
        }
    }

    /// The chat room of this member (its endpoint index), if it is one.
    pub(super) fn chat_room(&self) -> Option<usize> {
        match &self.handler {
            Handler::Chat(member) => Some(member.room()),
            _ => None,
        }
    }

    /// The connection and its membership, if it is a chat member.
    pub(super) fn as_member(&self) -> Option<(&Connection, &ChatMember)> {
        match &self.handler {
            Handler::Chat(member) => Some((&self.conn, member)),
            _ => None,
        }
    }

    /// [`as_member`](Self::as_member), to change them.
    pub(super) fn as_member_mut(&mut self) -> Option<(&mut Connection, &mut ChatMember)> {
        match &mut self.handler {
            Handler::Chat(member) => Some((&mut self.conn, member)),
            _ => None,
        }
    }

    /// The connection is being removed: the serial of its upload, and whether that upload was
    /// cut short (its temporary file must be discarded) rather than handed its commit.
    pub(super) fn upload_left_behind(&self) -> Option<(u64, bool)> {
        match &self.handler {
            Handler::Upload(work) => work.serial().map(|serial| (serial, work.needs_discard())),
            _ => None,
        }
    }

    /// When the loop must wake to send held replies, if it has no timer for them yet.
    pub(super) fn reply_timer(&mut self) -> Option<Instant> {
        match &mut self.handler {
            Handler::Delayed(delayed) if !self.conn.is_closed() => delayed.arm(),
            _ => None,
        }
    }

    /// The server is shutting down: stop reading requests, finish writing the replies already
    /// queued, then end the connection the way an error reply does (`Ending`: shut down our
    /// side, linger). An idle connection so gets its end of stream at once. Simply closing
    /// would be quicker, but if the client has sent anything since — a pipelined request —
    /// closing with that input unread sends an RST, and the RST makes the client's kernel throw
    /// away the replies it has not read yet.
    ///
    /// Bytes a session holds back — half a UTF-8 character for upper, an unterminated line
    /// read just before the shutdown for timestamp — are its answer to input already read, so
    /// they are flushed first, exactly as at the peer's end of stream.
    ///
    /// An upload whose body has all arrived is stored and answered first (its connection waits
    /// in `Ending` until then); one still arriving is cut short: closed now, and its temporary
    /// file discarded when it is reaped.
    pub(super) fn begin_shutdown(&mut self, shared: &mut SharedBuffers, now: &Now) {
        let conn = &mut self.conn;
        // Whatever happens to it from here, the shutdown ended it (unless it was ending).
        conn.end_as(EndCause::Shutdown);
        match &mut self.handler {
            Handler::Header(waiting) => {
                // Nothing of its protocol has started, so nothing is owed to it.
                debug!(
                    "conn #{}: shutting down before {}'s PROXY header was complete; closing",
                    conn.id,
                    waiting.via()
                );
                conn.close(EndCause::Shutdown, "shutdown before the PROXY header");
            }
            Handler::Handshake(waiting) => {
                debug!(
                    "conn #{}: shutting down during {}'s TLS handshake; closing",
                    conn.id, waiting.peer
                );
                conn.close(EndCause::Shutdown, "shutdown during the TLS handshake");
            }
            Handler::Upload(work) if conn.is_serving() && work.is_busy() => {
                upload::begin_shutdown(conn, work);
            }
            Handler::Stream(session) if conn.is_serving() => {
                stream::begin_shutdown(conn, session, None, shared, now);
            }
            Handler::Delayed(delayed) if conn.is_serving() => {
                let (session, held) = delayed.parts();
                stream::begin_shutdown(conn, session, Some(held), shared, now);
            }
            Handler::Chat(_) | Handler::Upload(_) | Handler::Metrics(_) if conn.is_serving() => {
                conn.end_conversation();
            }
            _ => {}
        }
    }

    /// The reply timer fired: a `--reply-delay` client sends the held replies now due (see
    /// [`stream::release_replies`]).
    pub(super) fn release_replies(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
    ) -> super::Verdict {
        match &mut self.handler {
            Handler::Delayed(delayed) if !self.conn.is_closed() => {
                stream::release_replies(&mut self.conn, delayed, shared, now)
            }
            _ => super::Verdict::default(),
        }
    }

    /// The PROXY header's deadline has passed: a connection still waiting for it is closed.
    pub(super) fn on_header_deadline(&mut self) {
        if let Handler::Header(waiting) = &self.handler {
            header::on_deadline(&mut self.conn, waiting);
        }
    }

    /// The TLS handshake's deadline has passed: a connection still in its handshake is closed.
    pub(super) fn on_handshake_deadline(&mut self) {
        if let Handler::Handshake(waiting) = &self.handler {
            handshake::on_deadline(&mut self.conn, waiting);
        }
    }
}

/// The protocol's last reply is queued (`quit`, an error): the conversation ends once it is
/// written.
fn protocol_ended(conn: &mut Connection) {
    if conn.is_serving() {
        debug!("conn #{}: protocol ended the conversation", conn.id);
        conn.end_conversation();
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Every idle connection costs one slab entry and nothing else, so this size *is* the memory
    /// per idle connection (plus the slab's spare capacity). A field added here is paid for by
    /// every one of ten thousand connections: this test makes that a decision, not an accident.
    #[test]
    fn a_client_stays_small() {
        // 136 bytes today (in a debug build, whose mio sockets carry a selector id): the
        // socket, the TLS session's pointer (null over plain TCP), the session (a timestamp
        // session is the largest), an empty reply queue, the phase, the idle clock and a few
        // flags. It was 144 before TLS: the linger deadline left the phase for the timer heap.
        // The metrics' byte counters (16 bytes), the endpoint's index, the end cause and the
        // access log's pointer (8) were paid for by boxing the reply queue (24 saved).
        let size = std::mem::size_of::<Client>();
        assert!(size <= 136, "Client grew to {size} bytes");
    }
}
