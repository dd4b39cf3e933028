//! One client's socket: bytes in, bytes out, and the phase the connection is in. Nothing here
//! knows a protocol.
//!
//! A [`Connection`] is the transport core every kind of client shares — an upper client, a chat
//! member, an upload, a connection still reading its PROXY header. What the bytes *mean* is the
//! business of its handler (see `reactor::handler`), which calls the primitives here: read one
//! buffer's worth within the turn's budget ([`Connection::read_input`]), send replies
//! ([`Connection::send`]), end the conversation, and let the connection move its phases on
//! once what is queued is written ([`Connection::settle`]). Readiness is a hint: the `read` or
//! `write` call gives the answer, and one event never means one message.
//!
//! The rules it follows, one per edge-triggered pitfall:
//!
//! * **Drain or budget.** Read until the socket is drained or the turn's budget
//!   ([`MAX_READ_BYTES_PER_TURN`]) is spent; write until done or `WouldBlock`. A budgeted
//!   connection says so (`still_ready`) because no new edge will come for bytes already waiting.
//! * **A short read means drained.** A TCP `read` that returns less than asked has emptied the
//!   receive queue (on Linux, which tokio relies on too), so the extra `read` that would only
//!   return `WouldBlock` is skipped: one `read` per request. Except when the poller has said the
//!   peer closed its side: the FIN may have come in the same edge as the last bytes, and no
//!   further edge will announce it, so the handler keeps reading until the `read` returns 0
//!   ([`Connection::reads_on`]).
//! * **Write eagerly, subscribe lazily.** Replies are written the moment they exist, from a
//!   buffer shared by every connection; only bytes the socket refuses are copied into the
//!   connection's own [`Unsent`] queue, and only then does the connection want `WRITABLE`
//!   ([`Connection::wanted_interest`]).
//! * **Back-pressure.** Past `--output-limit` queued bytes, a handler stops reading (the queue's
//!   length is [`Connection::unsent_len`]; a handler adds what it holds itself), so a peer that
//!   never reads cannot make the server buffer without bound.
//! * **Lingering close.** After a final error reply, shut down the write side and read and
//!   discard for up to [`LINGER`]: closing with unread input would send an RST, and an RST makes
//!   the peer's kernel throw away the reply it has not read yet.
//! * **Deadlines are the loop's.** The connection only remembers when bytes last moved
//!   ([`Connection::last_active`], what `--idle-timeout` measures from); the loop's timer heap
//!   holds every deadline (the end of a linger, a handshake's) and wakes it.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Instant;

use log::{debug, trace};
use mio::Interest;

use crate::clock::Now;
use crate::net::{write_until_blocked, Stream, LINGER};
use crate::protocol::Arrival;

use super::buffers::{SharedBuffers, READ_BUFFER_BYTES};
use super::counters::AccessRecord;
use super::counters::EndCause;
use super::tls::{SocketRead, TlsLayer};
use super::unsent::Unsent;
use super::wire::Wire;

/// Input bytes one connection may consume per loop turn before the others get theirs. Four full
/// reads of the shared buffer: large enough for bulk transfers to be efficient, small enough that
/// a client that never stops sending cannot starve the rest.
pub(super) const MAX_READ_BYTES_PER_TURN: usize = 4 * READ_BUFFER_BYTES;

/// The stages of a connection's life. Handlers cause the transitions that input causes (end of
/// stream, the protocol's last word); [`Connection::settle`] those that wait for the queue to
/// empty; the loop its own (shutdown, timeouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading requests and writing replies (reading pauses while the queue is over the limit).
    Serving,
    /// The peer shut down its sending side: no more requests will come. Write what is queued,
    /// then close.
    Draining,
    /// The protocol ended the conversation (its last reply is queued): write it, then shut down
    /// our sending side and linger.
    Ending,
    /// Our sending side is shut down; read and discard until the peer closes or the deadline
    /// passes, so unread input does not turn our close into an RST. The deadline is the
    /// loop's `Wake::Linger` timer alone (set once, when lingering starts): a phase without
    /// an `Instant` keeps every connection 8 bytes smaller.
    Lingering,
    /// Finished. The loop removes it from the slab after the current batch of events.
    Closed,
}

