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
//! * **A slow member is dropped, never waited for long.** A member still owed more than
//!   `--output-limit` bytes after that write is disconnected (like a Redis pub/sub client over
//!   its output buffer limit, or an IRC client over its SendQ). It is dropped *after* the turn's
//!   deliveries, and its `* NAME left` goes out then: a broadcast never re-enters a broadcast.
//! * **A sender is read only as fast as the room takes its lines** ([`Pace`]): a burst slows its
//!   sender (parked, not read, until the members that keep up have drained), never gets those
//!   members dropped; a member that does not keep up holds the room one grace at most
//!   ([`PACE_GRACE`]), then the room goes on and it is dropped at the limit.
//! * **At a graceful shutdown** every member still in the room is sent
//!   [`SHUTDOWN_NOTICE`](crate::protocol::room::SHUTDOWN_NOTICE) after the lines it is owed,
//!   then its connection ends like any other.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Instant;

use log::{debug, log_enabled, trace, Level};
use slab::Slab;

use super::connection::Verdict;
use crate::clock::Now;
use crate::protocol::room::{Delivery, MemberId, Room, PACE_GRACE};
use crate::protocol::Limits;
use crate::service::Address;

use super::access;
use super::chat_bus::send_to_bus;
use super::connection::FirstInput;
use super::counters::EndCause;
use super::fanout::RoomLog;
use super::handler::{ChatSink, Client, HeldInput};
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
    /// Flow control: how much more the room takes, and the senders waiting for it.
    pub(super) pace: Pace,
    /// A shared room's newcomers whose `joined` notice is not back from the bus yet, by slab
    /// key: their serial and their greeting, sent when the notice comes back (their place in the
    /// room's order). Empty for a room of one process.
    pub(super) greetings: HashMap<usize, (u64, Vec<u8>)>,
    /// Lines written whole to a member, each member counted apart (the metrics' deliveries).
    pub(super) delivered: u64,
}

impl ChatRoom {
    /// An empty room whose members may be owed up to `output_limit` bytes each; `shared`: on
    /// the chat bus (see `reactor::chat_bus`).
    pub(super) fn new(limits: Limits, output_limit: usize, shared: bool) -> ChatRoom {
        ChatRoom {
            room: if shared {
                Room::shared(limits)
            } else {
                Room::new(limits)
            },
            log: RoomLog::default(),
            listed: false,
            pace: Pace::new(output_limit),
            greetings: HashMap::new(),
            delivered: 0,
        }
    }
}

/// A room's flow control: the room's pace is set by the members that keep up.
///
/// A member's read turns lines into broadcasts owed to every other member, so one read of
/// empty lines (256 KiB of input) would owe each member megabytes. Instead a sender may add to
/// the log only what the room can take: the room's **headroom** is the high mark (half of
/// `--output-limit`) less the largest backlog among the members that keep up. A read turn hands
/// the room lines while its allowance lasts — the headroom, at most a quantum — keeps the rest
/// of what it read (one read's worth at most), and the sender is **parked**: not read again
/// (its READABLE events change nothing), so its client's writes block once the kernel's buffers
/// are full, as an upper or echo client's do past `--output-limit`. That is the IRC server's
/// flood throttle, decided by the readers instead of a fixed rate.
///
/// Once the headroom is spent the room **drains**: it takes nothing until every member that
/// keeps up is owed no more than the low mark (a quarter of the limit; the gap keeps a flood
/// from costing a wake-up per line), then unparks the waiting senders in the order they parked,
/// as many as the headroom has a quantum for; under edge triggering they go on the still-ready
/// queue, since no new edge will come for bytes that already wait. A sender that used up its
/// quantum parks again at the back, so a flooder cannot starve the others.
///
/// A member that holds the room back — owed more than the low mark while the room drains — for
/// [`PACE_GRACE`] is **behind**: the pace no longer waits for it. The room goes on, and that
/// member is dropped once it is owed more than `--output-limit`, like any slow member — unless
/// it catches up to the low mark first, and then it counts again. So a member that never reads,
/// or reads a trickle, or only starts reading late, holds the others for one grace at most,
/// and a burst never gets the members that keep reading dropped: their backlog stays under the
/// high mark plus one line.
#[derive(Debug)]
pub(super) struct Pace {
    /// Backlog at which the room stops taking lines (half of `--output-limit`).
    high: usize,
    /// Backlog every member that keeps up must be down to before the room takes lines again.
    low: usize,
    /// The most one sender may add in one drive.
    quantum: usize,
    /// Broadcast bytes the room still takes before it looks at its members again.
    headroom: usize,
    /// Since when the room has waited for its members to drain (`None`: it takes lines).
    draining_since: Option<Instant>,
    /// Senders waiting for the room to take their lines, oldest first (slab key, serial).
    parked: VecDeque<(usize, u64)>,
    /// What parked senders read and the room did not take yet, by slab key (with the serial,
    /// so a key's next tenant never gets it).
    held: HashMap<usize, (u64, Box<HeldInput>)>,
    /// Broadcast bytes published on the chat bus and not back yet: every member will be owed
    /// them, so they count as backlog (always 0 for a room of one process).
    in_flight: usize,
}

