//! What the three generator threads share — streams ([`super::stream`]), chat members
//! ([`super::chat`]) and UDP sockets ([`super::udp`]): the turn of the loop, the load phase's
//! clock with its Ctrl-C, the hold, the non-blocking connect of a stream, and a stream's unsent
//! bytes.
//!
//! ## A turn
//!
//! Every turn is the same, and the same as the server's: `poll` until the deadline (at once if a
//! connection stopped on its read budget last turn and is still ready, since under edge
//! triggering no new event will come for it), then serve last turn's budgeted entries and this
//! turn's events in that order, then publish the turn's verified replies to the progress meter
//! (one atomic add per turn, not per reply). An entry may be served twice in one turn (budgeted
//! and with an event); the second finds nothing to read, which is harmless.
//!
//! ## Why a trait
//!
//! Serving an entry needs the whole generator (its connections, its counts) *and* the loop's
//! parts (the registry for interest changes, the still-ready list when a budget runs out), so a
//! `turn` that took closures would need the generator borrowed twice. Instead the generator owns
//! a [`Driver`] and implements [`Generator`] (two methods: where its driver is, what to do with
//! a ready entry), and [`Load`] (three: what the stop does, what each turn's top does, when
//! nothing is left to wait for). [`turn`], [`run_load`] and [`hold`] are generic over it, so
//! each is monomorphised into the very loop that was written by hand three times before: no
//! dynamic dispatch, no allocation, no system call that was not there already. The work list is
//! taken out of the driver for the turn, so serving may push onto the next turn's list
//! meanwhile; the two lists trade places each turn and neither is allocated again.
//!
//! ## Connecting
//!
//! A stream is connected one way, whoever connects it: [`Driver::start_connect`] (a
//! non-blocking connect, registered for `WRITABLE`), then [`connect_outcome`] when the poller
//! says it may be decided (readiness is a hint: the socket is asked), a failed attempt retried
//! after [`retry_delay`] up to [`super::MAX_CONNECT_ATTEMPTS`] attempts, and
//! [`give_up_connect`] for one that never succeeded. The stream generator keeps up to
//! [`super::MAX_CONNECTS_IN_FLIGHT`] attempts under way; the chat members join one after the
//! other, each turning the loop while it waits so the members already in keep reading.
//!
//! ## Ctrl-C
//!
//! [`stop_early_on_sigint`] sets a flag; [`run_load`] and [`hold`] bring their poll deadline
//! forward so that the flag is seen within [`INTERRUPT_CHECK`], and treat it as the end of the
//! duration: sending stops, outstanding replies still get their grace.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::{Events, Interest, Poll, Registry, Token};

use super::report::Counts;
use super::transport::Transport;
use super::{LoadConfig, FIRST_RETRY_DELAY};
use crate::net::tls_client::ClientTls;
use crate::net::{write_until_blocked, Stream};
use crate::service::Address;

/// Most events taken from one `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// What a thread is given: which connections (numbered across the whole run, for messages) and
/// the run's parameters.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The run-wide number of this thread's first connection.
    pub first_id: usize,
    /// How many connections this thread opens.
    pub count: usize,
    /// The run's parameters.
    pub config: LoadConfig,
    /// The TLS configuration, read once for the run, when an address is `tls:`.
    pub tls: Option<ClientTls>,
}

/// Counters the calling thread reads for the progress display, one per generator thread.
/// Aligned to a cache line so two threads' counters never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Meter {
    /// Connections up (idle mode: verified) and not yet closed.
    pub(super) open: AtomicU64,
    /// Verified replies, warm-up included.
    pub(super) completed: AtomicU64,
}

impl Meter {
    /// Connections open now.
    pub(super) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Verified replies so far.
    pub(super) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Adds a turn's verified replies to the shared count (one atomic add per turn, not per
    /// reply) and resets the turn's count.
    fn publish(&self, unpublished: &mut u64) {
        if *unpublished > 0 {
            self.completed.fetch_add(*unpublished, Ordering::Relaxed);
            *unpublished = 0;
        }
    }
}

