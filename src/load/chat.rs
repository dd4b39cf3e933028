//! `oneloop load --protocol chat`: every connection is a member of one chat room; `--senders`
//! of them send numbered lines, and every member checks that it receives each other sender's
//! lines exactly once, in order, under the right name — and, at the end, that all the members
//! saw the senders' lines in one interleaving: the room's one order.
//!
//! All the members live on one thread and one `mio::Poll` (`--threads` must be 1): the start
//! barrier and the closed loop below both need to see every member's state, and one thread sees
//! it without locks.
//!
//! ## Names and the start barrier
//!
//! First every member waits for its `* welcome` greeting: then the server has it in the room,
//! and a line broadcast from then on reaches it. (A member the server had not yet accepted
//! would miss a `hello`; waiting for the greetings means none is ever sent twice — resending
//! hellos on a timer, the first design, flooded a 1,000-member room with millions of extra
//! deliveries exactly while it was slowest.) Then each member renames itself
//! `/nick ld<PID>-<ID>` (the process id keeps two runs in one room apart) and sends the line
//! `hello`, once. The server handles a member's lines in order, so the `hello` reaches the
//! others as `ld<PID>-<ID>: hello` — under the new name — whether or not they saw the
//! `* OLD is now NEW` notice. When every member has heard every other one (at most
//! [`barrier_timeout`]; past that the run fails), the threads' gate opens and the load starts.
//! Each member sends its `hello` once, so a second one heard from the same member is a wrong
//! reply, as a duplicated line is in the load.
//! Lines starting with `* ` (joins, leaves, nick notices, greetings) are ignored throughout.
//!
//! ## The load: a closed loop through an observer
//!
//! Senders are members `0..K`. Sender `s`'s lines are `ID SEQ NANOS xxx…\n`, padded with `x`
//! to `--size` bytes (longer if the numbers need it): ID is `s` itself, SEQ counts from 0, NANOS
//! is the send time in nanoseconds since the load started. The ID is what lets a receiver see a
//! line shown under another member's name: the name the server puts before the line must be the
//! one its ID gives (without it, a server that swapped two senders' names while their SEQs were
//! in step would pass), just as a stream reply must be its own connection's. A sender never sees its own lines, so its *observer*,
//! member `s + 1` (wrapping), paces it: the sender keeps `--pipeline` lines sent but not yet
//! received by its observer. Every receiver keeps, per sender, the next SEQ it expects: a line
//! with a lower SEQ (duplicate or reordered), from an unknown, non-sending or own name, or under
//! a name that is not its ID's is a wrong reply; a higher SEQ is a gap, its skipped lines missing. Delivery latency is the
//! receipt time less NANOS, on the same clock. At the end senders stop, and the last lines get
//! [`GRACE`] to reach everyone; each one a member still lacks is missing.
//!
//! ## One order
//!
//! Per-sender checks pass a room that delivers each sender's lines in order but interleaves
//! different senders' lines differently at different members — which a room spread over two
//! instances (`oneloop load A B`, one Redis between them) could do, and which the contract
//! forbids ("one order per room"). So each member also keeps [`super::order`]'s pairwise
//! fingerprints: for each pair of senders, a 64-bit hash of how their lines interleaved as it
//! received them, updated as each line is accepted (a line refused as a duplicate or out of
//! order is not counted). After the grace, for each pair, every member that is neither of the two
//! must hold the same hash. Why pairs suffice, and what is proven when every member sends
//! (nothing with 3 members; everything from 4 on), is in that module. Fixed memory, no line
//! stored: K (K − 1) / 2 hashes per member, for the first
//! [`MAX_ORDERED_SENDERS`](super::order::MAX_ORDERED_SENDERS) (64) senders — beyond them the
//! memory and the per-line cost would grow with K², so later senders' lines are checked per
//! sender only.
//!
//! A member that already has an error of its own (a wrong, skipped or missing line, or dropped
//! before the end) would differ for that reason alone, so it is left out: only members whose
//! every line was right are compared, each member that disagrees with the room's order (the hash
//! most of them hold, pair by pair) counts as one wrong reply — and as one `order_differs`, so
//! the summary and the JSON say which kind of wrong it was — and the first error and a warning
//! name the pair and two members that disagree.
//!
//! ## Idle members (`--idle`)
//!
//! With `--idle`, members only join: each must receive its `* welcome` greeting (its one
//! verified round trip, timed from its connect), then all are held open for `--duration`,
//! reading and discarding the notices of the others' joins, so the server's memory per idle
//! member can be measured. A line other than a `* ` notice, or a member the server drops, is an
//! error. No barrier, and no N × N table: any number of members.
//!
//! Lines are built into one reused buffer and parsed in place (a partial line is kept in the
//! member's own reused buffer), so a delivery allocates nothing once the buffers have grown.

