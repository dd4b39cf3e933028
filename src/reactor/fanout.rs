//! Fan-out: a room's lines, each stored once, and every member's place in them.
//!
//! A broadcast line goes to every other member of the room, and members read at their own pace.
//! The first design here gave each member a queue of reference-counted pointers to the lines not
//! yet written to it. That is one copy per line, but still one queue entry per member per line:
//! when a thousand members join in a burst, each is sent the other 999 join notices, and for a
//! moment the loop holds a million queue entries — memory that the allocator keeps after it is
//! freed, so every idle member looked four times its size.
//!
//! So the room keeps one **log** ([`RoomLog`]) of the lines some member has not been written yet,
//! and a member holds only a **cursor** into it ([`MemberOutput`]): the sequence number of the
//! next line to write, and how much of it is already written. Appending a broadcast costs the
//! same whether the room has 2 members or 10,000; a member that falls behind costs no more than
//! one that keeps up; lines every member has passed are trimmed from the front. It is the shape
//! of `tokio::sync::broadcast` (a shared ring, a position per receiver), except that a member
//! that falls too far behind is dropped (`--output-limit`) rather than told it lagged: a chat
//! member cannot skip lines.
//!
//! Two kinds of line do not fit a shared log, and a member keeps them in a small queue of its
//! own, allocated only while one is waiting:
//!
//! * **Lines for one member** — the greeting, a `/who` reply, an error — tagged with the log
//!   position they were sent at, so they are written in order with the broadcasts around them.
//! * **A departing member's remainder.** When a member leaves (`quit`) it is owed the lines the
//!   room sent before it left, and nothing after: those lines are copied into its own queue (the
//!   pointers, not the bytes), and it stops holding back the log's trimming.
//!
//! A line in the log names the member it must skip (the sender of `NAME: LINE`). A member's
//! backlog — what `--output-limit` bounds — is every log byte past its cursor plus its own queue:
//! while a member is behind, lines it sent itself also wait in the log for it to pass them, so
//! they count too. That keeps the log bounded: no member can hold more than the limit of it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use crate::protocol::room::MemberId;

/// A room's lines that some member has not been written yet, oldest first, each stored once.
#[derive(Debug, Default)]
pub(super) struct RoomLog {
    lines: VecDeque<LogLine>,
    /// Sequence number of `lines[0]`; lines are numbered from 0 as they are appended.
    first: u64,
    /// Bytes appended over the log's life: the offset at which the next line starts.
    end: u64,
}

/// One broadcast line in a [`RoomLog`].
#[derive(Debug)]
struct LogLine {
    bytes: Rc<[u8]>,
    /// Offset of its first byte among every byte ever appended (for backlogs in O(1)).
    start: u64,
    /// The member that does not receive it: the sender of `NAME: LINE`, the subject of a notice.
    except: Option<MemberId>,
}

impl RoomLog {
    /// The sequence number the next appended line will get (one past the newest line).
    pub(super) fn head(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    /// The oldest line still held (equal to [`head`](Self::head) when none is).
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// How many lines are held.
    pub(super) fn len(&self) -> usize {
        self.lines.len()
    }

    /// Appends a line for every member but `except`.
    pub(super) fn append(&mut self, bytes: Rc<[u8]>, except: Option<MemberId>) {
        let start = self.end;
        self.end += bytes.len() as u64;
        self.lines.push_back(LogLine {
            bytes,
            start,
            except,
        });
    }

    /// Forgets the lines before `seq`: every member has been written past them.
    pub(super) fn trim_before(&mut self, seq: u64) {
        let seq = seq.min(self.head());
        while self.first < seq {
            self.lines.pop_front();
            self.first += 1;
        }
        if self.lines.is_empty() && self.lines.capacity() > IDLE_LOG_CAPACITY {
            // After a burst, give the memory back: an idle room holds a small log.
            self.lines = VecDeque::new();
        }
    }

    /// How many of the lines from `from` to just before `to` are for `me` (not its own): what a
    /// member whose cursor moved from one to the other was written of the log. For the log.
    pub(super) fn lines_for(&self, from: u64, to: u64, me: MemberId) -> usize {
        (from..to)
            .filter_map(|seq| self.get(seq))
            .filter(|line| line.except != Some(me))
            .count()
    }

    fn get(&self, seq: u64) -> Option<&LogLine> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.lines.get(index)
    }

    /// Bytes from the start of line `seq` to the end of the log.
    fn bytes_from(&self, seq: u64) -> u64 {
        self.get(seq).map_or(0, |line| self.end - line.start)
    }
}

/// Lines a log keeps room for when it empties; past this, its buffer is freed instead.
const IDLE_LOG_CAPACITY: usize = 64;

/// A member's place in its room's log, and the lines for it alone.
#[derive(Debug)]
pub(super) struct MemberOutput {
    /// The next log line to write to it while it is in the room; [`DETACHED`] once it has left
    /// (only its own lines remain). One field, not two: every member pays for this struct.
    cursor: u64,
    /// Bytes of the front line (its own, or the log line at the cursor) already written.
    written: usize,
    /// Lines for it alone; `None` (no allocation) while there are none.
    own: Option<Box<OwnLines>>,
}