/// One generator thread's event loop: the poller, the still-ready list, the progress meter.
/// Entries (connections, members, sockets) are numbered from 0, and an entry's number is its
/// token.
pub(super) struct Driver<'a> {
    poll: Poll,
    events: Events,
    /// Entries that stopped on their per-turn budget, to serve before the next `poll`, each with
    /// `false` (no close was reported for it).
    still_ready: Vec<(usize, bool)>,
    /// The work list of the turn before, emptied (see the module doc).
    spare_ready: Vec<(usize, bool)>,
    /// Per entry: whether it is in `still_ready`, so it is there once. Its length is the number
    /// of entries: an event with a larger token is stale and ignored.
    queued: Vec<bool>,
    /// The thread's progress counters.
    pub(super) meter: &'a Meter,
    /// Replies verified since the meter was last updated.
    unpublished: u64,
    /// What a `tls:` connection's session is made from.
    tls: Option<ClientTls>,
}

impl<'a> Driver<'a> {
    /// A loop for `entries` entries, publishing to `meter`; `tls` for `tls:` addresses.
    pub(super) fn new(
        meter: &'a Meter,
        entries: usize,
        tls: Option<ClientTls>,
    ) -> io::Result<Driver<'a>> {
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_PER_POLL),
            still_ready: Vec::new(),
            spare_ready: Vec::new(),
            queued: vec![false; entries],
            meter,
            unpublished: 0,
            tls,
        })
    }

    /// Where sockets are registered and their interest changed.
    pub(super) fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Entry `i` stopped on its budget with work probably left: serve it again next turn.
    pub(super) fn keep_ready(&mut self, i: usize) {
        if !self.queued[i] {
            self.queued[i] = true;
            self.still_ready.push((i, false));
        }
    }

    /// Counts `count` verified replies, published at the end of the turn.
    pub(super) fn completed(&mut self, count: u64) {
        self.unpublished += count;
    }

    /// Polls until `deadline` at most (`None`: until an event), and returns the turn's work
    /// list: last turn's budgeted entries, then this turn's events, each with whether the peer's
    /// side was reported closed (or in error). `None` if a signal interrupted the poll.
    fn poll(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<(usize, bool)>>> {
        let timeout = if self.still_ready.is_empty() {
            deadline.map(|d| d.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut ready =
            std::mem::replace(&mut self.still_ready, std::mem::take(&mut self.spare_ready));
        for event in self.events.iter() {
            let i = event.token().0;
            if i < self.queued.len() {
                ready.push((i, event.is_read_closed() || event.is_error()));
            }
        }
        Ok(Some(ready))
    }

    /// Ends a turn: keeps the emptied work list for the next, and publishes progress.
    fn end_turn(&mut self, mut ready: Vec<(usize, bool)>) {
        ready.clear();
        self.spare_ready = ready;
        self.meter.publish(&mut self.unpublished);
    }

    /// Starts a non-blocking connect of entry `i` to `address`, registered for `WRITABLE`:
    /// the poller says when it may be decided, and [`connect_outcome`] says whether it is.
    /// Over `tls:` the session is made too; its handshake is the caller's, once connected.
    pub(super) fn start_connect(&self, address: &Address, i: usize) -> io::Result<Transport> {
        let session = match (address, &self.tls) {
            (Address::Tls { host, .. }, Some(tls)) => Some(tls.session(host)?),
            (Address::Tls { .. }, None) => {
                return Err(io::Error::other("no TLS configuration for a tls: address"))
            }
            _ => None,
        };
        let mut stream = Stream::connect(address)?;
        self.registry()
            .register(&mut stream, Token(i), Interest::WRITABLE)?;
        Ok(Transport::new(stream, session))
    }
}

/// Bytes a socket has not taken yet. The capacity is kept for the connection's life, so a socket
/// that fills once a request (large requests do) costs no allocation each time.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    bytes: Vec<u8>,
    /// `bytes[..from]` have been written.
    from: usize,
}

impl Unsent {
    /// Whether every byte has been written.
    pub(super) fn is_empty(&self) -> bool {
        self.from >= self.bytes.len()
    }

    /// Writes `bytes` on `stream` after anything still unsent; keeps what the socket will not
    /// take.
    pub(super) fn send(&mut self, stream: &mut impl io::Write, bytes: &[u8]) -> io::Result<()> {
        if !self.is_empty() {
            // Drop the bytes already written first: a socket that never quite drains would
            // otherwise grow the buffer by every request sent.
            self.bytes.drain(..self.from);
            self.from = 0;
            self.bytes.extend_from_slice(bytes);
            return self.flush(stream);
        }
        let written = write_until_blocked(stream, bytes)?;
        if written < bytes.len() {
            trace!("socket full, keeping {} bytes", bytes.len() - written);
            self.bytes.clear();
            self.from = 0;
            self.bytes.extend_from_slice(&bytes[written..]);
        }
        Ok(())
    }

    /// Writes as much of the unsent bytes on `stream` as it takes.
    pub(super) fn flush(&mut self, stream: &mut impl io::Write) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.from += write_until_blocked(stream, &self.bytes[self.from..])?;
        if self.is_empty() {
            self.bytes.clear();
            self.from = 0;
        }
        Ok(())
    }
}

