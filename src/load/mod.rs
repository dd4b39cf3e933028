//! `oneloop load`: a closed-loop load generator built on the same kind of loop as the server.
//!
//! ## Why it exists, and why it looks like this
//!
//! The project's claim is a number — one loop serves thousands of connections faster and in less
//! memory than a thread or a process per connection — and a number needs a load generator that
//! is not itself the bottleneck, and that checks the answers. So:
//!
//! * **It multiplexes too.** Each generator thread runs one `mio::Poll` over its share of the
//!   connections (`--threads`, default 1). A thread per connection would measure the generator's
//!   context switches, not the server.
//! * **Closed loop.** Each connection keeps `--pipeline` requests outstanding: it sends that many,
//!   then one more each time a reply completes. The offered load therefore adapts to the server's
//!   speed, and req/s measures what the server sustains at that concurrency.
//! * **Every reply is verified**, byte by byte as it arrives ([`verify`]), against the request it
//!   answers on its own connection: request payloads are unique per connection and request, so a
//!   reply that is lost, repeated, reordered or delivered to the wrong connection shows up as
//!   wrong bytes. A wrong reply, a reply that never comes, a connection that cannot be made, or
//!   one the server closes before the end (in `--idle` mode: while it is held) is an error, and
//!   any error makes the run fail. A benchmark of a server that answers wrongly, or that sheds
//!   its connections, is worthless.
//! * **Latency** is measured per request, from the moment its bytes are handed to `write` to the
//!   moment the last byte of its reply has been read, into an HdrHistogram (fixed memory, bounded
//!   relative error, exact merging across threads). Requests sent during the warm-up are checked
//!   but not measured: the first second is caches, allocators and TCP windows settling.
//! * **It states its own cost.** The summary includes the generator's CPU time (user + system,
//!   from `/proc/self/stat`); a generator near 100% of a core per thread is saturated, and the
//!   figures it prints are its limit, not the server's.
//!
//! ## A run, in phases
//!
//! 1. **Connect.** Non-blocking connects, at most [`MAX_CONNECTS_IN_FLIGHT`] at a time per thread
//!    (a connect storm would overflow the server's accept backlog and cost whole seconds of SYN
//!    retransmits), each retried with a growing delay on refusal or timeout, up to
//!    [`MAX_CONNECT_ATTEMPTS`] attempts. In `--idle` mode each connection also does one verified
//!    round trip. Threads wait for each other at the end of this phase, so every connection is up
//!    before the load starts.
//! 2. **Load** for `--duration` (the warm-up included), or in `--idle` mode **hold**: keep every
//!    connection open and quiet, so the server's memory per idle connection can be measured.
//!    Either ends early once no connection is left; rates are over the time the load really
//!    ran ([`LoadReport::measured_time`]), never over the time asked for.
//! 3. **Grace.** Sending stops; replies still outstanding get [`GRACE`] to arrive, after which
//!    each one missing is an error.
//!
//! [`run`] is the library entry point (the benchmark harness calls it); [`main`] is the
//! command-line glue.

mod chat;
mod command;
mod driver;
mod order;
mod report;
mod stream;
mod transport;
mod udp;
pub mod verify;

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::tls::ClientTlsOptions;
use crate::net::tls_client::ClientTls;
use crate::protocol::datagram::MAX_DATAGRAM_PAYLOAD;
use crate::service::Address;
use crate::service::ProtocolKind;

pub(crate) use command::{main, LoadArgs};
pub(crate) use driver::stop_early_on_sigint;
pub use report::{Counts, LoadReport};

/// Connects one generator thread has under way at once. Loopback completes a connect in
/// microseconds, so this costs nothing there, and it keeps a thousand SYNs from arriving in the
/// same instant at a server whose backlog may be smaller.
pub(crate) const MAX_CONNECTS_IN_FLIGHT: usize = 100;

/// Attempts per connection before it counts as an error.
pub(crate) const MAX_CONNECT_ATTEMPTS: u32 = 4;

/// How long one connect attempt (or, in `--idle` mode, its first round trip) may take. Three
/// seconds outlasts Linux's first SYN retransmit (one second).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Wait before the first retry of a failed connect; doubled for each later one.
pub(crate) const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long replies outstanding when the run ends may still take before they count as missing.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// Default `--udp-timeout`: a UDP request whose reply has not come after this is lost. On
/// loopback a reply takes microseconds; a second is far beyond any scheduling delay.
pub(crate) const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// Default `--warmup`: this, or a tenth of the duration if that is shorter.
pub(crate) const DEFAULT_WARMUP: Duration = Duration::from_secs(1);

