//! The chat member's handler: its input goes to its room, its output comes from the room's log.
//!
//! A member is unlike every other client in two ways, and both are here. Its lines are not
//! answered on its own connection: they go to its room ([`ChatSink`]), whose decisions the loop
//! routes to *other* members after the drive (`reactor::chat`). And its output is not a queue of
//! its own: it is a cursor into the room's log of lines, each stored once for every member
//! ([`super::super::fanout`]), written with `writev` straight from there.
//!
//! A member is read only while its room takes its lines (flow control, `reactor::chat`'s
//! `Pace`): its share of the room's headroom is its [`ChatSink::allowance`], and once that is
//! spent the member is *parked* — not read until the room unparks it — and the rest of the read
//! waits in the room ([`HeldInput`]), never lost.

use std::io::IoSlice;
use std::rc::Rc;

use log::{debug, trace};

use crate::clock::Now;
use crate::protocol::room::{BusRequest, Delivery, MemberId, Room};
use crate::protocol::Arrival;

use super::super::buffers::SharedBuffers;
use super::super::connection::{
    Connection, FirstInput, Input, Verdict, Written, MAX_READ_BYTES_PER_TURN,
};
use super::super::counters::EndCause;
use super::super::fanout::{MemberOutput, RoomLog};

/// Most lines handed to one `writev`: enough that a member who fell behind catches up in few
/// system calls, and the `IoSlice` array stays on the stack.
pub(crate) const MAX_LINES_PER_WRITE: usize = 64;

/// A chat member's state: its room, its place in the room's log of lines, and where flow
/// control stands with it.
#[derive(Debug)]
pub(crate) struct ChatMember {
    /// The endpoint (and so the room) it belongs to.
    room: u32,
    /// Whether it is on the loop's list of members to flush at the end of the turn.
    dirty: bool,
    /// Whether lines were still owed to it when it was last written to (the socket was full):
    /// what its interest and phase decisions go by between writes.
    owed: bool,
    /// It held the room back for too long: the room's pace no longer waits for it (it catches
    /// up, or it is dropped at `--output-limit`).
    behind: bool,
    /// Whether it is read, and if not what it waits for (one byte: every member pays for it).
    waiting: Waiting,
    /// Its cursor into the room's log, and lines for it alone.
    output: MemberOutput,
}

/// What stops a member from being read, if anything: at most one thing at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Waiting {
    /// Nothing: it is read.
    #[default]
    Nothing,
    /// Parked: in its room's queue of senders, for the room to take more of its lines (see
    /// `reactor::chat`, flow control).
    Parked,
    /// For its place in a shared room's order (see `reactor::chat_bus`): its name to be claimed,
    /// then its `joined` notice to come back from the bus. Neither read nor written meanwhile,
    /// and owed nothing.
    Joining,
    /// The answer to its `/nick` or `/who`: written to, not read (its next line must follow the
    /// answer: carry the new name, or come after the list), and one question at a time.
    Answer,
}

/// A chat sender's input read but not yet handed to its room (it was parked in the middle of a
/// read): at most one read's worth. The room keeps it ([`ChatSink::held`]), not the member:
/// only a member sending faster than the room takes has one, and every member would pay for the
/// field.
#[derive(Debug, Default)]
pub(crate) struct HeldInput {
    bytes: Vec<u8>,
    /// Where the bytes not yet handed over start.
    start: usize,
}

/// What a chat member's input goes to while it is driven.
#[derive(Debug)]
pub(crate) struct ChatSink<'a> {
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
    /// The room's count of lines written whole to a member, which this drive adds to.
    pub delivered: &'a mut u64,
}

/// How far [`ChatMember::feed_room`] got.
enum Fed {
    /// Every byte went to the room.
    All,
    /// The room took no more after this many bytes (the sender's allowance is spent).
    Stopped(usize),
    /// The member's conversation ended (or it was dropped): read no more.
    Ended,
    /// The room asked the chat bus about this member (`/nick`, `/who`) after this many bytes:
    /// read no more until the answer.
    Asked(usize),
}

