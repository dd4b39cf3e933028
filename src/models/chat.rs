//! Group chat under `--model threaded` and `pool`: the room behind a lock, and every member's
//! thread writing to the others' sockets itself.
//!
//! The sans-I/O room ([`crate::protocol::room`]) is the same one the reactor drives; only the
//! routing of its [`Delivery`]s differs. Each chat service has one [`ChatRoom`]: the [`Room`] and
//! a map from each [`MemberId`] to that member's socket (an [`Arc`] on the socket the admission
//! registry also holds — no descriptor is duplicated), behind one [`Mutex`]. A member's thread
//! blocks in `read` on its own socket; when bytes come it locks the room, calls
//! [`Room::on_input`], and carries out the deliveries itself, still holding the lock: a broadcast
//! is one `write_all` of the same bytes (formatted once by the room) to each other member's
//! socket, in turn. The lock is what keeps the lines to one member in order, and the room
//! consistent.
//!
//! ## The send timeout: a stalled member is dropped
//!
//! A member whose client stops reading fills its socket buffers, and the next write to it blocks.
//! Every member socket has `SO_SNDTIMEO` set to [`SEND_TIMEOUT`] (1 s, or `--idle-timeout` if that
//! is shorter): a write that moves no byte for that long fails, and the member is dropped — its
//! socket shut down both ways (its own thread, blocked in `read`, wakes with an end of stream),
//! removed from the room with [`Room::leave`], and its `* NAME left` routed to the others. Drops
//! found during a batch of deliveries are only collected; they are processed, and their notices
//! routed, after the batch, so a broadcast never re-enters a broadcast (as in the reactor).
//! `--output-limit` does not apply here: the kernel's socket buffers are the limit, and the send
//! timeout is how long a full one is waited for. One second is long enough for a reader that is
//! merely descheduled on a loaded machine, and short enough that the others notice the pause
//! rather than a hang.
//!
//! ## Why this design hurts (it is the foil)
//!
//! * **A broadcaster waits on the slowest member's socket.** A line reaches member N only after
//!   the writes to members 1 to N-1 have returned; one member whose buffers are full stalls every
//!   line for everyone — for up to the send timeout each time, until that member is dropped. The
//!   reactor queues the line and moves on, and drops the member when its queue passes a size.
//! * **A lock held across writes.** Every other member's thread that has a line to hand in waits
//!   for the lock meanwhile, so it stops reading its own socket: a stall spreads to the senders.
//!   Worse, it can close a cycle: a thread blocked writing to member B's socket, while B's client
//!   is blocked writing to the server and B's thread waits for the lock — only the send timeout
//!   breaks it (B is dropped).
//! * **A thread (or a pool worker) per member**, most of them blocked in `read`. Under `pool`, a
//!   member beyond `--threads` waits in the queue, not even greeted, until a member leaves.
//! * **One system call per line per member**, where the reactor writes a member's several lines
//!   with one `writev`.
//!
//! ## Leaving
//!
//! `quit` (or a line over `--max-line`): the member's last replies are written, then it ends with
//! a lingering close. End of stream, a read error or the idle timeout: [`Room::on_end`] or
//! [`Room::leave`], routed. `--idle-timeout` counts from the last byte read from the member *or
//! written to it*, as in the reactor: a member that only listens stays while lines reach it (its
//! read timeout expiring only makes its thread look when the room last wrote to it). At a
//! graceful shutdown the member stops reading and leaves the room quietly (everyone is leaving,
//! as in the reactor: no `left` notices), and its connection ends like any other once the lines
//! already written to it are acknowledged.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;

use crate::net::{BlockingStream, BoundListener, Peer};
use crate::protocol::room::{Delivery, MemberId, Room};
use crate::protocol::{Limits, ProtocolKind};

use super::{linger, linger_after_stop, Settings, BLOCKING_READ_BYTES};