use std::io::{self, Read, Write as _};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use mio::{Interest, Token};

use super::driver::{self, Driver, Meter, Plan, Unsent};
use super::order::OrderPrints;
use super::report::Counts;
use super::transport::Transport;
use super::{Gate, Mode, CONNECT_TIMEOUT, GRACE, MAX_CONNECT_ATTEMPTS};

/// Longest the start barrier may take for `members`: 5 s, plus 10 µs for each of the N²
/// deliveries the renames and hellos cost (a 1,000-member room: 15 s), so that a slow model
/// still starts while a server that loses a `hello` fails in bounded time.
pub(super) fn barrier_timeout(members: usize) -> Duration {
    let deliveries = (members * members) as u64;
    Duration::from_secs(5) + Duration::from_micros(10 * deliveries)
}

/// Most chat members: the barrier keeps an N × N table, and every line goes to N − 1 members.
pub(super) const MAX_MEMBERS: usize = 2048;

/// The longest line a member accepts beyond `--size` (the name, the numbers).
const LINE_SLACK: usize = 128;

/// Idle members connected between two reads of what has arrived.
const IDLE_CONNECTS_PER_TURN: usize = 64;

/// Size of the read buffer shared by the members.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Bytes one member may read per turn before the others get theirs: a member's reads make its
/// senders send, which refills it, so without a budget one member could hog the loop.
const MAX_READ_BYTES_PER_TURN: usize = 4 * READ_BUFFER_BYTES;

/// One member of the room.
#[derive(Debug)]
struct Member {
    stream: Option<Transport>,
    /// Bytes the socket has not taken yet.
    unsent: Unsent,
    /// The start of a line whose end has not arrived yet (capacity kept).
    partial: Vec<u8>,
    registered: Interest,
}

impl Member {
    /// Whether bytes wait for the socket: lines, or over TLS ciphertext rustls holds.
    fn has_unsent(&self) -> bool {
        !self.unsent.is_empty() || self.stream.as_ref().is_some_and(Transport::wants_write)
    }

    /// Writes `bytes` after anything still unsent (nothing once the member is closed).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(stream) => self.unsent.send(stream, bytes),
            None => Ok(()),
        }
    }

    /// Writes as much of the unsent bytes as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(stream) => {
                self.unsent.flush(stream)?;
                stream.flush_tls()
            }
            None => Ok(()),
        }
    }
}

/// The stage of the chat run a received line arrives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChatStage {
    Barrier,
    Load,
    /// `--idle`: members join and listen; nobody sends.
    Idle,
}