/// Driving: the read path, and the writes from the room's log.
impl ChatMember {
    /// A member of endpoint `room`'s room joining now: owed the lines appended to `log` from
    /// here on.
    pub(crate) fn joining(room: u32, log: &RoomLog) -> ChatMember {
        ChatMember {
            room,
            dirty: false,
            owed: false,
            behind: false,
            waiting: Waiting::Nothing,
            output: MemberOutput::joining(log),
        }
    }

    /// Writes what the member is owed, hands its input to the room while the room takes it
    /// (or discards input while it lingers), then settles its phase.
    pub(crate) fn drive(
        &mut self,
        conn: &mut Connection,
        shared: &mut SharedBuffers,
        now: &Now,
        mut sink: ChatSink<'_>,
        first: Option<FirstInput>,
    ) -> Verdict {
        if self.waiting == Waiting::Joining {
            trace!(
                "conn #{}: not in its room's order yet: not reading it",
                conn.id
            );
            if let Some(first) = first {
                // What followed its PROXY header is in the loop's read buffer, lent for this
                // drive only: the room keeps it until the member is in the order.
                let held = sink.held.get_or_insert_with(Box::default);
                held.bytes.extend_from_slice(&shared.read[..first.len]);
            }
            return Verdict::default();
        }
        // Once, before reading: what the room decides in this drive is routed and written after
        // it, at the end of the turn.
        conn.flush_unsent();
        *sink.delivered += self.flush_lines(conn, sink.log, sink.member) as u64;
        let still_ready = conn.take_input(shared, |conn, shared| {
            self.read_lines(conn, shared, &mut sink, first)
        });
        conn.settle(&mut shared.read, now, still_ready, self.owed)
    }

    /// Writes what is owed and makes the transitions that waited for it, without reading: a
    /// member that was sent lines at the end of the turn. `delivered`: the room's count of
    /// lines written whole to a member.
    pub(crate) fn drive_output(
        &mut self,
        conn: &mut Connection,
        shared: &mut SharedBuffers,
        now: &Now,
        (log, delivered): (&RoomLog, &mut u64),
        me: MemberId,
    ) -> Verdict {
        self.dirty = false;
        if self.waiting == Waiting::Joining {
            return Verdict::default(); // Owed nothing yet.
        }
        conn.flush_unsent();
        *delivered += self.flush_lines(conn, log, me) as u64;
        conn.settle(&mut shared.read, now, false, self.owed)
    }

