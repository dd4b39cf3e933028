//! One generator thread over streams (TCP or Unix): its share of the connections on one
//! `mio::Poll`.
//!
//! It follows the same rules as the server's reactor, for the same reasons: sockets are
//! edge-triggered, so every read goes on until the socket is drained (a short read means drained
//! on Linux) or a per-turn budget is spent, and a connection stopped by the budget is served again
//! before the next `poll`; requests are written the moment they exist and only the bytes the
//! socket refuses are kept, with `WRITABLE` interest only while some are; readiness is a hint,
//! so a connect is confirmed by `take_error` and `peer_addr`, not by the event.
//!
//! The thread's connections live in a `Vec` indexed by token. A retried connect reuses its token
//! for a new socket, but only at the start of a turn, after the batch of events that might still
//! name the old one has been handled; an event that reaches a connection in the wrong state is
//! ignored or checked, never trusted.
//!
//! Over `tls:` a connection's TLS handshake follows its connect (`Handshaking`), and requests
//! are sent only once it is complete, so their latency never includes it. With `--reconnect N`
//! a connection closes after its N-th reply (with a close_notify over TLS) and connects again
//! (`Reconnecting`: a new socket, a full handshake), so what setting up a connection costs is
//! measured as handshakes per second. The new connect starts at the top of the next turn, after
//! the batch that might still name the old socket; a reconnect that fails is an error (it is
//! not retried: the server was up a moment before).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{debug, trace};
use mio::{Interest, Token};

use super::driver::{self, Driver, Meter, Plan, Unsent};
use super::report::Counts;
use super::transport::Transport;
use super::verify::{ReplyVerifier, Requests, WrongReply};
use super::{
    Gate, LoadConfig, Mode, CONNECT_TIMEOUT, GRACE, MAX_CONNECTS_IN_FLIGHT, MAX_CONNECT_ATTEMPTS,
};

/// Size of the read buffer each thread shares among its connections.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reply bytes one connection may consume per turn before the others get theirs.
const MAX_READ_BYTES_PER_TURN: usize = 4 * READ_BUFFER_BYTES;

/// A connection's stage. Transitions happen in [`StreamGenerator`]'s `start_connect`,
/// `finish_connect`, `fail_attempt`, `load`, `serve`, `wrong`, `lose` and `close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting in the connect queue to make attempt number `attempt` (from 1).
    Waiting { attempt: u32 },
    /// A non-blocking connect is under way; `WRITABLE` will say when it is decided.
    Connecting { attempt: u32, deadline: Instant },
    /// Over `tls:`: connected, the TLS handshake under way.
    Handshaking { attempt: u32, deadline: Instant },
    /// Idle mode: connected, its one round trip under way.
    Probing { attempt: u32, deadline: Instant },
    /// Load mode: connected, waiting for the other connections and threads.
    Ready { attempt: u32 },
    /// Load mode: sending requests and verifying replies.
    Running,
    /// Load mode, `--reconnect`: its requests done, connecting again (the connect starts at the
    /// next turn); `connected` once the connect has succeeded and the handshake is under way.
    Reconnecting { deadline: Instant, connected: bool },
    /// Idle mode: round trip verified; held open and quiet.
    Holding,
    /// Finished, for good or ill. The socket is closed.
    Closed,
}

/// One connection to the server.
#[derive(Debug)]
struct Conn {
    /// The run-wide connection number, for messages.
    id: usize,
    /// The socket, from the start of a connect attempt until the connection is closed.
    stream: Option<Transport>,
    state: State,
    /// Checks the reply stream.
    verifier: ReplyVerifier,
    /// Requests handed to `write` so far: also the number of the next request.
    sent: u64,
    /// When each request without a complete reply was handed to `write`, oldest first.
    sent_at: VecDeque<Instant>,
    /// Request bytes the socket has not taken yet: at most `pipeline × size`.
    unsent: Unsent,
    /// The interest registered with the poller, to skip redundant `epoll_ctl` calls.
    registered: Interest,
    /// The poller reported the peer's side closed: read on to the end of stream.
    peer_closing: bool,
}

