//! Group chat under `--model threaded` and `pool`: the room behind a lock, a bounded queue of
//! lines per member, and a writer thread per member that empties it.
//!
//! The sans-I/O room ([`crate::protocol::room`]) is the same one the reactor drives; only the
//! routing of its [`Delivery`]s differs. Each chat service has one [`ChatRoom`]: the [`Room`] and
//! each member's `Outbox`, behind one [`Mutex`]. A member's thread (its own under `threaded`,
//! a pool worker under `pool`) blocks in `read` on its own socket; when bytes come it locks the
//! room, calls [`Room::on_input`], and routes the deliveries itself, still holding the lock: a
//! broadcast is formatted once by the room, shared (an [`Arc`]) and appended to each other
//! member's queue. The lock is what keeps the lines to one member in order, and the room
//! consistent. Each member also has a **writer thread**, started when it joins, which takes lines
//! from its queue and writes them to its socket with a blocking `write`.
//!
//! ## Why a queue and a writer thread per member
//!
//! The first design here wrote each line to every member's socket in turn, under the lock, with a
//! send timeout to drop a member whose socket stayed full. A member that read a trickle defeated
//! it: each write moved a few bytes before the timeout, so the timeout never fired, and every
//! line for everyone waited on that member — the room went at the trickle's pace. The contract
//! says a member more than `--output-limit` behind is dropped, so "behind" must be something a
//! blocking model can count: the bytes queued for the member and not yet written. A blocking
//! thread can wait in only one call, so reading a member and writing to it take one thread each:
//! the classic blocking chat server's shape (a reader and a writer per client, a hub between
//! them, a client whose queue overflows dropped). It doubles the threads — the foil's cost made
//! plainer — and under `pool` the writers are outside `--threads`, but never more of them than
//! members being served, so at most `--threads` of them.
//!
//! * **Dropped at the limit.** A line that takes a member's queue past `--output-limit` drops it:
//!   its queue is abandoned, its socket shut down both ways (its reader thread, blocked in `read`,
//!   wakes with an end of stream; its writer's `write` fails), it leaves the room with
//!   [`Room::leave`], and its `* NAME left` is routed to the others. Drops found during a batch of
//!   deliveries are only collected, and processed after the batch, so a broadcast never re-enters
//!   a broadcast (as in the reactor).
//! * **Flow control** is the reactor's ([`PACE_GRACE`], and the reactor's `Pace` for the whole
//!   story): a sender hands the room lines only while the largest queue among the members that
//!   keep up is under half of `--output-limit`; then it waits (on a condition variable the
//!   writers signal, not reading its socket, so its client's writes block) until they are down to
//!   a quarter. Senders take turns in the order they began waiting, a quantum each. A member that
//!   holds the room back for [`PACE_GRACE`] no longer sets its pace: the room goes on, and that
//!   member is dropped once its queue passes the limit (unless it catches up first). So a burst
//!   never gets the readers dropped, and a slow reader never holds the room to its pace.
//! * **A writer's `write` looks up every [`WRITE_CHECK_INTERVAL`]** (its socket's send timeout)
//!   whether its member is still served, then waits again: a member is dropped by its backlog,
//!   never by how long one write took.
//!
//! ## Why this design still hurts (it is the foil)
//!
//! * **Two threads per member**, most of them blocked, each with a stack and a kernel task; a
//!   line costs a context switch to each member's writer. Under `pool`, a member beyond
//!   `--threads` waits in the queue, not even greeted, until a member leaves.
//! * **A lock held across the routing.** Every other member's thread that has a line to hand in
//!   waits for the lock meanwhile; a room of a thousand members appends each line to a thousand
//!   queues, each behind its own lock.
//! * **One system call per line per member**, where the reactor writes a member's several lines
//!   with one `writev`.
//!
//! ## Leaving
//!
//! `quit` (or a line over `--max-line`): the member's last replies are written by its writer,
//! then it ends with a lingering close. End of stream: [`Room::on_end`], routed, then the queue is
//! written out and our side shut down. A read error or the idle timeout: [`Room::leave`], routed.
//! `--idle-timeout` counts from the last byte read from the member *or written to it*, as in the
//! reactor: a member that only listens stays while lines reach it (its read timeout expiring only
//! makes its thread look when its writer last wrote). At a graceful shutdown the member stops
//! reading and leaves the room quietly (everyone is leaving, as in the reactor: no `left`
//! notices); its writer writes what is queued and then
//! [`SHUTDOWN_NOTICE`], and its connection ends like any
//! other once that is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::debug;