/// What driving a connection leaves for the loop to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Stopped on the turn's budget with input probably still waiting: serve it again before
    /// blocking in `poll`, since no new readiness edge will announce bytes that already arrived.
    pub still_ready: bool,
    /// A deadline the loop must wake up for (the end of a linger).
    pub wake_at: Option<Instant>,
}

/// Bytes read for a protocol before it started: what followed a PROXY header in the read that
/// completed it (a balancer may send the header and the client's first request in one segment).
/// They wait at the start of the loop's shared read buffer, and go to the protocol before the
/// socket is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FirstInput {
    /// How many bytes.
    pub len: usize,
    /// How many the read had room for after the header. Fewer than that (`len < room`) means
    /// the read was short: the socket was drained, as after any short read.
    pub room: usize,
}

/// What one [`Connection::read_input`] brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Input {
    /// `len` bytes at the start of the read buffer; `arrival` says whether the socket was
    /// drained by them.
    Bytes {
        /// How many bytes.
        len: usize,
        /// Whether more may be waiting.
        arrival: Arrival,
    },
    /// The peer shut down its sending side: no more input will come.
    End,
    /// Nothing to read now (the previous read filled the buffer exactly, then the peer paused).
    Blocked,
    /// The turn's read budget is spent: the connection is served again before the next `poll`.
    BudgetSpent,
    /// The read failed: the connection is closed.
    Failed,
}

/// What one [`Connection::write_vectored`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// The socket took this many bytes.
    Bytes(usize),
    /// The socket is full: wait for `WRITABLE`.
    Blocked,
    /// The write failed: the connection is closed.
    Failed,
}

/// How far a TLS handshake got in one [`Connection::drive_handshake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HandshakeStep {
    /// Waiting for the peer's next flight.
    Pending,
    /// The turn's read budget is spent mid-handshake: serve it again before the next `poll`.
    BudgetSpent,
    /// Complete: the protocol can start (plaintext that came with the client's last flight
    /// waits in the session).
    Done,
    /// Failed or abandoned by the peer: the connection is closed.
    Failed,
}

/// One accepted client's socket and where in its life it is. The handler that gives its bytes
/// a meaning sits beside it (`handler::Client`).
#[derive(Debug)]
pub(super) struct Connection {
    /// A serial number for logs, and to tell a reused slab key's new connection from the old
    /// one's leftover timers.
    pub id: u64,
    /// The socket, counting the bytes it moves.
    stream: Wire,
    /// A `tls:` connection's TLS session, through which every read and write passes (boxed:
    /// rustls's state is a few kilobytes, which plain connections should not carry).
    tls: Option<Box<TlsLayer>>,
    /// Replies waiting for the socket to accept them.
    unsent: Unsent,
    /// Where in its life the connection is.
    phase: Phase,
    /// The interest currently registered with the poller, to skip redundant `epoll_ctl` calls.
    pub registered: Interest,
    /// Whether the connection's token is in the loop's still-ready queue.
    pub queued: bool,
    /// The poller reported the peer's side closed (or an error): a short read no longer means
    /// the end of what there is to read, because end of stream is still to be read.
    peer_closing: bool,
    /// Set whenever a read or write moves bytes; [`settle`](Self::settle) turns it into
    /// `last_active`.
    moved_bytes: bool,
    /// When bytes were last read or written: what `--idle-timeout` measures from.
    last_active: Instant,
    /// Which of the loop's endpoints accepted it (what its counters add up under).
    endpoint: u16,
    /// Why it is ending, once something has ended it (the first cause sticks).
    end: Option<EndCause>,
    /// What the access log says when it ends: only kept while that log is on (`info`), so at
    /// the default level a connection pays 8 bytes (a null pointer) for it.
    access: Option<Box<AccessRecord>>,
}

/// Its life: phases, and the transitions the handler or the loop asks for.
impl Connection {
    /// The socket of a client just accepted and registered for `READABLE`.
    pub(super) fn new(
        id: u64,
        stream: Stream,
        endpoint: u16,
        access: Option<Box<AccessRecord>>,
        now: &Now,
    ) -> Connection {
        Connection {
            id,
            stream: Wire::new(stream),
            tls: None,
            unsent: Unsent::default(),
            phase: Phase::Serving,
            registered: Interest::READABLE,
            queued: false,
            peer_closing: false,
            moved_bytes: false,
            last_active: now.instant,
            endpoint,
            end: None,
            access,
        }
    }

