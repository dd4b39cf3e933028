//! Group chat in the loop: routing what a room decides to its members' connections.
//!
//! The room ([`crate::protocol::room`]) is sans-I/O: member ids and bytes in, [`Delivery`]s out.
//! This is the other half. Three rules make a room safe in one loop:
//!
//! * **One copy per line, not one per member.** A broadcast is turned into one `Rc<[u8]>` (one
//!   thread: no atomics needed), and each recipient's queue holds a clone of the pointer. A line
//!   to 1,000 members costs one allocation and 1,000 pointer copies.
//! * **Write at the end of the turn, not per line.** A recipient is put on a flush list the first
//!   time a line is queued for it; after the turn's events the loop writes each listed member's
//!   queue with `writev`, so several lines that arrived in one turn leave in one system call.
//! * **A slow member is dropped, never waited for.** Past `--output-limit` queued bytes, a member
//!   is disconnected (like a Redis pub/sub client over its output buffer limit, or an IRC client
//!   over its SendQ). It is dropped *after* the current batch of deliveries, and its `* NAME left`
//!   goes out then: a broadcast never re-enters a broadcast.

use std::rc::Rc;

use log::{debug, trace};
use slab::Slab;

use crate::clock::Now;
use crate::net::Peer;
use crate::protocol::room::{Delivery, MemberId};

use super::{Connection, Reactor};

impl Reactor {
    /// Adds the newly accepted connection `key` to the room of endpoint `room` as `peer`.
    pub(super) fn join_room(&mut self, key: usize, room: usize, peer: &Peer) {
        if let Some(chat) = self.rooms[room].as_mut() {
            chat.join(MemberId(key), &peer.to_string(), &mut self.deliveries);
            self.route(room);
        }
    }

    /// Routes the room's pending deliveries, then drops the members that went over their output
    /// limit, whose `left` notices are routed in turn, until nothing is pending.
    pub(super) fn route(&mut self, room: usize) {
        while !self.deliveries.is_empty() {
            let mut batch = std::mem::take(&mut self.deliveries);
            for delivery in batch.drain(..) {
                match delivery {
                    Delivery::Broadcast { except, bytes } => {
                        let line: Rc<[u8]> = bytes.into();
                        let Some(chat) = self.rooms[room].as_ref() else {
                            continue;
                        };
                        for member in chat.members() {
                            if Some(member) != except {
                                self.outbox.deliver(&mut self.connections, member.0, &line);
                            }
                        }
                    }
                    Delivery::To { member, bytes } => {
                        let line: Rc<[u8]> = bytes.into();
                        self.outbox.deliver(&mut self.connections, member.0, &line);
                    }
                    Delivery::Close { member } => {
                        if let Some(connection) = self.connections.get_mut(member.0) {
                            connection.end_conversation();
                            self.outbox.mark(connection, member.0);
                        }
                    }
                }
            }
            // Keep the (empty) allocation for next time, unless new deliveries came meanwhile.
            if self.deliveries.is_empty() {
                self.deliveries = batch;
            }
            self.drop_slow_members(room);
        }
    }

    /// Members over `--output-limit`: closed now, and their `left` notices queued for routing.
    fn drop_slow_members(&mut self, room: usize) {
        while let Some(key) = self.outbox.over_limit.pop() {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if connection.is_closed() {
                continue;
            }
            debug!(
                "conn #{}: chat member over --output-limit ({} bytes queued); dropping it",
                connection.id,
                connection.output_pending()
            );
            connection.abandon("over the output limit");
            self.finished.push(key);
            if let Some(chat) = self.rooms[room].as_mut() {
                chat.leave(MemberId(key), &mut self.deliveries);
            }
        }
    }

    /// Writes the queues of the members that were sent lines this turn (one `writev` each, as
    /// far as the socket takes), then settles their phase and poller interest.
    pub(super) fn flush_chat_members(&mut self, now: &Now) {
        if self.outbox.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.outbox.dirty);
        for key in dirty.drain(..) {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if connection.is_closed() {
                continue;
            }
            let verdict = connection.drive_output(&mut self.shared, now);
            if let Some(at) = verdict.wake_at {
                let id = connection.id;
                self.timers
                    .push(std::cmp::Reverse((at, super::Wake::Linger { key, id })));
            }
            self.settle(key, false);
        }
        if self.outbox.dirty.is_empty() {
            self.outbox.dirty = dirty;
        }
    }

    /// A chat member that closed on its own (reset, idle timeout, end of stream) is still in its
    /// room: it leaves now, after the batch, and the others are told.
    pub(super) fn leave_room(&mut self, key: usize, room: usize) {
        if self.shutdown_deadline.is_some() {
            return; // Everyone is leaving: no point telling each about all the others.
        }
        if let Some(chat) = self.rooms[room].as_mut() {
            if chat.name(MemberId(key)).is_some() {
                chat.leave(MemberId(key), &mut self.deliveries);
                self.route(room);
            }
        }
    }
}

/// Where routed lines wait to be written: the members to flush at the end of the turn, and
/// those that went over their output limit.
#[derive(Debug)]
pub(super) struct Outbox {
    /// `--output-limit`.
    pub(super) output_limit: usize,
    /// Members with lines queued this turn, flushed at its end.
    pub(super) dirty: Vec<usize>,
    /// Members over the limit, dropped after the current batch of deliveries.
    pub(super) over_limit: Vec<usize>,
}

impl Outbox {
    pub(super) fn new(output_limit: usize) -> Outbox {
        Outbox {
            output_limit,
            dirty: Vec::new(),
            over_limit: Vec::new(),
        }
    }

    /// Queues `line` for member `key` (if it is still there and open).
    fn deliver(&mut self, connections: &mut Slab<Connection>, key: usize, line: &Rc<[u8]>) {
        let Some(connection) = connections.get_mut(key) else {
            return;
        };
        let (queued, newly_dirty) = connection.queue_line(line);
        if newly_dirty {
            self.dirty.push(key);
        }
        if queued > self.output_limit {
            trace!(
                "conn #{}: {queued} bytes queued, over the limit",
                connection.id
            );
            // Listed once: it is closed when dropped, and a closed member takes no more lines.
            if !self.over_limit.contains(&key) {
                self.over_limit.push(key);
            }
        }
    }

    /// Puts `connection` on the flush list (a member whose conversation just ended).
    fn mark(&mut self, connection: &mut Connection, key: usize) {
        if connection.mark_dirty() {
            self.dirty.push(key);
        }
    }
}