impl Pace {
    fn new(output_limit: usize) -> Pace {
        let high = (output_limit / 2).max(1);
        let low = output_limit / 4;
        Pace {
            high,
            low,
            quantum: ((high - low) / 2).max(1),
            headroom: high,
            draining_since: None,
            parked: VecDeque::new(),
            held: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Bytes this instance published came back from the chat bus (into the log).
    pub(super) fn returned(&mut self, bytes: usize) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// The chat bus is lost and the room empty: nothing is in flight, nobody waits.
    pub(super) fn reset(&mut self) {
        self.headroom = self.high;
        self.draining_since = None;
        self.parked.clear();
        self.held.clear();
        self.in_flight = 0;
    }

    /// The input sender `key` (serial `id`) left unread by the room, if any.
    pub(super) fn take_held(&mut self, key: usize, id: u64) -> Option<Box<HeldInput>> {
        if self.held.is_empty() {
            return None; // The steady state: no lookup.
        }
        self.held
            .remove(&key)
            .filter(|(owner, _)| *owner == id)
            .map(|(_, held)| held)
    }

    /// Keeps sender `key`'s unread input until its next drive.
    pub(super) fn put_back_held(&mut self, key: usize, id: u64, held: Box<HeldInput>) {
        self.held.insert(key, (id, held));
    }

    /// Member `key` has left: what it held is dropped with it.
    fn forget(&mut self, key: usize) {
        self.held.remove(&key);
    }

    /// What one sender may add to the log in its next drive.
    pub(super) fn allowance(&self) -> usize {
        self.headroom.min(self.quantum)
    }

    /// Whether the room waits for its members to drain.
    pub(super) fn is_draining(&self) -> bool {
        self.draining_since.is_some()
    }

    /// A sender stopped for lack of allowance: it waits at the back of the queue.
    pub(super) fn park(&mut self, key: usize, id: u64) {
        self.parked.push_back((key, id));
    }

    /// `bytes` were appended to the log (a broadcast: every member is owed them).
    fn took(&mut self, bytes: usize) {
        self.headroom = self.headroom.saturating_sub(bytes);
    }

    /// After a write-out, with `largest` the largest backlog among the members that keep up:
    /// takes lines again, goes on draining, or says that the grace is over (`true`), so the
    /// members holding the room back must be found and marked behind.
    fn settle(&mut self, largest: usize, now: Instant) -> Settled {
        // What is on its way back from the chat bus is owed to every member already.
        let largest = largest + self.in_flight;
        match self.draining_since {
            None if largest < self.high => {
                self.headroom = self.high - largest;
                Settled::Taking
            }
            None => {
                self.headroom = 0;
                self.draining_since = Some(now);
                Settled::StartedDraining(now + PACE_GRACE)
            }
            Some(_) if largest <= self.low => {
                self.draining_since = None;
                self.headroom = self.high - largest;
                Settled::Taking
            }
            Some(since) if now >= since + PACE_GRACE => Settled::GraceOver,
            Some(_) => {
                self.headroom = 0;
                Settled::Draining
            }
        }
    }
}

/// What [`Pace::settle`] decided.
#[derive(Debug, PartialEq)]
enum Settled {
    /// The room takes lines: unpark senders.
    Taking,
    /// The room has just begun waiting; look again at this instant at the latest.
    StartedDraining(Instant),
    /// Still waiting, within the grace.
    Draining,
    /// Waited a grace for members that did not drain.
    GraceOver,
}

/// Where chat member `key` stands in its room's log, if it is a member still open.
fn cursor_of(clients: &Slab<Client>, key: usize) -> Option<u64> {
    let (conn, member) = clients.get(key).and_then(Client::as_member)?;
    member.log_cursor(conn)
}

impl Reactor {
    /// Drives chat member `key` (the chat arm of the loop's seam): lends it its room, and
    /// afterwards keeps the room's flow control and log up to date with what it did.
    pub(super) fn drive_member(&mut self, key: usize, now: &Now, first: Option<FirstInput>) {
        let Some((conn, member)) = self.clients.get_mut(key).and_then(Client::as_member_mut) else {
            return;
        };
        let room = member.room();
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        let was_oldest = member.log_cursor(conn) == Some(chat.log.first());
        let was_parked = member.is_parked();
        let mut held = chat.pace.take_held(key, conn.id);
        let sink = ChatSink {
            room: &mut chat.room,
            log: &chat.log,
            deliveries: &mut self.deliveries,
            member: MemberId(key),
            // A parked member waits its turn in the room's queue of senders.
            allowance: if was_parked { 0 } else { chat.pace.allowance() },
            held: &mut held,
            delivered: &mut chat.delivered,
        };
        let verdict = member.drive(conn, &mut self.shared, now, sink, first);
        if let Some(record) = conn.access_mut() {
            record.note_name(chat.room.name(MemberId(key))); // it may have taken a /nick
        }
        if let Some(held) = held.filter(|_| !conn.is_closed()) {
            chat.pace.put_back_held(key, conn.id, held);
        }
        if member.is_parked() && !was_parked && !conn.is_closed() {
            chat.pace.park(key, conn.id);
        }
        // A member that held the log's oldest line has moved on, or one that took bytes while
        // the room waits for its members to drain: look at the room at the turn's end (trim
        // the log, perhaps take lines again).
        let oldest_moved = (was_oldest && member.log_cursor(conn) != Some(chat.log.first()))
            || chat.pace.is_draining();
        self.apply(key, verdict);
        self.route(room);
        if oldest_moved {
            self.list_room(room);
        }
    }

    /// Adds the newly accepted connection `key` to the room of endpoint `room`, first named
    /// `name` (its address, or its TLS certificate's name).
    pub(super) fn join_room(&mut self, key: usize, room: usize, name: &str) {
        if self.rooms[room]
            .as_ref()
            .is_some_and(|c| c.room.is_shared())
        {
            return self.join_through_bus(key, room, name);
        }
        if let Some(chat) = self.rooms[room].as_mut() {
            chat.room.join(MemberId(key), name, &mut self.deliveries);
            // The name the room gave: `name` with a `-2` suffix if another member has it.
            let given = chat.room.name(MemberId(key)).unwrap_or(name);
            if let Some(client) = self.clients.get_mut(key) {
                access::log_join(&mut client.conn, self.endpoints[room].service(), given);
            }
            trace!(
                "{}: {} joins; {} now",
                RoomName(&self.endpoints[room].local),
                member(&self.clients, &chat.room, key),
                Members(chat.room.len())
            );
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
        let name = RoomName(&self.endpoints[room].local);
        // Only counted while traced: then one read of many lines makes a few log lines.
        let mut tally = log_enabled!(Level::Trace).then(Tally::default);
        for delivery in self.deliveries.drain(..) {
            match delivery {
                // A shared room's broadcasts enter the log when they come back from the bus
                // (`chat_bus`), at their place in the room's order; its questions go there too.
                Delivery::Broadcast { .. } | Delivery::Bus(_) if chat.room.is_shared() => {
                    if let Delivery::Broadcast { bytes, .. } = &delivery {
                        if let Some(tally) = tally.as_mut() {
                            tally.published += 1;
                        }
                        chat.pace.took(bytes.len());
                        chat.pace.in_flight += bytes.len();
                    }
                    if let Some(bus) = self.bus.as_mut() {
                        send_to_bus(bus, &self.clients, &chat.room, room, delivery);
                    }
                }
                Delivery::Bus(request) => {
                    debug!("{name}: a room of one process asked the bus {request:?}; ignored");
                }
                Delivery::Broadcast { except, bytes } => {
                    if let Some(tally) = tally.as_mut() {
                        let reach = Members(recipients(&chat.room, except));
                        // Names cannot start with `*`: a line that does is the room's notice.
                        if bytes.starts_with(b"* ") {
                            tally.notices += 1;
                            if tally.notices == 1 {
                                trace!(
                                    "{name}: {} for {reach}; stored once, in the room's log",
                                    Quoted(&bytes)
                                );
                            }
                        } else {
                            tally.said(except, bytes.len(), reach);
                        }
                    }
                    chat.pace.took(bytes.len());
                    chat.log.append(bytes.into(), except);
                    if !std::mem::replace(&mut chat.listed, true) {
                        self.outbox.rooms.push(room);
                    }
                }
                Delivery::To { member: to, bytes } => {
                    if let Some(tally) = tally.as_mut() {
                        tally.replies += 1;
                        if tally.replies == 1 {
                            trace!(
                                "{name}: {} for {} alone",
                                Quoted(&bytes),
                                member(&self.clients, &chat.room, to.0)
                            );
                        }
                    }
                    let to_member = self.clients.get_mut(to.0).and_then(Client::as_member_mut);
                    if let Some((conn, member)) = to_member {
                        if member.queue_own_line(conn, &chat.log, bytes.into()) {
                            self.outbox.members.push(to.0);
                        }
                    }
                }
                Delivery::Close { member } => {
                    let key = member.0;
                    if let Some((conn, member)) =
                        self.clients.get_mut(key).and_then(Client::as_member_mut)
                    {
                        trace!(
                            "{name}: conn #{} has left; it is written what it is owed, then \
                             closed",
                            conn.id
                        );
                        member.leave_log(&chat.log, MemberId(key));
                        conn.end_conversation();
                        if member.mark_dirty() {
                            self.outbox.members.push(key);
                        }
                    }
                }
            }
        }
        if let Some(tally) = tally {
            tally.log(&name, |key| member(&self.clients, &chat.room, key));
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
            let backlog = |clients: &Slab<Client>| {
                let (conn, member) = clients.get(key).and_then(Client::as_member)?;
                let chat = self.rooms[member.room()].as_ref()?;
                let backlog = member.backlog(&chat.log);
                (!conn.is_closed()).then_some((member.room(), backlog))
            };
            let over =
                backlog(&self.clients).filter(|&(_, backlog)| backlog > self.config.output_limit);
            if let Some((room, backlog)) = over {
                if let Some(chat) = self.rooms[room].as_ref() {
                    debug!(
                        "{}: dropped for falling behind: owed {backlog} bytes, over \
                         --output-limit ({})",
                        member(&self.clients, &chat.room, key),
                        self.config.output_limit
                    );
                }
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
        let Some((conn, member)) = self.clients.get_mut(key).and_then(Client::as_member_mut) else {
            return;
        };
        let Some(chat) = self.rooms[member.room()].as_mut() else {
            return;
        };
        if conn.is_closed() {
            return;
        }
        let room = (&chat.log, &mut chat.delivered);
        let verdict = member.drive_output(conn, &mut self.shared, now, room, MemberId(key));
        self.apply(
            key,
            Verdict {
                still_ready: false,
                ..verdict
            },
        );
    }

    /// Writes every member of `room` its new lines, drops those left over the output limit,
    /// trims the log to what some member still needs, and settles the room's pace.
    fn write_out_room(&mut self, room: usize, now: &Now) {
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        chat.listed = false;
        let mut members = std::mem::take(&mut self.outbox.scratch);
        let mut backlogs = std::mem::take(&mut self.outbox.backlogs);
        members.extend(chat.room.members().map(|member| member.0));
        let mut oldest = chat.log.head();
        let tracing = log_enabled!(Level::Trace);
        let mut behind = 0;
        for &key in &members {
            // Where it stood, to tell how many lines this write took it past.
            let before = if tracing {
                cursor_of(&self.clients, key)
            } else {
                None
            };
            self.flush_member(key, now);
            let (Some((conn, joined)), Some(chat)) = (
                self.clients.get(key).and_then(Client::as_member),
                &self.rooms[room],
            ) else {
                backlogs.push(None);
                continue;
            };
            if conn.is_closed() {
                backlogs.push(None);
                continue;
            }
            let backlog = joined.backlog(&chat.log);
            let who = || member(&self.clients, &chat.room, key);
            if let (Some(before), Some(after)) = (before, joined.log_cursor(conn)) {
                let lines = chat.log.lines_for(before, after, MemberId(key));
                let place = RoomName(&self.endpoints[room].local);
                match (lines, backlog) {
                    (0, 0) => {}
                    (_, 0) => trace!("{place}: {} got {}; up to date", who(), Lines(lines)),
                    _ => trace!(
                        "{place}: {} got {}; still owed {backlog} bytes, for when its socket \
                         takes more",
                        who(),
                        Lines(lines)
                    ),
                }
            }
            if backlog > self.config.output_limit {
                debug!(
                    "{}: dropped for falling behind: owed {backlog} bytes, over --output-limit \
                     ({})",
                    who(),
                    self.config.output_limit
                );
                self.outbox.over_limit.push(key);
                backlogs.push(None);
            } else if let Some(cursor) = joined.log_cursor(conn) {
                behind += usize::from(backlog > 0);
                oldest = oldest.min(cursor);
                backlogs.push(Some(backlog));
            } else {
                backlogs.push(None);
            }
        }
        self.settle_pace(room, &members, &backlogs, now);
        let (written, dropped) = (members.len(), self.outbox.over_limit.len());
        members.clear();
        backlogs.clear();
        self.outbox.scratch = members;
        self.outbox.backlogs = backlogs;
        self.drop_slow_members(room);
        if let Some(chat) = self.rooms[room].as_mut() {
            chat.log.trim_before(oldest);
            let place = RoomName(&self.endpoints[room].local);
            match (written, dropped, behind, chat.log.len()) {
                (0, ..) => trace!("{place}: nobody left in it; its log is empty again"),
                (written, 0, 0, 0) => trace!(
                    "{place}: written out; {} up to date, its log is empty again",
                    Members(written)
                ),
                (written, 0, behind, held) => trace!(
                    "{place}: written out to {}; {behind} still behind, so its log keeps {}",
                    Members(written),
                    Lines(held)
                ),
                (written, dropped, behind, held) => trace!(
                    "{place}: written out to {}; {dropped} dropped, {behind} still behind; its log \
                     keeps {} (the news of those dropped goes out next turn)",
                    Members(written),
                    Lines(held)
                ),
            }
        }
    }

    /// Flow control after a write-out (see [`Pace`]): with each member's backlog (`None` for
    /// those dropped or gone), decides whether the room takes lines, marks the members that held
    /// it back past the grace, or that caught up, and unparks the waiting senders it can take.
    fn settle_pace(
        &mut self,
        room: usize,
        members: &[usize],
        backlogs: &[Option<usize>],
        now: &Now,
    ) {
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        let low = chat.pace.low;
        let mut largest = 0;
        for (&key, &backlog) in members.iter().zip(backlogs) {
            let (Some(backlog), Some((_, joined))) = (
                backlog,
                self.clients.get_mut(key).and_then(Client::as_member_mut),
            ) else {
                continue;
            };
            if joined.is_behind() {
                if backlog > low {
                    continue; // The pace does not wait for it.
                }
                debug!(
                    "{}: caught up; the room's pace waits for it again",
                    member(&self.clients, &chat.room, key)
                );
                if let Some((_, joined)) = self.clients.get_mut(key).and_then(Client::as_member_mut)
                {
                    joined.set_behind(false);
                }
            }
            largest = largest.max(backlog);
        }
        let mut settled = chat.pace.settle(largest, now.instant);
        if settled == Settled::GraceOver {
            // The members still over the low mark held everyone for the whole grace.
            largest = 0;
            for (&key, &backlog) in members.iter().zip(backlogs) {
                let (Some(backlog), Some((_, joined))) = (
                    backlog,
                    self.clients.get_mut(key).and_then(Client::as_member_mut),
                ) else {
                    continue;
                };
                if joined.is_behind() {
                    continue;
                }
                if backlog > low {
                    joined.set_behind(true);
                    debug!(
                        "{}: owed {backlog} bytes, it held the room back for {} s; the room \
                         goes on without it (dropped past --output-limit unless it catches up)",
                        member(&self.clients, &chat.room, key),
                        PACE_GRACE.as_secs_f64()
                    );
                } else {
                    largest = largest.max(backlog);
                }
            }
            settled = chat.pace.settle(largest, now.instant);
        }
        match settled {
            Settled::Taking => {
                let mut granted = 0;
                while granted < chat.pace.headroom {
                    let Some((key, id)) = chat.pace.parked.pop_front() else {
                        break;
                    };
                    let Some((conn, joined)) =
                        self.clients.get_mut(key).and_then(Client::as_member_mut)
                    else {
                        continue;
                    };
                    if conn.id != id || conn.is_closed() || !joined.is_parked() {
                        continue; // Gone, or a new tenant of its slab key.
                    }
                    joined.unpark();
                    granted += chat.pace.quantum;
                    // No new edge will come for the bytes it left unread.
                    if !conn.queued {
                        conn.queued = true;
                        self.still_ready.push(mio::Token(key));
                    }
                }
            }
            Settled::StartedDraining(at) => {
                trace!(
                    "{}: a member is owed {largest} bytes; the room takes no more lines until \
                     its members drain",
                    RoomName(&self.endpoints[room].local)
                );
                self.timers
                    .push(std::cmp::Reverse((at, super::Wake::Room { room })));
            }
            Settled::Draining | Settled::GraceOver => {}
        }
    }

    /// Members over `--output-limit`: closed now, and their `left` notices routed (they are
    /// written out next turn).
    fn drop_slow_members(&mut self, room: usize) {
        while let Some(key) = self.outbox.over_limit.pop() {
            let Some((conn, joined)) = self.clients.get_mut(key).and_then(Client::as_member_mut)
            else {
                continue;
            };
            if conn.is_closed() {
                continue;
            }
            joined.close(conn, EndCause::FellBehind, "over the output limit");
            self.finished.push(key);
            if let Some(chat) = self.rooms[room].as_mut() {
                chat.pace.forget(key);
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
        chat.pace.forget(key);
        chat.greetings.remove(&key);
        if chat.room.name(MemberId(key)).is_some() {
            trace!(
                "{}: {} has gone (its connection closed); the others are told",
                RoomName(&self.endpoints[room].local),
                member(&self.clients, &chat.room, key)
            );
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
    /// Their backlogs after the write-out (`None`: dropped or gone), for flow control.
    backlogs: Vec<Option<usize>>,
}

/// How the log names a chat room: `room on 127.0.0.1:7000` (one room per chat service).
struct RoomName<'a>(&'a Address);

impl fmt::Display for RoomName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room on {}", self.0)
    }
}

/// What one routing said beyond the lines logged as they came: the first notice and the first
/// line for one member are quoted at once, and the rest, with the members' own lines (measured,
/// never quoted: what members say is theirs, not the log's), are summed up at the end.
#[derive(Default)]
struct Tally {
    notices: usize,
    replies: usize,
    /// Members' lines, their bytes, and how many members they reached.
    lines: usize,
    bytes: usize,
    reach: usize,
    /// Who sent them: `Some(Some(key))` while it is one member.
    sender: Option<Option<usize>>,
    several: bool,
    /// Broadcasts published on the chat bus (a shared room), to come back in the room's order.
    published: usize,
}

impl Tally {
    /// A member's line of `bytes` bytes, sent by `from`, reaching `reach` members.
    fn said(&mut self, from: Option<MemberId>, bytes: usize, reach: Members) {
        let from = from.map(|member| member.0);
        self.several |= self.sender.is_some_and(|sender| sender != from);
        self.sender = Some(from);
        self.lines += 1;
        self.bytes += bytes;
        self.reach = reach.0;
    }

    /// The summary lines; `member` names a member by its key.
    fn log<'a>(&self, name: &RoomName<'_>, member: impl Fn(usize) -> Member<'a>) {
        if self.notices > 1 {
            trace!(
                "{name}: and {} more notices, each stored once",
                self.notices - 1
            );
        }
        if self.lines > 0 {
            let from = Sender(match self.sender {
                Some(Some(key)) if !self.several => Some(member(key)),
                _ => None,
            });
            let reach = Members(self.reach);
            match self.lines {
                1 => trace!(
                    "{name}: a line of {} bytes from {from} for {reach}; stored once, in the \
                     room's log",
                    self.bytes
                ),
                lines => trace!(
                    "{name}: {lines} lines ({} bytes) from {from} for {reach}; each stored once, \
                     in the room's log",
                    self.bytes
                ),
            }
        }
        if self.replies > 1 {
            trace!(
                "{name}: and {} more lines for members alone",
                self.replies - 1
            );
        }
        match self.published {
            0 => {}
            1 => trace!(
                "{name}: 1 broadcast published on the chat bus; it enters the log when it comes \
                 back, in the room's order"
            ),
            n => trace!(
                "{name}: {n} broadcasts published on the chat bus; they enter the log when they \
                 come back, in the room's order"
            ),
        }
    }
}

/// The sender of some lines: one member, or several.
struct Sender<'a>(Option<Member<'a>>);

impl fmt::Display for Sender<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(member) => member.fmt(f),
            None => f.write_str("several members"),
        }
    }
}

/// How the log names a chat member: `conn #2 (bob)`; `conn #2` once it has left its room, and
/// `bob` once its connection is gone.
struct Member<'a> {
    id: Option<u64>,
    name: Option<&'a str>,
}