/// The one chat thread.
struct Chat<'a> {
    plan: &'a Plan,
    driver: Driver<'a>,
    members: Vec<Member>,
    /// Names are `{prefix}{id}`.
    prefix: String,
    senders: usize,
    /// Barrier: `heard[r * n + s]`: member r has heard s's hello.
    heard: Vec<bool>,
    /// Barrier: how many members have heard each member.
    heard_by: Vec<usize>,
    /// Load: `expected[r * senders + s]`: the next SEQ member r expects from sender s.
    expected: Vec<u64>,
    /// Load: lines each sender has sent.
    sent: Vec<u64>,
    /// Load: lines of each sender its observer has received (or skipped past).
    observed: Vec<u64>,
    /// Load: each member's order fingerprints of every pair of senders (the "one order" check).
    order: OrderPrints,
    /// Load: members with an error of their own (a wrong, skipped or missing line, or dropped),
    /// whose order is therefore not compared.
    faulty: Vec<bool>,
    /// Idle: when each member connected, until its greeting arrives (then `None`).
    awaiting_greeting: Vec<Option<Instant>>,
    /// Idle: members whose greeting has arrived.
    greeted: usize,
    start: Instant,
    warmup_nanos: u64,
    stopping: bool,
    stage: ChatStage,
    read_buf: Box<[u8]>,
    out: Vec<u8>,
    tally: Counts,
}

/// Runs the chat load: connect, barrier, gate, load, grace.
pub(crate) fn run(plan: &Plan, gate: &Gate, meter: &Meter) -> io::Result<Counts> {
    // Whatever happens, arrive at the gate exactly once, or the calling thread waits forever.
    let mut ticket = gate.ticket();
    let mut chat = Chat::new(plan, meter)?;
    let ready = chat.connect_all()?
        && match chat.stage {
            ChatStage::Idle => chat.await_greetings()?,
            ChatStage::Barrier | ChatStage::Load => chat.barrier()?,
        };
    ticket.arrive();
    let Some(start) = gate.wait_open() else {
        return Ok(chat.tally);
    };
    if ready {
        match chat.stage {
            ChatStage::Idle => chat.hold(start + plan.config.duration)?,
            ChatStage::Barrier | ChatStage::Load => chat.load(start)?,
        }
    }
    for i in 0..chat.members.len() {
        chat.close(i);
    }
    Ok(chat.tally)
}