/// A member's own lines, each tagged with the log position it goes before.
#[derive(Debug, Default)]
struct OwnLines {
    lines: VecDeque<(u64, Rc<[u8]>)>,
    /// Their total length (the front one's written part included).
    bytes: usize,
}

/// The cursor of a member that has left its room and follows the log no more. It names no log
/// line and comes after every own line's tag, so the walks below need no special case for it.
const DETACHED: u64 = u64::MAX;

/// The next line to write to a member: one of its own, or the log line at its cursor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Front {
    Own,
    Log,
}

impl MemberOutput {
    /// A member that has just joined: it gets the lines appended from now on.
    pub(super) fn joining(log: &RoomLog) -> MemberOutput {
        MemberOutput {
            cursor: log.head(),
            written: 0,
            own: None,
        }
    }

    /// The log position it holds back trimming at, while it is in the room.
    pub(super) fn cursor(&self) -> Option<u64> {
        self.attached().then_some(self.cursor)
    }

    /// Queues a line for this member alone, after every log line appended so far.
    pub(super) fn push_own(&mut self, log: &RoomLog, line: Rc<[u8]>) {
        let own = self.own.get_or_insert_with(Box::default);
        own.bytes += line.len();
        own.lines.push_back((log.head(), line));
    }

    /// Bytes still to write to it: its own lines, and every log byte past its cursor.
    pub(super) fn backlog(&self, log: &RoomLog) -> usize {
        let own = self.own.as_ref().map_or(0, |own| own.bytes);
        let shared = if self.attached() {
            usize::try_from(log.bytes_from(self.cursor)).unwrap_or(usize::MAX)
        } else {
            0
        };
        (own + shared).saturating_sub(self.written)
    }

    /// The member has left the room: it keeps the log lines for it sent before now (copied
    /// into its own queue, in order) and follows the log no more.
    pub(super) fn detach(&mut self, log: &RoomLog, me: MemberId) {
        if !self.attached() {
            return;
        }
        let mut owed = OwnLines::default();
        let mut own = self.own.take().map(|own| own.lines).unwrap_or_default();
        let mut seq = self.cursor;
        loop {
            if own.front().is_some_and(|&(tag, _)| tag <= seq) {
                let (tag, line) = own.pop_front().expect("a front line");
                owed.bytes += line.len();
                owed.lines.push_back((tag, line));
            } else if let Some(line) = log.get(seq) {
                seq += 1;
                if line.except != Some(me) {
                    owed.bytes += line.bytes.len();
                    owed.lines.push_back((seq, Rc::clone(&line.bytes)));
                }
            } else {
                break;
            }
        }
        for (tag, line) in own {
            owed.bytes += line.len();
            owed.lines.push_back((tag, line));
        }
        self.cursor = DETACHED;
        self.own = (!owed.lines.is_empty()).then(|| Box::new(owed));
    }

    /// Points `slices` at the next bytes to write, in order; returns how many it filled.
    pub(super) fn gather<'a>(
        &'a self,
        log: &'a RoomLog,
        me: MemberId,
        slices: &mut [IoSlice<'a>],
    ) -> usize {
        let own = self.own.as_deref().map(|own| &own.lines);
        let mut own_index = 0;
        let mut seq = self.cursor;
        let mut filled = 0;
        while filled < slices.len() {
            let next_own = own.and_then(|lines| lines.get(own_index));
            let bytes: &[u8] = match next_own {
                Some((tag, line)) if *tag <= seq => {
                    own_index += 1;
                    line
                }
                _ => match log.get(seq) {
                    Some(line) => {
                        seq += 1;
                        if line.except == Some(me) {
                            continue;
                        }
                        &line.bytes
                    }
                    None => break,
                },
            };
            let skip = if filled == 0 { self.written } else { 0 };
            slices[filled] = IoSlice::new(&bytes[skip..]);
            filled += 1;
        }
        filled
    }

    /// Records that the first `written` bytes of what [`gather`](Self::gather) returned have
    /// been written, and moves past the log lines it does not receive. Returns how many lines
    /// the member has now been written whole (the metrics' deliveries).
    pub(super) fn consume(&mut self, log: &RoomLog, me: MemberId, mut written: usize) -> usize {
        let mut lines = 0;
        loop {
            self.skip_excluded(log, me);
            if written == 0 {
                return lines;
            }
            let Some((front, len)) = self.front(log) else {
                debug_assert!(false, "consumed more than was gathered");
                return lines;
            };
            let rest = len - self.written;
            if written < rest {
                self.written += written;
                return lines;
            }
            written -= rest;
            self.written = 0;
            lines += 1;
            match front {
                Front::Own => {
                    let own = self.own.as_mut().expect("an own line");
                    let (_, line) = own.lines.pop_front().expect("an own line");
                    own.bytes -= line.len();
                    if own.lines.is_empty() {
                        self.own = None; // An idle member holds no buffer.
                    }
                }
                Front::Log => self.cursor += 1,
            }
        }
    }