    /// The socket, for the poller.
    pub(super) fn socket_mut(&mut self) -> &mut Stream {
        self.stream.socket_mut()
    }

    /// Which endpoint accepted it (its index in the loop's list).
    pub(super) fn endpoint(&self) -> usize {
        usize::from(self.endpoint)
    }

    /// Bytes read off and written to its socket so far (under TLS, records).
    pub(super) fn bytes_moved(&self) -> (u64, u64) {
        (self.stream.received, self.stream.sent)
    }

    /// Why it ended (or is ending); `None` while nothing has ended it.
    pub(super) fn end_cause(&self) -> Option<EndCause> {
        self.end
    }

    /// Records why the connection is ending, unless something ended it first.
    pub(super) fn end_as(&mut self, cause: EndCause) {
        self.end.get_or_insert(cause);
    }

    /// Its access-log record, while that log is on.
    pub(super) fn access(&self) -> Option<&AccessRecord> {
        self.access.as_deref()
    }

    /// [`access`](Self::access), to change it (a chat member's name, a certificate's).
    pub(super) fn access_mut(&mut self) -> Option<&mut AccessRecord> {
        self.access.as_deref_mut()
    }

    /// Whether it still reads requests (not ending, draining, lingering or closed).
    pub(super) fn is_serving(&self) -> bool {
        self.phase == Phase::Serving
    }

    /// Whether the connection has finished and awaits removal.
    pub(super) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Records the poller's hint that the peer has closed its sending side or the socket has an
    /// error, so the handler reads on to the end of stream.
    pub(super) fn note_peer_closing(&mut self) {
        self.peer_closing = true;
    }

    /// When bytes last moved on this connection.
    pub(super) fn last_active(&self) -> Instant {
        self.last_active
    }

    /// Progress the server made for this connection without its bytes moving (the disk
    /// answered an upload): the idle timeout counts from now.
    pub(super) fn mark_active(&mut self, now: &Now) {
        self.last_active = now.instant;
        self.moved_bytes = false;
    }

    /// The peer's input is over: write what is queued, then close.
    pub(super) fn drain(&mut self) {
        self.end_as(EndCause::ClientClosed);
        self.phase = Phase::Draining;
    }

    /// The protocol ended the conversation (`quit`, an error reply): write what is queued, then
    /// shut down our side and linger.
    pub(super) fn end_conversation(&mut self) {
        if self.phase == Phase::Serving {
            self.end_as(EndCause::ServerEnded);
            self.phase = Phase::Ending;
        }
    }

    /// Closes the connection now, whatever its phase (the idle timeout, the end of a shutdown,
    /// a refused header), for `cause` unless something ended it first.
    pub(super) fn close(&mut self, cause: EndCause, why: &str) {
        trace!("conn #{}: closing: {why}", self.id);
        self.end_as(cause);
        self.phase = Phase::Closed;
        self.unsent = Unsent::default();
    }

    /// Closes the connection now, as [`close`](Self::close) does, but a TLS connection first
    /// sends its close_notify if the socket takes it at once (the idle timeout: the session is
    /// ended, not broken). Nothing waits for it.
    pub(super) fn close_notifying(&mut self, cause: EndCause, why: &str) {
        // Mid-handshake there is no session to end: the peer just sees the close.
        if let Some(tls) = self.tls.as_deref_mut().filter(|tls| !tls.is_handshaking()) {
            tls.queue_close_notify(self.id);
            let _ = tls.write_socket(&mut self.stream, self.id);
        }
        self.close(cause, why);
    }

    /// A client's socket error ends that client only, logged at debug: resets and broken pipes
    /// are everyday events for a server, not failures of it.
    pub(super) fn close_on_error(&mut self, during: &str, error: &io::Error) {
        debug!("conn #{}: {during} failed: {error}; closing", self.id);
        // A handshake that breaks off is one that failed.
        let cause = match self.tls.as_deref().is_some_and(TlsLayer::is_handshaking) {
            true => EndCause::TlsHandshake,
            false => EndCause::Error,
        };
        self.close(cause, "socket error");
    }

