//! One client connection: a socket, its protocol session, the replies it has not taken yet, and
//! the phase it is in.
//!
//! The reactor calls [`Connection::drive`] whenever the connection might be able to make
//! progress — an event arrived for it, or it stopped last turn with work left. `drive` does all
//! the I/O it can without blocking, makes every I/O-driven phase transition (the loop's own
//! decisions — shutdown, idle timeout, linger deadline — are the small methods beside it), and
//! returns a [`Verdict`]; it never assumes that one event
//! means one message, or that an event means the operation will succeed (readiness is a hint:
//! the `read` or `write` call gives the answer).
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
//!   further edge will announce it, so the connection keeps reading until the `read` returns 0.
//! * **Write eagerly, subscribe lazily.** Replies are written the moment they exist, from a
//!   buffer shared by every connection; only bytes the socket refuses are copied into the
//!   connection's own [`Unsent`] queue, and only then does the connection want `WRITABLE`.
//! * **Back-pressure.** Past `--output-limit` queued bytes, the connection stops reading, so a
//!   peer that never reads cannot make the server buffer without bound. A chat member's lines
//!   fill other members' queues, so it is read only while its room takes them
//!   ([`ChatSink::allowance`]); the rest of a read waits in the room ([`HeldInput`]).
//! * **Lingering close.** After a final error reply, shut down the write side and read and
//!   discard for up to [`LINGER`]: closing with unread input would send an RST, and an RST makes
//!   the peer's kernel throw away the reply it has not read yet.
//! * **The PROXY header first.** Under `--proxy-protocol` a new connection's work is
//!   `AwaitingHeader` until [`Connection::read_header`] has read a whole header: no byte is
//!   the protocol's before that, and the bytes that followed the header in the same read are
//!   handed to the protocol as its first input ([`FirstInput`]), never lost.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::Interest;

use crate::clock::Now;
use crate::net::{write_until_blocked, Peer, Stream, LINGER};
use crate::protocol::proxy::{Header, Parse, ProxyHeader, HEADER_TIMEOUT};
use crate::protocol::room::{Delivery, MemberId, Room};
use crate::protocol::{Arrival, Flow, Session};

use super::fanout::{MemberOutput, RoomLog};
use super::upload::{Feed, UploadSink, UploadWork};
use crate::protocol::upload::End;
use crate::protocol::Limits;
use crate::storage::pool::Completion;

/// Input bytes one connection may consume per loop turn before the others get theirs. Four full
/// reads of the shared buffer: large enough for bulk transfers to be efficient, small enough that
/// a client that never stops sending cannot starve the rest.
pub const MAX_READ_BYTES_PER_TURN: usize = 4 * READ_BUFFER_BYTES;

/// Size of the read buffer the loop shares among all connections (one `read` call's maximum).
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Buffers the loop owns and lends to whichever connection it is driving. Sharing them is what
/// keeps an idle connection down to a few dozen bytes: it holds no buffer of its own.
#[derive(Debug)]
pub struct SharedBuffers {
    /// Where every `read` (and every `recv_from`) lands.
    pub(super) read: Box<[u8]>,
    /// Where protocols write replies before they are sent.
    pub(super) replies: Vec<u8>,
    /// `--output-limit`: queued reply bytes past which a connection stops reading.
    output_limit: usize,
    /// `--reply-delay`: how long a byte-stream protocol's replies are held after their request
    /// was read (`None`: sent at once, the normal case).
    reply_delay: Option<Duration>,
}

impl SharedBuffers {
    /// Buffers for a loop whose connections may queue up to `output_limit` reply bytes.
    pub fn new(output_limit: usize) -> SharedBuffers {
        SharedBuffers {
            read: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            replies: Vec::with_capacity(READ_BUFFER_BYTES),
            output_limit,
            reply_delay: None,
        }
    }

    /// Holds every byte-stream reply `delay` after its request was read (`--reply-delay`).
    pub fn with_reply_delay(mut self, delay: Option<Duration>) -> SharedBuffers {
        self.reply_delay = delay.filter(|delay| !delay.is_zero());
        self
    }
}

/// The stages of a connection's life. The transitions that I/O causes are in
/// [`Connection::drive`]; the loop's own (shutdown, timeouts) in the methods beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and writing replies (reading pauses while the queue is over the limit).
    Serving,
    /// The peer shut down its sending side: no more requests will come. Write what is queued,
    /// then close.
    Draining,
    /// The protocol ended the conversation (its last reply is queued): write it, then shut down
    /// our sending side and linger.
    Ending,
    /// Our sending side is shut down; read and discard until the peer closes or the deadline
    /// passes, so unread input does not turn our close into an RST.
    Lingering {
        /// When to give up waiting and close.
        until: Instant,
    },
    /// Finished. The loop removes it from the slab after the current batch of events.
    Closed,
}

/// Bytes of the deliveries addressed to `member` alone (its `/who` replies, its errors).
fn replies_to(deliveries: &[Delivery], member: MemberId) -> usize {
    deliveries
        .iter()
        .map(|delivery| match delivery {
            Delivery::To { member: to, bytes } if *to == member => bytes.len(),
            _ => 0,
        })
        .sum()
}