    /// Which line comes next, and its length.
    fn front(&self, log: &RoomLog) -> Option<(Front, usize)> {
        let own = self.own.as_ref().and_then(|own| own.lines.front());
        match own {
            Some((tag, line)) if *tag <= self.cursor => Some((Front::Own, line.len())),
            _ => log
                .get(self.cursor)
                .map(|line| (Front::Log, line.bytes.len())),
        }
    }

    /// Whether it is in the room, following the log.
    fn attached(&self) -> bool {
        self.cursor != DETACHED
    }

    /// Moves the cursor past log lines not for this member. Never moves it past a partly written
    /// line: that one is for this member.
    fn skip_excluded(&mut self, log: &RoomLog, me: MemberId) {
        while log
            .get(self.cursor)
            .is_some_and(|line| line.except == Some(me))
        {
            self.cursor += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MemberId = MemberId(0);
    const B: MemberId = MemberId(1);

    fn line(text: &str) -> Rc<[u8]> {
        text.as_bytes().into()
    }

    /// Everything `member` would be written, taking at most `chunk` bytes per write.
    fn drain(out: &mut MemberOutput, log: &RoomLog, me: MemberId, chunk: usize) -> String {
        let mut got = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); 3];
            let filled = out.gather(log, me, &mut slices);
            let bytes: Vec<u8> = slices[..filled].iter().flat_map(|s| s.to_vec()).collect();
            let taken = bytes.len().min(chunk);
            if taken == 0 {
                out.consume(log, me, 0);
                break;
            }
            got.extend_from_slice(&bytes[..taken]);
            out.consume(log, me, taken);
        }
        assert_eq!(out.backlog(log), 0, "nothing left once drained");
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn a_member_gets_lines_from_its_join_on_except_its_own() {
        let mut log = RoomLog::default();
        log.append(line("before\n"), None);
        let mut a = MemberOutput::joining(&log);
        log.append(line("a: mine\n"), Some(A));
        log.append(line("b: hi\n"), Some(B));
        assert_eq!(
            a.backlog(&log),
            14,
            "its own line counts while it is behind"
        );
        assert_eq!(drain(&mut a, &log, A, 1), "b: hi\n");
        assert_eq!(a.cursor(), Some(log.head()));
    }

    #[test]
    fn own_lines_keep_their_place_among_broadcasts_for_every_split() {
        for chunk in 1..40 {
            let mut log = RoomLog::default();
            let mut a = MemberOutput::joining(&log);
            a.push_own(&log, line("welcome\n"));
            log.append(line("1\n"), None);
            log.append(line("x\n"), Some(A));
            a.push_own(&log, line("who\n"));
            log.append(line("2\n"), None);
            assert_eq!(drain(&mut a, &log, A, chunk), "welcome\n1\nwho\n2\n");
            assert!(a.own.is_none(), "the own queue is freed once empty");
        }
    }

    #[test]
    fn a_partly_written_line_stays_in_front_when_more_arrive() {
        let mut log = RoomLog::default();
        let mut a = MemberOutput::joining(&log);
        log.append(line("first\n"), None);
        let mut slices = [IoSlice::new(&[]); 4];
        a.gather(&log, A, &mut slices);
        a.consume(&log, A, 3);
        a.push_own(&log, line("mine\n"));
        log.append(line("second\n"), None);
        assert_eq!(drain(&mut a, &log, A, 100), "st\nmine\nsecond\n");
    }

    #[test]
    fn a_departing_member_keeps_what_was_sent_before_it_left_and_nothing_after() {
        let mut log = RoomLog::default();
        let mut a = MemberOutput::joining(&log);
        log.append(line("1\n"), None);
        a.push_own(&log, line("bye\n"));
        log.append(line("a left\n"), Some(A));
        let mut slices = [IoSlice::new(&[]); 4];
        a.gather(&log, A, &mut slices);
        a.consume(&log, A, 1);
        a.detach(&log, A);
        assert_eq!(a.cursor(), None, "it no longer holds the log back");
        log.append(line("after\n"), None);
        log.trim_before(log.head());
        assert_eq!(drain(&mut a, &log, A, 2), "\nbye\n");
    }

    #[test]
    fn trimming_keeps_what_a_cursor_still_needs() {
        let mut log = RoomLog::default();
        let mut a = MemberOutput::joining(&log);
        let mut b = MemberOutput::joining(&log);
        for i in 0..100 {
            log.append(line(&format!("{i}\n")), None);
        }
        assert_eq!(drain(&mut b, &log, B, 1000).lines().count(), 100);
        log.trim_before(a.cursor().unwrap().min(b.cursor().unwrap()));
        assert_eq!(log.len(), 100, "a has read nothing yet");
        let got = drain(&mut a, &log, A, 7);
        assert!(got.starts_with("0\n1\n") && got.ends_with("99\n"));
        log.trim_before(a.cursor().unwrap().min(b.cursor().unwrap()));
        assert_eq!(log.len(), 0);
        assert_eq!(log.lines.capacity(), 0, "a burst's buffer is given back");
    }
}