/// Upper bounds on the options, so a typo cannot ask for something absurd.
pub mod limits {
    /// Most `--connections`.
    pub(crate) const MAX_CONNECTIONS: usize = 1_000_000;
    /// Most `--threads`.
    pub(crate) const MAX_THREADS: usize = 256;
    /// Most `--pipeline` (requests outstanding per connection).
    pub(crate) const MAX_PIPELINE: usize = 4096;
    /// Largest `--size`: 16 MiB. Each connection may hold up to `pipeline × size` unsent bytes.
    pub(crate) const MAX_SIZE: usize = 16 * 1024 * 1024;
    /// File descriptors kept free beyond one per connection (stdio, the poller, the runtime).
    pub(crate) const FD_HEADROOM: u64 = 32;
}

/// What the run does after connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Closed-loop load: requests and verified replies for the whole duration.
    Load,
    /// One verified round trip per connection, then hold every connection open and quiet.
    Idle,
}

/// A load run's parameters, as the command-line options give them.
///
/// ```
/// use oneloop::load::{LoadConfig, Mode};
/// use std::time::Duration;
///
/// let server: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
/// let mut config = LoadConfig::new(server); // TCP; an `Address` gives Unix or UDP
/// config.connections = 10;
/// config.duration = Duration::from_secs(2);
/// assert_eq!(config.warmup(), Duration::from_millis(200)); // a tenth of a short run
/// assert_eq!(config.mode, Mode::Load);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// The servers: TCP addresses or Unix sockets' paths, or UDP addresses (never both kinds).
    /// Connection `n` goes to `addresses[n % len]` (round-robin), and all are checked as one
    /// run: for chat, one room across instances on one chat bus.
    pub addresses: Vec<Address>,
    /// What the server speaks: upper, timestamp, echo or chat.
    pub protocol: ProtocolKind,
    /// Connections to open, shared out among the threads.
    pub connections: usize,
    /// How long to load (warm-up included), or in idle mode how long to hold the connections.
    pub duration: Duration,
    /// Time at the start of the load whose requests are verified but not measured; `None` for
    /// [`DEFAULT_WARMUP`] or a tenth of `duration`, whichever is shorter.
    pub warmup: Option<Duration>,
    /// Bytes per request (for timestamp, the line's `\n` included).
    pub size: usize,
    /// Requests each connection keeps outstanding.
    pub pipeline: usize,
    /// Generator threads, each with its own poll loop.
    pub threads: usize,
    /// Load, or hold idle connections.
    pub mode: Mode,
    /// UDP only: how long a request's reply may take before the request counts as lost (and,
    /// after the load, how long the last replies are waited for).
    pub udp_timeout: Duration,
    /// Chat only: how many members send lines (members `0..K`); `None` for all.
    pub senders: Option<usize>,
    /// Each connection makes this many requests, then closes and connects again (a new TCP
    /// connection and, over `tls:`, a full handshake), to measure what setting one up costs;
    /// `None`: each connection lasts the whole run.
    pub reconnect: Option<u64>,
    /// Over `tls:`: whom to trust, the name to check, the certificate to present.
    pub tls: ClientTlsOptions,
}

impl LoadConfig {
    /// The command line's defaults against `address` (a `SocketAddr` is TCP): echo, 50
    /// connections, 10 s, 64-byte requests, pipeline 1, one thread.
    pub fn new(address: impl Into<Address>) -> LoadConfig {
        LoadConfig {
            addresses: vec![address.into()],
            protocol: ProtocolKind::Echo,
            connections: 50,
            duration: Duration::from_secs(10),
            warmup: None,
            size: 64,
            pipeline: 1,
            threads: 1,
            mode: Mode::Load,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            senders: None,
            reconnect: None,
            tls: ClientTlsOptions::default(),
        }
    }

    /// The warm-up in force: the one asked for, or the default rule.
    pub fn warmup(&self) -> Duration {
        self.warmup
            .unwrap_or_else(|| DEFAULT_WARMUP.min(self.duration / 10))
    }

    /// The server connection `connection` (counted over the whole run) goes to: the addresses
    /// in turn.
    pub(crate) fn address_of(&self, connection: usize) -> &Address {
        &self.addresses[connection % self.addresses.len()]
    }