/// Bytes of the broadcasts among `deliveries`: what they add to the room's log.
fn broadcast_bytes(deliveries: &[Delivery]) -> usize {
    deliveries
        .iter()
        .map(|delivery| match delivery {
            Delivery::Broadcast { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum()
}

/// Whether `deliveries` end `member`'s conversation.
fn ends_member(deliveries: &[Delivery], member: MemberId) -> bool {
    deliveries
        .iter()
        .any(|d| matches!(d, Delivery::Close { member: m } if *m == member))
}

/// What a call to [`Connection::drive`] leaves for the loop to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Stopped on the turn's budget with input probably still waiting: serve it again before
    /// blocking in `poll`, since no new readiness edge will announce bytes that already arrived.
    pub still_ready: bool,
    /// A deadline the loop must wake up for (the end of a linger).
    pub wake_at: Option<Instant>,
}

/// Reply bytes the socket has not accepted yet, oldest first.
///
/// Empty — and unallocated — whenever the peer keeps up, which is the steady state.
#[derive(Debug, Default)]
pub struct Unsent {
    bytes: Vec<u8>,
    /// How much of the front of `bytes` has already been written.
    written: usize,
}

impl Unsent {
    /// Queued bytes not yet written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pending(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    fn push(&mut self, more: &[u8]) {
        // Move the unwritten rest to the front only when that halves the buffer, so each byte is
        // moved O(1) times however the writes are split.
        if self.written > 0 && self.written >= self.bytes.len() / 2 {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
        self.bytes.extend_from_slice(more);
    }

    fn consume(&mut self, count: usize) {
        self.written += count;
        if self.written == self.bytes.len() {
            // Drained: give the memory back, so a connection that once had a burst of output
            // does not keep its high-water mark while idle.
            self.bytes = Vec::new();
            self.written = 0;
        }
    }
}

/// What a connection does with its input.
#[derive(Debug)]
enum Work {
    /// A byte-stream protocol: input in, replies out, all within this connection.
    Stream(Session),
    /// A byte-stream protocol whose replies wait `--reply-delay` before they are sent (the
    /// tutorial's demonstration of concurrency). Boxed: only that mode pays for the held bytes.
    Delayed(Box<Delayed>),
    /// A chat member: its input goes to its room, and the loop routes what the room decides —
    /// lines for other members land in *their* [`ChatOutput`].
    Chat(ChatOutput),
    /// An upload: its session, and its file operations in flight with the I/O threads (boxed:
    /// the rarer kind of connection should not make every other one bigger).
    Upload(Box<UploadWork>),
    /// Not started yet: reading its PROXY protocol header (`--proxy-protocol`). Boxed: the
    /// parser's few hundred bytes are needed for a few milliseconds after the accept, and
    /// every connection past its header (all of them, in the steady state) should not carry
    /// them.
    Header(Box<AwaitingHeader>),
}

/// A byte-stream session whose replies are held for `--reply-delay`.
#[derive(Debug)]
pub(crate) struct Delayed {
    session: Session,
    held: HeldReplies,
}

/// Replies held until they are due, oldest first: the loop's timer, not a sleep, lets them go,
/// so every other connection is served meanwhile.
///
/// Held in *runs*, each the bytes that fall due at one moment. A reply's due time (the turn's
/// clock plus the delay) is rounded *up* to the next tick of [`RUN_GRANULARITY`], counted from
/// the connection's first held reply, and replies on the same tick share a run: each reply is
/// held at least its delay and less than one tick more, however the client spaces its requests,
/// and a connection holds at most one run per tick of delay. Every run's bookkeeping is counted
/// with the bytes against `--output-limit` ([`HeldReplies::cost`]), so a client cannot make the
/// server hold more than the limit by sending one byte per tick.
#[derive(Debug, Default)]
pub(crate) struct HeldReplies {
    bytes: Vec<u8>,
    /// How much of the front of `bytes` has been let go.
    released: usize,
    /// When each run is due (a tick), and its length in bytes.
    runs: VecDeque<(Instant, usize)>,
    /// Where the ticks are counted from: the first reply held.
    epoch: Option<Instant>,
    /// Whether the loop holds a timer for the first run.
    armed: bool,
}

/// The tick held replies' due times are rounded up to (see [`HeldReplies`]).
const RUN_GRANULARITY: Duration = Duration::from_millis(1);

/// What one run's bookkeeping costs, counted against `--output-limit` with the bytes.
const RUN_COST: usize = std::mem::size_of::<(Instant, usize)>();

impl HeldReplies {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.released
    }

    /// Memory the held replies stand for: their bytes and their runs' bookkeeping. What
    /// `--output-limit` bounds.
    pub fn cost(&self) -> usize {
        self.len() + self.runs.len() * RUN_COST
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Holds `replies` until `due`.
    fn hold(&mut self, replies: &[u8], due: Instant) {
        if replies.is_empty() {
            return;
        }
        if self.released > 0 && self.released >= self.bytes.len() / 2 {
            self.bytes.drain(..self.released);
            self.released = 0;
        }
        self.bytes.extend_from_slice(replies);
        let epoch = *self.epoch.get_or_insert(due);
        let tick = RUN_GRANULARITY.as_nanos();
        let ticks = due
            .saturating_duration_since(epoch)
            .as_nanos()
            .div_ceil(tick);
        let due = epoch + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX));
        match self.runs.back_mut() {
            Some((last_due, length)) if *last_due == due => *length += replies.len(),
            _ => self.runs.push_back((due, replies.len())),
        }
    }

    /// When the first run is due, if no timer is set for it yet (and marks one set).
    fn arm(&mut self) -> Option<Instant> {
        if self.armed {
            return None;
        }
        let (due, _) = *self.runs.front()?;
        self.armed = true;
        Some(due)
    }

    /// Moves every run due by `now` into `out`, oldest first; returns how many bytes.
    fn release(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        self.armed = false;
        let mut count = 0;
        while let Some(&(due, length)) = self.runs.front() {
            if due > now {
                break;
            }
            self.runs.pop_front();
            out.extend_from_slice(&self.bytes[self.released..self.released + length]);
            self.released += length;
            count += length;
        }
        if self.runs.is_empty() {
            // Nothing held: give the memory back, as `Unsent` does.
            self.bytes = Vec::new();
            self.runs = VecDeque::new();
            self.released = 0;
        }
        count
    }
}

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

/// What [`Connection::read_header`] made of the bytes that had arrived.
#[derive(Debug)]
pub enum HeaderRead {
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
pub struct HeaderDone {
    /// What the header says.
    pub header: Header,
    /// Who connected (the balancer, normally).
    pub via: Peer,
    /// The endpoint the connection was accepted on.
    pub endpoint: usize,
    /// The bytes that followed the header in the same read, for the protocol.
    pub first: FirstInput,
}

/// Bytes read for a protocol before it started: what followed a PROXY header in the read that
/// completed it (a balancer may send the header and the client's first request in one segment).
/// They wait at the start of the loop's shared read buffer, and go to the protocol before the
/// socket is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstInput {
    /// How many bytes.
    pub len: usize,
    /// How many the read had room for after the header. Fewer than that (`len < room`) means
    /// the read was short: the socket was drained, as after any short read.
    pub room: usize,
}

impl Work {
    /// A byte-stream protocol's work: its replies held if `--reply-delay` asks for it.
    fn stream(session: Session, shared: &SharedBuffers) -> Work {
        match shared.reply_delay {
            None => Work::Stream(session),
            Some(_) => Work::Delayed(Box::new(Delayed {
                session,
                held: HeldReplies::default(),
            })),
        }
    }

    /// The byte-stream session, delayed or not.
    fn session(&mut self) -> Option<&mut Session> {
        match self {
            Work::Stream(session) => Some(session),
            Work::Delayed(delayed) => Some(&mut delayed.session),
            Work::Chat(_) | Work::Upload(_) | Work::Header(_) => None,
        }
    }
}

/// Where a connection's input goes besides its own session, for the drive.
#[derive(Debug)]
pub enum Sink<'a> {
    /// Nowhere: a stream protocol answers on its own.
    Own,
    /// A chat room.
    Chat(ChatSink<'a>),
    /// The storage's I/O threads.
    Upload(UploadSink<'a>),
}

impl Sink<'_> {
    /// The room's log and the member, for writing a chat member's owed lines.
    fn chat_log(&self) -> Option<(&RoomLog, MemberId)> {
        match self {
            Sink::Chat(sink) => Some((sink.log, sink.member)),
            _ => None,
        }
    }
}

/// Most lines handed to one `writev`: enough that a member who fell behind catches up in few
/// system calls, and the `IoSlice` array stays on the stack.
pub const MAX_LINES_PER_WRITE: usize = 64;