    /// Moves on the phases that wait for the queued output to be written, and records when
    /// bytes last moved. `handler_pending`: output the handler still owes besides the queue
    /// (lines owed to a chat member, held replies, an upload's answer to come). What every
    /// drive of a connection ends with.
    pub(super) fn settle(
        &mut self,
        read_buffer: &mut [u8],
        now: &Now,
        still_ready: bool,
        handler_pending: bool,
    ) -> Verdict {
        let mut verdict = Verdict {
            still_ready,
            wake_at: None,
        };
        let ending = matches!(self.phase, Phase::Draining | Phase::Ending);
        if self.unsent.is_empty() && !handler_pending && (!ending || self.send_close_notify()) {
            match self.phase {
                Phase::Draining => self.close(
                    EndCause::ClientClosed,
                    "peer finished and every reply is written",
                ),
                Phase::Ending => {
                    let until = now.instant + LINGER;
                    trace!(
                        "conn #{}: last reply written; shutting down writes, lingering",
                        self.id
                    );
                    // Fails only if the peer is already gone, which the next read will report.
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Lingering;
                    verdict.wake_at = Some(until);
                    verdict.still_ready = self.discard_input(read_buffer);
                }
                _ => {}
            }
        }
        self.note_activity(now);
        verdict
    }

    /// If bytes moved since the last call, the idle clock counts from `now`.
    pub(super) fn note_activity(&mut self, now: &Now) {
        if std::mem::take(&mut self.moved_bytes) {
            self.last_active = now.instant;
        }
    }

    /// The linger timer has fired (it is set once, when lingering starts, for the end of the
    /// linger): close.
    pub(super) fn on_linger_deadline(&mut self) {
        if self.phase == Phase::Lingering {
            self.close(EndCause::ServerEnded, "linger time is over");
        }
    }

    /// The interest the connection needs registered now. `handler_writes`: the handler has
    /// output to come besides the queue (lines owed to a chat member, an upload's answer from
    /// the disk), so the connection stays subscribed to `WRITABLE` as if bytes were queued — as
    /// it always has; held `--reply-delay` replies do not count, their timer says when.
    ///
    /// `WRITABLE` only while output waits for the socket (a socket with room would otherwise
    /// wake the loop for nothing); `READABLE` only while the connection would act on input.
    pub(super) fn wanted_interest(
        &self,
        output_limit: usize,
        handler_writes: bool,
    ) -> Option<Interest> {
        let writes_pending = !self.unsent.is_empty() || handler_writes || self.tls_wants_write();
        match self.phase {
            Phase::Serving if self.unsent.len() > output_limit => Some(Interest::WRITABLE),
            Phase::Serving if !writes_pending => Some(Interest::READABLE),
            Phase::Serving => Some(Interest::READABLE | Interest::WRITABLE),
            // Nothing to write now (held replies, if any, wait for their timer).
            Phase::Draining | Phase::Ending if !writes_pending => Some(Interest::READABLE),
            Phase::Draining | Phase::Ending => Some(Interest::WRITABLE),
            Phase::Lingering => Some(Interest::READABLE),
            Phase::Closed => None,
        }
    }
}

