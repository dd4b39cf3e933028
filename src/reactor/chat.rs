//! Group chat in the loop: routing what a room decides to its members' connections.
//!
//! The room ([`crate::protocol::room`]) is sans-I/O: member ids and bytes in, [`Delivery`]s out.
//! This is the other half. Three rules make a room safe in one loop:
//!
//! * **One copy per line, not one per member.** A broadcast is appended once to the room's log
//!   ([`super::fanout`]); each member holds only its position in it. A line to 1,000 members
//!   costs one allocation, and a member that falls behind costs no more than one that keeps up.
//! * **Write at the end of the turn, not per line.** The lines a turn produced are written after
//!   its events: every member of a room that grew is written to with `writev`, so several lines
//!   that arrived in one turn leave in one system call.
//! * **A slow member is dropped, never waited for.** A member still owed more than
//!   `--output-limit` bytes after that write is disconnected (like a Redis pub/sub client over
//!   its output buffer limit, or an IRC client over its SendQ). It is dropped *after* the turn's
//!   deliveries, and its `* NAME left` goes out then: a broadcast never re-enters a broadcast.

use log::{debug, trace};

use crate::clock::Now;
use crate::net::Peer;
use crate::protocol::room::{Delivery, MemberId, Room};
use crate::protocol::Limits;

use super::fanout::RoomLog;
use super::Reactor;

/// A chat endpoint's room, and the log of its lines not yet written to every member.
#[derive(Debug)]
pub(super) struct ChatRoom {
    /// Members, names and rules (sans-I/O).
    pub(super) room: Room,
    /// Broadcast lines, each stored once, until every member has been written past them.
    pub(super) log: RoomLog,
    /// Whether it is on the outbox's list of rooms to write out at the end of the turn.
    listed: bool,
}

impl ChatRoom {
    pub(super) fn new(limits: Limits) -> ChatRoom {
        ChatRoom {
            room: Room::new(limits),
            log: RoomLog::default(),
            listed: false,
        }
    }
}

impl Reactor {
    /// Adds the newly accepted connection `key` to the room of endpoint `room` as `peer`.
    pub(super) fn join_room(&mut self, key: usize, room: usize, peer: &Peer) {
        if let Some(chat) = self.rooms[room].as_mut() {
            chat.room
                .join(MemberId(key), &peer.to_string(), &mut self.deliveries);
            self.route(room);
        }
    }

    /// Routes the room's pending deliveries: broadcasts into its log, lines for one member into
    /// that member's own queue, closes to their connections.
    pub(super) fn route(&mut self, room: usize) {
        let Some(chat) = self.rooms[room].as_mut() else {
            self.deliveries.clear();
            return;
        };
        for delivery in self.deliveries.drain(..) {
            match delivery {
                Delivery::Broadcast { except, bytes } => {
                    chat.log.append(bytes.into(), except);
                    if !std::mem::replace(&mut chat.listed, true) {
                        self.outbox.rooms.push(room);
                    }
                }
                Delivery::To { member, bytes } => {
                    if let Some(connection) = self.connections.get_mut(member.0) {
                        if connection.queue_own_line(&chat.log, bytes.into()) {
                            self.outbox.members.push(member.0);
                        }
                    }
                }
                Delivery::Close { member } => {
                    if let Some(connection) = self.connections.get_mut(member.0) {
                        connection.leave_log(&chat.log, member);
                        connection.end_conversation();
                        if connection.mark_dirty() {
                            self.outbox.members.push(member.0);
                        }
                    }
                }
            }
        }
    }

    /// Writes out what this turn routed: first the members sent lines of their own (or ended),
    /// then every member of each room whose log grew. Members still owed more than
    /// `--output-limit` after that are dropped, and the log is trimmed to the oldest cursor.
    pub(super) fn flush_chat_members(&mut self, now: &Now) {
        let mut members = std::mem::take(&mut self.outbox.members);
        for key in members.drain(..) {
            self.flush_member(key, now);
            // Lines for it alone (`/who`, errors) count against its limit too, whether or not
            // its room's log grew this turn.
            let over = self.connections.get(key).and_then(|connection| {
                let room = connection.chat_room()?;
                let chat = self.rooms[room].as_ref()?;
                (!connection.is_closed()
                    && connection.chat_backlog(&chat.log) > self.config.output_limit)
                    .then_some(room)
            });
            if let Some(room) = over {
                debug!("conn key {key}: chat member over --output-limit; dropping it");
                self.outbox.over_limit.push(key);
                self.drop_slow_members(room);
            }
        }
        if self.outbox.members.is_empty() {
            self.outbox.members = members; // keep the allocation
        }
        let mut rooms = std::mem::take(&mut self.outbox.rooms);
        for room in rooms.drain(..) {
            self.write_out_room(room, now);
        }
        if self.outbox.rooms.is_empty() {
            self.outbox.rooms = rooms;
        }
    }