/// A chat member's output: its room, and its place in the room's log of lines.
#[derive(Debug)]
pub struct ChatOutput {
    /// The endpoint (and so the room) it belongs to.
    room: u32,
    /// Whether it is on the loop's list of members to flush at the end of the turn.
    pub dirty: bool,
    /// Whether lines were still owed to it when it was last written to (the socket was full):
    /// what its interest and phase decisions go by between writes.
    owed: bool,
    /// Waiting in its room's queue of senders for the room to take more of its lines: it is not
    /// read meanwhile (see `reactor::chat`, flow control).
    parked: bool,
    /// It held the room back for too long: the room's pace no longer waits for it (it catches
    /// up, or it is dropped at `--output-limit`).
    behind: bool,
    /// Its cursor into the room's log, and lines for it alone.
    output: MemberOutput,
}

/// A chat sender's input read but not yet handed to its room (it was parked in the middle of a
/// read): at most one read's worth. The room keeps it ([`ChatSink::held`]), not the connection:
/// only a member sending faster than the room takes has one, and every member would pay for the
/// field.
#[derive(Debug, Default)]
pub struct HeldInput {
    bytes: Vec<u8>,
    /// Where the bytes not yet handed over start.
    start: usize,
}

/// How far [`Connection::feed_room`] got.
enum Fed {
    /// Every byte went to the room.
    All,
    /// The room took no more after this many bytes (the sender's allowance is spent).
    Stopped(usize),
    /// The member's conversation ended (or it was dropped): read no more.
    Ended,
}

impl ChatOutput {
    /// The output of a member of endpoint `room`'s room joining now: owed the lines appended to
    /// `log` from here on.
    fn joining(room: u32, log: &RoomLog) -> ChatOutput {
        ChatOutput {
            room,
            dirty: false,
            owed: false,
            parked: false,
            behind: false,
            output: MemberOutput::joining(log),
        }
    }
}

/// What a chat member's input goes to while the connection is driven.
#[derive(Debug)]
pub struct ChatSink<'a> {
    /// The member's room.
    pub room: &'a mut Room,
    /// The room's lines, some of which may still be owed to this member.
    pub log: &'a RoomLog,
    /// Where the room's decisions go; the loop routes them after the drive.
    pub deliveries: &'a mut Vec<Delivery>,
    /// The member (its slab key).
    pub member: MemberId,
    /// Bytes of broadcast lines the room may still take from this member in this drive (its
    /// share of the room's headroom): once spent, the member is read no more until the loop
    /// unparks it.
    pub allowance: usize,
    /// Its input read but not yet handed to the room, if any (taken first, before the socket).
    pub held: &'a mut Option<Box<HeldInput>>,
}

/// One accepted client.
#[derive(Debug)]
pub struct Connection {
    /// A serial number for logs, and to tell a reused slab key's new connection from the old
    /// one's leftover timers.
    pub id: u64,
    /// The socket.
    pub stream: Stream,
    /// The protocol's state for this client: a stream session, a chat membership, an upload,
    /// or (before any of those) the PROXY header being read.
    work: Work,
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
    /// Set whenever a read or write moves bytes; `drive` turns it into `last_active`.
    moved_bytes: bool,
    /// When bytes were last read or written: what `--idle-timeout` measures from.
    last_active: Instant,
}

impl Connection {
    /// A connection that has just been accepted and registered for `READABLE`.
    pub fn new(
        id: u64,
        stream: Stream,
        session: Session,
        shared: &SharedBuffers,
        now: &Now,
    ) -> Connection {
        Connection::with_work(id, stream, Work::stream(session, shared), now)
    }

    /// A chat member of the room of endpoint `room`, just accepted and registered.
    pub fn new_chat(id: u64, stream: Stream, room: u32, log: &RoomLog, now: &Now) -> Connection {
        Connection::with_work(id, stream, Work::Chat(ChatOutput::joining(room, log)), now)
    }

    /// A connection accepted from `via` on `endpoint` under `--proxy-protocol`, just registered:
    /// its protocol starts (one of the `start_*` methods) once [`read_header`](Self::read_header)
    /// has read its PROXY header.
    pub fn awaiting_header(
        id: u64,
        stream: Stream,
        via: Peer,
        endpoint: usize,
        now: &Now,
    ) -> Connection {
        let waiting = AwaitingHeader {
            parser: ProxyHeader::new(),
            via,
            endpoint,
        };
        Connection::with_work(id, stream, Work::Header(Box::new(waiting)), now)
    }

    /// Starts a byte-stream protocol on a connection that has read its PROXY header.
    pub fn start_stream(&mut self, session: Session, shared: &SharedBuffers) {
        self.work = Work::stream(session, shared);
    }

    /// Makes a connection that has read its PROXY header a member of endpoint `room`'s room,
    /// owed the room's lines from now on (none sent before it joined).
    pub fn start_chat(&mut self, room: u32, log: &RoomLog) {
        self.work = Work::Chat(ChatOutput::joining(room, log));
    }

    /// Starts an upload on a connection that has read its PROXY header.
    pub fn start_upload(&mut self, limits: Limits) {
        self.work = Work::Upload(Box::new(UploadWork::new(limits)));
    }

    /// Whether the connection is still reading its PROXY header (nothing of its protocol has
    /// started).
    pub fn awaits_header(&self) -> bool {
        matches!(self.work, Work::Header(_))
    }

    /// Reads the PROXY header: until the socket is drained or the header is complete or
    /// refused. A short read means drained, as for requests. Every byte before the end of the
    /// header goes to the parser, whose own bounds refuse a header that grows past a few hundred
    /// held bytes, so a peer cannot make this loop run long; its deadline is the loop's (a
    /// `Wake::Header` timer, [`on_header_deadline`](Self::on_header_deadline)).
    ///
    /// When the header is complete, the rest of that read is moved to the start of the shared
    /// read buffer and described by [`HeaderDone::first`]: the protocol's first bytes.
    pub fn read_header(&mut self, shared: &mut SharedBuffers, now: &Now) -> HeaderRead {
        let read = self.read_header_bytes(shared);
        if std::mem::take(&mut self.moved_bytes) {
            self.last_active = now.instant;
        }
        read
    }