    /// Reads the member's lines and hands them to its room until the socket is drained, the
    /// budget or the member's allowance is spent, or the conversation ends. Returns whether it
    /// stopped on the budget.
    fn read_lines(
        &mut self,
        conn: &mut Connection,
        shared: &mut SharedBuffers,
        sink: &mut ChatSink<'_>,
        mut first: Option<FirstInput>,
    ) -> bool {
        let mut budget = MAX_READ_BYTES_PER_TURN;
        // The bytes owed to it, once first needed (see `feed_room`).
        let mut owed: Option<usize> = None;
        let limit = shared.output_limit;
        while conn.is_serving() {
            if self.waiting == Waiting::Answer {
                trace!("conn #{}: waiting for the chat bus to answer it", conn.id);
                return false;
            }
            // Input the room could not take last time goes first, then the socket, while the
            // room takes this member's lines.
            if let Some(mut held) = sink.held.take() {
                match self.feed_room(conn, &held.bytes[held.start..], sink, &mut owed, limit) {
                    Fed::All => {
                        held.bytes.clear();
                        held.start = 0;
                        *sink.held = Some(held); // a flood goes on: keep the buffer
                    }
                    Fed::Stopped(taken) | Fed::Asked(taken) => {
                        held.start += taken;
                        *sink.held = Some(held);
                        // Parked by the room's pace, or waiting for the bus's answer (`Asked`
                        // set that already; it comes first).
                        self.park();
                        return false;
                    }
                    Fed::Ended => return false,
                }
            }
            if sink.allowance == 0 {
                trace!(
                    "conn #{}: its room takes no more of its lines for now: not reading it",
                    conn.id
                );
                self.park();
                return false;
            }
            if conn.is_over_output_limit(0, limit) {
                return false;
            }
            let arrival =
                match conn.read_input(&mut shared.read, &mut budget, usize::MAX, &mut first) {
                    Input::Bytes { len, arrival } => {
                        match self.feed_room(conn, &shared.read[..len], sink, &mut owed, limit) {
                            Fed::All => {}
                            Fed::Stopped(taken) | Fed::Asked(taken) => {
                                let held = sink.held.get_or_insert_with(Box::default);
                                held.bytes.drain(..held.start);
                                held.start = 0;
                                held.bytes.extend_from_slice(&shared.read[taken..len]);
                                self.park(); // (as above)
                                return false;
                            }
                            Fed::Ended => return false,
                        }
                        if conn.peer_closing() {
                            continue; // Its end of stream waits behind these bytes: read on to it.
                        }
                        arrival
                    }
                    Input::End => {
                        // The room answers the last partial line (perhaps to this member: `/who`
                        // without its newline) and says Close; the loop routes both, and the close
                        // waits until what was queued is written.
                        let left_as = sink.room.on_end(sink.member, sink.deliveries);
                        if let Some(record) = conn.access_mut() {
                            // Gone from the room now: the loop can no longer ask its name.
                            record.note_name(left_as.as_deref());
                        }
                        if !ends_member(&sink.deliveries[..], sink.member) {
                            conn.drain();
                        }
                        return false;
                    }
                    Input::Blocked => Arrival::Drained,
                    Input::BudgetSpent => return true,
                    Input::Failed => return false,
                };
            if arrival == Arrival::Drained {
                // Its socket is drained: whatever flood there was is over.
                if sink
                    .held
                    .as_ref()
                    .is_some_and(|held| held.start == held.bytes.len())
                {
                    *sink.held = None;
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
        conn: &mut Connection,
        input: &[u8],
        sink: &mut ChatSink<'_>,
        owed: &mut Option<usize>,
        output_limit: usize,
    ) -> Fed {
        let owed = owed.get_or_insert_with(|| self.output.backlog(sink.log));
        let mut rest = input;
        while !rest.is_empty() {
            if sink.allowance == 0 {
                return Fed::Stopped(input.len() - rest.len());
            }
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let before = sink.deliveries.len();
            sink.room
                .on_input(sink.member, &rest[..cut], sink.deliveries);
            if let Some(record) = conn.access_mut() {
                // A `/nick` followed by `quit` in one read: the leave is under the new name.
                record.note_name(sink.room.name(sink.member));
            }
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
                    conn.id
                );
                self.close(conn, EndCause::FellBehind, "over the output limit");
                return Fed::Ended;
            }
            if asks_bus(new, sink.member) {
                self.waiting = Waiting::Answer;
                return Fed::Asked(input.len() - rest.len());
            }
        }
        Fed::All
    }

    /// Writes the lines owed to the member with as few `writev` calls as the socket takes: up
    /// to [`MAX_LINES_PER_WRITE`] lines each, until none is left or the socket is full.
    /// Returns how many lines were written whole.
    fn flush_lines(&mut self, conn: &mut Connection, log: &RoomLog, me: MemberId) -> usize {
        let mut lines = 0;
        if conn.is_closed() {
            return lines;
        }
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_LINES_PER_WRITE];
            let count = self.output.gather(log, me, &mut slices);
            if count == 0 {
                self.output.consume(log, me, 0); // past trailing lines not for it
                break;
            }
            match conn.write_vectored(&slices[..count]) {
                Written::Bytes(written) => {
                    trace!("conn #{}: wrote {written} bytes of chat lines", conn.id);
                    lines += self.output.consume(log, me, written);
                }
                Written::Blocked => break,
                Written::Failed => {
                    // Owed lines are dropped with the connection: nothing more will be written.
                    self.owed = false;
                    return lines;
                }
            }
        }
        self.owed = self.output.backlog(log) > 0;
        lines
    }

    /// Closes the member's connection now; the lines it was owed go with it.
    pub(crate) fn close(&mut self, conn: &mut Connection, cause: EndCause, why: &str) {
        conn.close(cause, why);
        self.owed = false;
    }
}