    /// Whether the load is over UDP (the addresses are all UDP, as [`validate`](Self::validate)
    /// checks).
    pub(crate) fn is_udp(&self) -> bool {
        matches!(self.addresses.first(), Some(Address::Udp(_)))
    }

    /// Threads actually used: never more than connections.
    pub(crate) fn effective_threads(&self) -> usize {
        self.threads.clamp(1, self.connections.max(1))
    }

    /// Checks the parameters; the error says what is wrong in a sentence.
    pub fn validate(&self) -> Result<(), String> {
        if self.addresses.is_empty() {
            return Err("a load needs at least one ADDRESS".into());
        }
        let is_udp = |address: &Address| matches!(address, Address::Udp(_));
        if self.addresses.iter().any(is_udp) && !self.addresses.iter().all(is_udp) {
            return Err("the ADDRESSes must be all udp: or all streams (tcp, unix:, tls:)".into());
        }
        if let Some(requests) = self.reconnect {
            self.validate_reconnect(requests)?;
        }
        for address in &self.addresses {
            if let Address::Tls { host, .. } = address {
                self.tls.server_name(host)?;
            }
        }
        if self.protocol == ProtocolKind::Chat {
            self.validate_chat()?;
        } else if self.senders.is_some() {
            return Err("--senders is for --protocol chat".into());
        } else {
            verify::Requests::new(self.protocol, self.size)?;
        }
        let in_range = |name: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} must be between 1 and {max}, not {value}"))
            }
        };
        in_range("connections", self.connections, limits::MAX_CONNECTIONS)?;
        in_range("threads", self.threads, limits::MAX_THREADS)?;
        in_range("pipeline", self.pipeline, limits::MAX_PIPELINE)?;
        in_range("size", self.size, limits::MAX_SIZE)?;
        if self.is_udp() {
            if self.mode == Mode::Idle {
                return Err("--idle holds connections: UDP has none to hold".into());
            }
            let stamp = match self.protocol {
                ProtocolKind::Timestamp => verify::STAMP_LEN,
                _ => 0,
            };
            let most = MAX_DATAGRAM_PAYLOAD - stamp;
            if self.size > most {
                return Err(format!(
                    "over UDP a {} request (and its reply) must fit in one datagram: at most {most} \
                     bytes, not {}",
                    self.protocol, self.size
                ));
            }
            if self.udp_timeout.is_zero() {
                return Err("the UDP timeout must be more than 0 s".into());
            }
        }
        if self.duration.is_zero() {
            return Err("the duration must be more than 0 s".into());
        }
        if self.mode == Mode::Load && self.warmup() >= self.duration {
            return Err(format!(
                "the warm-up ({} s) must be shorter than the duration ({} s)",
                self.warmup().as_secs_f64(),
                self.duration.as_secs_f64()
            ));
        }
        Ok(())
    }
}

impl LoadConfig {
    fn validate_reconnect(&self, requests: u64) -> Result<(), String> {
        if requests == 0 {
            return Err("--reconnect needs at least 1 request per connection".into());
        }
        if self.is_udp() {
            return Err("--reconnect is for streams: UDP has no connection to make".into());
        }
        if self.protocol == ProtocolKind::Chat {
            return Err("--reconnect is for upper, timestamp and echo, not chat".into());
        }
        if self.mode == Mode::Idle {
            return Err("--idle holds its connections: no --reconnect".into());
        }
        Ok(())
    }

    /// The TLS configuration, read once for the whole run, if an address is `tls:`: a bad file
    /// is an error naming it.
    fn client_tls(&self) -> io::Result<Option<ClientTls>> {
        if !self.addresses.iter().any(Address::is_tls) {
            return Ok(None);
        }
        ClientTls::new(&self.tls)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn validate_chat(&self) -> Result<(), String> {
        if self.is_udp() {
            return Err("chat runs over tcp or unix:, not UDP".into());
        }
        if self.threads != 1 {
            return Err("chat load runs every member on one thread: --threads 1".into());
        }
        if self.mode == Mode::Idle {
            // Members only join and listen: no N × N table, so the general limit applies.
            return match self.senders {
                Some(_) => Err("--idle members send nothing: no --senders".into()),
                None => Ok(()),
            };
        }
        if !(2..=chat::MAX_MEMBERS).contains(&self.connections) {
            return Err(format!(
                "a chat load needs 2 to {} members (--connections), not {}",
                chat::MAX_MEMBERS,
                self.connections
            ));
        }
        match self.senders {
            Some(k) if k == 0 || k > self.connections => Err(format!(
                "--senders must be between 1 and the connections ({}), not {k}",
                self.connections
            )),
            _ => Ok(()),
        }
    }
}

/// What [`run_with`] reports while a run goes on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// About once a second while connecting.
    Connecting {
        /// Connections established so far (in idle mode: round trip verified).
        established: u64,
        /// Connections asked for.
        total: u64,
    },
    /// Every connection is established or has failed; the load (or the hold) starts now.
    Established {
        /// Connections up (in idle mode: each with a verified round trip).
        established: u64,
        /// Connections asked for.
        total: u64,
        /// Time from the start of the run until now.
        took: Duration,
    },
    /// About once a second while the load (or the hold) runs.
    Running {
        /// Time since the load started.
        elapsed: Duration,
        /// Verified replies so far, warm-up included.
        requests: u64,
        /// Verified replies per second over the last interval.
        rps: f64,
        /// Connections open now.
        open: u64,
    },
}