    /// The body of [`read_header`](Self::read_header).
    fn read_header_bytes(&mut self, shared: &mut SharedBuffers) -> HeaderRead {
        let Work::Header(waiting) = &mut self.work else {
            return HeaderRead::Pending;
        };
        if self.phase != Phase::Serving {
            return HeaderRead::Closed;
        }
        loop {
            let asked = shared.read.len();
            match self.stream.read(&mut shared.read[..]) {
                Ok(0) => {
                    debug!(
                        "conn #{}: {} closed before its PROXY header was complete",
                        self.id, waiting.via
                    );
                    self.close("end of stream before the PROXY header");
                    return HeaderRead::Closed;
                }
                Ok(count) => {
                    self.moved_bytes = true;
                    match waiting.parser.on_input(&shared.read[..count]) {
                        Parse::NeedMore => {
                            trace!(
                                "conn #{}: read {count} bytes of its PROXY header; not complete \
                                 yet",
                                self.id
                            );
                            if count < asked && !self.peer_closing {
                                return HeaderRead::Pending; // drained: wait for the next edge
                            }
                        }
                        Parse::Done { header, consumed } => {
                            if consumed < count {
                                trace!(
                                    "conn #{}: read {count} bytes: {consumed} complete its \
                                     PROXY header, {} are the protocol's first input",
                                    self.id,
                                    count - consumed
                                );
                            } else {
                                trace!(
                                    "conn #{}: read {count} bytes, which complete its PROXY \
                                     header",
                                    self.id
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
                                self.id, waiting.via
                            );
                            self.close("no valid PROXY header");
                            return HeaderRead::Closed;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeaderRead::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_on_error("read of the PROXY header", &e);
                    return HeaderRead::Closed;
                }
            }
        }
    }

    /// The PROXY header's deadline has passed: a connection still waiting for it is closed.
    pub fn on_header_deadline(&mut self) {
        if let Work::Header(waiting) = &self.work {
            if self.phase != Phase::Closed {
                debug!(
                    "conn #{}: no complete PROXY header from {} within {} s; closing",
                    self.id,
                    waiting.via,
                    HEADER_TIMEOUT.as_secs()
                );
                self.close("PROXY header deadline");
            }
        }
    }

    fn with_work(id: u64, stream: Stream, work: Work, now: &Now) -> Connection {
        Connection {
            id,
            stream,
            work,
            unsent: Unsent::default(),
            phase: Phase::Serving,
            registered: Interest::READABLE,
            queued: false,
            peer_closing: false,
            moved_bytes: false,
            last_active: now.instant,
        }
    }

    /// Records the poller's hint that the peer has closed its sending side or the socket has an
    /// error, so the next [`drive`](Self::drive) reads on to the end of stream.
    pub fn note_peer_closing(&mut self) {
        self.peer_closing = true;
    }

    /// Whether the connection has finished and awaits removal.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The interest the connection needs registered now.
    ///
    /// `WRITABLE` only while replies are queued (a socket with room would otherwise wake the loop
    /// for nothing); `READABLE` only while the connection would act on input.
    pub fn wanted_interest(&self, output_limit: usize) -> Option<Interest> {
        match self.phase {
            Phase::Serving if self.unsent.len() > output_limit => Some(Interest::WRITABLE),
            Phase::Serving if !self.writes_pending() => Some(Interest::READABLE),
            Phase::Serving => Some(Interest::READABLE | Interest::WRITABLE),
            // Only held replies left: the timer, not the socket, says when to write.
            Phase::Draining | Phase::Ending if !self.writes_pending() => Some(Interest::READABLE),
            Phase::Draining | Phase::Ending => Some(Interest::WRITABLE),
            Phase::Lingering { .. } => Some(Interest::READABLE),
            Phase::Closed => None,
        }
    }

    /// When bytes last moved on this connection.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// The server is shutting down: stop reading requests, finish writing the replies already
    /// queued, then end the connection the way an error reply does (`Ending`: shut down our
    /// side, linger). An idle connection so gets its end of stream at once. Simply closing
    /// would be quicker, but if the client has sent anything since — a pipelined request —
    /// closing with that input unread sends an RST, and the RST makes the client's kernel throw
    /// away the replies it has not read yet.
    ///
    /// Bytes the session holds back — half a UTF-8 character for upper, an unterminated line
    /// read just before the shutdown for timestamp — are its answer to input already read, so
    /// they are flushed first, exactly as at the peer's end of stream.
    ///
    /// An upload whose body has all arrived is stored and answered first (its connection waits
    /// in `Ending` until then); one still arriving is cut short: closed now, and its temporary
    /// file discarded when it is reaped.
    pub fn begin_shutdown(&mut self, shared: &mut SharedBuffers, now: &Now) {
        if let Work::Header(waiting) = &self.work {
            // Nothing of its protocol has started, so nothing is owed to it.
            debug!(
                "conn #{}: shutting down before {}'s PROXY header was complete; closing",
                self.id, waiting.via
            );
            return self.close("shutdown before the PROXY header");
        }
        if let Work::Upload(work) = &mut self.work {
            if self.phase == Phase::Serving && work.is_busy() {
                // "Arrived" means received by this host: the bytes already in the socket are
                // read (and no more), so an upload whose body is all here is still stored.
                let queued = crate::sys::queued_input_bytes(self.stream.as_fd()).unwrap_or(0);
                trace!(
                    "conn #{}: shutdown; the upload may still read the {queued} bytes that \
                     have arrived",
                    self.id
                );
                work.allow_until_shutdown(queued);
                return;
            }
        }
        if self.phase == Phase::Serving {
            shared.replies.clear();
            if let Some(session) = self.work.session() {
                session.on_end(now, &mut shared.replies);
            }
            self.phase = Phase::Ending;
            // Held replies, this one included, are still sent when due (within the shutdown
            // timeout): they answer requests already read.
            self.reply(shared, now);
        }
    }

    /// An upload connection, just accepted and registered.
    pub fn new_upload(id: u64, stream: Stream, limits: Limits, now: &Now) -> Connection {
        let work = Work::Upload(Box::new(UploadWork::new(limits)));
        Connection::with_work(id, stream, work, now)
    }

    /// Whether this connection waits for the disk (an upload's ops with the I/O threads): the
    /// idle timeout does not run meanwhile — the quiet is the server's, not the client's.
    pub fn waits_for_disk(&self) -> bool {
        matches!(&self.work, Work::Upload(work) if work.waits_for_disk())
    }

    /// Whether this is an upload connection.
    pub fn is_upload(&self) -> bool {
        matches!(self.work, Work::Upload(_))
    }

    /// The connection is being removed: the serial of its upload, and whether that upload was
    /// cut short (its temporary file must be discarded) rather than handed its commit.
    pub fn upload_left_behind(&self) -> Option<(u64, bool)> {
        match &self.work {
            Work::Upload(work) => work.serial().map(|serial| (serial, work.needs_discard())),
            _ => None,
        }
    }

    /// The I/O threads answered an op of this connection's upload: the client gets the session's
    /// answer (`saved ...`, `error storage failed: ...`), ops that waited for room go, input
    /// held meanwhile is handled. `still_ready` says the socket should be read again now: no
    /// new edge will come for bytes that arrived while reading was paused.
    ///
    /// Without a completion: only the retry of ops that waited for room in the pool (another
    /// connection's completion made some).
    pub fn on_upload_completion(
        &mut self,
        completion: Option<&Completion>,
        shared: &mut SharedBuffers,
        sink: &mut UploadSink<'_>,
        now: &Now,
    ) -> Verdict {
        let Work::Upload(work) = &mut self.work else {
            return Verdict::default();
        };
        if self.phase == Phase::Closed {
            return Verdict::default();
        }
        shared.replies.clear();
        let mut feed = match completion {
            Some(completion) => work.on_completion(completion, &mut shared.replies),
            None => Feed::Continue,
        };
        if feed == Feed::Continue && self.phase == Phase::Serving {
            feed = work.retry_waiting(sink, &mut shared.replies);
        }
        if feed == Feed::Continue && self.phase == Phase::Serving && !work.is_paused_for_io() {
            // Even with nothing held: the session may have a step left without new input (the
            // end of a body whose last bytes were handed over just before the pause).
            let held = work.take_held();
            feed = work.feed(&held, sink, &mut shared.replies);
            work.return_held(held);
        }
        let paused = work.is_paused();
        self.send(&shared.replies);
        // The disk made progress for it: the idle timeout counts from here, not from the client's
        // last byte (its quiet was the server's doing).
        self.last_active = now.instant;
        self.moved_bytes = false;
        if feed == Feed::End && self.phase == Phase::Serving {
            debug!("conn #{}: upload ended the conversation", self.id);
            self.phase = Phase::Ending;
        }
        // Bytes that arrived while reading was paused raised no new edge: read them now.
        let verdict = Verdict {
            still_ready: self.phase == Phase::Serving && !paused,
            ..Verdict::default()
        };
        self.finish_phases(shared, now, verdict)
    }

    /// The chat room of this member (its endpoint index), if it is one.
    pub fn chat_room(&self) -> Option<usize> {
        match &self.work {
            Work::Chat(output) => Some(output.room as usize),
            Work::Stream(_) | Work::Delayed(_) | Work::Upload(_) | Work::Header(_) => None,
        }
    }

    /// Queues a line for this chat member alone (after the room's lines so far); returns
    /// whether it needs adding to the loop's flush list.
    pub fn queue_own_line(&mut self, log: &RoomLog, line: Rc<[u8]>) -> bool {
        let Work::Chat(output) = &mut self.work else {
            return false;
        };
        if self.phase == Phase::Closed {
            return false;
        }
        output.output.push_own(log, line);
        !std::mem::replace(&mut output.dirty, true)
    }

    /// The member has left its room: it is still owed the room's lines sent before now, and no
    /// later ones.
    pub fn leave_log(&mut self, log: &RoomLog, me: MemberId) {
        if let Work::Chat(output) = &mut self.work {
            output.output.detach(log, me);
        }
    }

    /// Where this chat member stands in its room's log (`None` once it has left the room):
    /// lines before every member's cursor can be trimmed.
    pub fn log_cursor(&self) -> Option<u64> {
        match &self.work {
            Work::Chat(output) if self.phase != Phase::Closed => output.output.cursor(),
            _ => None,
        }
    }

    /// Bytes still owed to this chat member: what `--output-limit` bounds.
    pub fn chat_backlog(&self, log: &RoomLog) -> usize {
        match &self.work {
            Work::Chat(output) => output.output.backlog(log),
            Work::Stream(_) | Work::Delayed(_) | Work::Upload(_) | Work::Header(_) => 0,
        }
    }

    /// Whether this chat member waits for its room to take more of its lines (not read meanwhile).
    pub fn chat_parked(&self) -> bool {
        matches!(&self.work, Work::Chat(output) if output.parked)
    }

    /// The room can take this member's lines again: the next drive reads it.
    pub fn unpark(&mut self) {
        if let Work::Chat(output) = &mut self.work {
            output.parked = false;
        }
    }

    /// Whether this chat member no longer sets its room's pace (it held the room back too long).
    pub fn chat_behind(&self) -> bool {
        matches!(&self.work, Work::Chat(output) if output.behind)
    }

    /// Says whether this chat member sets its room's pace (`false`) or not (`true`).
    pub fn set_chat_behind(&mut self, behind: bool) {
        if let Work::Chat(output) = &mut self.work {
            output.behind = behind;
        }
    }

    /// Queues `* server shutting down` (or any notice) for this chat member alone, after the
    /// lines already owed to it.
    pub fn queue_notice(&mut self, log: &RoomLog, line: &[u8]) -> bool {
        self.queue_own_line(log, line.into())
    }

    /// Puts a chat member on the loop's flush list; whether it was not on it already.
    pub fn mark_dirty(&mut self) -> bool {
        match &mut self.work {
            Work::Chat(output) => !std::mem::replace(&mut output.dirty, true),
            Work::Stream(_) | Work::Delayed(_) | Work::Upload(_) | Work::Header(_) => false,
        }
    }

    /// The room ended this member's conversation (`quit`, a line too long, its end of stream):
    /// write what is queued, then end the connection as an error reply does.
    pub fn end_conversation(&mut self) {
        if self.phase == Phase::Serving {
            self.phase = Phase::Ending;
        }
    }

    /// Writes what is queued and makes the transitions that waited for it, without reading: a
    /// chat member that was sent lines at the end of the turn.
    pub fn drive_output(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
        log: &RoomLog,
        me: MemberId,
    ) -> Verdict {
        if let Work::Chat(output) = &mut self.work {
            output.dirty = false;
        }
        self.flush_output(Some((log, me)));
        let verdict = self.finish_phases(shared, now, Verdict::default());
        if std::mem::take(&mut self.moved_bytes) {
            self.last_active = now.instant;
        }
        verdict
    }

    /// Closes the connection now, whatever its phase (the idle timeout, the end of a shutdown).
    pub fn abandon(&mut self, why: &str) {
        self.close(why);
    }

    /// Does all the I/O the connection can do now without blocking. `first`: bytes already read
    /// for the protocol, which it takes before the socket is read (the rest of the read that
    /// completed a PROXY header).
    pub fn drive(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
        sink: Sink<'_>,
        first: Option<FirstInput>,
    ) -> Verdict {
        let verdict = self.drive_phases(shared, now, sink, first);
        if std::mem::take(&mut self.moved_bytes) {
            self.last_active = now.instant;
        }
        verdict
    }

    /// The body of [`drive`](Self::drive): every phase transition that I/O causes is here.
    fn drive_phases(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
        sink: Sink<'_>,
        first: Option<FirstInput>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        // Once, before reading: replies produced by this drive are written as they are made
        // (`send`), so flushing again afterwards would only be a write that finds the socket full.
        self.flush_output(sink.chat_log());
        match self.phase {
            Phase::Serving => verdict.still_ready = self.read_requests(shared, now, sink, first),
            Phase::Lingering { .. } => verdict.still_ready = self.discard_input(shared),
            Phase::Draining | Phase::Ending | Phase::Closed => {}
        }
        self.finish_phases(shared, now, verdict)
    }

    /// Moves on the phases that wait for the queued output to be written.
    fn finish_phases(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
        mut verdict: Verdict,
    ) -> Verdict {
        // Phases that wait for the queue to empty move on once it has.
        if !self.output_pending() {
            match self.phase {
                Phase::Draining => self.close("peer finished and every reply is written"),
                Phase::Ending => {
                    let until = now.instant + LINGER;
                    trace!(
                        "conn #{}: last reply written; shutting down writes, lingering",
                        self.id
                    );
                    // Fails only if the peer is already gone, which the next read will report.
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Lingering { until };
                    verdict.wake_at = Some(until);
                    verdict.still_ready = self.discard_input(shared);
                }
                _ => {}
            }
        }
        verdict
    }

    /// The linger timer has fired: close if the linger time is really over.
    pub fn on_linger_deadline(&mut self, now: &Now) {
        if let Phase::Lingering { until } = self.phase {
            if until <= now.instant {
                self.close("linger time is over");
            }
        }
    }

    /// Reads and answers requests until the socket is drained, the budget is spent, the reply
    /// queue passes its limit, or the conversation ends. Returns whether it stopped on the budget.
    /// `first`, if any, is taken as the first read's bytes.
    fn read_requests(
        &mut self,
        shared: &mut SharedBuffers,
        now: &Now,
        mut sink: Sink<'_>,
        mut first: Option<FirstInput>,
    ) -> bool {
        if self.awaits_header() {
            return false; // The loop reads the header itself (`read_header`), then starts this.
        }
        let mut budget = MAX_READ_BYTES_PER_TURN;
        // A chat member's bytes owed to it, once first needed (see the chat arm below).
        let mut chat_owed: Option<usize> = None;
        while self.phase == Phase::Serving {
            let mut asked = budget.min(shared.read.len());
            if let Work::Upload(work) = &self.work {
                if work.is_paused() {
                    trace!(
                        "conn #{}: upload waits for the I/O threads; not reading",
                        self.id
                    );
                    return false;
                }
                if work.input_is_over() {
                    trace!(
                        "conn #{}: shutdown: every byte that had arrived is read",
                        self.id
                    );
                    self.end_upload_input(shared, true);
                    return false;
                }
                asked = work.read_allowance(asked);
            }
            if let Sink::Chat(sink) = &mut sink {
                // Input the room could not take last time goes first, then the socket, while
                // the room takes this member's lines.
                if let Some(mut held) = sink.held.take() {
                    let limit = shared.output_limit;
                    let fed =
                        self.feed_room(&held.bytes[held.start..], sink, &mut chat_owed, limit);
                    match fed {
                        Fed::All => {
                            held.bytes.clear();
                            held.start = 0;
                            *sink.held = Some(held); // a flood goes on: keep the buffer
                        }
                        Fed::Stopped(taken) => {
                            held.start += taken;
                            *sink.held = Some(held);
                            self.park();
                            return false;
                        }
                        Fed::Ended => return false,
                    }
                }
                if sink.allowance == 0 {
                    trace!(
                        "conn #{}: its room takes no more of its lines for now: not reading it",
                        self.id
                    );
                    self.park();
                    return false;
                }
            }
            if self.queued_output() > shared.output_limit {
                trace!(
                    "conn #{}: {} reply bytes queued or held, over the limit: not reading until \
                     they drain",
                    self.id,
                    self.queued_output()
                );
                return false;
            }
            if budget == 0 {
                trace!("conn #{}: read budget spent; serving others first", self.id);
                return true;
            }
            let from_header = first.is_some_and(|first| first.len > 0);
            let read = match first.take().filter(|first| first.len > 0) {
                // Already at the start of the buffer; as for a read, fewer than there was room
                // for means the socket was drained.
                Some(first) => {
                    asked = first.room;
                    Ok(first.len)
                }
                None => self.stream.read(&mut shared.read[..asked]),
            };
            let arrival = match read {
                Ok(0) => {
                    trace!(
                        "conn #{}: read 0 bytes: end of stream (the peer shut down its writes)",
                        self.id
                    );
                    if let Some(session) = self.work.session() {
                        self.phase = Phase::Draining;
                        shared.replies.clear();
                        session.on_end(now, &mut shared.replies);
                        self.reply(shared, now);
                        return false;
                    }
                    match (&mut self.work, &mut sink) {
                        (Work::Stream(_) | Work::Delayed(_), _) => {}
                        (Work::Upload(_), _) => self.end_upload_input(shared, false),
                        (Work::Chat(_), Sink::Chat(sink)) => {
                            // The room answers the last partial line (perhaps to this member:
                            // `/who` without its newline) and says Close; the loop routes both,
                            // and the close waits until what was queued is written.
                            sink.room.on_end(sink.member, sink.deliveries);
                            if !ends_member(&sink.deliveries[..], sink.member) {
                                self.phase = Phase::Draining;
                            }
                        }
                        (Work::Chat(_), _) => self.phase = Phase::Draining,
                        // Never here (returned above): nothing of its protocol to end.
                        (Work::Header(_), _) => self.close("end of stream"),
                    }
                    return false;
                }
                Ok(count) => {
                    budget -= count;
                    self.moved_bytes = true;
                    if let Work::Upload(work) = &mut self.work {
                        work.note_read(count);
                    }
                    if from_header {
                        trace!(
                            "conn #{}: {count} bytes that came with its PROXY header",
                            self.id
                        );
                    } else if count < asked && self.peer_closing {
                        trace!(
                            "conn #{}: read {count} bytes; the peer has closed, so read on to \
                             its end of stream",
                            self.id
                        );
                    } else if count < asked {
                        trace!(
                            "conn #{}: read {count} bytes, fewer than asked: the socket is \
                             drained, no need to read again until the next event",
                            self.id
                        );
                    } else {
                        trace!(
                            "conn #{}: read {count} bytes, as many as asked: more may wait",
                            self.id
                        );
                    }
                    let arrival = if count < asked {
                        Arrival::Drained
                    } else {
                        Arrival::Partial
                    };
                    let flow = match (&mut self.work, &mut sink) {
                        (Work::Stream(_) | Work::Delayed(_), _) => {
                            shared.replies.clear();
                            let session = self.work.session().expect("a stream session");
                            let flow = session.on_input(
                                &shared.read[..count],
                                arrival,
                                now,
                                &mut shared.replies,
                            );
                            self.reply(shared, now);
                            flow
                        }
                        (Work::Upload(work), Sink::Upload(sink)) => {
                            shared.replies.clear();
                            let feed = work.feed(&shared.read[..count], sink, &mut shared.replies);
                            self.send(&shared.replies);
                            match feed {
                                Feed::Continue => Flow::Continue,
                                Feed::Pause => return false,
                                Feed::End => Flow::Close,
                            }
                        }
                        (Work::Upload(_), _) => Flow::Close,
                        (Work::Chat(_), Sink::Chat(sink)) => {
                            let limit = shared.output_limit;
                            match self.feed_room(&shared.read[..count], sink, &mut chat_owed, limit)
                            {
                                Fed::All => Flow::Continue,
                                Fed::Stopped(taken) => {
                                    let held = sink.held.get_or_insert_with(Box::default);
                                    held.bytes.drain(..held.start);
                                    held.start = 0;
                                    held.bytes.extend_from_slice(&shared.read[taken..count]);
                                    self.park();
                                    return false;
                                }
                                Fed::Ended => return false,
                            }
                        }
                        (Work::Chat(_), _) => Flow::Continue,
                        // Never here (returned above): no protocol to take the bytes.
                        (Work::Header(_), _) => Flow::Close,
                    };
                    if flow == Flow::Close && self.phase == Phase::Serving {
                        debug!("conn #{}: protocol ended the conversation", self.id);
                        self.phase = Phase::Ending;
                    }
                    if self.peer_closing {
                        // The end of stream is waiting behind these bytes: read on to it.
                        continue;
                    }
                    arrival
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The previous read filled the buffer exactly; now the peer has paused.
                    trace!(
                        "conn #{}: read: WouldBlock, nothing more for now; back to the loop",
                        self.id
                    );
                    if let Some(session) = self.work.session() {
                        shared.replies.clear();
                        let flow =
                            session.on_input(&[], Arrival::Drained, now, &mut shared.replies);
                        debug_assert_eq!(flow, Flow::Continue, "empty input cannot break a limit");
                        self.reply(shared, now);
                    }
                    Arrival::Drained
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Arrival::Partial,
                Err(e) => {
                    self.close_on_error("read", &e);
                    return false;
                }
            };
            if arrival == Arrival::Drained {
                if let Sink::Chat(sink) = &mut sink {
                    // Its socket is drained: whatever flood there was is over.
                    if sink
                        .held
                        .as_ref()
                        .is_some_and(|held| held.start == held.bytes.len())
                    {
                        *sink.held = None;
                    }
                }
                return false;
            }
        }
        false
    }

    /// Hands `input` to the room line by line, while this member's allowance lasts, counting
    /// the replies to this member itself (`/who`, errors): one read of `/who` lines would
    /// otherwise make hundreds of megabytes of replies at once, so past `--output-limit` it is
    /// dropped. `owed` is counted over the whole drive: earlier reads' replies wait in
    /// `deliveries`, not yet in the member's queue.
    fn feed_room(
        &mut self,
        input: &[u8],
        sink: &mut ChatSink<'_>,
        owed: &mut Option<usize>,
        output_limit: usize,
    ) -> Fed {
        let Work::Chat(output) = &self.work else {
            return Fed::All;
        };
        let owed = owed.get_or_insert_with(|| output.output.backlog(sink.log));
        let mut rest = input;
        while !rest.is_empty() {
            if sink.allowance == 0 {
                return Fed::Stopped(input.len() - rest.len());
            }
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let before = sink.deliveries.len();
            sink.room
                .on_input(sink.member, &rest[..cut], sink.deliveries);
            rest = &rest[cut..];
            let new = &sink.deliveries[before..];
            if ends_member(new, sink.member) {
                // Its last replies (an error line, a /who) are routed after this drive, and the
                // Close after them ends the connection then: stop reading, but do not end it
                // before they are queued.
                return Fed::Ended;
            }
            *owed += replies_to(new, sink.member);
            sink.allowance = sink.allowance.saturating_sub(broadcast_bytes(new));
            if *owed > output_limit {
                debug!(
                    "conn #{}: chat member owed {owed} bytes of its own replies, over \
                     --output-limit; dropping it",
                    self.id
                );
                self.close("over the output limit");
                return Fed::Ended;
            }
        }
        Fed::All
    }

    /// Stops reading this chat member until its room unparks it.
    fn park(&mut self) {
        if let Work::Chat(output) = &mut self.work {
            output.parked = true;
        }
    }

    /// An upload connection's input is over (the client's end of stream, or at a shutdown every
    /// byte that had arrived): a complete body is stored and answered before the close, a
    /// partial one is cut short (the temporary file goes when the connection is reaped).
    ///
    /// At a shutdown (`unread_may_follow`) the client may still be sending: the connection ends
    /// like an error reply, with its write side shut down and a lingering close, so the unread
    /// bytes do not turn the close into an RST that would destroy the answer.
    fn end_upload_input(&mut self, shared: &mut SharedBuffers, unread_may_follow: bool) {
        let Work::Upload(work) = &mut self.work else {
            return;
        };
        shared.replies.clear();
        let end = if unread_may_follow {
            work.on_shutdown(&mut shared.replies) // `error shutting down` if cut short
        } else {
            work.on_end(&mut shared.replies)
        };
        self.send(&shared.replies);
        if let End::CutShort { received, size } = end {
            debug!(
                "conn #{}: upload cut short at {received} of {size} bytes",
                self.id
            );
            if unread_may_follow {
                // Its `error shutting down` goes out first, then the lingering close; the
                // temporary file is discarded when the connection is reaped.
                self.phase = Phase::Ending;
            } else {
                self.close("upload cut short");
            }
        } else if unread_may_follow {
            // Waits for the answer of an upload being stored, if any, then lingers.
            self.phase = Phase::Ending;
        } else {
            // Waits for the answer of an upload being stored, if any.
            self.phase = Phase::Draining;
        }
    }

    /// Lingering: reads and throws away whatever the peer still sends, until it closes.
    fn discard_input(&mut self, shared: &mut SharedBuffers) -> bool {
        let mut budget = MAX_READ_BYTES_PER_TURN;
        loop {
            if budget == 0 {
                return true;
            }
            match self.stream.read(&mut shared.read) {
                Ok(0) => {
                    self.close("peer closed while we lingered");
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

    /// Sends `replies` after anything already queued; queues whatever the socket will not take.
    fn send(&mut self, replies: &[u8]) {
        if replies.is_empty() || self.phase == Phase::Closed {
            return;
        }
        if !self.unsent.is_empty() {
            self.unsent.push(replies);
            self.flush();
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
                }
                if written < replies.len() {
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

    /// Sends the replies in `shared.replies` — or, under `--reply-delay`, holds them until
    /// `now` plus the delay.
    fn reply(&mut self, shared: &mut SharedBuffers, now: &Now) {
        match (&mut self.work, shared.reply_delay) {
            (Work::Delayed(delayed), Some(delay)) if self.phase != Phase::Closed => {
                if shared.replies.is_empty() {
                    return;
                }
                delayed.held.hold(&shared.replies, now.instant + delay);
                trace!(
                    "conn #{}: {} reply bytes held for {} s (--reply-delay); {} held in all",
                    self.id,
                    shared.replies.len(),
                    delay.as_secs_f64(),
                    delayed.held.len()
                );
            }
            _ => self.send(&shared.replies),
        }
    }

    /// Reply bytes this connection has queued for the socket or holds for `--reply-delay`:
    /// what `--output-limit` bounds.
    fn queued_output(&self) -> usize {
        let held = match &self.work {
            Work::Delayed(delayed) => delayed.held.cost(),
            _ => 0,
        };
        self.unsent.len() + held
    }

    /// Whether replies are held for `--reply-delay`: the idle timeout does not run meanwhile
    /// (the quiet is the server's).
    pub fn holds_replies(&self) -> bool {
        matches!(&self.work, Work::Delayed(delayed) if !delayed.held.is_empty())
    }

    /// When the loop must wake to send held replies, if it has no timer for them yet.
    pub fn reply_timer(&mut self) -> Option<Instant> {
        match &mut self.work {
            Work::Delayed(delayed) if self.phase != Phase::Closed => delayed.held.arm(),
            _ => None,
        }
    }

    /// The reply timer fired: sends the held replies now due, and makes the transitions that
    /// waited for them. `still_ready`: a connection that stopped reading with its held replies
    /// over `--output-limit` may read again, and no new edge will announce input that waited.
    pub fn release_replies(&mut self, shared: &mut SharedBuffers, now: &Now) -> Verdict {
        let Work::Delayed(delayed) = &mut self.work else {
            return Verdict::default();
        };
        if self.phase == Phase::Closed {
            return Verdict::default();
        }
        // Reading stopped with the held bytes over the limit: releasing them may let it resume.
        let held_back = self.unsent.len() + delayed.held.cost() > shared.output_limit;
        shared.replies.clear();
        let released = delayed.held.release(now.instant, &mut shared.replies);
        if released > 0 {
            trace!(
                "conn #{}: {released} held reply bytes are due; sending",
                self.id
            );
        }
        self.send(&shared.replies);
        let verdict = Verdict {
            still_ready: held_back && self.phase == Phase::Serving,
            ..Verdict::default()
        };
        let verdict = self.finish_phases(shared, now, verdict);
        if std::mem::take(&mut self.moved_bytes) {
            self.last_active = now.instant;
        }
        verdict
    }

    /// Whether output waits for room in the socket (held replies wait for their timer instead).
    fn writes_pending(&self) -> bool {
        match &self.work {
            Work::Delayed(_) => !self.unsent.is_empty(),
            _ => self.output_pending(),
        }
    }

    /// Whether output waits: stream replies, lines owed to a chat member, or the answer to an
    /// upload being stored.
    pub fn output_pending(&self) -> bool {
        let other = match &self.work {
            Work::Chat(output) => output.owed,
            // The answer to an upload being stored is still to come.
            Work::Upload(work) => work.is_storing(),
            // Held replies are output that waits too: a draining or ending connection stays
            // until they have been sent.
            Work::Delayed(delayed) => !delayed.held.is_empty(),
            Work::Stream(_) | Work::Header(_) => false,
        };
        !self.unsent.is_empty() || other
    }

    /// Writes what is queued, as far as the socket takes it (for a chat member, given its
    /// room's log and its member id).
    fn flush_output(&mut self, chat: Option<(&RoomLog, MemberId)>) {
        if !self.unsent.is_empty() {
            self.flush();
        }
        if let Some((log, me)) = chat {
            self.flush_lines(log, me);
        }
    }

    /// Writes the lines owed to a chat member with as few `writev` calls as the socket takes:
    /// up to [`MAX_LINES_PER_WRITE`] lines each, until none is left or the socket is full.
    fn flush_lines(&mut self, log: &RoomLog, me: MemberId) {
        let Work::Chat(output) = &mut self.work else {
            return;
        };
        if self.phase == Phase::Closed {
            return;
        }
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_LINES_PER_WRITE];
            let count = output.output.gather(log, me, &mut slices);
            if count == 0 {
                output.output.consume(log, me, 0); // past trailing lines not for it
                break;
            }
            match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => {
                    return self.close_on_error("write", &io::ErrorKind::WriteZero.into());
                }
                Ok(written) => {
                    self.moved_bytes = true;
                    trace!("conn #{}: wrote {written} bytes of chat lines", self.id);
                    output.output.consume(log, me, written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close_on_error("write", &e),
            }
        }
        output.owed = output.output.backlog(log) > 0;
    }

    /// Writes as much of the queue as the socket takes.
    fn flush(&mut self) {
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

    fn close(&mut self, why: &str) {
        trace!("conn #{}: closing: {why}", self.id);
        self.phase = Phase::Closed;
        self.unsent = Unsent::default();
        if let Work::Chat(output) = &mut self.work {
            // Owed lines are dropped with the connection: nothing more will be written.
            output.owed = false;
        }
    }

    /// A client's socket error ends that client only, logged at debug: resets and broken pipes
    /// are everyday events for a server, not failures of it.
    fn close_on_error(&mut self, during: &str, error: &io::Error) {
        debug!("conn #{}: {during} failed: {error}; closing", self.id);
        self.close("socket error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_replies_go_out_in_order_never_before_they_are_due() {
        let start = Instant::now();
        let mut held = HeldReplies::default();
        let delay = Duration::from_secs(1);
        held.hold(b"one ", start + delay);
        // On the same tick as the first: joins its run.
        held.hold(b"two ", start + delay);
        held.hold(b"three", start + delay + Duration::from_millis(300));
        assert_eq!(held.runs.len(), 2);
        assert_eq!(held.len(), 13);
        assert_eq!(held.cost(), 13 + 2 * RUN_COST);
        assert_eq!(held.arm(), Some(start + delay));
        assert_eq!(held.arm(), None, "one timer at a time");
        let mut out = Vec::new();
        assert_eq!(
            held.release(start + delay - Duration::from_nanos(1), &mut out),
            0
        );
        assert_eq!(held.release(start + delay, &mut out), 8);
        assert_eq!(held.arm(), Some(start + delay + Duration::from_millis(300)));
        assert_eq!(held.release(start + 2 * delay, &mut out), 5);
        assert_eq!(out, b"one two three");
        assert!(held.is_empty());
        assert_eq!(
            held.bytes.capacity(),
            0,
            "memory given back once nothing is held"
        );
    }

    /// However the requests are spaced, a reply is held at least its delay and less than one
    /// tick more (a trickle of requests cannot keep pushing the first reply back), and at most
    /// one run per tick is kept.
    #[test]
    fn a_trickle_of_requests_is_held_within_a_tick_of_each_delay() {
        let start = Instant::now();
        let mut held = HeldReplies::default();
        let due = |k: u64| start + Duration::from_micros(300 * k + 17);
        for k in 0..1_000 {
            held.hold(b"x", due(k));
        }
        assert!(
            held.runs.len() <= 301,
            "{} runs for 300 ms",
            held.runs.len()
        );
        // A clock in 50 µs steps: each reply goes out at the first step at or after its due
        // time, and within a tick (plus the step) of it.
        let step = Duration::from_micros(50);
        let mut out = Vec::new();
        let mut released = 0;
        let mut now = start;
        while released < 1_000 && now < start + Duration::from_secs(1) {
            let newly = held.release(now, &mut out);
            for k in released..released + newly {
                let due = due(k as u64);
                assert!(now >= due, "reply {k} sent before its delay");
                assert!(
                    now < due + RUN_GRANULARITY + step,
                    "reply {k} held {:?} past its delay",
                    now - due
                );
            }
            released += newly;
            now += step;
        }
        assert_eq!(released, 1_000);
    }

    #[test]
    fn unsent_frees_its_buffer_once_drained() {
        let mut unsent = Unsent::default();
        unsent.push(b"hello world");
        unsent.consume(6);
        assert_eq!(unsent.pending(), b"world");
        unsent.push(b"!");
        assert_eq!(unsent.pending(), b"world!");
        unsent.consume(6);
        assert!(unsent.is_empty());
        assert_eq!(unsent.bytes.capacity(), 0);
    }

    #[test]
    fn unsent_compacts_only_when_half_is_written() {
        let mut unsent = Unsent::default();
        unsent.push(&[1; 10]);
        unsent.consume(3);
        unsent.push(&[2; 2]);
        assert_eq!(
            unsent.written, 3,
            "no move while most of the buffer is unwritten"
        );
        unsent.consume(4);
        unsent.push(&[3; 1]);
        assert_eq!(unsent.written, 0);
        assert_eq!(unsent.pending(), &[1, 1, 1, 2, 2, 3]);
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Every idle connection costs one slab entry and nothing else, so this size *is* the memory
    /// per idle connection (plus the slab's spare capacity). A field added here is paid for by
    /// every one of ten thousand connections: this test makes that a decision, not an accident.
    #[test]
    fn a_connection_stays_small() {
        // 144 bytes today: the socket, the session (a timestamp session is the largest), an
        // empty reply queue, the phase, the idle clock and a few flags.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 144, "Connection grew to {size} bytes");
    }
}
