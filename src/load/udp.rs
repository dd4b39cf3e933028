//! One generator thread over UDP: its share of the sockets on one `mio::Poll`.
//!
//! Each "connection" is a UDP socket `connect`ed to the server, so the kernel delivers to it
//! only the server's datagrams, and an ICMP port-unreachable comes back as `ECONNREFUSED`
//! instead of silence. Each request is one datagram of `--size` bytes (the same payloads as over
//! a stream, unique per socket and request), each reply one datagram, checked whole
//! ([`ReplyVerifier::check_datagram`]).
//!
//! Datagrams may be lost, so each socket keeps its outstanding requests, oldest first, with the
//! instant each was sent. A reply is matched against them in order: on loopback datagrams are
//! not reordered, so a reply to a later request means the earlier ones were lost. A request
//! whose reply has not come within the `--udp-timeout` is lost too (the sockets are swept every
//! tenth of the timeout). Either way the socket sends a new request for each one settled, so
//! `--pipeline` requests stay in flight. When the load stops, outstanding requests get the
//! timeout to be answered; those that are not are lost.
//!
//! A reply may still come after its request was counted lost: a server slower than the timeout
//! is not a wrong one. So each socket remembers the numbers of its last [`LOST_REMEMBERED`] lost
//! requests, and a datagram that answers one of them is **late**: counted apart, and otherwise
//! ignored — its request is already counted lost, and it settles nothing outstanding. A datagram
//! that answers neither an outstanding nor a recently lost request is a wrong reply, and takes
//! the place of the oldest outstanding one.
//!
//! Nothing is allocated per request: the outstanding queue is sized for the pipeline once, the
//! lost numbers are a fixed ring, the request is built in a buffer reused for every send, and
//! replies are checked in place.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::driver::{self, Driver, Meter, Plan};
use super::report::Counts;
use super::verify::{ReplyVerifier, Requests};
use super::Gate;
use crate::protocol::datagram::MAX_DATAGRAM_PAYLOAD;
use crate::service::Address;

/// Datagrams one socket may receive per turn before the others get theirs.
const MAX_DATAGRAMS_PER_TURN: usize = 64;

/// Sweeps for lost requests per `--udp-timeout`: a loss is noticed at most a tenth late.
const SWEEPS_PER_TIMEOUT: u32 = 10;

/// Lost requests each socket remembers at least, so that a reply to one of them is known as
/// late, not wrong; twice `--pipeline` when that is more, since one sweep may lose a whole
/// pipeline. A late reply to a request lost before the last this many is counted as wrong.
const LOST_REMEMBERED: usize = 64;

/// The numbers of a socket's last [`LOST_REMEMBERED`] lost requests whose replies have not come
/// late: a fixed ring, the oldest overwritten.
#[derive(Debug)]
struct LostRing {
    /// Request numbers, or [`LostRing::EMPTY`]; allocated once, never resized.
    numbers: Box<[u64]>,
    /// Where the next one goes.
    next: usize,
}

impl LostRing {
    /// No request: request numbers never come near it.
    const EMPTY: u64 = u64::MAX;

    #[cfg(test)]
    fn new() -> LostRing {
        LostRing::with_room(LOST_REMEMBERED)
    }

    /// A ring for a socket that keeps `pipeline` requests in flight.
    fn for_pipeline(pipeline: usize) -> LostRing {
        LostRing::with_room(LOST_REMEMBERED.max(2 * pipeline))
    }

    fn with_room(room: usize) -> LostRing {
        LostRing {
            numbers: vec![LostRing::EMPTY; room].into_boxed_slice(),
            next: 0,
        }
    }

    /// Remembers that `request` was lost.
    fn record(&mut self, request: u64) {
        self.numbers[self.next] = request;
        self.next = (self.next + 1) % self.numbers.len();
    }

    /// Forgets the first remembered request for which `answers` holds, and says whether there
    /// was one: a second late reply to the same request is wrong.
    fn take(&mut self, mut answers: impl FnMut(u64) -> bool) -> bool {
        let found = self
            .numbers
            .iter_mut()
            .find(|n| **n != LostRing::EMPTY && answers(**n));
        match found {
            Some(n) => {
                *n = LostRing::EMPTY;
                true
            }
            None => false,
        }
    }
}