impl Conn {
    fn new(id: usize, requests: &Requests) -> Conn {
        Conn {
            id,
            stream: None,
            state: State::Waiting { attempt: 1 },
            verifier: ReplyVerifier::new(requests, id as u64),
            sent: 0,
            sent_at: VecDeque::new(),
            unsent: Unsent::default(),
            registered: Interest::WRITABLE,
            peer_closing: false,
        }
    }

    /// Closes the socket and forgets the conversation (a retry starts afresh).
    fn close_socket(&mut self, requests: &Requests) {
        self.stream = None;
        self.verifier = ReplyVerifier::new(requests, self.id as u64);
        self.sent = 0;
        self.sent_at = VecDeque::new();
        self.unsent = Unsent::default();
        self.peer_closing = false;
    }

    /// Whether bytes wait for the socket: requests, or over TLS ciphertext rustls holds.
    fn has_unsent(&self) -> bool {
        !self.unsent.is_empty() || self.stream.as_ref().is_some_and(Transport::wants_write)
    }

    /// Writes `bytes` after anything still unsent; keeps what the socket will not take.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        self.unsent.send(stream, bytes)
    }

    /// Writes as much of the unsent bytes as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if !self.unsent.is_empty() {
            self.unsent.flush(stream)?;
        }
        stream.flush_tls()
    }

    /// Reads and verifies until drained, the budget is spent, the reply stream goes wrong, or the
    /// connection ends. `on_reply(sent_at, now)` is called for each completed reply.
    fn read_replies(
        &mut self,
        requests: &Requests,
        buf: &mut [u8],
        mut on_reply: impl FnMut(Instant, Instant),
    ) -> ReadOutcome {
        let Some(stream) = self.stream.as_mut() else {
            return ReadOutcome::Drained;
        };
        let mut budget = MAX_READ_BYTES_PER_TURN;
        loop {
            if budget == 0 {
                return ReadOutcome::Budget;
            }
            let asked = budget.min(buf.len());
            match stream.read(&mut buf[..asked]) {
                Ok(0) => return ReadOutcome::Lost("the server closed the connection".into()),
                Ok(count) => {
                    budget -= count;
                    let fed = self.verifier.feed(requests, &buf[..count], self.sent);
                    if fed.completed > 0 {
                        let now = Instant::now();
                        for _ in 0..fed.completed {
                            let sent_at = self
                                .sent_at
                                .pop_front()
                                .expect("a reply completes only a request that was sent");
                            on_reply(sent_at, now);
                        }
                    }
                    if let Some(wrong) = fed.wrong {
                        return ReadOutcome::Wrong(wrong);
                    }
                    if count < asked && !self.peer_closing && !stream.end_seen() {
                        return ReadOutcome::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadOutcome::Lost(crate::sys::os_reason(&e)),
            }
        }
    }
}

/// How a call to [`Conn::read_replies`] ended.
#[derive(Debug)]
enum ReadOutcome {
    /// Everything available was read.
    Drained,
    /// The turn's budget ran out with bytes probably still waiting.
    Budget,
    /// A reply was wrong.
    Wrong(WrongReply),
    /// The connection ended (end of stream or an error), with this reason.
    Lost(String),
}

/// Runs one thread's share of the run: connect, wait at the gate, load or hold, tally.
pub(crate) fn run(plan: &Plan, gate: &Gate, meter: &Meter) -> io::Result<Counts> {
    // Whatever happens, arrive at the gate exactly once, or the calling thread waits forever.
    let mut ticket = gate.ticket();
    let mut generator = StreamGenerator::new(plan, meter)?;
    generator.connect_all()?;
    generator.tally.established = generator
        .conns
        .iter()
        .filter(|c| matches!(c.state, State::Ready { .. } | State::Holding))
        .count() as u64;
    ticket.arrive();
    let Some(start) = gate.wait_open() else {
        return Ok(generator.tally);
    };
    match plan.config.mode {
        Mode::Load => generator.load(start)?,
        Mode::Idle => generator.hold(start + plan.config.duration)?,
    }
    Ok(generator.tally)
}

/// One thread's event loop and everything it owns.
struct StreamGenerator<'a> {
    config: &'a LoadConfig,
    driver: Driver<'a>,
    conns: Vec<Conn>,
    requests: Requests,
    /// Where every read lands.
    read_buf: Box<[u8]>,
    /// Where requests are built before they are written.
    out: Vec<u8>,
    tally: Counts,
    /// Connect phase: connections waiting to (re)connect, by when they may.
    connect_queue: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connect phase: connections with a connect or first round trip under way.
    in_flight: Vec<usize>,
    /// Connect phase: connections neither established nor given up.
    unsettled: usize,
    /// Load phase: requests sent before this are not measured.
    warmup_end: Option<Instant>,
    /// Load phase: the run is over; no more requests are sent.
    stopping: bool,
    /// Load phase: connections still running (reconnecting ones included).
    running: usize,
    /// Load phase: connections whose reconnect starts at the top of the next turn.
    reconnect_queue: Vec<usize>,
    /// Load phase: connections reconnecting, with a deadline to check.
    reconnecting: Vec<usize>,
}