impl<'a> Chat<'a> {
    fn new(plan: &'a Plan, meter: &'a Meter) -> io::Result<Chat<'a>> {
        let n = plan.count;
        let idle = plan.config.mode == Mode::Idle;
        let senders = if idle {
            0
        } else {
            plan.config.senders.unwrap_or(n).min(n)
        };
        // The barrier's table is N × N: idle members, who need none, may be many.
        let table = if idle { 0 } else { n };
        Ok(Chat {
            plan,
            driver: Driver::new(meter, n, plan.tls.clone())?,
            members: (0..n)
                .map(|_| Member {
                    stream: None,
                    unsent: Unsent::default(),
                    partial: Vec::new(),
                    registered: Interest::READABLE,
                })
                .collect(),
            prefix: format!("ld{}-", std::process::id()),
            senders,
            heard: vec![false; table * table],
            heard_by: vec![0; table],
            expected: vec![0; n * senders],
            sent: vec![0; senders],
            observed: vec![0; senders],
            order: OrderPrints::new(if idle { 0 } else { n }, senders),
            faulty: vec![false; n],
            awaiting_greeting: vec![None; n],
            greeted: 0,
            start: Instant::now(),
            warmup_nanos: 0,
            stopping: false,
            stage: if idle {
                ChatStage::Idle
            } else {
                ChatStage::Barrier
            },
            read_buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            out: Vec::new(),
            tally: Counts::new(),
        })
    }

    /// Connects every member, one after the other (with retries). False if one could not be
    /// connected: the room would be incomplete. Idle members read what has arrived every
    /// [`IDLE_CONNECTS_PER_TURN`] connects, so that the notices of thousands of joins never pile
    /// up unread in the server.
    fn connect_all(&mut self) -> io::Result<bool> {
        for i in 0..self.members.len() {
            if self.stage == ChatStage::Idle && i % IDLE_CONNECTS_PER_TURN == 0 {
                driver::turn(self, Some(Instant::now()))?;
            }
            let mut attempt = 1;
            let stream = loop {
                match self.connect(i)? {
                    Ok(stream) => break stream,
                    Err(e) if attempt < MAX_CONNECT_ATTEMPTS => {
                        debug!("member {i}: attempt {attempt} failed: {e}");
                        std::thread::sleep(driver::retry_delay(attempt, i));
                        attempt += 1;
                    }
                    Err(e) => {
                        let reason = crate::sys::os_reason(&e);
                        let who = format_args!("member {i}");
                        driver::give_up_connect(&mut self.tally, who, attempt, &reason);
                        return Ok(false);
                    }
                }
            };
            if stream.is_tls() {
                // What came with the handshake's last flight may wait in rustls: no edge says so.
                self.driver.keep_ready(i);
            }
            self.members[i].stream = Some(stream);
            self.tally.handshakes += 1;
            if let Some(awaiting) = self.awaiting_greeting.get_mut(i) {
                *awaiting = Some(Instant::now());
            }
            self.tally.established += 1;
            self.driver.meter.open.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// One connect attempt for member `i`: non-blocking, with the loop turning meanwhile (the
    /// members already in keep reading) until it is decided or [`CONNECT_TIMEOUT`] has passed.
    /// The outer error is the loop's own; the inner, the attempt's.
    fn connect(&mut self, i: usize) -> io::Result<io::Result<Transport>> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut stream = match self
            .driver
            .start_connect(self.plan.config.address_of(self.plan.first_id + i), i)
        {
            Ok(stream) => stream,
            Err(e) => return Ok(Err(e)),
        };
        loop {
            match driver::connect_outcome(stream.socket(), format_args!("member {i}")) {
                Ok(true) => break,
                Ok(false) if Instant::now() >= deadline => {
                    let timed_out = io::Error::new(io::ErrorKind::TimedOut, "no answer");
                    return Ok(Err(timed_out));
                }
                // Its events meanwhile find no stream in `members[i]` and are ignored.
                Ok(false) => driver::turn(self, Some(deadline))?,
                Err(e) => return Ok(Err(e)),
            }
        }
        if stream.is_tls() {
            let both = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .driver
                .registry()
                .reregister(&mut stream, Token(i), both)
            {
                return Ok(Err(e));
            }
            loop {
                match stream.handshake() {
                    Ok(true) => break,
                    Ok(false) if Instant::now() >= deadline => {
                        let timed_out = io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the TLS handshake did not complete in time",
                        );
                        return Ok(Err(timed_out));
                    }
                    Ok(false) => driver::turn(self, Some(deadline))?,
                    Err(e) => return Ok(Err(e)),
                }
            }
        }
        // A member only reads from now on (and writes when a write is refused).
        let registry = self.driver.registry();
        Ok(registry
            .reregister(&mut stream, Token(i), Interest::READABLE)
            .map(|()| stream))
    }

    /// Waits until every member has its greeting (at most [`CONNECT_TIMEOUT`]).
    fn await_greetings(&mut self) -> io::Result<bool> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while self.greeted < self.members.len() && self.errors() == 0 {
            if Instant::now() >= deadline {
                let lacking = self.members.len() - self.greeted;
                self.tally.missing_replies += lacking as u64;
                self.tally.note_error(|| {
                    format!(
                        "{lacking} members had no greeting {} s after connecting",
                        CONNECT_TIMEOUT.as_secs()
                    )
                });
                return Ok(false);
            }
            driver::turn(self, Some(deadline))?;
        }
        Ok(self.errors() == 0)
    }

    /// Idle: holds every member open until `until`, reading and discarding notices; a member
    /// the server drops is counted.
    fn hold(&mut self, until: Instant) -> io::Result<()> {
        driver::hold(self, until, |chat| chat.all_closed())?;
        self.stopping = true;
        Ok(())
    }

    /// The start barrier (see the module documentation). False if it timed out or failed.
    fn barrier(&mut self) -> io::Result<bool> {
        if !self.await_greetings()? {
            return Ok(false);
        }
        let n = self.members.len();
        for i in 0..n {
            self.out.clear();
            let _ = write!(self.out, "/nick {}{i}\nhello\n", self.prefix);
            self.send_out(i);
        }
        let timeout = barrier_timeout(n);
        let deadline = Instant::now() + timeout;
        while self.heard_by.iter().any(|&h| h + 1 < n) {
            if self.errors() > 0 {
                return Ok(false);
            }
            let now = Instant::now();
            if now >= deadline {
                let (r, s) = (0..n * n)
                    .map(|k| (k / n, k % n))
                    .find(|&(r, s)| r != s && !self.heard[r * n + s])
                    .unwrap_or((0, 0));
                let silent: u64 = self.heard_by.iter().map(|&h| (n - 1 - h) as u64).sum();
                self.tally.missing_replies += silent;
                let prefix = &self.prefix;
                self.tally.note_error(|| {
                    format!(
                        "chat start: after {:.0} s, {silent} member pairs had not heard each other \
                         (first: {prefix}{r} never got {prefix}{s}'s hello)",
                        timeout.as_secs_f64()
                    )
                });
                return Ok(false);
            }
            driver::turn(self, Some(deadline))?;
        }
        Ok(self.errors() == 0)
    }

    /// The load, from `start` to the end of the grace period.
    fn load(&mut self, start: Instant) -> io::Result<()> {
        self.start = start;
        self.stage = ChatStage::Load;
        let config = &self.plan.config;
        let duration = config.duration;
        self.warmup_nanos = nanos(config.warmup());
        for s in 0..self.senders {
            self.send_lines(s);
        }
        self.tally.load_time = driver::run_load(self, start, duration, Some(GRACE))?;
        // What is still missing now never came.
        let n = self.members.len();
        let mut missing = 0;
        let mut first = None;
        for r in 0..n {
            if self.members[r].stream.is_none() {
                continue; // already counted as dropped
            }
            for s in 0..self.senders {
                let lacking = self.sent[s] - self.expected[r * self.senders + s].min(self.sent[s]);
                if s != r && lacking > 0 {
                    missing += lacking;
                    self.faulty[r] = true;
                    first.get_or_insert((r, s, lacking));
                }
            }
        }
        if let Some((r, s, lacking)) = first {
            self.tally.missing_replies += missing;
            let prefix = &self.prefix;
            self.tally.note_error(|| {
                format!(
                    "{missing} deliveries still missing {} s after the end (first: {prefix}{r} \
                     lacks the last {lacking} of {prefix}{s}'s lines)",
                    GRACE.as_secs()
                )
            });
        }
        self.check_one_order();
        Ok(())
    }

    /// The "one order" check, once every line has arrived or been counted missing: members
    /// with no other error must agree on every pair of senders' interleaving
    /// ([`super::order`]). Each member that does not is one wrong reply.
    fn check_one_order(&mut self) {
        let verdict = self.order.verdict(|r| !self.faulty[r]);
        let Some(d) = verdict.first else {
            return;
        };
        let differing = verdict.differing.len() as u64;
        self.tally.wrong_replies += differing;
        self.tally.order_differs += differing;
        let (prefix, plural) = (&self.prefix, if differing == 1 { "" } else { "s" });
        let what = format!(
            "{prefix}{} got {prefix}{}'s and {prefix}{}'s lines in another order than {prefix}{} \
             ({differing} member{plural} saw another interleaving than the room's)",
            d.member, d.a, d.b, d.reference
        );
        warn!("{what}");
        self.tally.note_error(|| what);
    }

    fn all_closed(&self) -> bool {
        self.members.iter().all(|m| m.stream.is_none())
    }

    fn all_delivered(&self) -> bool {
        (0..self.members.len()).all(|r| {
            self.members[r].stream.is_none()
                || (0..self.senders)
                    .all(|s| s == r || self.expected[r * self.senders + s] >= self.sent[s])
        })
    }

    fn errors(&self) -> u64 {
        let t = &self.tally;
        t.connect_failures + t.wrong_replies + t.missing_replies + t.dropped
    }

    /// Sender `s` sends lines until `--pipeline` are unseen by its observer.
    fn send_lines(&mut self, s: usize) {
        if self.stopping || self.members[s].stream.is_none() {
            return;
        }
        let pipeline = self.plan.config.pipeline as u64;
        let size = self.plan.config.size;
        self.out.clear();
        let now = nanos(self.start.elapsed());
        while self.sent[s] - self.observed[s].min(self.sent[s]) < pipeline {
            write_line(&mut self.out, s as u64, self.sent[s], now, size);
            self.sent[s] += 1;
            if now >= self.warmup_nanos {
                self.tally.requests += 1;
            } else {
                self.tally.warmup_requests += 1;
            }
        }
        self.send_out(s);
    }

    /// Writes `self.out` on member `i`.
    fn send_out(&mut self, i: usize) {
        if self.out.is_empty() {
            return;
        }
        if let Err(e) = self.members[i].send(&self.out) {
            return self.lose(i, crate::sys::os_reason(&e));
        }
        self.update_interest(i);
    }

    fn update_interest(&mut self, i: usize) {
        let member = &mut self.members[i];
        let wanted = if member.has_unsent() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if wanted == member.registered {
            return;
        }
        let Some(stream) = member.stream.as_mut() else {
            return;
        };
        match self.driver.registry().reregister(stream, Token(i), wanted) {
            Ok(()) => member.registered = wanted,
            Err(e) => self.lose(i, format!("cannot change poller interest: {e}")),
        }
    }

    /// Flushes member `i`, then reads and handles its lines until drained or out of budget.
    fn serve(&mut self, i: usize) {
        if self.members[i].stream.is_none() {
            return;
        }
        if let Err(e) = self.members[i].flush() {
            return self.lose(i, crate::sys::os_reason(&e));
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut budget = MAX_READ_BYTES_PER_TURN;
        loop {
            if budget == 0 {
                self.driver.keep_ready(i);
                break;
            }
            let Some(stream) = self.members[i].stream.as_mut() else {
                break;
            };
            let asked = budget.min(buf.len());
            match stream.read(&mut buf[..asked]) {
                Ok(0) => {
                    self.lose(i, "the server closed the connection".into());
                    break;
                }
                Ok(count) => {
                    budget -= count;
                    self.feed(i, &buf[..count]);
                    let ended = self.members[i]
                        .stream
                        .as_ref()
                        .is_some_and(Transport::end_seen);
                    if count < asked && !ended {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose(i, crate::sys::os_reason(&e));
                    break;
                }
            }
        }
        self.read_buf = buf;
        self.update_interest(i);
    }

    /// Splits bytes member `r` received into lines and handles each.
    fn feed(&mut self, r: usize, mut bytes: &[u8]) {
        let longest = self.plan.config.size + LINE_SLACK;
        while !bytes.is_empty() {
            let Some(end) = memchr::memchr(b'\n', bytes) else {
                self.members[r].partial.extend_from_slice(bytes);
                if self.members[r].partial.len() > longest {
                    self.members[r].partial.clear();
                    self.wrong(r, || format!("a line longer than {longest} bytes"));
                }
                return;
            };
            if self.members[r].partial.is_empty() {
                self.line(r, &bytes[..end]);
            } else {
                let mut partial = std::mem::take(&mut self.members[r].partial);
                partial.extend_from_slice(&bytes[..end]);
                self.line(r, &partial);
                partial.clear();
                self.members[r].partial = partial;
            }
            bytes = &bytes[end + 1..];
        }
    }

    /// Handles one line (without its newline) received by member `r`.
    fn line(&mut self, r: usize, line: &[u8]) {
        self.tally.lines_received += 1;
        if line.starts_with(b"* welcome ") {
            if let Some(connected) = self.awaiting_greeting.get_mut(r).and_then(Option::take) {
                self.greeted += 1;
                if self.stage == ChatStage::Idle {
                    // An idle member's one round trip: counted and timed like one.
                    self.tally.requests += 1;
                    self.driver.completed(1);
                    let latency = nanos(connected.elapsed());
                    self.tally.latency.saturating_record(latency.max(1));
                }
            }
        }
        if line.starts_with(b"* ") {
            return; // joins, leaves, nick notices, greetings
        }
        if self.stage == ChatStage::Idle {
            return self.wrong(r, || {
                format!("a line while every member is idle: {:?}", lossy(line))
            });
        }
        let Some(colon) = find(line, b": ") else {
            return self.wrong(r, || {
                format!("a line that is no NAME: LINE: {:?}", lossy(line))
            });
        };
        let (name, body) = (&line[..colon], &line[colon + 2..]);
        let sender = name
            .strip_prefix(self.prefix.as_bytes())
            .and_then(parse_number)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s < self.members.len());
        let Some(s) = sender else {
            return self.wrong(r, || format!("a line from a stranger: {:?}", lossy(line)));
        };
        if s == r {
            return self.wrong(r, || "its own line".to_string());
        }
        if body == b"hello" {
            let n = self.members.len();
            if self.heard[r * n + s] {
                let prefix = self.prefix.clone();
                return self.wrong(r, || format!("{prefix}{s}'s hello a second time"));
            }
            self.heard[r * n + s] = true;
            self.heard_by[s] += 1;
            return;
        }
        if self.stage == ChatStage::Barrier || s >= self.senders {
            return self.wrong(r, || {
                format!("a line from a member that sends none: {:?}", lossy(line))
            });
        }
        self.delivery(r, s, line, body);
    }

    /// Handles `line`, whose body is `body`, shown to member `r` under sender `s`'s name during
    /// the load: checks it is the next of `s`'s numbered lines, times it, and paces `s` if `r`
    /// is its observer.
    fn delivery(&mut self, r: usize, s: usize, line: &[u8], body: &[u8]) {
        let Some((id, seq, sent_nanos)) = parse_body(body, self.plan.config.size) else {
            return self.wrong(r, || format!("a garbled line: {:?}", lossy(line)));
        };
        if id != s as u64 {
            let prefix = self.prefix.clone();
            return self.wrong(r, || {
                format!("line {seq} of {prefix}{id} shown under {prefix}{s}'s name")
            });
        }
        let slot = r * self.senders + s;
        let expected = self.expected[slot];
        if seq < expected {
            let prefix = self.prefix.clone();
            return self.wrong(r, || {
                format!(
                    "line {seq} of {prefix}{s} again or out of order (expected {expected} next)"
                )
            });
        }
        if seq > expected {
            self.faulty[r] = true;
            self.tally.missing_replies += seq - expected;
            let prefix = &self.prefix;
            self.tally.note_error(|| {
                format!(
                    "{prefix}{r} got line {seq} of {prefix}{s} after line {}: {} missing",
                    expected as i128 - 1,
                    seq - expected
                )
            });
        }
        self.expected[slot] = seq + 1;
        self.order.record(r, s);
        self.driver.completed(1);
        if sent_nanos >= self.warmup_nanos {
            self.tally.deliveries += 1;
            let latency = nanos(self.start.elapsed()).saturating_sub(sent_nanos);
            self.tally.latency.saturating_record(latency.max(1));
        }
        if observer(s, self.members.len()) == r && seq + 1 > self.observed[s] {
            self.observed[s] = seq + 1;
            self.send_lines(s);
        }
    }

    fn wrong(&mut self, r: usize, what: impl FnOnce() -> String) {
        self.faulty[r] = true;
        self.tally.wrong_replies += 1;
        let prefix = &self.prefix;
        self.tally
            .note_error(|| format!("{prefix}{r} received {}", what()));
    }

    /// Member `i`'s connection ended.
    fn lose(&mut self, i: usize, reason: String) {
        if self.members[i].stream.is_none() {
            return;
        }
        if self.stopping && self.all_delivered() {
            debug!("member {i}: {reason} after the last delivery");
        } else {
            self.faulty[i] = true;
            self.tally.dropped += 1;
            let prefix = &self.prefix;
            self.tally
                .note_error(|| format!("{prefix}{i}: {reason} before the end of the load"));
        }
        self.close(i);
    }

    fn close(&mut self, i: usize) {
        if let Some(mut stream) = self.members[i].stream.take() {
            stream.close_notify();
            self.driver.meter.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<'a> driver::Generator<'a> for Chat<'a> {
    fn driver(&mut self) -> &mut Driver<'a> {
        &mut self.driver
    }

    fn on_ready(&mut self, i: usize, _peer_closed: bool) {
        self.serve(i);
    }
}

impl<'a> driver::Load<'a> for Chat<'a> {
    fn begin_stop(&mut self) {
        trace!("chat load over: waiting for the last lines");
        self.stopping = true;
    }

    fn is_over(&self, stopping: bool) -> bool {
        if stopping {
            self.all_delivered()
        } else {
            self.all_closed()
        }
    }
}