/// One socket and its requests in flight.
#[derive(Debug)]
struct Sock {
    /// The run-wide socket number: the payloads are its own.
    id: usize,
    /// `None` once closed (the server refused, or a socket error).
    socket: Option<UdpSocket>,
    /// Requests sent and neither answered nor lost, oldest first: (number, when sent). Never
    /// longer than the pipeline, which is its capacity from the start.
    outstanding: VecDeque<(u64, Instant)>,
    /// The last requests lost, to tell their late replies from wrong ones.
    lost: LostRing,
    /// Requests sent so far: also the number of the next.
    sent: u64,
    /// Requests due but refused by a full send buffer, to send when the socket is writable.
    owed: u64,
}

/// Runs one thread's share of a UDP run: open the sockets, wait at the gate, load, tally.
pub(crate) fn run(plan: &Plan, gate: &Gate, meter: &Meter) -> io::Result<Counts> {
    // Whatever happens, arrive at the gate exactly once, or the calling thread waits forever.
    let mut ticket = gate.ticket();
    let mut generator = UdpGenerator::new(plan, meter)?;
    generator.open_all();
    ticket.arrive();
    let Some(start) = gate.wait_open() else {
        return Ok(generator.tally);
    };
    generator.load(start)?;
    Ok(generator.tally)
}

/// One thread's event loop over its sockets.
struct UdpGenerator<'a> {
    plan: &'a Plan,
    driver: Driver<'a>,
    /// The servers, socket `n` sending to `servers[n % len]`.
    servers: Vec<SocketAddr>,
    socks: Vec<Sock>,
    requests: Requests,
    /// Where each datagram lands: room for the largest.
    recv_buf: Box<[u8]>,
    /// Where each request is built.
    out: Vec<u8>,
    tally: Counts,
    /// Requests sent before this are verified but not measured.
    warmup_end: Option<Instant>,
    /// The load is over: no more requests.
    stopping: bool,
    /// Requests in flight over all sockets.
    in_flight: usize,
    /// Load: how often to look for lost requests, and when next.
    sweep_every: Duration,
    next_sweep: Instant,
}