use crate::net::{is_timeout, BoundListener, Peer};
use crate::options::ServeOptions;
use crate::protocol::room::{Delivery, MemberId, Room, PACE_GRACE, SHUTDOWN_NOTICE};
use crate::protocol::Limits;
use crate::service::ProtocolKind;

use super::conn::{Conn, Wire};
use super::{linger, linger_after_stop};

/// How long a writer's blocked `write` waits before it looks whether its member is still served
/// (the socket's send timeout; a write that moved nothing is then simply tried again).
pub(crate) const WRITE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a sender waiting for its room to drain sleeps at most before it looks again: a
/// writer's signal can come between the look and the wait (it does not take the room's lock).
const PACE_RECHECK: Duration = Duration::from_millis(10);

/// One room per chat service, indexed like the listeners the model was given (`None` for the
/// other services). The default has none: the models that do not serve chat.
#[derive(Debug, Default)]
pub(crate) struct ChatRooms {
    rooms: Vec<Option<ChatRoom>>,
}

impl ChatRooms {
    /// An empty room for each chat service among `listeners`, whose members may be owed up to
    /// `output_limit` bytes each.
    pub(crate) fn new(
        listeners: &[BoundListener],
        limits: Limits,
        output_limit: usize,
    ) -> ChatRooms {
        ChatRooms {
            rooms: listeners
                .iter()
                .map(|listener| {
                    (listener.protocol == ProtocolKind::Chat)
                        .then(|| ChatRoom::new(limits, output_limit))
                })
                .collect(),
        }
    }

    /// The room of service `service`, if it is a chat service.
    pub(crate) fn get(&self, service: usize) -> Option<&ChatRoom> {
        self.rooms.get(service).and_then(Option::as_ref)
    }
}

/// One chat service's room and its members' queues, behind one lock.
#[derive(Debug)]
pub(crate) struct ChatRoom {
    state: Mutex<State>,
    /// Signalled by the writers after each line: senders waiting for the room to drain look again.
    drained: Condvar,
    /// `--output-limit`: a member whose queue passes it is dropped.
    output_limit: usize,
}

#[derive(Debug)]
struct State {
    room: Room,
    /// Every member's queue, to append its lines to.
    outboxes: HashMap<MemberId, Arc<Outbox>>,
    /// The next member's id: ids are never reused.
    next_id: usize,
    /// Deliveries the room has emitted and that are not yet carried out.
    deliveries: Vec<Delivery>,
    /// Since when the room has waited for its members to drain (`None`: it takes lines).
    draining_since: Option<Instant>,
    /// Senders waiting for the room to take their lines, oldest first: a sender goes only when
    /// none is waiting before it.
    waiting: VecDeque<MemberId>,
}

/// A member's lines not yet written, shared by the routing threads (which append) and the
/// member's writer thread (which writes them out).
#[derive(Debug)]
struct Outbox {
    queue: Mutex<Queue>,
    /// Signalled when a line is queued, or the queue is closed or abandoned.
    ready: Condvar,
    stream: Wire,
}

#[derive(Debug)]
struct Queue {
    lines: VecDeque<Arc<[u8]>>,
    /// Bytes of those lines, and of the one being written: what `--output-limit` bounds.
    bytes: usize,
    /// No more lines will come: the writer writes what is queued, then stops.
    closing: bool,
    /// Abandoned (the member was dropped, left, or its socket failed): the writer stops at once.
    abandoned: bool,
    /// It held the room back past the grace: the room's pace does not wait for it.
    behind: bool,
    /// When a write to it last moved bytes (`--idle-timeout` counts writes too).
    last_written: Instant,
}