/// The member that paces sender `s`.
fn observer(s: usize, members: usize) -> usize {
    (s + 1) % members
}

/// `duration` in nanoseconds.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Appends sender `id`'s line `seq` sent at `sent_nanos`: `ID SEQ NANOS xxx…\n`, `size` bytes
/// with its newline (or just `ID SEQ NANOS\n` if that is longer).
fn write_line(out: &mut Vec<u8>, id: u64, seq: u64, sent_nanos: u64, size: usize) {
    let begin = out.len();
    let _ = write!(out, "{id} {seq} {sent_nanos}");
    let length = out.len() - begin;
    if length + 2 < size {
        out.push(b' ');
        out.resize(begin + size - 1, b'x');
    }
    out.push(b'\n');
}

/// Parses a line's body as [`write_line`] builds it for `size`: `(ID, SEQ, NANOS)`, or `None`
/// if it is not exactly such a line.
fn parse_body(body: &[u8], size: usize) -> Option<(u64, u64, u64)> {
    let first = memchr::memchr(b' ', body)?;
    let id = parse_number(&body[..first])?;
    let after_id = &body[first + 1..];
    let second = memchr::memchr(b' ', after_id)?;
    let seq = parse_number(&after_id[..second])?;
    let space = first + 1 + second;
    let rest = &body[space + 1..];
    let (stamp, padding) = match memchr::memchr(b' ', rest) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let sent_nanos = parse_number(stamp)?;
    let head = space + 1 + stamp.len();
    let wanted_len = if head + 2 < size { size - 1 } else { head };
    let padding_ok = padding.map_or(true, |p| p.iter().all(|&b| b == b'x'));
    (padding_ok && body.len() == wanted_len).then_some((id, seq, sent_nanos))
}