impl<'a> UdpGenerator<'a> {
    fn new(plan: &'a Plan, meter: &'a Meter) -> io::Result<UdpGenerator<'a>> {
        let config = &plan.config;
        let servers = config
            .addresses
            .iter()
            .map(|address| match address {
                Address::Udp(server) => Ok(*server),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the UDP generator needs UDP addresses",
                )),
            })
            .collect::<io::Result<Vec<SocketAddr>>>()?;
        let requests = Requests::new(config.protocol, config.size)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socks = (0..plan.count)
            .map(|i| Sock {
                id: plan.first_id + i,
                socket: None,
                outstanding: VecDeque::with_capacity(config.pipeline),
                lost: LostRing::for_pipeline(config.pipeline),
                sent: 0,
                owed: 0,
            })
            .collect();
        Ok(UdpGenerator {
            plan,
            driver: Driver::new(meter, plan.count, None)?,
            servers,
            socks,
            requests,
            recv_buf: vec![0; MAX_DATAGRAM_PAYLOAD + 1].into_boxed_slice(),
            out: Vec::with_capacity(config.size),
            tally: Counts::new(),
            warmup_end: None,
            stopping: false,
            in_flight: 0,
            sweep_every: Duration::MAX,
            next_sweep: Instant::now(),
        })
    }

    /// Binds and connects every socket. Nothing goes over the wire yet, so a server that is not
    /// there shows only once the load starts (as refused datagrams).
    fn open_all(&mut self) {
        for i in 0..self.socks.len() {
            // The servers in turn, by the socket's run-wide number.
            let server = self.servers[self.socks[i].id % self.servers.len()];
            let local: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let opened = UdpSocket::bind(local).and_then(|mut socket| {
                socket.connect(server)?;
                // Writable too: a send refused by a full buffer is retried on that edge.
                self.driver.registry().register(
                    &mut socket,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(socket)
            });
            let sock = &mut self.socks[i];
            match opened {
                Ok(socket) => {
                    sock.socket = Some(socket);
                    self.tally.established += 1;
                    self.driver.meter.open.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.tally.connect_failures += 1;
                    let id = sock.id;
                    self.tally.note_error(|| {
                        format!("socket {id}: cannot open: {}", crate::sys::os_reason(&e))
                    });
                }
            }
        }
    }

    /// The load, from `start` until every request is settled after the stop.
    fn load(&mut self, start: Instant) -> io::Result<()> {
        let config = &self.plan.config;
        self.sweep_every = (config.udp_timeout / SWEEPS_PER_TIMEOUT).max(Duration::from_millis(1));
        self.warmup_end = Some(start + config.warmup());
        for i in 0..self.socks.len() {
            self.send_requests(i, config.pipeline as u64);
        }
        self.next_sweep = Instant::now() + self.sweep_every;
        // No grace: the sweeps settle every request within the timeout.
        let duration = self.plan.config.duration;
        self.tally.load_time = driver::run_load(self, start, duration, None)?;
        Ok(())
    }

    /// Counts as lost every request outstanding for `timeout` or more, and sends replacements.
    fn sweep(&mut self, now: Instant, timeout: Duration) {
        for i in 0..self.socks.len() {
            let sock = &mut self.socks[i];
            let mut expired = 0;
            while let Some(&(request, sent_at)) = sock.outstanding.front() {
                if now.saturating_duration_since(sent_at) < timeout {
                    break;
                }
                sock.outstanding.pop_front();
                sock.lost.record(request);
                expired += 1;
                let id = sock.id;
                self.tally.note_error(|| {
                    format!(
                        "socket {id}: no reply to request {request} within {} s",
                        timeout.as_secs_f64()
                    )
                });
            }
            if expired > 0 {
                self.tally.lost += expired;
                self.in_flight -= expired as usize;
                self.send_requests(i, expired);
            }
        }
    }

    /// Sends what is owed, then receives and settles replies until drained or the budget is
    /// spent.
    fn serve(&mut self, i: usize) {
        let owed = std::mem::take(&mut self.socks[i].owed);
        self.send_requests(i, owed);
        for _ in 0..MAX_DATAGRAMS_PER_TURN {
            let Some(socket) = self.socks[i].socket.as_ref() else {
                return;
            };
            match socket.recv(&mut self.recv_buf) {
                Ok(len) => self.settle(i, len, Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(i, &e),
            }
        }
        self.driver.keep_ready(i);
    }

    /// Settles the datagram of `len` bytes in the receive buffer against socket `i`'s
    /// outstanding requests, and sends as many new ones as were settled. A late reply to a
    /// request already lost settles nothing.
    fn settle(&mut self, i: usize, len: usize, now: Instant) {
        let datagram = &self.recv_buf[..len];
        let sock = &mut self.socks[i];
        let (requests, id) = (&self.requests, sock.id);
        let answers =
            |request| ReplyVerifier::check_datagram(requests, id as u64, request, datagram).is_ok();
        let answered = sock
            .outstanding
            .iter()
            .position(|&(request, _)| answers(request));
        if answered.is_none() && sock.lost.take(answers) {
            trace!("socket {id}: a late reply to a request already lost");
            self.tally.late += 1;
            return;
        }
        let settled = match answered {
            Some(position) => {
                // Loopback does not reorder: the requests before the one answered were lost.
                if position > 0 {
                    let (first, _) = sock.outstanding[0];
                    let id = sock.id;
                    self.tally.note_error(|| {
                        format!(
                            "socket {id}: no reply to request {first} (a later one was answered)"
                        )
                    });
                    self.tally.lost += position as u64;
                }
                for _ in 0..position {
                    if let Some((request, _)) = sock.outstanding.pop_front() {
                        sock.lost.record(request);
                    }
                }
                let (_, sent_at) = sock
                    .outstanding
                    .pop_front()
                    .expect("the answered request is outstanding");
                if self.warmup_end.is_some_and(|end| sent_at < end) {
                    self.tally.warmup_requests += 1;
                } else {
                    self.tally.requests += 1;
                    let nanos = u64::try_from((now - sent_at).as_nanos()).unwrap_or(u64::MAX);
                    self.tally.latency.saturating_record(nanos);
                }
                self.driver.completed(1);
                position + 1
            }
            None => {
                // Wrong for whichever request it meant; it takes the oldest one's place.
                self.tally.wrong_replies += 1;
                let id = sock.id;
                let (requests, front) = (&self.requests, sock.outstanding.front().copied());
                self.tally.note_error(|| match front {
                    Some((request, _)) => format!(
                        "socket {id}: {}",
                        ReplyVerifier::check_datagram(requests, id as u64, request, datagram)
                            .expect_err("no outstanding request matched")
                    ),
                    None => {
                        format!("socket {id}: a datagram of {len} bytes while none was awaited")
                    }
                });
                usize::from(sock.outstanding.pop_front().is_some())
            }
        };
        self.in_flight -= settled;
        self.send_requests(i, settled as u64);
    }

    /// Sends socket `i`'s next `count` requests (none once the load is over); those the socket
    /// refuses for now are owed.
    fn send_requests(&mut self, i: usize, count: u64) {
        if self.stopping {
            return;
        }
        let sock = &mut self.socks[i];
        let Some(socket) = sock.socket.as_ref() else {
            return;
        };
        let mut failed = None;
        for sent in 0..count {
            self.out.clear();
            self.requests
                .write_request(sock.id as u64, sock.sent, &mut self.out);
            match socket.send(&self.out) {
                Ok(_) => {
                    sock.outstanding.push_back((sock.sent, Instant::now()));
                    sock.sent += 1;
                    self.in_flight += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    trace!("socket {}: send buffer full", sock.id);
                    sock.owed += count - sent;
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.close(i, &e);
        }
    }

    /// Closes socket `i` after an error (`ECONNREFUSED`: nothing listens there); its
    /// outstanding requests are lost.
    fn close(&mut self, i: usize, error: &io::Error) {
        let sock = &mut self.socks[i];
        if sock.socket.take().is_none() {
            return;
        }
        let outstanding = sock.outstanding.len();
        sock.outstanding.clear();
        sock.owed = 0;
        self.in_flight -= outstanding;
        self.tally.lost += outstanding as u64;
        self.tally.dropped += 1;
        self.driver.meter.open.fetch_sub(1, Ordering::Relaxed);
        let id = sock.id;
        let reason = crate::sys::os_reason(error);
        debug!("socket {id}: {reason}");
        self.tally
            .note_error(|| format!("socket {id}: {reason}, {outstanding} requests outstanding"));
    }
}

impl<'a> driver::Generator<'a> for UdpGenerator<'a> {
    fn driver(&mut self) -> &mut Driver<'a> {
        &mut self.driver
    }

    fn on_ready(&mut self, i: usize, _peer_closed: bool) {
        self.serve(i);
    }
}

impl<'a> driver::Load<'a> for UdpGenerator<'a> {
    fn begin_stop(&mut self) {
        trace!("load over: no more requests; waiting for the outstanding replies");
        self.stopping = true;
        for sock in &mut self.socks {
            sock.owed = 0;
        }
    }

    fn each_turn(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.next_sweep {
            self.sweep(now, self.plan.config.udp_timeout);
            self.next_sweep = now + self.sweep_every;
        }
        Some(self.next_sweep)
    }

    fn is_over(&self, stopping: bool) -> bool {
        self.driver.meter.open() == 0 || (stopping && self.in_flight == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lost_ring_forgets_the_oldest_and_each_late_reply_once() {
        let mut ring = LostRing::new();
        for request in 0..LOST_REMEMBERED as u64 + 1 {
            ring.record(request);
        }
        // Request 0 was overwritten by the last one recorded.
        assert!(!ring.take(|n| n == 0));
        assert!(ring.take(|n| n == 1));
        assert!(!ring.take(|n| n == 1), "a second late reply is not late");
        assert!(ring.take(|n| n == LOST_REMEMBERED as u64));
        assert!(
            !LostRing::new().take(|_| true),
            "nothing lost, nothing late"
        );
    }
}