    /// Lists `room` to be written out (and its log trimmed) at the end of the turn.
    pub(super) fn list_room(&mut self, room: usize) {
        if let Some(chat) = self.rooms[room].as_mut() {
            if !std::mem::replace(&mut chat.listed, true) {
                self.outbox.rooms.push(room);
            }
        }
    }

    /// Whether lines routed this turn are still to be written (the loop must not block).
    pub(super) fn chat_output_waiting(&self) -> bool {
        !self.outbox.members.is_empty() || !self.outbox.rooms.is_empty()
    }

    /// Writes to chat member `key` what its room owes it, and settles its phase and interest.
    fn flush_member(&mut self, key: usize, now: &Now) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let Some(chat) = connection.chat_room().and_then(|r| self.rooms[r].as_ref()) else {
            return;
        };
        if connection.is_closed() {
            return;
        }
        let verdict = connection.drive_output(&mut self.shared, now, &chat.log, MemberId(key));
        if let Some(at) = verdict.wake_at {
            let id = connection.id;
            self.timers
                .push(std::cmp::Reverse((at, super::Wake::Linger { key, id })));
        }
        self.settle(key, false);
    }

    /// Writes every member of `room` its new lines, drops those left over the output limit,
    /// and trims the log to what some member still needs.
    fn write_out_room(&mut self, room: usize, now: &Now) {
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        chat.listed = false;
        let mut members = std::mem::take(&mut self.outbox.scratch);
        members.extend(chat.room.members().map(|member| member.0));
        let mut oldest = chat.log.head();
        for &key in &members {
            self.flush_member(key, now);
            let (Some(connection), Some(chat)) = (self.connections.get(key), &self.rooms[room])
            else {
                continue;
            };
            if connection.is_closed() {
                continue;
            }
            let backlog = connection.chat_backlog(&chat.log);
            if backlog > self.config.output_limit {
                debug!(
                    "conn #{}: chat member over --output-limit ({backlog} bytes owed); dropping it",
                    connection.id
                );
                self.outbox.over_limit.push(key);
            } else if let Some(cursor) = connection.log_cursor() {
                oldest = oldest.min(cursor);
            }
        }
        members.clear();
        self.outbox.scratch = members;
        self.drop_slow_members(room);
        if let Some(chat) = self.rooms[room].as_mut() {
            chat.log.trim_before(oldest);
            trace!(
                "room {room}: {} lines held for members still behind",
                chat.log.len()
            );
        }
    }

    /// Members over `--output-limit`: closed now, and their `left` notices routed (they are
    /// written out next turn).
    fn drop_slow_members(&mut self, room: usize) {
        while let Some(key) = self.outbox.over_limit.pop() {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if connection.is_closed() {
                continue;
            }
            connection.abandon("over the output limit");
            self.finished.push(key);
            if let Some(chat) = self.rooms[room].as_mut() {
                chat.room.leave(MemberId(key), &mut self.deliveries);
            }
            self.route(room);
        }
    }

    /// A chat member that closed on its own (reset, idle timeout, end of stream) is still in its
    /// room: it leaves now, after the batch, and the others are told.
    pub(super) fn leave_room(&mut self, key: usize, room: usize) {
        if self.shutdown_deadline.is_some() {
            return; // Everyone is leaving: no point telling each about all the others.
        }
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        if chat.room.name(MemberId(key)).is_some() {
            chat.room.leave(MemberId(key), &mut self.deliveries);
            if chat.room.is_empty() {
                chat.log.trim_before(chat.log.head()); // nobody is owed anything
            }
            self.route(room);
        }
    }
}

/// What routing left for the end of the turn: the members and rooms to write out, and the
/// members that went over their output limit.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Members sent lines of their own (or whose conversation ended) this turn.
    pub(super) members: Vec<usize>,
    /// Rooms whose log grew this turn: each of their members is written to.
    pub(super) rooms: Vec<usize>,
    /// Members over the limit, dropped after the room is written out.
    over_limit: Vec<usize>,
    /// A reused list of one room's members.
    scratch: Vec<usize>,
}