/// A decimal number of 1 to 19 digits.
fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A line for a message, shortened.
fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_at_every_size() {
        for size in [1, 5, 10, 11, 12, 15, 64, 300] {
            let mut out = Vec::new();
            write_line(&mut out, 7, 12, 3_456_789, size);
            assert_eq!(out.last(), Some(&b'\n'));
            if size > 14 {
                assert_eq!(out.len(), size, "{size}");
            }
            let body = &out[..out.len() - 1];
            assert_eq!(parse_body(body, size), Some((7, 12, 3_456_789)), "{size}");
        }
    }

    #[test]
    fn garbled_lines_are_refused() {
        let mut out = Vec::new();
        write_line(&mut out, 3, 7, 99, 32);
        let body = &out[..out.len() - 1];
        assert!(parse_body(&body[..body.len() - 1], 32).is_none(), "short");
        let mut bad = body.to_vec();
        bad[20] = b'y';
        assert!(parse_body(&bad, 32).is_none(), "padding");
        assert!(parse_body(b"3 7 x9", 6).is_none(), "not a number");
        assert!(parse_body(b"7 99", 4).is_none(), "no sender");
        assert!(parse_body(b"hello", 32).is_none());
    }

    #[test]
    fn each_sender_has_another_observer() {
        assert_eq!(observer(0, 5), 1);
        assert_eq!(observer(4, 5), 0);
        assert_eq!(observer(1, 2), 0);
    }
}