/// Reading.
impl Connection {
    /// One read for the handler, into the front of `buffer`: at most `allowance` bytes, and no
    /// more than the turn's `budget` leaves (which it counts down). `first`, if it holds bytes,
    /// is taken instead of reading the socket (what came with a PROXY header).
    pub(super) fn read_input(
        &mut self,
        buffer: &mut [u8],
        budget: &mut usize,
        allowance: usize,
        first: &mut Option<FirstInput>,
    ) -> Input {
        if *budget == 0 {
            trace!("conn #{}: read budget spent; serving others first", self.id);
            return Input::BudgetSpent;
        }
        let mut asked = (*budget).min(buffer.len()).min(allowance);
        if self.tls.is_some() {
            // What followed a PROXY header went into the session before its handshake.
            return self.read_tls_input(&mut buffer[..asked], budget);
        }
        let from_header = first.is_some_and(|first| first.len > 0);
        let read = match first.take().filter(|first| first.len > 0) {
            // Already at the start of the buffer; as for a read, fewer than there was room for
            // means the socket was drained.
            Some(first) => {
                asked = first.room;
                Ok(first.len)
            }
            None => self.read_raw(&mut buffer[..asked]),
        };
        match read {
            Ok(0) => {
                trace!(
                    "conn #{}: read 0 bytes: end of stream (the peer shut down its writes)",
                    self.id
                );
                Input::End
            }
            Ok(count) => {
                *budget -= count;
                self.moved_bytes = true;
                self.narrate_read(count, asked, from_header);
                let arrival = if count < asked {
                    Arrival::Drained
                } else {
                    Arrival::Partial
                };
                Input::Bytes {
                    len: count,
                    arrival,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The previous read filled the buffer exactly; now the peer has paused.
                trace!(
                    "conn #{}: read: WouldBlock, nothing more for now; back to the loop",
                    self.id
                );
                Input::Blocked
            }
            Err(e) => {
                self.close_on_error("read", &e);
                Input::Failed
            }
        }
    }

    /// Whether to read again after input that arrived as `arrival`: while more may wait, and
    /// always once the peer has closed (its end of stream waits behind the bytes).
    pub(super) fn reads_on(&self, arrival: Arrival) -> bool {
        self.peer_closing || arrival == Arrival::Partial
    }

    /// Whether the poller said the peer has closed its side.
    pub(super) fn peer_closing(&self) -> bool {
        self.peer_closing
    }

    /// One `read` of the socket, retried if a signal interrupted it.
    pub(super) fn read_raw(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buffer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(count) => {
                    self.moved_bytes |= count > 0;
                    return Ok(count);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The trace line that says what a read's size means.
    fn narrate_read(&self, count: usize, asked: usize, from_header: bool) {
        if from_header {
            trace!(
                "conn #{}: {count} bytes that came with its PROXY header",
                self.id
            );
        } else if count < asked && self.peer_closing {
            trace!(
                "conn #{}: read {count} bytes; the peer has closed, so read on to its end of \
                 stream",
                self.id
            );
        } else if count < asked {
            trace!(
                "conn #{}: read {count} bytes, fewer than asked: the socket is drained, no need \
                 to read again until the next event",
                self.id
            );
        } else {
            trace!(
                "conn #{}: read {count} bytes, as many as asked: more may wait",
                self.id
            );
        }
    }

    /// A graceful shutdown: from now on read only the bytes that have arrived. Over TCP that is
    /// for the handler to count: `Some(bytes waiting in the socket)` (`FIONREAD`; 0 if it cannot
    /// tell). Over TLS the socket's bytes are records, not the plaintext the handler sees, so the
    /// connection counts them itself and says when they are read
    /// ([`arrived_input_is_read`](Self::arrived_input_is_read)): `None`.
    pub(crate) fn read_only_what_arrived(&mut self) -> Option<usize> {
        let queued = crate::sys::queued_input_bytes(self.stream.as_fd()).unwrap_or(0);
        match self.tls.as_deref_mut() {
            Some(tls) => {
                tls.read_only_what_arrived(queued);
                None
            }
            None => Some(queued),
        }
    }

    /// Whether, since [`read_only_what_arrived`](Self::read_only_what_arrived) on a TLS
    /// connection, everything that had arrived has been read and handed on.
    pub(crate) fn arrived_input_is_read(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.arrived_input_is_read())
    }

    /// What a drive does with input, by phase: a serving connection's goes to the handler's
    /// `read` (which reads with [`read_input`](Self::read_input)), a lingering one's is
    /// discarded, and in the other phases none is read. Returns whether it stopped on the turn's
    /// budget.
    pub(super) fn take_input(
        &mut self,
        shared: &mut SharedBuffers,
        read: impl FnOnce(&mut Connection, &mut SharedBuffers) -> bool,
    ) -> bool {
        match self.phase {
            Phase::Serving => read(self, shared),
            Phase::Lingering => self.discard_input(&mut shared.read),
            Phase::Draining | Phase::Ending | Phase::Closed => false,
        }
    }

    /// Lingering: reads and throws away whatever the peer still sends, until it closes. Returns
    /// whether it stopped on the turn's budget.
    pub(super) fn discard_input(&mut self, buffer: &mut [u8]) -> bool {
        let mut budget = MAX_READ_BYTES_PER_TURN;
        loop {
            if budget == 0 {
                return true;
            }
            match self.stream.read(buffer) {
                Ok(0) => {
                    self.close(EndCause::ClientClosed, "peer closed while we lingered");
                    return false;
                }
                Ok(count) => {
                    trace!("conn #{}: lingering, discarded {count} bytes", self.id);
                    budget = budget.saturating_sub(count);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_on_error("read while lingering", &e);
                    return false;
                }
            }
        }
    }
}

/// Writing.
impl Connection {
    /// Reply bytes queued for the socket: what `--output-limit` bounds (with what the handler
    /// holds itself).
    pub(super) fn unsent_len(&self) -> usize {
        self.unsent.len()
    }

    /// Back-pressure: whether the queue, with the `held` bytes the handler keeps itself, is over
    /// `--output-limit` — then the handler stops reading until they drain (and the trace says so).
    pub(crate) fn is_over_output_limit(&self, held: usize, output_limit: usize) -> bool {
        let queued = self.unsent.len() + held;
        if queued <= output_limit {
            return false;
        }
        trace!(
            "conn #{}: {queued} reply bytes queued or held, over the limit: not reading until \
             they drain",
            self.id
        );
        true
    }

    /// Sends `replies` after anything already queued; queues whatever the socket will not take.
    pub(super) fn send(&mut self, replies: &[u8]) {
        if replies.is_empty() || self.phase == Phase::Closed {
            return;
        }
        if self.tls.is_some() {
            return self.send_tls(replies);
        }
        if !self.unsent.is_empty() {
            self.unsent.push(replies);
            self.flush_unsent();
            return;
        }
        match write_until_blocked(&mut self.stream, replies) {
            Ok(written) => {
                self.moved_bytes |= written > 0;
                if written == replies.len() {
                    trace!(
                        "conn #{}: wrote {written} reply bytes, all of them, at once",
                        self.id
                    );
                } else {
                    trace!(
                        "conn #{}: wrote {written} of {} reply bytes: the socket is full",
                        self.id,
                        replies.len()
                    );
                    self.unsent.push(&replies[written..]);
                    trace!(
                        "conn #{}: socket full, {} bytes queued; waiting for WRITABLE",
                        self.id,
                        self.unsent.len()
                    );
                }
            }
            Err(e) => self.close_on_error("write", &e),
        }
    }

    /// Writes as much of the queue as the socket takes (nothing to do when it is empty).
    pub(super) fn flush_unsent(&mut self) {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        if self.unsent.is_empty() {
            return;
        }
        match write_until_blocked(&mut self.stream, self.unsent.pending()) {
            Ok(written) => {
                self.moved_bytes |= written > 0;
                trace!(
                    "conn #{}: wrote {written} queued bytes, {} still queued",
                    self.id,
                    self.unsent.len() - written
                );
                self.unsent.consume(written);
            }
            Err(e) => self.close_on_error("write", &e),
        }
    }

    /// One `writev` of `slices` (bytes the handler keeps itself, such as a chat member's lines
    /// in its room's log), retried if a signal interrupted it.
    pub(super) fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> Written {
        if self.tls.is_some() {
            return self.write_vectored_tls(slices);
        }
        loop {
            match self.stream.write_vectored(slices) {
                Ok(0) => {
                    self.close_on_error("write", &io::ErrorKind::WriteZero.into());
                    return Written::Failed;
                }
                Ok(written) => {
                    self.moved_bytes = true;
                    return Written::Bytes(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Written::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_on_error("write", &e);
                    return Written::Failed;
                }
            }
        }
    }
}

/// TLS: the same primitives, through the session (see `reactor::tls`).
impl Connection {
    /// Makes this a TLS connection: from now on every byte read or written passes through
    /// `session`. `early`: ciphertext already read (what followed a PROXY header in its read).
    /// `false` if those bytes are not TLS (the connection is closed).
    pub(super) fn start_tls(&mut self, session: rustls::ServerConnection, early: &[u8]) -> bool {
        let mut layer = TlsLayer::new(session);
        if let Err(e) = layer.take_early(early) {
            layer.log_failure(self.id, &e);
            self.close(EndCause::TlsHandshake, "not a TLS client");
            return false;
        }
        self.tls = Some(Box::new(layer));
        true
    }

    /// The TLS session, for a `tls:` connection.
    pub(super) fn tls(&self) -> Option<&TlsLayer> {
        self.tls.as_deref()
    }

    /// Whether TLS records wait for the socket.
    fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Moves the handshake on: reads the peer's flights and writes ours, until it is complete,
    /// the socket has nothing more, or it fails (logged at debug; closed).
    pub(super) fn drive_handshake(&mut self) -> HandshakeStep {
        let mut budget = MAX_READ_BYTES_PER_TURN;
        loop {
            self.flush_tls();
            let Some(tls) = self.tls.as_deref_mut() else {
                return HandshakeStep::Failed; // closed while writing
            };
            if !tls.is_handshaking() {
                return HandshakeStep::Done;
            }
            if budget == 0 {
                return HandshakeStep::BudgetSpent;
            }
            match tls.read_socket(&mut self.stream, self.id) {
                Ok(Ok(SocketRead::Bytes { count, drained })) => {
                    self.moved_bytes = true;
                    budget = budget.saturating_sub(count);
                    if drained && tls.is_handshaking() {
                        self.flush_tls();
                        return if self.is_closed() {
                            HandshakeStep::Failed
                        } else {
                            HandshakeStep::Pending
                        };
                    }
                }
                Ok(Ok(SocketRead::Blocked)) => return HandshakeStep::Pending,
                Ok(Ok(SocketRead::End)) => {
                    debug!("conn #{}: peer left during the TLS handshake", self.id);
                    self.close(
                        EndCause::TlsHandshake,
                        "end of stream during the TLS handshake",
                    );
                    return HandshakeStep::Failed;
                }
                Ok(Err(e)) => {
                    self.fail_tls(&e);
                    return HandshakeStep::Failed;
                }
                Err(e) => {
                    self.close_on_error("read of the TLS handshake", &e);
                    return HandshakeStep::Failed;
                }
            }
        }
    }

    /// The peer broke the protocol: the alert rustls queued goes out if the socket takes it at
    /// once, and the connection closes.
    fn fail_tls(&mut self, error: &rustls::Error) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.log_failure(self.id, error);
            let _ = tls.write_socket(&mut self.stream, self.id);
        }
        let cause = match self.tls.as_deref().is_some_and(TlsLayer::is_handshaking) {
            true => EndCause::TlsHandshake,
            false => EndCause::Error,
        };
        self.close(cause, "TLS failure");
    }

    /// [`read_input`](Self::read_input) of a TLS connection: decrypted bytes, reading the socket
    /// only when none wait. A short socket read means drained, as over TCP: the plaintext it
    /// brought is then `Arrival::Drained`, and the `read` that would only say `WouldBlock` is
    /// skipped. Plaintext left from an earlier call is `Partial`: the socket may have filled
    /// since.
    fn read_tls_input(&mut self, buffer: &mut [u8], budget: &mut usize) -> Input {
        let mut drained_now = false;
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return Input::Failed;
            };
            match tls.read_plaintext(buffer) {
                Ok(0) if !buffer.is_empty() => {
                    trace!(
                        "conn #{}: TLS close_notify: end of stream (the peer shut down its writes)",
                        self.id
                    );
                    return Input::End;
                }
                Ok(count) => {
                    let arrival = if drained_now && tls.is_drained() {
                        Arrival::Drained
                    } else {
                        Arrival::Partial
                    };
                    trace!("conn #{}: {count} bytes decrypted", self.id);
                    return Input::Bytes {
                        len: count,
                        arrival,
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    debug!(
                        "conn #{}: the peer closed without a TLS close_notify: an abrupt end",
                        self.id
                    );
                    self.close(EndCause::ClientClosed, "end of stream without close_notify");
                    return Input::Failed;
                }
                Err(e) => {
                    self.close_on_error("TLS read", &e);
                    return Input::Failed;
                }
            }
            if drained_now && !self.peer_closing {
                return Input::Blocked; // The socket is empty; a record is incomplete.
            }
            if *budget == 0 {
                return Input::BudgetSpent;
            }
            match tls.read_socket(&mut self.stream, self.id) {
                Ok(Ok(SocketRead::Bytes { count, drained })) => {
                    self.moved_bytes = true;
                    *budget = budget.saturating_sub(count);
                    drained_now = drained;
                    // A post-handshake message (a key update) may want an answer.
                    self.flush_tls();
                }
                // Its end comes out of the session next: close_notify, or an abrupt end.
                Ok(Ok(SocketRead::End)) => drained_now = true,
                Ok(Ok(SocketRead::Blocked)) => return Input::Blocked,
                Ok(Err(e)) => {
                    self.fail_tls(&e);
                    return Input::Failed;
                }
                Err(e) => {
                    self.close_on_error("read", &e);
                    return Input::Failed;
                }
            }
        }
    }