/// How long one write to a chat member may move no byte before the member is dropped (shortened
/// to `--idle-timeout` when that is shorter). See the module doc.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One room per chat service, indexed like the listeners the model was given (`None` for the
/// other services). The default has none: the models that do not serve chat.
#[derive(Debug, Default)]
pub struct ChatRooms {
    rooms: Vec<Option<ChatRoom>>,
}

impl ChatRooms {
    /// An empty room for each chat service among `listeners`.
    pub fn new(listeners: &[BoundListener], limits: Limits) -> ChatRooms {
        ChatRooms {
            rooms: listeners
                .iter()
                .map(|listener| {
                    (listener.protocol == ProtocolKind::Chat).then(|| ChatRoom::new(limits))
                })
                .collect(),
        }
    }

    /// The room of service `service`, if it is a chat service.
    pub fn get(&self, service: usize) -> Option<&ChatRoom> {
        self.rooms.get(service).and_then(Option::as_ref)
    }
}

/// One chat service's room and its members' sockets, behind one lock.
#[derive(Debug)]
pub struct ChatRoom {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    room: Room,
    /// Every member's socket, to write to it.
    sockets: HashMap<MemberId, Socket>,
    /// The next member's id: ids are never reused.
    next_id: usize,
    /// Deliveries the room has emitted and that are not yet carried out.
    deliveries: Vec<Delivery>,
}

/// A member's socket, as the other members' threads see it.
#[derive(Debug)]
struct Socket {
    stream: Arc<BlockingStream>,
    /// When a write to it last succeeded: a member that only listens is not idle while lines
    /// reach it (`--idle-timeout` measures from the last byte read *or written*, as in the
    /// reactor).
    last_written: Instant,
}

impl Socket {
    fn new(stream: Arc<BlockingStream>) -> Socket {
        Socket {
            stream,
            last_written: Instant::now(),
        }
    }
}