/// Member `key` of `room`, for the log.
fn member<'a>(connections: &Slab<Client>, room: &'a Room, key: usize) -> Member<'a> {
    Member {
        id: connections.get(key).map(|client| client.conn.id),
        name: room.name(MemberId(key)),
    }
}

impl fmt::Display for Member<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, self.name) {
            (Some(id), Some(name)) => write!(f, "conn #{id} ({name})"),
            (Some(id), None) => write!(f, "conn #{id}"),
            (None, Some(name)) => f.write_str(name),
            (None, None) => f.write_str("a member that has gone"),
        }
    }
}

/// How many members a broadcast reaches: the room's, but for `except` if it is one of them.
fn recipients(room: &Room, except: Option<MemberId>) -> usize {
    let excepted = except.is_some_and(|member| room.name(member).is_some());
    room.len() - usize::from(excepted)
}

/// `1 member`, `2 members`.
struct Members(usize);

impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 member"),
            n => write!(f, "{n} members"),
        }
    }
}

/// `1 line`, `2 lines`.
struct Lines(usize);

impl fmt::Display for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 line"),
            n => write!(f, "{n} lines"),
        }
    }
}

/// A line the room wrote itself (a notice, a greeting, an error), quoted without its newline
/// and cut short past a log line's worth.
struct Quoted<'a>(&'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MOST: usize = 80;
        let line = self.0.strip_suffix(b"\n").unwrap_or(self.0);
        let text = String::from_utf8_lossy(line);
        match text.char_indices().nth(MOST) {
            Some((cut, _)) => write!(f, "{:?}…", &text[..cut]),
            None => write!(f, "{text:?}"),
        }
    }
}