/// Runs the load described by `config` and reports what happened.
///
/// Errors are returned only when the run cannot happen at all (bad parameters, not enough file
/// descriptors, no poller); a server that refuses or answers wrongly gives a report with errors.
pub fn run(config: &LoadConfig) -> io::Result<LoadReport> {
    run_with(config, |_| {})
}

/// [`run`], calling `on_progress` from the calling thread as the run goes on (the command line
/// uses it for its progress display).
pub fn run_with(
    config: &LoadConfig,
    mut on_progress: impl FnMut(&Progress),
) -> io::Result<LoadReport> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    check_fd_limit(config.connections)?;
    let tls = config.client_tls()?;
    let started = Instant::now();
    let threads = Threads::spawn(config, tls)?;
    threads.await_connected(&mut on_progress);
    let cpu_at_start = process_cpu_time();
    let opened = threads.gate.open();
    on_progress(&Progress::Established {
        established: threads.established(),
        total: threads.total,
        took: opened - started,
    });
    threads.await_finished(opened, &mut on_progress);
    let counts = threads.join()?;
    let ended = Instant::now();
    let cpu = match (cpu_at_start, process_cpu_time()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let thread_requests = counts.iter().map(|counts| counts.requests).collect();
    let timing = report::Timing {
        connect: opened - started,
        wall: ended - opened,
        cpu,
    };
    let mut report = LoadReport::new(config, Counts::merge(counts), thread_requests, timing);
    report.interrupted = driver::interrupted();
    Ok(report)
}

/// The generator threads of a run, seen from the calling thread.
struct Threads {
    gate: Arc<Gate>,
    /// One per thread, in thread order.
    meters: Vec<Arc<driver::Meter>>,
    /// A message from each thread as it ends.
    done: mpsc::Receiver<()>,
    handles: Vec<thread::JoinHandle<io::Result<Counts>>>,
    /// Connections asked for.
    total: u64,
}

