//! The byte-stream handler: upper, timestamp and echo, whose replies go back on the connection
//! they answer — at once, or under `--reply-delay` held on the loop's timer.
//!
//! The read path is the whole of what the loop does for a request: read (drained or within the
//! budget), hand the bytes to the [`Session`], send what it wrote into the shared reply buffer.
//! One `read` and one `write` per request at pipeline depth 1, and no allocation: the bytes go
//! from the shared read buffer through the session into the shared reply buffer and out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::trace;

use crate::clock::Now;
use crate::protocol::{Arrival, Flow, Session};

use super::super::buffers::SharedBuffers;
use super::super::connection::{Connection, FirstInput, Input, Verdict, MAX_READ_BYTES_PER_TURN};
use super::protocol_ended;

/// Drives a byte-stream client: writes what is queued, reads and answers requests while it is
/// serving (or discards input while it lingers), then settles its phase. `held`: its held
/// replies, under `--reply-delay`.
pub(crate) fn drive(
    conn: &mut Connection,
    session: &mut Session,
    mut held: Option<&mut HeldReplies>,
    shared: &mut SharedBuffers,
    now: &Now,
    first: Option<FirstInput>,
) -> Verdict {
    // Once, before reading: replies produced by this drive are written as they are made, so
    // flushing again afterwards would only be a write that finds the socket full.
    conn.flush_unsent();
    let still_ready = conn.take_input(shared, |conn, shared| {
        read_requests(conn, session, held.as_deref_mut(), shared, now, first)
    });
    let holding = held.is_some_and(|held| !held.is_empty());
    conn.settle(&mut shared.read, now, still_ready, holding)
}

/// Reads and answers requests until the socket is drained, the budget is spent, the reply
/// queue passes its limit, or the conversation ends. Returns whether it stopped on the budget.
fn read_requests(
    conn: &mut Connection,
    session: &mut Session,
    mut held: Option<&mut HeldReplies>,
    shared: &mut SharedBuffers,
    now: &Now,
    mut first: Option<FirstInput>,
) -> bool {
    let mut budget = MAX_READ_BYTES_PER_TURN;
    while conn.is_serving() {
        let holding = held.as_ref().map_or(0, |held| held.cost());
        if conn.is_over_output_limit(holding, shared.output_limit) {
            return false;
        }
        let input = conn.read_input(&mut shared.read, &mut budget, usize::MAX, &mut first);
        let arrival = match input {
            Input::Bytes { len, arrival } => {
                shared.replies.clear();
                let flow = session.on_input(&shared.read[..len], arrival, now, &mut shared.replies);
                reply(conn, held.as_deref_mut(), shared, now);
                if flow == Flow::Close {
                    protocol_ended(conn);
                }
                arrival
            }
            Input::End => {
                conn.drain();
                shared.replies.clear();
                session.on_end(now, &mut shared.replies);
                reply(conn, held.as_deref_mut(), shared, now);
                return false;
            }
            Input::Blocked => {
                // Nothing new, but the read found the socket drained: a session that waits for
                // that (timestamp's partial line) answers now.
                shared.replies.clear();
                let flow = session.on_input(&[], Arrival::Drained, now, &mut shared.replies);
                debug_assert_eq!(flow, Flow::Continue, "empty input cannot break a limit");
                reply(conn, held.as_deref_mut(), shared, now);
                return false;
            }
            Input::BudgetSpent => return true,
            Input::Failed => return false,
        };
        if !conn.reads_on(arrival) {
            return false;
        }
    }
    false
}

/// Sends the replies in `shared.replies` — or, under `--reply-delay`, holds them until `now`
/// plus the delay.
fn reply(conn: &mut Connection, held: Option<&mut HeldReplies>, shared: &SharedBuffers, now: &Now) {
    match (held, shared.reply_delay) {
        (Some(held), Some(delay)) if !conn.is_closed() => {
            if shared.replies.is_empty() {
                return;
            }
            held.hold(&shared.replies, now.instant + delay);
            trace!(
                "conn #{}: {} reply bytes held for {} s (--reply-delay); {} held in all",
                conn.id,
                shared.replies.len(),
                delay.as_secs_f64(),
                held.len()
            );
        }
        _ => conn.send(&shared.replies),
    }
}

/// The server is shutting down (see [`super::Client::begin_shutdown`]): what the session holds
/// back goes out (or is held, under `--reply-delay`), and the connection ends after it.
pub(crate) fn begin_shutdown(
    conn: &mut Connection,
    session: &mut Session,
    held: Option<&mut HeldReplies>,
    shared: &mut SharedBuffers,
    now: &Now,
) {
    shared.replies.clear();
    session.on_end(now, &mut shared.replies);
    conn.end_conversation();
    // Held replies, this one included, are still sent when due (within the shutdown timeout):
    // they answer requests already read.
    reply(conn, held, shared, now);
}

/// The reply timer fired: sends the held replies now due, and makes the transitions that
/// waited for them. `still_ready`: a connection that stopped reading with its held replies over
/// `--output-limit` may read again, and no new edge will announce input that waited.
pub(crate) fn release_replies(
    conn: &mut Connection,
    delayed: &mut Delayed,
    shared: &mut SharedBuffers,
    now: &Now,
) -> Verdict {
    // Reading stopped with the held bytes over the limit: releasing them may let it resume.
    let held_back = conn.unsent_len() + delayed.held.cost() > shared.output_limit;
    shared.replies.clear();
    let released = delayed.held.release(now.instant, &mut shared.replies);
    if released > 0 {
        trace!(
            "conn #{}: {released} held reply bytes are due; sending",
            conn.id
        );
    }
    conn.send(&shared.replies);
    let still_ready = held_back && conn.is_serving();
    conn.settle(&mut shared.read, now, still_ready, delayed.holds_replies())
}

/// A byte-stream session whose replies are held for `--reply-delay`.
#[derive(Debug)]
pub(crate) struct Delayed {
    session: Session,
    held: HeldReplies,
}

impl Delayed {
    /// A session none of whose replies is held yet.
    pub(crate) fn new(session: Session) -> Delayed {
        Delayed {
            session,
            held: HeldReplies::default(),
        }
    }

    /// The session and its held replies, to drive them.
    pub(crate) fn parts(&mut self) -> (&mut Session, &mut HeldReplies) {
        (&mut self.session, &mut self.held)
    }

    /// Whether replies are held: the idle timeout does not run meanwhile (the quiet is the
    /// server's), and a draining connection stays until they have gone.
    pub(crate) fn holds_replies(&self) -> bool {
        !self.held.is_empty()
    }

    /// When the first held run is due, if no timer is set for it yet.
    pub(crate) fn arm(&mut self) -> Option<Instant> {
        self.held.arm()
    }
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
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.released
    }

    /// Memory the held replies stand for: their bytes and their runs' bookkeeping. What
    /// `--output-limit` bounds.
    pub(crate) fn cost(&self) -> usize {
        self.len() + self.runs.len() * RUN_COST
    }

    /// Whether nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
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
            // Nothing held: give the memory back, as the connection's unsent queue does.
            self.bytes = Vec::new();
            self.runs = VecDeque::new();
            self.released = 0;
        }
        count
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
}