impl Outbox {
    fn new(stream: Wire) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                bytes: 0,
                closing: false,
                abandoned: false,
                behind: false,
                last_written: Instant::now(),
            }),
            ready: Condvar::new(),
            stream,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every change to a queue is a push, a pop or a flag: none is left half-done by a panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line`; whether the queue is now over `limit` (the member must be dropped).
    fn push(&self, line: &Arc<[u8]>, limit: usize) -> bool {
        let mut queue = self.lock();
        if queue.abandoned || queue.closing {
            return false;
        }
        queue.lines.push_back(Arc::clone(line));
        queue.bytes += line.len();
        self.ready.notify_one();
        queue.bytes > limit
    }

    /// No more lines: the writer stops once it has written what is queued.
    fn close(&self) {
        self.lock().closing = true;
        self.ready.notify_one();
    }

    /// Nothing more is written: the writer stops at once.
    fn abandon(&self) {
        let mut queue = self.lock();
        queue.abandoned = true;
        queue.lines.clear();
        queue.bytes = 0;
        self.ready.notify_one();
    }

    /// The writer thread's loop: each queued line, in order, with a blocking `write`.
    fn write_out(&self, drained: &Condvar) {
        let mut writer = self.stream.conn();
        loop {
            let line = {
                let mut queue = self.lock();
                loop {
                    if queue.abandoned {
                        return;
                    }
                    if let Some(line) = queue.lines.pop_front() {
                        break line;
                    }
                    if queue.closing {
                        return;
                    }
                    queue = self
                        .ready
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let mut written = 0;
            // Under TLS, sealed records can still wait for the socket once the line is written.
            let mut flushed = false;
            while !flushed {
                let result = if written < line.len() {
                    writer.write(&line[written..])
                } else {
                    writer.flush().map(|()| {
                        flushed = true;
                        0
                    })
                };
                match result {
                    Ok(0) if !flushed => return self.abandon(),
                    Ok(count) => written += count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Its socket is still full: go on waiting, unless the member is gone.
                    Err(e) if is_timeout(&e) => {
                        if self.lock().abandoned {
                            return;
                        }
                    }
                    Err(e) => {
                        // A reset: its reader thread sees the end too, and leaves the room.
                        debug!("chat member: write failed: {e}; it leaves");
                        self.abandon();
                        let _ = self.stream.socket.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
            {
                let mut queue = self.lock();
                queue.bytes = queue.bytes.saturating_sub(line.len());
                queue.last_written = Instant::now();
            }
            drained.notify_all();
        }
    }
}

impl ChatRoom {
    fn new(limits: Limits, output_limit: usize) -> ChatRoom {
        ChatRoom {
            state: Mutex::new(State {
                room: Room::new(limits),
                outboxes: HashMap::new(),
                next_id: 0,
                deliveries: Vec::new(),
                draining_since: None,
                waiting: VecDeque::new(),
            }),
            drained: Condvar::new(),
            output_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while routing leaves at worst a line queued for some members only; the room
        // itself is changed only by the sans-I/O calls, which do not panic half-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Backlog at which the room stops taking lines.
    fn high_mark(&self) -> usize {
        (self.output_limit / 2).max(1)
    }

    /// Backlog every member that keeps up must be down to before the room takes lines again.
    fn low_mark(&self) -> usize {
        self.output_limit / 4
    }

    /// Serves one member on the calling thread until it leaves, is dropped, or the server stops;
    /// its writer runs on a second thread meanwhile.
    ///
    /// It joins as `name`: the client's address (under `--proxy-protocol`, the one its PROXY
    /// header carries), or under `--tls-client-ca` its certificate's common name. `input` is the
    /// read buffer, whose first `first` bytes are already its input (what followed a PROXY
    /// header).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn serve(
        &self,
        wire: &Wire,
        peer: Peer,
        name: &str,
        options: &ServeOptions,
        stopping: &AtomicBool,
        input: &mut [u8],
        first: usize,
    ) {
        let stream = wire.conn();
        if stream.set_read_timeout(options.idle_timeout).is_err()
            || stream
                .set_write_timeout(Some(WRITE_CHECK_INTERVAL))
                .is_err()
        {
            return;
        }
        let outbox = Arc::new(Outbox::new(wire.clone()));
        thread::scope(|scope| {
            let writer = thread::Builder::new()
                .name(format!("chat writer {peer}"))
                .spawn_scoped(scope, || outbox.write_out(&self.drained));
            let writer = match writer {
                Ok(writer) => writer,
                Err(e) => {
                    // Out of threads: this member is refused, the others carry on.
                    debug!("{peer}: cannot start its writer thread: {e}; closing");
                    return;
                }
            };
            let member = {
                let mut state = self.lock();
                let member = MemberId(state.next_id);
                state.next_id += 1;
                state.outboxes.insert(member, Arc::clone(&outbox));
                let State {
                    room, deliveries, ..
                } = &mut *state;
                room.join(member, name, deliveries);
                self.route(&mut state);
                member
            };
            let guard = Membership {
                room: self,
                member,
                outbox: &outbox,
            };
            let end = self.read_member(&guard, stream, peer, options, stopping, input, first);
            match end {
                Ending::Closed => {
                    // Its last lines are queued (or it was dropped): write them, then close.
                    drop(guard);
                    let _ = writer.join();
                    linger(stream, input);
                }
                Ending::PeerFinished => {
                    guard.end();
                    let _ = writer.join();
                    // The client has finished sending: nothing to linger for.
                    stream.shutdown_write();
                }
                Ending::Stopping => {
                    guard.stop();
                    let _ = writer.join();
                    linger_after_stop(stream, input);
                }
                Ending::Gone | Ending::Idle => {
                    outbox.abandon();
                    drop(guard);
                    let _ = writer.join();
                    if matches!(end, Ending::Idle) {
                        // Under TLS, its close_notify (one write, if the socket takes it).
                        stream.finish_at_once();
                    }
                }
            }
        });
    }

    /// The member's reading loop; says how its conversation ended.
    #[allow(clippy::too_many_arguments)]
    fn read_member(
        &self,
        guard: &Membership<'_>,
        stream: Conn<'_>,
        peer: Peer,
        options: &ServeOptions,
        stopping: &AtomicBool,
        input: &mut [u8],
        mut first: usize,
    ) -> Ending {
        let mut reader = stream;
        let mut last_read = Instant::now();
        // Whether the read timeout is shorter than `--idle-timeout` (see the timeout below).
        let mut shortened = false;
        loop {
            // The bytes that followed a PROXY header, if any, stand for the first read.
            let count = if first > 0 {
                std::mem::take(&mut first)
            } else {
                if stopping.load(Ordering::Acquire) {
                    return Ending::Stopping;
                }
                match reader.read(input) {
                    Ok(0) if stopping.load(Ordering::Acquire) => return Ending::Stopping,
                    Ok(0) => {
                        debug!("{peer}: end of stream");
                        return Ending::PeerFinished;
                    }
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Under TLS, the shutdown's SHUT_RD is an end without close_notify.
                    Err(e)
                        if e.kind() == io::ErrorKind::UnexpectedEof
                            && stopping.load(Ordering::Acquire) =>
                    {
                        return Ending::Stopping;
                    }
                    Err(e) if is_timeout(&e) => {
                        // Nothing read for the idle timeout; but lines written to it count too.
                        let idle = options.idle_timeout.unwrap_or(Duration::ZERO);
                        let last = guard.outbox.lock().last_written.max(last_read);
                        let left = idle.saturating_sub(last.elapsed());
                        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                            debug!("{peer}: idle timeout; leaving");
                            return Ending::Idle;
                        }
                        shortened = true;
                        continue;
                    }
                    Err(e) => {
                        // A reset, or a socket shut down by a drop.
                        debug!("{peer}: read failed: {e}; leaving");
                        return Ending::Gone;
                    }
                }
            };
            last_read = Instant::now();
            if shortened {
                shortened = false;
                if stream.set_read_timeout(options.idle_timeout).is_err() {
                    return Ending::Gone;
                }
            }
            match self.feed(guard.member, &input[..count], stopping) {
                Fed::All => {}
                Fed::Closed => return Ending::Closed,
                Fed::Stopping => return Ending::Stopping,
            }
        }
    }

    /// Hands `input` from `member` to the room line by line, while the room takes lines (flow
    /// control, see the module doc), routing each line's deliveries at once.
    fn feed(&self, member: MemberId, input: &[u8], stopping: &AtomicBool) -> Fed {
        let quantum = ((self.high_mark() - self.low_mark()) / 2).max(1);
        let mut state = self.lock();
        let mut allowance = 0;
        let mut rest = input;
        while !rest.is_empty() {
            if allowance == 0 {
                loop {
                    if state.room.name(member).is_none() {
                        state.waiting.retain(|&m| m != member);
                        return Fed::Closed; // Dropped while it waited.
                    }
                    if stopping.load(Ordering::Acquire) {
                        state.waiting.retain(|&m| m != member);
                        return Fed::Stopping;
                    }
                    let turn = state.waiting.front().map_or(true, |&first| first == member);
                    if turn {
                        let headroom = self.headroom(&mut state, Instant::now());
                        if headroom > 0 {
                            if state.waiting.front() == Some(&member) {
                                state.waiting.pop_front();
                            }
                            allowance = headroom.min(quantum);
                            break;
                        }
                    }
                    if !state.waiting.contains(&member) {
                        state.waiting.push_back(member);
                        // The one now first may be asleep: its turn has come.
                        self.drained.notify_all();
                    }
                    state = self
                        .drained
                        .wait_timeout(state, PACE_RECHECK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let before = state.deliveries.len();
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.on_input(member, &rest[..cut], deliveries);
            rest = &rest[cut..];
            let added: usize = state.deliveries[before..]
                .iter()
                .map(|delivery| match delivery {
                    Delivery::Broadcast { bytes, .. } => bytes.len(),
                    _ => 0,
                })
                .sum();
            allowance = allowance.saturating_sub(added);
            if self.route(&mut state).contains(&member) {
                return Fed::Closed;
            }
        }
        Fed::All
    }

    /// What the room may still take: the high mark less the largest queue among the members that
    /// keep up; 0 while it waits for them to drain. Marks the members that held it back past the
    /// grace, and those that caught up.
    fn headroom(&self, state: &mut State, now: Instant) -> usize {
        let (high, low) = (self.high_mark(), self.low_mark());
        let mut largest = 0;
        for outbox in state.outboxes.values() {
            let mut queue = outbox.lock();
            if queue.behind {
                if queue.bytes > low {
                    continue;
                }
                queue.behind = false;
            }
            largest = largest.max(queue.bytes);
        }
        match state.draining_since {
            None if largest < high => high - largest,
            None => {
                state.draining_since = Some(now);
                0
            }
            Some(_) if largest <= low => {
                state.draining_since = None;
                high - largest
            }
            Some(since) if now >= since + PACE_GRACE => {
                let mut largest = 0;
                for (member, outbox) in &state.outboxes {
                    let mut queue = outbox.lock();
                    if queue.behind {
                        continue;
                    }
                    if queue.bytes > low {
                        queue.behind = true;
                        debug!(
                            "chat member {}: owed {} bytes, it held the room back for {} s; the \
                             room goes on without it",
                            member.0,
                            queue.bytes,
                            PACE_GRACE.as_secs_f64()
                        );
                    } else {
                        largest = largest.max(queue.bytes);
                    }
                }
                state.draining_since = None;
                high - largest
            }
            Some(_) => 0,
        }
    }

    /// Carries out the pending deliveries, batch after batch: members whose queue passed the
    /// limit are dropped after each batch, and their `left` notices make the next. Returns the
    /// members closed by a [`Delivery::Close`] or dropped.
    fn route(&self, state: &mut State) -> Vec<MemberId> {
        let mut closed = Vec::new();
        let mut dropped: Vec<MemberId> = Vec::new();
        while !state.deliveries.is_empty() {
            let mut batch = std::mem::take(&mut state.deliveries);
            for delivery in batch.drain(..) {
                match delivery {
                    Delivery::Broadcast { except, bytes } => {
                        let line: Arc<[u8]> = bytes.into();
                        for member in state.room.members() {
                            if Some(member) != except && !dropped.contains(&member) {
                                self.queue(state, member, &line, &mut dropped);
                            }
                        }
                    }
                    Delivery::To { member, bytes } => {
                        if !dropped.contains(&member) {
                            self.queue(state, member, &bytes.into(), &mut dropped);
                        }
                    }
                    Delivery::Close { member } => {
                        // Its writer writes what is queued, then its thread ends the connection.
                        if let Some(outbox) = state.outboxes.remove(&member) {
                            outbox.close();
                        }
                        closed.push(member);
                    }
                    // The blocking models refuse `--chat-bus` at start: their rooms are never
                    // shared.
                    Delivery::Bus(request) => {
                        unreachable!("a room of one process asked the bus {request:?}")
                    }
                }
            }
            if state.deliveries.is_empty() {
                state.deliveries = batch; // Keep the allocation.
            }
            for member in dropped.drain(..) {
                if let Some(outbox) = state.outboxes.remove(&member) {
                    outbox.abandon();
                    // Wakes its reader, blocked in `read`, with an end of stream.
                    let _ = outbox.stream.socket.shutdown(Shutdown::Both);
                }
                state.room.leave(member, &mut state.deliveries);
                closed.push(member);
            }
        }
        closed
    }

    /// Queues `line` for `member`; one over `--output-limit` is listed in `dropped`.
    fn queue(
        &self,
        state: &State,
        member: MemberId,
        line: &Arc<[u8]>,
        dropped: &mut Vec<MemberId>,
    ) {
        let Some(outbox) = state.outboxes.get(&member) else {
            return;
        };
        if outbox.push(line, self.output_limit) {
            debug!(
                "chat member {}: dropped for falling behind: owed more than --output-limit ({})",
                member.0, self.output_limit
            );
            dropped.push(member);
        }
    }
}

/// How a member's reading loop ended.
enum Ending {
    /// The room closed it (`quit`, a line too long, dropped): write what is queued, linger.
    Closed,
    /// The client's end of stream.
    PeerFinished,
    /// A graceful shutdown.
    Stopping,
    /// A read error: it just goes.
    Gone,
    /// The idle timeout: it goes (under TLS, with a close_notify if the socket takes it).
    Idle,
}

/// How far [`ChatRoom::feed`] got.
enum Fed {
    All,
    Closed,
    Stopping,
}

/// A member's place in the room, given up when its thread is done with it.
struct Membership<'a> {
    room: &'a ChatRoom,
    member: MemberId,
    outbox: &'a Outbox,
}

impl Membership<'_> {
    /// The client's end of stream: a held partial line is handled, then the member leaves (its
    /// Close lets the writer finish what is queued).
    fn end(self) {
        let mut state = self.room.lock();
        let State {
            room, deliveries, ..
        } = &mut *state;
        room.on_end(self.member, deliveries);
        self.room.route(&mut state);
    }

    /// A graceful shutdown: leave quietly; the writer writes what is queued, then the notice.
    fn stop(self) {
        let mut state = self.room.lock();
        // Out of the map first, under the lock: no other thread queues for it afterwards.
        state.outboxes.remove(&self.member);
        state.waiting.retain(|&m| m != self.member);
        let notice: Arc<[u8]> = SHUTDOWN_NOTICE.into();
        let _ = self.outbox.push(&notice, usize::MAX);
        self.outbox.close();
        drop(state);
        // Still in the room: its name stays until the process exits, and nobody is told.
        std::mem::forget(self);
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let mut state = self.room.lock();
        state.waiting.retain(|&m| m != self.member);
        if state.room.name(self.member).is_some() {
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.leave(self.member, deliveries);
            self.room.route(&mut state);
        }
        if state.outboxes.remove(&self.member).is_some() {
            // Left without a Close (idle, a read error): nothing more is written.
            self.outbox.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::net::BlockingStream;

    /// A member of `chat` named `name`, with a queue but no writer: its lines stay queued, as
    /// for a client that never reads.
    fn member(chat: &ChatRoom, n: usize, name: &str) -> (Arc<Outbox>, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::new(Wire {
            socket: Arc::new(BlockingStream::Unix(server)),
            tls: None,
        }));
        let mut state = chat.lock();
        state.outboxes.insert(MemberId(n), Arc::clone(&outbox));
        let State {
            room, deliveries, ..
        } = &mut *state;
        room.join(MemberId(n), name, deliveries);
        assert!(chat.route(&mut state).is_empty());
        (outbox, client)
    }

    #[test]
    fn a_member_whose_queue_passes_the_limit_is_dropped_once_after_the_batch() {
        // 280 bytes: two 124-byte lines fit an emptied queue, not one holding the greeting too.
        let chat = ChatRoom::new(Limits::default(), 280);
        let (a, _a) = member(&chat, 0, "a");
        let (b, _b) = member(&chat, 1, "b");
        let (stalled, mut stalled_client) = member(&chat, 2, "stalled");
        // Only `b` and `a` are read: their queues are emptied as a writer would.
        for outbox in [&a, &b] {
            let mut queue = outbox.lock();
            queue.lines.clear();
            queue.bytes = 0;
        }
        let line = format!("{}\n", "x".repeat(120));
        let mut state = chat.lock();
        let State {
            room, deliveries, ..
        } = &mut *state;
        room.on_input(MemberId(0), format!("{line}{line}").as_bytes(), deliveries);
        let closed = chat.route(&mut state);
        assert_eq!(closed, [MemberId(2)], "dropped once, after the batch");
        assert_eq!(state.room.len(), 2);
        assert!(!state.outboxes.contains_key(&MemberId(2)));
        drop(state);
        let expected = format!("a: {line}a: {line}* stalled left\n");
        let got: Vec<u8> = b.lock().lines.iter().flat_map(|l| l.to_vec()).collect();
        assert_eq!(String::from_utf8(got).unwrap(), expected);
        assert!(stalled.lock().abandoned);
        // Its socket was shut down: its client sees the end.
        let mut rest = Vec::new();
        stalled_client.read_to_end(&mut rest).unwrap();
    }

    #[test]
    fn the_room_stops_taking_lines_at_the_high_mark_and_goes_on_without_a_member_after_the_grace() {
        let chat = ChatRoom::new(Limits::default(), 1000);
        let (a, _a) = member(&chat, 0, "a");
        a.lock().bytes = 0; // its greeting written
        let mut state = chat.lock();
        let start = Instant::now();
        assert_eq!(chat.headroom(&mut state, start), 500);
        a.lock().bytes = 600;
        assert_eq!(chat.headroom(&mut state, start), 0, "over the high mark");
        a.lock().bytes = 300;
        assert_eq!(
            chat.headroom(&mut state, start),
            0,
            "not yet down to the low mark"
        );
        assert!(
            chat.headroom(&mut state, start + PACE_GRACE) > 0,
            "after the grace the room goes on without it"
        );
        assert!(a.lock().behind);
        a.lock().bytes = 100;
        assert_eq!(chat.headroom(&mut state, start + PACE_GRACE), 400);
        assert!(!a.lock().behind, "caught up: it counts again");
    }
}