/// Whether the connect [`Driver::start_connect`] began is decided, checked as mio's docs
/// prescribe: `Ok(true)` connected (with `TCP_NODELAY` set: requests are written whole and
/// small, so Nagle's delay would only add latency), `Ok(false)` still under way (a spurious or
/// early event), `Err` failed. `who` names the connection in a log line.
pub(super) fn connect_outcome(stream: &Stream, who: impl fmt::Display) -> io::Result<bool> {
    if !stream.connect_outcome()? {
        return Ok(false);
    }
    if let Err(e) = stream.set_nodelay() {
        debug!("{who}: cannot set TCP_NODELAY: {e}");
    }
    Ok(true)
}

/// How long to wait after failed attempt number `attempt` (from 1): doubling from
/// [`FIRST_RETRY_DELAY`], plus up to half as much again, spread by connection number so refused
/// connections do not all retry in the same instant.
pub(super) fn retry_delay(attempt: u32, id: usize) -> Duration {
    let base = FIRST_RETRY_DELAY * 2u32.pow(attempt.saturating_sub(1).min(10));
    base + base * (id % 16) as u32 / 32
}

/// Counts a connection `who` that could not be made in `attempts` attempts, the last failing
/// for `reason`.
pub(super) fn give_up_connect(
    counts: &mut Counts,
    who: impl fmt::Display,
    attempts: u32,
    reason: &str,
) {
    counts.connect_failures += 1;
    counts.note_error(|| format!("{who}: cannot connect after {attempts} attempts: {reason}"));
}

/// A generator thread: it owns a [`Driver`] and serves its entries.
pub(super) trait Generator<'a> {
    /// The generator's loop.
    fn driver(&mut self) -> &mut Driver<'a>;

    /// Does what entry `i` can do now (its event came, or its budget ran out last turn);
    /// `peer_closed`: the poller reported the peer's side closed or an error, so reads go on to
    /// the end of stream. Stale events reach here too and must be tolerated.
    fn on_ready(&mut self, i: usize, peer_closed: bool);
}

/// One loop turn (see the module doc): poll until `deadline` at most, serve the work list,
/// publish progress.
pub(super) fn turn<'a, G: Generator<'a>>(
    generator: &mut G,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let Some(ready) = generator.driver().poll(deadline)? else {
        return Ok(());
    };
    for &(i, peer_closed) in &ready {
        generator.driver().queued[i] = false;
        generator.on_ready(i, peer_closed);
    }
    generator.driver().end_turn(ready);
    Ok(())
}

/// A generator's load phase, as [`run_load`] asks about it.
pub(super) trait Load<'a>: Generator<'a> {
    /// The stop (the end of the duration, or Ctrl-C): no more requests from now on.
    fn begin_stop(&mut self);