impl Threads {
    /// Shares the connections out among [`LoadConfig::effective_threads`] threads and starts
    /// them: each connects its share, then waits at the gate.
    fn spawn(config: &LoadConfig, tls: Option<ClientTls>) -> io::Result<Threads> {
        let count = config.effective_threads();
        let (done_tx, done) = mpsc::channel();
        let mut threads = Threads {
            gate: Arc::new(Gate::default()),
            meters: (0..count).map(|_| Arc::default()).collect(),
            done,
            handles: Vec::with_capacity(count),
            total: config.connections as u64,
        };
        let mut first_id = 0;
        for index in 0..count {
            let share =
                config.connections / count + usize::from(index < config.connections % count);
            let plan = driver::Plan {
                first_id,
                count: share,
                config: config.clone(),
                tls: tls.clone(),
            };
            first_id += share;
            let (gate, meter) = (
                Arc::clone(&threads.gate),
                Arc::clone(&threads.meters[index]),
            );
            let done = done_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || {
                    let result = generate(&plan, &gate, &meter);
                    let _ = done.send(());
                    result
                });
            match spawned {
                Ok(handle) => threads.handles.push(handle),
                Err(e) => {
                    // Threads already started are waiting at the gate: let them through to an end.
                    threads.gate.abort();
                    for handle in threads.handles {
                        let _ = handle.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(threads)
    }

    /// Connections up now, over every thread.
    fn established(&self) -> u64 {
        self.meters.iter().map(|m| m.open()).sum()
    }

    /// Waits until every thread has connected its share, reporting progress.
    fn await_connected(&self, on_progress: &mut impl FnMut(&Progress)) {
        while !self
            .gate
            .wait_all_arrived(self.handles.len(), PROGRESS_INTERVAL)
        {
            on_progress(&Progress::Connecting {
                established: self.established(),
                total: self.total,
            });
        }
    }

    /// Waits until every thread has finished the load that began at `opened`, reporting
    /// progress.
    fn await_finished(&self, opened: Instant, on_progress: &mut impl FnMut(&Progress)) {
        let mut finished = 0;
        let mut last_tick = (opened, 0u64);
        while finished < self.handles.len() {
            let next_tick = last_tick.0 + PROGRESS_INTERVAL;
            match self
                .done
                .recv_timeout(next_tick.saturating_duration_since(Instant::now()))
            {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let requests: u64 = self.meters.iter().map(|m| m.completed()).sum();
                    let interval = (now - last_tick.0).as_secs_f64();
                    on_progress(&Progress::Running {
                        elapsed: now - opened,
                        requests,
                        rps: (requests - last_tick.1) as f64 / interval,
                        open: self.established(),
                    });
                    last_tick = (now, requests);
                }
                // A thread died without reporting; the joins say how.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Each thread's counts, in thread order.
    fn join(self) -> io::Result<Vec<Counts>> {
        let mut counts = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            match handle.join() {
                Ok(result) => counts.push(result?),
                Err(_) => return Err(io::Error::other("a load thread panicked")),
            }
        }
        Ok(counts)
    }
}

/// One generator thread's run, by what it generates: chat members, UDP datagrams, or requests
/// over streams.
fn generate(plan: &driver::Plan, gate: &Gate, meter: &driver::Meter) -> io::Result<Counts> {
    if plan.config.protocol == ProtocolKind::Chat {
        chat::run(plan, gate, meter)
    } else if plan.config.is_udp() {
        udp::run(plan, gate, meter)
    } else {
        stream::run(plan, gate, meter)
    }
}

/// How often [`Progress`] is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Raises the open-file limit and checks that one descriptor per connection fits under it, so a
/// run that cannot work fails at once with a clear message instead of with thousands of
/// `EMFILE` connect errors.
fn check_fd_limit(connections: usize) -> io::Result<()> {
    let limit = match crate::sys::raise_fd_limit() {
        Ok(limit) => limit.now,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            return Ok(()); // Try anyway: connects that fail are counted as errors.
        }
    };
    let needed = connections as u64 + limits::FD_HEADROOM;
    if needed > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{connections} connections need about {needed} open files, but this process \
                 may open only {limit} (raise the hard limit: ulimit -Hn)"
            ),
        ));
    }
    Ok(())
}

/// The process's CPU time so far, user plus system, over all its threads; `None` where
/// `/proc/self/stat` cannot be read (not Linux).
///
/// `/proc/self/stat` gives it in clock ticks of `USER_HZ`, which Linux fixes at 100 per second
/// for every user-space ABI (the kernel converts from its internal tick rate), so no `sysconf`
/// call — and no `unsafe` — is needed.
pub(crate) fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat).map(|ticks| Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Linux's `USER_HZ`: the unit of the times in `/proc/PID/stat`.
const USER_HZ: u64 = 100;

/// `utime + stime` (fields 14 and 15) from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Where the threads wait for each other between connecting and loading.
///
/// Each generator thread [`arrive`](Gate::arrive)s when its connections are up, then waits for
/// the calling thread to [`open`](Gate::open) the gate once all have: the load then starts at
/// the same instant on every thread, and the time it took to connect is known.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Threads that have finished connecting (or given up).
    arrived: usize,
    /// When the gate opened: the start of the load.
    opened: Option<Instant>,
    /// The run was abandoned before it started: threads are to stop.
    aborted: bool,
}

/// A generator thread's ticket at the [`Gate`], good for exactly one arrival: made explicitly with
/// [`GateTicket::arrive`], or when the ticket is dropped — an error or a panic before the thread
/// got there — so that the calling thread, which waits for every thread, never waits for ever.
#[derive(Debug)]
pub(crate) struct GateTicket<'a>(Option<&'a Gate>);

impl GateTicket<'_> {
    /// Arrives now (once: later calls, and the drop, do nothing).
    pub(crate) fn arrive(&mut self) {
        if let Some(gate) = self.0.take() {
            gate.arrive();
        }
    }
}