    /// [`send`](Self::send) of a TLS connection: encrypted now, unless rustls's queue is full or
    /// plaintext already waits; what it will not take waits as plaintext (`--output-limit`).
    fn send_tls(&mut self, replies: &[u8]) {
        if self.tls.as_ref().is_some_and(|tls| tls.is_notified()) {
            // After our close_notify nothing may follow; the phases never send then.
            debug!(
                "conn #{}: {} bytes after close_notify dropped",
                self.id,
                replies.len()
            );
            return;
        }
        match self.tls.as_deref_mut() {
            Some(tls) if self.unsent.is_empty() => {
                let taken = tls.encrypt(replies);
                if taken < replies.len() {
                    self.unsent.push(&replies[taken..]);
                }
            }
            _ => self.unsent.push(replies),
        }
        self.flush_tls();
    }

    /// [`flush_unsent`](Self::flush_unsent) of a TLS connection: writes the records rustls
    /// holds, encrypting queued plaintext as it makes room, until the socket is full or
    /// everything is out.
    fn flush_tls(&mut self) {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return;
            };
            match tls.write_socket(&mut self.stream, self.id) {
                // Only bytes that left count as activity: a flush that found the socket full
                // (a member that stopped reading) must not hold off its idle timeout.
                Ok((written, all_out)) => {
                    self.moved_bytes |= written > 0;
                    if !all_out {
                        return;
                    }
                }
                Err(e) => return self.close_on_error("write", &e),
            }
            if self.unsent.is_empty() {
                return;
            }
            let taken = tls.encrypt(self.unsent.pending());
            self.unsent.consume(taken);
            if taken == 0 {
                return; // rustls took nothing although its queue is empty: the session failed.
            }
        }
    }

    /// [`write_vectored`](Self::write_vectored) of a TLS connection: the slices are encrypted
    /// into rustls's queue (after any plaintext already waiting), then written. `Bytes(n)`: the
    /// first `n` bytes are taken — on their way, if not yet on the wire.
    fn write_vectored_tls(&mut self, slices: &[IoSlice<'_>]) -> Written {
        self.flush_tls();
        if self.is_closed() {
            return Written::Failed;
        }
        if !self.unsent.is_empty() {
            return Written::Blocked;
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return Written::Failed;
        };
        if tls.is_notified() {
            return Written::Failed; // Nothing may follow our close_notify.
        }
        let taken = tls.encrypt_vectored(slices);
        if taken == 0 {
            return Written::Blocked; // rustls's queue is full: wait for WRITABLE.
        }
        self.flush_tls();
        if self.is_closed() {
            Written::Failed
        } else {
            Written::Bytes(taken)
        }
    }

    /// Before a TLS connection's end (ours, or the peer's): queues our close_notify (once) and
    /// writes what the socket takes. `true` once it is all written — at once, for a plain
    /// connection, which has none.
    fn send_close_notify(&mut self) -> bool {
        let Some(tls) = self.tls.as_deref_mut() else {
            return true;
        };
        tls.queue_close_notify(self.id);
        self.flush_tls();
        !self.tls_wants_write() && !self.is_closed()
    }
}