impl ChatRoom {
    fn new(limits: Limits) -> ChatRoom {
        ChatRoom {
            state: Mutex::new(State {
                room: Room::new(limits),
                sockets: HashMap::new(),
                next_id: 0,
                deliveries: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while routing leaves at worst a member half-written-to; the room itself is
        // changed only by the sans-I/O calls, which do not panic half-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves one member on the calling thread until it leaves, is dropped, or the server stops.
    ///
    /// Under `--proxy-protocol` it joins only once its PROXY header is read, under the name the
    /// header carries, and the bytes that followed the header are its first input.
    pub fn serve(
        &self,
        stream: &Arc<BlockingStream>,
        peer: Peer,
        settings: &Settings,
        stopping: &AtomicBool,
    ) {
        let mut input = [0u8; BLOCKING_READ_BYTES];
        let Some((peer, mut first)) =
            super::proxy::client(stream, peer, settings, stopping, &mut input)
        else {
            return;
        };
        let send_timeout = settings
            .idle_timeout
            .map_or(SEND_TIMEOUT, |idle| idle.min(SEND_TIMEOUT));
        if stream.set_read_timeout(settings.idle_timeout).is_err()
            || stream.set_write_timeout(Some(send_timeout)).is_err()
        {
            return;
        }
        let member = {
            let mut state = self.lock();
            let member = MemberId(state.next_id);
            state.next_id += 1;
            state
                .sockets
                .insert(member, Socket::new(Arc::clone(stream)));
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.join(member, &peer.to_string(), deliveries);
            state.route();
            member
        };
        // From here on the member must leave the socket map however this function ends.
        let guard = Membership { room: self, member };
        let mut reader: &BlockingStream = stream;
        let mut last_read = Instant::now();
        // Whether the read timeout is shorter than `--idle-timeout` (see the timeout below).
        let mut shortened = false;
        loop {
            // The bytes that followed a PROXY header, if any, stand for the first read.
            let count = if first > 0 {
                std::mem::take(&mut first)
            } else {
                if stopping.load(Ordering::Acquire) {
                    return guard.stop(stream, &mut input);
                }
                match reader.read(&mut input) {
                    Ok(0) if stopping.load(Ordering::Acquire) => {
                        return guard.stop(stream, &mut input);
                    }
                    Ok(0) => {
                        debug!("{peer}: end of stream");
                        return guard.end(stream);
                    }
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if crate::net::is_timeout(&e) => {
                        // Nothing read for the idle timeout; but lines written to it count too.
                        let idle = settings.idle_timeout.unwrap_or(Duration::ZERO);
                        let last_written = self.lock().sockets.get(&member).map(|s| s.last_written);
                        let last = last_written.map_or(last_read, |written| written.max(last_read));
                        let left = idle.saturating_sub(last.elapsed());
                        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                            debug!("{peer}: idle timeout; leaving");
                            return; // The guard's drop leaves the room.
                        }
                        shortened = true;
                        continue;
                    }
                    Err(e) => {
                        // A reset, or a socket shut down by a drop.
                        debug!("{peer}: read failed: {e}; leaving");
                        return; // The guard's drop leaves the room.
                    }
                }
            };
            last_read = Instant::now();
            if shortened {
                shortened = false;
                if stream.set_read_timeout(settings.idle_timeout).is_err() {
                    return;
                }
            }
            let mut state = self.lock();
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.on_input(member, &input[..count], deliveries);
            let closed = state.route();
            drop(state);
            if closed.contains(&member) {
                // Its last replies are written (or it was dropped): end the conversation.
                linger(stream, &mut input);
                return;
            }
        }
    }
}

/// A member's place in the room, given up when its thread is done with it.
struct Membership<'a> {
    room: &'a ChatRoom,
    member: MemberId,
}

impl Membership<'_> {
    /// The client's end of stream: a held partial line is handled, then the member leaves.
    fn end(self, stream: &BlockingStream) {
        let mut state = self.room.lock();
        let State {
            room, deliveries, ..
        } = &mut *state;
        room.on_end(self.member, deliveries);
        state.route();
        drop(state);
        // The Close it got has nothing left to wait for: the client has finished sending.
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// A graceful shutdown: leave quietly, then close once what was written is acknowledged.
    fn stop(self, stream: &BlockingStream, scratch: &mut [u8]) {
        let _ = stream.shutdown(Shutdown::Read);
        // Out of the socket map first, under the lock: no other thread writes to it afterwards.
        self.room.lock().sockets.remove(&self.member);
        // Still in the room: its name stays until the process exits, and nobody is told.
        std::mem::forget(self);
        linger_after_stop(stream, scratch);
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let mut state = self.room.lock();
        if state.room.name(self.member).is_some() {
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.leave(self.member, deliveries);
            state.route();
        }
        state.sockets.remove(&self.member);
    }
}

impl State {
    /// Carries out the pending deliveries, batch after batch: members whose writes failed or
    /// timed out are dropped after each batch, and their `left` notices make the next. Returns
    /// the members closed by a [`Delivery::Close`] or dropped.
    fn route(&mut self) -> Vec<MemberId> {
        let mut closed = Vec::new();
        let mut dropped: Vec<MemberId> = Vec::new();
        while !self.deliveries.is_empty() {
            let mut batch = std::mem::take(&mut self.deliveries);
            for delivery in batch.drain(..) {
                match delivery {
                    Delivery::Broadcast { except, bytes } => {
                        for member in self.room.members() {
                            if Some(member) != except && !dropped.contains(&member) {
                                write_to(&mut self.sockets, member, &bytes, &mut dropped);
                            }
                        }
                    }
                    Delivery::To { member, bytes } => {
                        if !dropped.contains(&member) {
                            write_to(&mut self.sockets, member, &bytes, &mut dropped);
                        }
                    }
                    Delivery::Close { member } => {
                        // Its thread ends the connection; nobody writes to it any more.
                        self.sockets.remove(&member);
                        closed.push(member);
                    }
                }
            }
            if self.deliveries.is_empty() {
                self.deliveries = batch; // Keep the allocation.
            }
            for member in dropped.drain(..) {
                if let Some(socket) = self.sockets.remove(&member) {
                    // Wakes its thread, blocked in `read`, with an end of stream.
                    let _ = socket.stream.shutdown(Shutdown::Both);
                }
                self.room.leave(member, &mut self.deliveries);
                closed.push(member);
            }
        }
        closed
    }
}

/// Writes `bytes` to `member`; a failure (the send timeout, a reset) lists it in `dropped`.
fn write_to(
    sockets: &mut HashMap<MemberId, Socket>,
    member: MemberId,
    bytes: &[u8],
    dropped: &mut Vec<MemberId>,
) {
    let Some(socket) = sockets.get_mut(&member) else {
        return;
    };
    let mut writer: &BlockingStream = &socket.stream;
    match writer.write_all(bytes) {
        Ok(()) => socket.last_written = Instant::now(),
        Err(e) => {
            debug!("chat member {}: write failed: {e}; dropping it", member.0);
            dropped.push(member);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A member socket (server side, with `timeout` as its send timeout) and its client end.
    fn pair(timeout: Duration) -> (Arc<BlockingStream>, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_write_timeout(Some(timeout)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (Arc::new(BlockingStream::Unix(server)), client)
    }

    /// Fills the socket's buffers, so that the next write to it blocks.
    fn fill(socket: &BlockingStream) {
        let BlockingStream::Unix(s) = socket else {
            unreachable!()
        };
        s.set_nonblocking(true).unwrap();
        let chunk = [b'x'; 4096];
        let mut s: &UnixStream = s;
        while s.write(&chunk).is_ok() {}
        s.set_nonblocking(false).unwrap();
    }

    fn read_exactly(client: &mut UnixStream, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(
            got.escape_ascii().to_string(),
            expected.escape_ascii().to_string()
        );
    }

    #[test]
    fn a_stalled_member_is_dropped_once_after_the_batch_and_the_others_get_every_line() {
        let timeout = Duration::from_millis(100);
        let chat = ChatRoom::new(Limits::default());
        let mut clients = Vec::new();
        {
            let mut state = chat.lock();
            for (n, name) in ["a", "b", "stalled"].iter().enumerate() {
                let (socket, client) = pair(timeout);
                state.sockets.insert(MemberId(n), Socket::new(socket));
                let State {
                    room, deliveries, ..
                } = &mut *state;
                room.join(MemberId(n), name, deliveries);
                assert!(state.route().is_empty());
                clients.push(client);
            }
            fill(&state.sockets[&MemberId(2)].stream);
        }
        // Two lines in one input: one batch of two broadcasts, each to `b` and `stalled`.
        let started = Instant::now();
        let closed = {
            let mut state = chat.lock();
            let State {
                room, deliveries, ..
            } = &mut *state;
            room.on_input(MemberId(0), b"one\ntwo\n", deliveries);
            state.route()
        };
        let took = started.elapsed();
        assert_eq!(closed, [MemberId(2)]);
        // One send timeout, not one per line: the second broadcast skips the dropped member.
        assert!(took < timeout * 2, "routing took {took:?}");
        let state = chat.lock();
        assert_eq!(state.room.len(), 2);
        assert!(!state.sockets.contains_key(&MemberId(2)));
        drop(state);

        let mut b = clients.remove(1);
        read_exactly(
            &mut b,
            b"* welcome b; 2 members here; /nick NAME, /who, quit\n",
        );
        read_exactly(
            &mut b,
            b"* stalled joined\na: one\na: two\n* stalled left\n",
        );
        let mut a = clients.remove(0);
        read_exactly(
            &mut a,
            b"* welcome a; 1 member here; /nick NAME, /who, quit\n",
        );
        read_exactly(&mut a, b"* b joined\n* stalled joined\n* stalled left\n");
        // The stalled member's socket was shut down: draining it reaches the end.
        let mut stalled = clients.remove(0);
        let mut rest = Vec::new();
        stalled.read_to_end(&mut rest).unwrap();
    }
}