impl<'a> StreamGenerator<'a> {
    fn new(plan: &'a Plan, meter: &'a Meter) -> io::Result<StreamGenerator<'a>> {
        let config = &plan.config;
        let requests = Requests::new(config.protocol, config.size)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let now = Instant::now();
        let conns: Vec<Conn> = (0..plan.count)
            .map(|i| Conn::new(plan.first_id + i, &requests))
            .collect();
        Ok(StreamGenerator {
            config,
            driver: Driver::new(meter, plan.count, plan.tls.clone())?,
            connect_queue: (0..plan.count).map(|i| Reverse((now, i))).collect(),
            unsettled: conns.len(),
            conns,
            requests,
            read_buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            out: Vec::new(),
            tally: Counts::new(),
            in_flight: Vec::new(),
            warmup_end: None,
            stopping: false,
            running: 0,
            reconnect_queue: Vec::new(),
            reconnecting: Vec::new(),
        })
    }

    /// The connect phase: until every connection is up (load: connected; idle: round trip
    /// verified) or has used up its attempts.
    fn connect_all(&mut self) -> io::Result<()> {
        while self.unsettled > 0 {
            let now = Instant::now();
            self.in_flight.retain(|&i| {
                matches!(
                    self.conns[i].state,
                    State::Connecting { .. } | State::Handshaking { .. } | State::Probing { .. }
                )
            });
            for i in std::mem::take(&mut self.in_flight) {
                match self.conns[i].state {
                    State::Connecting { deadline, .. } if deadline <= now => {
                        self.fail_attempt(i, "no answer to the connect".into());
                    }
                    State::Handshaking { deadline, .. } if deadline <= now => {
                        self.fail_attempt(i, "the TLS handshake did not complete in time".into());
                    }
                    State::Probing { deadline, .. } if deadline <= now => {
                        self.fail_attempt(i, "no reply to the first request".into());
                    }
                    _ => self.in_flight.push(i),
                }
            }
            while self.in_flight.len() < MAX_CONNECTS_IN_FLIGHT {
                match self.connect_queue.peek() {
                    Some(&Reverse((at, i))) if at <= now => {
                        self.connect_queue.pop();
                        self.start_connect(i, now);
                    }
                    _ => break,
                }
            }
            if self.unsettled == 0 {
                break;
            }
            let mut wake = self
                .in_flight
                .iter()
                .filter_map(|&i| match self.conns[i].state {
                    State::Connecting { deadline, .. }
                    | State::Handshaking { deadline, .. }
                    | State::Probing { deadline, .. } => Some(deadline),
                    _ => None,
                });
            let mut next = wake.next();
            for deadline in wake {
                next = next.min(Some(deadline));
            }
            if self.in_flight.len() < MAX_CONNECTS_IN_FLIGHT {
                if let Some(&Reverse((at, _))) = self.connect_queue.peek() {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            driver::turn(self, next)?;
        }
        Ok(())
    }

    /// Starts connect attempt `attempt` for connection `i`.
    fn start_connect(&mut self, i: usize, now: Instant) {
        let State::Waiting { attempt } = self.conns[i].state else {
            return;
        };
        let conn = &mut self.conns[i];
        trace!("conn {}: connect attempt {attempt}", conn.id);
        let address = self.config.address_of(conn.id);
        match self.driver.start_connect(address, i) {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.registered = Interest::WRITABLE;
                conn.state = State::Connecting {
                    attempt,
                    deadline: now + CONNECT_TIMEOUT,
                };
                self.in_flight.push(i);
            }
            Err(e) => self.fail_attempt(i, crate::sys::os_reason(&e)),
        }
    }

    /// The poller says a connect may be decided: check, as mio's docs prescribe.
    fn finish_connect(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let (State::Connecting { attempt, .. }, Some(stream)) = (conn.state, &conn.stream) else {
            return;
        };
        match driver::connect_outcome(stream.socket(), format_args!("conn {}", conn.id)) {
            Ok(true) => {}
            Ok(false) => return, // not decided yet: a spurious or early event
            Err(e) => return self.fail_attempt(i, crate::sys::os_reason(&e)),
        }
        trace!("conn {}: connected", conn.id);
        if stream.is_tls() {
            conn.state = State::Handshaking {
                attempt,
                deadline: Instant::now() + CONNECT_TIMEOUT,
            };
            return self.handshake(i);
        }
        self.count_handshake();
        self.connected(i, attempt);
    }

    /// Over `tls:`, in the connect phase: moves connection `i`'s handshake on.
    fn handshake(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let (State::Handshaking { attempt, .. }, Some(stream)) = (conn.state, &mut conn.stream)
        else {
            return;
        };
        match stream.handshake() {
            Ok(true) => {
                trace!("conn {}: TLS handshake complete", conn.id);
                // What came with the last flight may already wait in rustls: no edge will say so.
                self.driver.keep_ready(i);
                self.count_handshake();
                self.connected(i, attempt);
            }
            Ok(false) => self.update_interest(i),
            Err(e) => self.fail_attempt(i, crate::sys::os_reason(&e)),
        }
    }

    /// One more connection set up (a connect, or over `tls:` a handshake), counted for the
    /// rate as well during the measured load.
    fn count_handshake(&mut self) {
        self.tally.handshakes += 1;
        if !self.stopping && self.warmup_end.is_some_and(|end| Instant::now() >= end) {
            self.tally.measured_handshakes += 1;
        }
    }

    /// Connection `i` is up (connected, and over `tls:` its handshake complete).
    fn connected(&mut self, i: usize, attempt: u32) {
        let conn = &mut self.conns[i];
        match self.config.mode {
            Mode::Load => {
                conn.state = State::Ready { attempt };
                self.settle_established();
            }
            Mode::Idle => {
                conn.state = State::Probing {
                    attempt,
                    deadline: Instant::now() + CONNECT_TIMEOUT,
                };
                self.send_requests(i, 1);
            }
        }
        self.update_interest(i);
    }

    /// A connection is up for the rest of the connect phase.
    fn settle_established(&mut self) {
        self.unsettled -= 1;
        self.driver.meter.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connect attempt failed: queue a retry after a delay, or give up.
    fn fail_attempt(&mut self, i: usize, reason: String) {
        let conn = &mut self.conns[i];
        let attempt = match conn.state {
            State::Waiting { attempt }
            | State::Connecting { attempt, .. }
            | State::Handshaking { attempt, .. }
            | State::Probing { attempt, .. } => attempt,
            State::Ready { attempt } => {
                // It had been counted as up.
                self.unsettled += 1;
                self.driver.meter.open.fetch_sub(1, Ordering::Relaxed);
                attempt
            }
            State::Running | State::Reconnecting { .. } | State::Holding | State::Closed => return,
        };
        conn.close_socket(&self.requests);
        debug!("conn {}: attempt {attempt} failed: {reason}", conn.id);
        if attempt < MAX_CONNECT_ATTEMPTS {
            conn.state = State::Waiting {
                attempt: attempt + 1,
            };
            let at = Instant::now() + driver::retry_delay(attempt, conn.id);
            self.connect_queue.push(Reverse((at, i)));
        } else {
            conn.state = State::Closed;
            self.unsettled -= 1;
            let who = format_args!("connection {}", conn.id);
            driver::give_up_connect(&mut self.tally, who, attempt, &reason);
        }
    }

    /// The load phase, from `start` (the gate's opening) to the end of the grace period.
    fn load(&mut self, start: Instant) -> io::Result<()> {
        self.warmup_end = Some(start + self.config.warmup());
        for i in 0..self.conns.len() {
            if let State::Ready { .. } = self.conns[i].state {
                self.conns[i].state = State::Running;
                self.running += 1;
                self.send_requests(i, self.config.pipeline as u64);
                self.update_interest(i);
            }
        }
        let duration = self.config.duration;
        self.tally.load_time = driver::run_load(self, start, duration, Some(GRACE))?;
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Running {
                let missing = self.conns[i].sent_at.len() as u64;
                let id = self.conns[i].id;
                self.tally.missing_replies += missing;
                self.tally.note_error(|| {
                    format!(
                        "connection {id}: {missing} replies still missing {} s after the end",
                        GRACE.as_secs()
                    )
                });
                self.close(i);
            }
        }
        Ok(())
    }

    /// The end of the run: connections with nothing outstanding close now; the rest once their
    /// last reply is in.
    fn stop_sending(&mut self) {
        trace!("load over: no more requests; waiting for the outstanding replies");
        self.stopping = true;
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            let idle = conn.state == State::Running && conn.sent_at.is_empty();
            if idle || matches!(conn.state, State::Reconnecting { .. }) {
                self.close(i);
            }
        }
    }

    /// Idle mode: hold every verified connection until `until`, noting any the server drops.
    fn hold(&mut self, until: Instant) -> io::Result<()> {
        driver::hold(self, until, |generator| generator.driver.meter.open() == 0)?;
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Holding {
                self.close(i);
            }
        }
        Ok(())
    }

    /// Does what connection `i` can do now.
    fn drive(&mut self, i: usize) {
        match self.conns[i].state {
            State::Connecting { .. } => self.finish_connect(i),
            State::Handshaking { .. } => self.handshake(i),
            State::Reconnecting { .. } => self.continue_reconnect(i),
            State::Probing { .. } | State::Ready { .. } | State::Running | State::Holding => {
                self.serve(i)
            }
            State::Waiting { .. } | State::Closed => {} // a stale event
        }
    }

    /// Writes what is pending, reads and verifies the replies, and sends the next requests.
    fn serve(&mut self, i: usize) {
        if let Err(e) = self.conns[i].flush() {
            return self.lose(i, crate::sys::os_reason(&e));
        }
        let warmup_end = self.warmup_end;
        let tally = &mut self.tally;
        let mut completed = 0;
        let outcome = self.conns[i].read_replies(&self.requests, &mut self.read_buf, |at, now| {
            completed += 1;
            if warmup_end.is_some_and(|end| at < end) {
                tally.warmup_requests += 1;
            } else {
                tally.requests += 1;
                let nanos = u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(nanos);
            }
        });
        self.driver.completed(completed);
        match outcome {
            ReadOutcome::Wrong(wrong) => return self.wrong(i, wrong),
            ReadOutcome::Lost(reason) => return self.lose(i, reason),
            ReadOutcome::Budget => self.driver.keep_ready(i),
            ReadOutcome::Drained => {}
        }
        match self.conns[i].state {
            State::Running if self.stopping && self.conns[i].sent_at.is_empty() => {
                return self.close(i);
            }
            State::Running if !self.stopping => {
                if self.reconnect_due(i) {
                    return self.queue_reconnect(i);
                }
                self.send_requests(i, completed);
            }
            State::Probing { .. } if completed > 0 => {
                self.conns[i].state = State::Holding;
                self.settle_established();
            }
            _ => {}
        }
        self.update_interest(i);
    }

    /// Builds and sends the next `count` requests of connection `i` (with `--reconnect N`, no
    /// more than N on one connection).
    fn send_requests(&mut self, i: usize, count: u64) {
        let conn = &mut self.conns[i];
        let count = match self.config.reconnect {
            Some(most) => count.min(most.saturating_sub(conn.sent)),
            None => count,
        };
        if count == 0 {
            return;
        }
        self.out.clear();
        for _ in 0..count {
            self.requests
                .write_request(conn.id as u64, conn.sent, &mut self.out);
            conn.sent += 1;
        }
        let now = Instant::now();
        conn.sent_at
            .extend(std::iter::repeat(now).take(count as usize));
        if let Err(e) = conn.send(&self.out) {
            self.lose(i, crate::sys::os_reason(&e));
        }
    }

    /// Registers the interest connection `i` needs now, if it changed.
    fn update_interest(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let wanted = match conn.state {
            State::Connecting { .. } => Interest::WRITABLE,
            State::Reconnecting {
                connected: false, ..
            } => Interest::WRITABLE,
            State::Closed | State::Waiting { .. } => return,
            _ if conn.has_unsent() => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        if wanted == conn.registered {
            return;
        }
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        match self.driver.registry().reregister(stream, Token(i), wanted) {
            Ok(()) => conn.registered = wanted,
            Err(e) => self.lose(i, format!("cannot change poller interest: {e}")),
        }
    }

    /// A wrong reply: the connection can no longer be trusted to be in step, so it closes; its
    /// other outstanding requests will never be answered.
    fn wrong(&mut self, i: usize, wrong: WrongReply) {
        let conn = &self.conns[i];
        let id = conn.id;
        match conn.state {
            // Bytes before any request: perhaps the server's "too many connections" line.
            State::Ready { .. } => {
                return self.fail_attempt(i, format!("unexpected reply: {wrong}"))
            }
            State::Running
            | State::Reconnecting { .. }
            | State::Probing { .. }
            | State::Holding => {}
            State::Waiting { .. }
            | State::Connecting { .. }
            | State::Handshaking { .. }
            | State::Closed => return,
        }
        let outstanding = conn.sent_at.len() as u64;
        self.tally.wrong_replies += 1;
        self.tally.missing_replies += outstanding.saturating_sub(1);
        self.tally
            .note_error(|| format!("connection {id}: {wrong}"));
        if matches!(conn.state, State::Probing { .. }) {
            self.unsettled -= 1;
        }
        self.close(i);
    }

    /// The connection ended (closed or reset by the server, or a socket error).
    fn lose(&mut self, i: usize, reason: String) {
        let conn = &self.conns[i];
        let id = conn.id;
        match conn.state {
            State::Probing { .. } | State::Ready { .. } | State::Handshaking { .. } => {
                return self.fail_attempt(i, reason)
            }
            State::Reconnecting { .. } => return self.reconnect_failed(i, reason),
            State::Running => {
                let missing = conn.sent_at.len() as u64;
                if self.stopping && missing == 0 {
                    // The load is over and every reply is in: the server's close only beat ours.
                    debug!("conn {id}: {reason} after its last reply");
                    return self.close(i);
                }
                self.tally.missing_replies += missing;
                self.tally.note_error(|| {
                    format!(
                        "connection {id}: {reason} before the end of the load, {missing} replies \
                         outstanding"
                    )
                });
            }
            State::Holding => {
                self.tally
                    .note_error(|| format!("connection {id}: {reason} while held open"));
            }
            State::Waiting { .. } | State::Connecting { .. } | State::Closed => return,
        }
        debug!("conn {id}: {reason}");
        self.tally.dropped += 1;
        self.close(i);
    }

    /// Closes connection `i` for good.
    fn close(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match conn.state {
            State::Running | State::Reconnecting { .. } => {
                self.running -= 1;
                self.driver.meter.open.fetch_sub(1, Ordering::Relaxed);
            }
            State::Holding => {
                self.driver.meter.open.fetch_sub(1, Ordering::Relaxed);
            }
            State::Closed => return,
            _ => {}
        }
        trace!("conn {}: closed", conn.id);
        if let Some(stream) = conn.stream.as_mut() {
            stream.close_notify();
        }
        conn.close_socket(&self.requests);
        conn.state = State::Closed;
    }

    /// With `--reconnect N`: whether running connection `i` has had its N replies.
    fn reconnect_due(&self, i: usize) -> bool {
        let conn = &self.conns[i];
        self.config
            .reconnect
            .is_some_and(|most| conn.sent >= most && conn.sent_at.is_empty())
    }

    /// Closes connection `i` (its conversation done) and queues its new connect for the top of
    /// the next turn, after the events of this one that may still name the old socket.
    fn queue_reconnect(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        trace!(
            "conn {}: {} requests done: reconnecting",
            conn.id,
            conn.sent
        );
        if let Some(stream) = conn.stream.as_mut() {
            stream.close_notify();
        }
        conn.close_socket(&self.requests);
        conn.state = State::Reconnecting {
            deadline: Instant::now() + CONNECT_TIMEOUT,
            connected: false,
        };
        self.reconnect_queue.push(i);
    }

    /// Starts the queued reconnects and checks the deadlines of those under way; returns the
    /// nearest deadline left.
    fn reconnect_turn(&mut self, now: Instant) -> Option<Instant> {
        for i in std::mem::take(&mut self.reconnect_queue) {
            let conn = &mut self.conns[i];
            if !matches!(conn.state, State::Reconnecting { .. }) || conn.stream.is_some() {
                continue; // closed meanwhile (the stop)
            }
            match self
                .driver
                .start_connect(self.config.address_of(conn.id), i)
            {
                Ok(stream) => {
                    conn.stream = Some(stream);
                    conn.registered = Interest::WRITABLE;
                    // A stale event of the old socket's last turn may have set it.
                    conn.peer_closing = false;
                    conn.state = State::Reconnecting {
                        deadline: now + CONNECT_TIMEOUT,
                        connected: false,
                    };
                    self.reconnecting.push(i);
                }
                Err(e) => self.reconnect_failed(i, crate::sys::os_reason(&e)),
            }
        }
        let mut nearest: Option<Instant> = None;
        for i in std::mem::take(&mut self.reconnecting) {
            match self.conns[i].state {
                State::Reconnecting { deadline, .. } if deadline <= now => {
                    self.reconnect_failed(i, "no connection within the connect timeout".into());
                }
                State::Reconnecting { deadline, .. } => {
                    nearest = Some(nearest.map_or(deadline, |n| n.min(deadline)));
                    self.reconnecting.push(i);
                }
                _ => {}
            }
        }
        nearest
    }

    /// Moves connection `i`'s reconnect on: the connect decided, then the handshake; once it is
    /// up, its next requests go.
    fn continue_reconnect(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let (
            State::Reconnecting {
                deadline,
                connected,
            },
            Some(stream),
        ) = (conn.state, &mut conn.stream)
        else {
            return;
        };
        if !connected {
            match driver::connect_outcome(stream.socket(), format_args!("conn {}", conn.id)) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.reconnect_failed(i, crate::sys::os_reason(&e)),
            }
            conn.state = State::Reconnecting {
                deadline,
                connected: true,
            };
        }
        match stream.handshake() {
            Ok(true) => {
                conn.state = State::Running;
                if stream.is_tls() {
                    self.driver.keep_ready(i);
                }
                self.count_handshake();
                self.send_requests(i, self.config.pipeline as u64);
                self.update_interest(i);
            }
            Ok(false) => self.update_interest(i),
            Err(e) => self.reconnect_failed(i, crate::sys::os_reason(&e)),
        }
    }

    /// A reconnect failed: an error (a connection not made); the connection is done.
    fn reconnect_failed(&mut self, i: usize, reason: String) {
        let id = self.conns[i].id;
        debug!("conn {id}: reconnect failed: {reason}");
        self.tally.connect_failures += 1;
        self.tally
            .note_error(|| format!("connection {id}: cannot reconnect: {reason}"));
        self.close(i);
    }
}

impl<'a> driver::Generator<'a> for StreamGenerator<'a> {
    fn driver(&mut self) -> &mut Driver<'a> {
        &mut self.driver
    }

    fn on_ready(&mut self, i: usize, peer_closed: bool) {
        if peer_closed {
            self.conns[i].peer_closing = true;
        }
        self.drive(i);
    }
}

impl<'a> driver::Load<'a> for StreamGenerator<'a> {
    fn begin_stop(&mut self) {
        self.stop_sending();
    }

    fn each_turn(&mut self, now: Instant) -> Option<Instant> {
        if self.reconnect_queue.is_empty() && self.reconnecting.is_empty() {
            return None;
        }
        self.reconnect_turn(now)
    }

    /// With every connection closed (all lost, or finished after the stop) nothing more can
    /// happen: end early rather than wait out the clock.
    fn is_over(&self, _stopping: bool) -> bool {
        self.running == 0
    }
}