    /// What the top of each turn does besides, at `now`; returns the latest the next poll may
    /// wait for it. None by default.
    fn each_turn(&mut self, _now: Instant) -> Option<Instant> {
        None
    }

    /// Whether nothing more can happen (every connection is closed, or after the stop every
    /// request is settled), so the phase ends without waiting out its clock.
    fn is_over(&self, stopping: bool) -> bool;
}

/// Runs the load phase that began at `start` (the first requests already sent) for `duration`,
/// then until [`Load::is_over`], or `grace` after the stop (`None`: no limit but `is_over`).
/// Ctrl-C brings the stop forward to the moment it is seen. Returns how long the load ran: until
/// the stop, or until it was over if that came first.
pub(super) fn run_load<'a, G: Load<'a>>(
    generator: &mut G,
    start: Instant,
    duration: Duration,
    grace: Option<Duration>,
) -> io::Result<Duration> {
    let mut stop = start + duration;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping && now < stop && interrupted() {
            stop = now;
        }
        if !stopping && now >= stop {
            stopping = true;
            generator.begin_stop();
        }
        let wake = generator.each_turn(now);
        let grace_end = grace.map(|grace| stop + grace);
        if generator.is_over(stopping) || (stopping && grace_end.is_some_and(|end| now >= end)) {
            return Ok(now.min(stop).saturating_duration_since(start));
        }
        let until = if stopping { grace_end } else { Some(stop) };
        let deadline = match (until, wake) {
            (Some(until), Some(wake)) => Some(until.min(wake)),
            (until, wake) => until.or(wake),
        };
        turn(generator, deadline.map(poll_deadline))?;
    }
}

/// Idle mode: turns until `until`, Ctrl-C, or `is_empty` (nothing left to hold).
pub(super) fn hold<'a, G: Generator<'a>>(
    generator: &mut G,
    until: Instant,
    is_empty: impl Fn(&G) -> bool,
) -> io::Result<()> {
    while Instant::now() < until && !is_empty(generator) && !interrupted() {
        turn(generator, Some(poll_deadline(until)))?;
    }
    Ok(())
}

/// Set by the first SIGINT once [`stop_early_on_sigint`] is in force: the load ends now, as if
/// its duration were up (outstanding replies still get their grace), and the report says it was
/// interrupted. Never set for a library caller that did not ask for it.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// How long a load thread may wait in `poll` while Ctrl-C can end the run: long enough to cost
/// nothing (ten wake-ups a second), short enough that the summary follows the key at once.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// Makes Ctrl-C end the run early, with the summary of what was measured so far (marked
/// interrupted); a second Ctrl-C exits at once (status 130, the shell's code for SIGINT), for a
/// run whose grace for outstanding replies is itself too long to wait for.
pub(crate) fn stop_early_on_sigint() -> io::Result<()> {
    let flag = Arc::clone(INTERRUPTED.get_or_init(Arc::default));
    // In this order: the first signal finds the flag clear (no exit) and then sets it; the
    // second finds it set and exits.
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        Arc::clone(&flag),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag)?;
    Ok(())
}

/// Whether Ctrl-C has ended the run.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// `deadline` for a load thread's `poll`, brought forward so that a Ctrl-C is seen within
/// [`INTERRUPT_CHECK`] (only while Ctrl-C can end the run).
pub(crate) fn poll_deadline(deadline: Instant) -> Instant {
    match INTERRUPTED.get() {
        Some(_) => deadline.min(Instant::now() + INTERRUPT_CHECK),
        None => deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_spread() {
        assert_eq!(retry_delay(1, 0), Duration::from_millis(100));
        assert_eq!(retry_delay(2, 0), Duration::from_millis(200));
        assert_eq!(retry_delay(3, 0), Duration::from_millis(400));
        assert!(retry_delay(1, 15) < Duration::from_millis(150));
        assert_ne!(retry_delay(1, 1), retry_delay(1, 2));
    }
}