/// What the loop's side of the room (`reactor::chat`) asks and tells a member.
impl ChatMember {
    /// Its room: the index of the endpoint it was accepted on.
    pub(crate) fn room(&self) -> usize {
        self.room as usize
    }

    /// Whether lines were still owed to it at its last write.
    pub(crate) fn is_owed(&self) -> bool {
        self.owed
    }

    /// Queues a line for this member alone (after the room's lines so far); returns whether it
    /// needs adding to the loop's flush list.
    pub(crate) fn queue_own_line(
        &mut self,
        conn: &Connection,
        log: &RoomLog,
        line: Rc<[u8]>,
    ) -> bool {
        if conn.is_closed() {
            return false;
        }
        self.output.push_own(log, line);
        self.mark_dirty()
    }

    /// The member has left its room: it is still owed the room's lines sent before now, and no
    /// later ones.
    pub(crate) fn leave_log(&mut self, log: &RoomLog, me: MemberId) {
        self.output.detach(log, me);
    }

    /// Where this member stands in its room's log (`None` once it has left the room, or its
    /// connection closed): lines before every member's cursor can be trimmed.
    pub(crate) fn log_cursor(&self, conn: &Connection) -> Option<u64> {
        if conn.is_closed() || self.waiting == Waiting::Joining {
            return None; // A newcomer's place is set when it is in the room's order.
        }
        self.output.cursor()
    }

    /// Bytes still owed to this member: what `--output-limit` bounds.
    pub(crate) fn backlog(&self, log: &RoomLog) -> usize {
        if self.waiting == Waiting::Joining {
            return 0;
        }
        self.output.backlog(log)
    }

    /// Whether it waits for its room to take more of its lines (not read meanwhile).
    pub(crate) fn is_parked(&self) -> bool {
        self.waiting == Waiting::Parked
    }

    /// The room can take its lines again: the next drive reads it.
    pub(crate) fn unpark(&mut self) {
        if self.waiting == Waiting::Parked {
            self.waiting = Waiting::Nothing;
        }
    }

    /// Whether it no longer sets its room's pace (it held the room back too long).
    pub(crate) fn is_behind(&self) -> bool {
        self.behind
    }

    /// Says whether it sets its room's pace (`false`) or not (`true`).
    pub(crate) fn set_behind(&mut self, behind: bool) {
        self.behind = behind;
    }

    /// Stops reading it until the room takes its lines again, unless it waits for the bus (the
    /// bus's answer comes first; the room's pace then has it read as any sender).
    fn park(&mut self) {
        if self.waiting == Waiting::Nothing {
            self.waiting = Waiting::Parked;
        }
    }

    /// A newcomer to a shared room: not read or written until the bus claims its name.
    pub(crate) fn wait_for_bus(&mut self) {
        self.waiting = Waiting::Joining;
    }

    /// Whether it waits for its name to be claimed (not in its room yet).
    pub(crate) fn is_joining(&self) -> bool {
        self.waiting == Waiting::Joining
    }

    /// Its `joined` notice is back from the bus, at its place in the room's order (or the bus
    /// is gone): it is owed the room's lines from now on, none that came before.
    pub(crate) fn joined_via_bus(&mut self, log: &RoomLog) {
        self.waiting = Waiting::Nothing;
        self.output = MemberOutput::joining(log);
    }

    /// The bus answered its `/nick` or `/who` (or is gone): it is read again.
    pub(crate) fn bus_answered(&mut self) {
        self.waiting = Waiting::Nothing;
    }

    /// Puts it on the loop's flush list; whether it was not on it already.
    pub(crate) fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }
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

/// Whether `deliveries` ask the chat bus something for `member` (its `/nick`, its `/who`).
fn asks_bus(deliveries: &[Delivery], member: MemberId) -> bool {
    deliveries.iter().any(|d| match d {
        Delivery::Bus(BusRequest::Rename { member: m, .. } | BusRequest::Who { member: m }) => {
            *m == member
        }
        _ => false,
    })
}

/// Whether `deliveries` end `member`'s conversation.
fn ends_member(deliveries: &[Delivery], member: MemberId) -> bool {
    deliveries
        .iter()
        .any(|d| matches!(d, Delivery::Close { member: m } if *m == member))
}