impl Drop for GateTicket<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A thread that panicked holding the lock leaves the state consistent (plain fields).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A thread's promise to arrive exactly once (see [`GateTicket`]).
    pub(crate) fn ticket(&self) -> GateTicket<'_> {
        GateTicket(Some(self))
    }

    /// A thread has finished connecting.
    fn arrive(&self) {
        self.lock().arrived += 1;
        self.changed.notify_all();
    }

    /// Waits until `count` threads have arrived (true), or `timeout` has passed (false).
    fn wait_all_arrived(&self, count: usize, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.arrived < count)
            .unwrap_or_else(PoisonError::into_inner);
        state.arrived >= count
    }

    /// Opens the gate now and returns the instant.
    fn open(&self) -> Instant {
        let now = Instant::now();
        self.lock().opened = Some(now);
        self.changed.notify_all();
        now
    }

    /// Tells waiting threads the run will not start.
    fn abort(&self) {
        self.lock().aborted = true;
        self.changed.notify_all();
    }

    /// A thread waits here for the start of the load; `None` if the run was abandoned.
    fn wait_open(&self) -> Option<Instant> {
        let state = self.lock();
        let state = self
            .changed
            .wait_while(state, |s| s.opened.is_none() && !s.aborted)
            .unwrap_or_else(PoisonError::into_inner);
        state.opened.filter(|_| !state.aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 30 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(280));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }

    #[test]
    fn default_warmup_is_a_second_or_a_tenth() {
        let mut config = LoadConfig::new("127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(config.warmup(), Duration::from_secs(1));
        config.duration = Duration::from_millis(500);
        assert_eq!(config.warmup(), Duration::from_millis(50));
        config.warmup = Some(Duration::ZERO);
        assert_eq!(config.warmup(), Duration::ZERO);
    }

    #[test]
    fn validation_names_the_problem() {
        let base = LoadConfig::new("127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap());
        let mut config = base.clone();
        config.warmup = Some(Duration::from_secs(10));
        assert!(config.validate().unwrap_err().contains("warm-up"));
        let mut config = base.clone();
        config.pipeline = 0;
        assert!(config.validate().unwrap_err().contains("pipeline"));
        let mut config = base.clone();
        config.protocol = ProtocolKind::Upload;
        assert!(config.validate().unwrap_err().contains("upload"));
        let mut config = base.clone();
        config.protocol = ProtocolKind::Chat;
        assert!(config.validate().is_ok());
        config.threads = 2;
        assert!(config.validate().unwrap_err().contains("one thread"));
        config.threads = 1;
        config.senders = Some(51);
        assert!(config.validate().unwrap_err().contains("senders"));
        config.connections = 1;
        config.senders = None;
        assert!(config.validate().unwrap_err().contains("2 to"));
        let mut config = base.clone();
        config.senders = Some(1);
        assert!(config.validate().unwrap_err().contains("chat"));
        let mut config = base;
        config.mode = Mode::Idle;
        config.warmup = Some(Duration::from_secs(60));
        assert!(config.validate().is_ok(), "idle mode has no warm-up");
    }

    #[test]
    fn reconnect_is_for_request_streams_under_load() {
        let mut config = LoadConfig::new("127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap());
        config.reconnect = Some(3);
        assert!(config.validate().is_ok());
        let mut idle = config.clone();
        idle.mode = Mode::Idle;
        assert!(idle.validate().unwrap_err().contains("--reconnect"));
        let mut chat = config.clone();
        chat.protocol = ProtocolKind::Chat;
        assert!(chat.validate().unwrap_err().contains("--reconnect"));
        let mut udp = config.clone();
        udp.addresses = vec!["udp:127.0.0.1:1".parse().unwrap()];
        assert!(udp.validate().unwrap_err().contains("--reconnect"));
        config.reconnect = Some(0);
        assert!(config.validate().unwrap_err().contains("--reconnect"));
    }

    #[test]
    fn a_tls_server_name_that_is_no_name_is_refused_at_start() {
        let mut config = LoadConfig::new("tls:127.0.0.1:1".parse::<Address>().unwrap());
        assert!(config.validate().is_ok());
        config.tls.server_name = Some("not a name!".into());
        assert!(config.validate().unwrap_err().contains("not a name!"));
    }

    #[test]
    fn threads_never_outnumber_connections() {
        let mut config = LoadConfig::new("127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap());
        config.connections = 3;
        config.threads = 8;
        assert_eq!(config.effective_threads(), 3);
    }
}
