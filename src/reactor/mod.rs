//! The event loop: one thread, one `mio::Poll`, every connection.
//!
//! ## How a turn goes
//!
//! [`Reactor::run`] repeats one turn, and the whole of it is on one screen
//! (`serve_until_stopped`):
//!
//! 1. **Wait.** `poll` blocks until some socket is ready, or until the nearest timer — or not at
//!    all if a connection stopped on its budget last turn (the *still-ready* queue) or chat
//!    lines routed last turn are still to be written.
//! 2. **Dispatch.** Each event names a token. Listener tokens accept new connections
//!    (`accept.rs`); datagram tokens answer datagrams on the spot (`datagram.rs`); connection
//!    tokens drive that client's handler (`drive_connection_from`, the one `match` on a
//!    client's kind: see [`handler`]); the storage token brings the I/O threads' answers to
//!    the uploads that asked (`upload.rs`); the signal token starts (or, the second time, cuts
//!    short) a graceful shutdown.
//! 3. **Still ready.** Connections (and listeners) that stopped on a fairness budget are served
//!    again. Under edge triggering no new event will come for bytes that already arrived, so a
//!    budgeted connection must remember that it has work left.
//! 4. **Chat.** The lines the turn's chat members sent were routed into their rooms' logs as
//!    they were read; now every member owed lines is written to, once, with `writev`, and the
//!    members that fell too far behind are dropped (`chat.rs`).
//! 5. **Timers.** Deadlines that have passed are acted on (`timers.rs`): idle timeouts, the end
//!    of a lingering close, held replies falling due (`--reply-delay`), a listener paused for
//!    lack of file descriptors, a PROXY header not complete within its 3 s (`--proxy-protocol`,
//!    `proxy.rs`), a chat room's flow-control grace, systemd's watchdog.
//! 6. **Reap.** Connections that finished during the turn leave the slab *now*, after the batch,
//!    not in the middle of it: the slab reuses keys, and a key freed and reused mid-batch would
//!    let a later event of the old connection reach the new one.
//!
//! ## Where each piece lives
//!
//! A client in the slab is a [`handler::Client`]: its transport core (`connection.rs`: bytes
//! on a socket, the same for every kind) and its handler (`handler/`: what the bytes mean,
//! one file per kind). The loop lends every drive the buffers it owns (`buffers.rs`), so an
//! idle connection holds none.
//!
//! ## Tokens
//!
//! A connection's token is its slab key, so finding the connection for an event is an index.
//! Listeners sit at the top of the token space, from [`LISTENER_TOKEN_BASE`] up, where no slab key
//! will ever reach, and the signal pipe has the very last token, [`SIGNAL_TOKEN`].

mod accept;
mod access;
mod buffers;
mod bus;
mod chat;
mod chat_bus;
mod connection;
mod counters;
mod datagram;
mod fanout;
mod handler;
mod handshake;
mod metrics;
mod proxy;
mod timers;
mod tls;
mod unsent;
mod upload;
mod wire;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::clock::{Clock, Now};
use crate::net::datagram::DatagramStats;
use crate::net::systemd::Notifier;
use crate::net::{BoundDatagram, BoundListener, ReserveFd, StreamListener};
use crate::options::ServeOptions;
use crate::protocol::bus::BusUrl;
use crate::protocol::room::{Delivery, MemberId};
use crate::service::{Address, ProtocolKind};

pub(crate) use buffers::SharedBuffers;
use bus::{Bus, BusRoom, BUS_COMMANDS_TOKEN, BUS_SUBSCRIPTION_TOKEN};
use chat::{ChatRoom, Outbox};
use connection::{FirstInput, Verdict};
use counters::EndCause;
use handler::{Client, Handler};
use timers::{describe_timeout, Timer, Wake};
use upload::{UploadSink, Uploads};

/// Tokens at and above this value are endpoints — listeners and datagram sockets (endpoint `i`
/// is `LISTENER_TOKEN_BASE + i`).
pub(crate) const LISTENER_TOKEN_BASE: usize = usize::MAX / 2;

/// The token of the signal pipe (SIGINT, SIGTERM, SIGHUP).
pub(crate) const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// The loop's one waker (mio allows one per poller), rung by its helper threads: the I/O threads
/// have answered upload operations, or the TLS reload thread has read the files.
pub(crate) const STORAGE_TOKEN: Token = Token(usize::MAX - 1);

/// How long the loop, once stopped, waits for the I/O threads to finish what they were handed
/// (the discards of uploads cut short by the shutdown).
const STORAGE_SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Most events taken from one `poll` call. Events beyond it stay queued in the kernel for the
/// next turn, so this bounds the turn's length, not what can be handled.
pub(crate) const EVENTS_PER_POLL: usize = 1024;

/// Most connections accepted from one listener per turn, so a connect storm cannot keep the loop
/// from serving the clients it already has. A listener that hits it goes on the still-ready queue.
pub(crate) const MAX_ACCEPTS_PER_TURN: usize = 256;

/// What the reactor needs from the command line: the options every driver shares, and the one
/// only the reactor has.
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    /// The options shared with the blocking models (limits, timeouts, upload directory, ...).
    pub options: ServeOptions,
    /// `--upload-io loop`: file operations in the loop itself, a foil (normally: I/O threads).
    pub upload_io_in_loop: bool,
    /// `--chat-bus`: the Redis that shares the chat rooms, and its address, resolved at start
    /// (the loop never looks a name up).
    pub chat_bus: Option<(BusUrl, SocketAddr)>,
}

/// A socket the loop owns for a whole service: a listener, whose clients become connections, or
/// a datagram socket, which answers each datagram on the spot and has no connections at all.
#[derive(Debug)]
struct Endpoint {
    /// The socket; `None` once closed for a shutdown.
    socket: Option<EndpointSocket>,
    protocol: ProtocolKind,
    local: Address,
    /// Whether it is in the still-ready queue (it stopped on its accept or datagram budget).
    queued: bool,
    /// Whether a listener is resting after running out of descriptors (a `Wake::Accept` is
    /// pending).
    paused: bool,
    /// What a datagram endpoint has done (all zero for a listener).
    stats: DatagramStats,
    /// What its connections have done, for the metrics (all zero for a datagram endpoint).
    counters: counters::EndpointCounters,
}

/// The two kinds of endpoint.
#[derive(Debug)]
enum EndpointSocket {
    /// TCP or Unix stream listener.
    Listener(StreamListener),
    /// UDP socket.
    Datagram(UdpSocket),
}

/// The single-threaded reactor serving every bound service.
pub(crate) struct Reactor {
    poll: Poll,
    endpoints: Vec<Endpoint>,
    /// Every accepted client: its connection and its handler (see [`handler`]).
    clients: Slab<Client>,
    /// Buffers lent to whichever connection is being driven.
    shared: SharedBuffers,
    /// The chat room of each endpoint that serves chat (`None` for the others).
    rooms: Vec<Option<ChatRoom>>,
    /// What a room has decided and the loop has not routed yet.
    deliveries: Vec<Delivery>,
    /// Chat members and rooms with lines routed this turn, written at its end.
    outbox: Outbox,
    /// The I/O threads that store uploads, when an upload service is served.
    uploads: Option<Uploads>,
    /// Reused list of the uploads' completions, with their connections' keys.
    upload_completions: Vec<(usize, crate::storage::pool::Completion)>,
    /// Reused list of upload connections to retry at a drain.
    upload_blocked: Vec<usize>,
    /// systemd's notification socket (`NOTIFY_SOCKET`), or a no-op.
    notifier: Arc<Notifier>,
    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if systemd asked for it.
    watchdog_every: Option<Duration>,
    /// The shared options ([`Config::options`]); the reactor's own extra is used up in
    /// [`Reactor::new`].
    config: ServeOptions,
    clock: Clock,
    /// SIGINT and SIGTERM, delivered through a pipe the poll watches.
    signals: Option<Signals>,
    /// Tokens to serve again before blocking: they stopped on a budget with work left.
    still_ready: Vec<Token>,
    /// Keys of connections that finished this turn, removed from the slab after the batch.
    finished: Vec<usize>,
    /// Pending deadlines, earliest first.
    timers: BinaryHeap<Timer>,
    /// Serial number for the next accepted connection.
    next_connection_id: u64,
    /// An open descriptor kept in reserve: when `accept` fails with EMFILE, closing it frees one
    /// slot to accept the waiting client and close it at once, instead of leaving it hanging.
    reserve_fd: ReserveFd,
    /// Whether the last accept was refused for the connection limit (logs a warning per streak).
    refusing: bool,
    /// When a graceful shutdown must be over; `None` while serving normally.
    shutdown_deadline: Option<Instant>,
    /// The chat bus (`--chat-bus`), when a chat service is served with one.
    bus: Option<Bus>,
    /// When the bus's timer is set for (`None`: not set).
    bus_wake: Option<Instant>,
    /// The configuration of the `tls:` services, when there are any, and its reloads.
    tls: Option<handshake::TlsServices>,
    /// The loop's own figures: turns, events, time busy (the metrics).
    loop_counters: counters::LoopCounters,
    /// The last exposition rendered, its buffer kept for the next scrape.
    exposition: Vec<u8>,
}

/// The chat bus for `rooms` (none without a chat service: nothing to share).
fn start_bus(
    (url, addr): (BusUrl, SocketAddr),
    rooms: Vec<BusRoom>,
    output_limit: usize,
) -> Option<Bus> {
    // Each room's pace keeps its lines in flight under half of --output-limit and a quantum, and
    // claims and releases are a few hundred bytes per member arriving or leaving: only a Redis
    // that stops taking commands fills this.
    let queue_limit = output_limit.saturating_mul(rooms.len() + 1);
    (!rooms.is_empty()).then(|| Bus::new(url, addr, rooms, queue_limit))
}

/// What the loop's helper threads answer through its one waker: the `tls:` services' reloads
/// and the upload I/O threads, each only when some endpoint needs it.
fn start_helpers(
    poll: &Poll,
    endpoints: &[Endpoint],
    config: &ServeOptions,
    upload_io_in_loop: bool,
) -> io::Result<(Option<handshake::TlsServices>, Option<Uploads>)> {
    let serves_uploads = endpoints.iter().any(|e| e.protocol == ProtocolKind::Upload);
    let serves_tls = endpoints.iter().any(|e| e.local.is_tls());
    let waker = match serves_uploads || serves_tls {
        true => Some(Arc::new(Waker::new(poll.registry(), STORAGE_TOKEN)?)),
        false => None,
    };
    let tls = match (&config.tls, &waker) {
        (Some(tls), Some(waker)) if serves_tls => {
            Some(handshake::TlsServices::new(tls.clone(), Arc::clone(waker)))
        }
        _ => None,
    };
    let uploads = match (&config.upload_dir, &waker) {
        (Some(dir), Some(waker)) if serves_uploads => Some(Uploads::start(
            Arc::clone(dir),
            Arc::clone(waker),
            upload_io_in_loop,
        )?),
        _ => None,
    };
    Ok((tls, uploads))
}

impl Endpoint {
    /// Its protocol and address, as the access log names them.
    fn service(&self) -> (ProtocolKind, &Address) {
        (self.protocol, &self.local)
    }

    fn new(socket: EndpointSocket, protocol: ProtocolKind, local: Address) -> Endpoint {
        Endpoint {
            socket: Some(socket),
            protocol,
            local,
            queued: false,
            paused: false,
            stats: DatagramStats::default(),
            counters: counters::EndpointCounters::default(),
        }
    }
}

impl Reactor {
    /// A reactor serving `listeners` and `datagrams`, stopping gracefully on the given signals.
    /// Nothing is served until [`Reactor::run`].
    pub(crate) fn new(
        listeners: Vec<BoundListener>,
        datagrams: Vec<BoundDatagram>,
        config: Config,
        signals: Option<Signals>,
    ) -> io::Result<Reactor> {
        let Config {
            options: config,
            upload_io_in_loop,
            chat_bus,
        } = config;
        if listeners.len() + datagrams.len() > usize::from(u16::MAX) {
            // A connection names its endpoint in 16 bits (it fits in the padding of its flags).
            return Err(io::Error::other("more than 65,535 services"));
        }
        let poll = Poll::new()?;
        let mut endpoints = Vec::with_capacity(listeners.len() + datagrams.len());
        let mut shared_rooms = Vec::new();
        for bound in listeners {
            if let (ProtocolKind::Chat, Some((url, _))) = (bound.protocol, &chat_bus) {
                let room = BusRoom::new(endpoints.len(), bound.room_name(), url.db);
                shared_rooms.push(room);
            }
            let (protocol, local) = (bound.protocol, bound.local.clone());
            let token = Token(LISTENER_TOKEN_BASE + endpoints.len());
            let socket = EndpointSocket::Listener(bound.register(poll.registry(), token)?);
            endpoints.push(Endpoint::new(socket, protocol, local));
        }
        for bound in datagrams {
            let token = Token(LISTENER_TOKEN_BASE + endpoints.len());
            let mut socket = UdpSocket::from_std(bound.socket);
            // Only READABLE, ever: replies that cannot go at once are dropped, never queued.
            poll.registry()
                .register(&mut socket, token, Interest::READABLE)?;
            let socket = EndpointSocket::Datagram(socket);
            endpoints.push(Endpoint::new(
                socket,
                bound.protocol,
                Address::Udp(bound.local),
            ));
        }
        for (index, endpoint) in endpoints.iter().enumerate() {
            let (protocol, local) = (endpoint.protocol, &endpoint.local);
            debug!(
                "endpoint {index}: {protocol} on {} {local}",
                local.transport()
            );
        }
        // Each chat service is a room of its own, shared with other processes on the bus.
        let rooms = endpoints
            .iter()
            .map(|e| {
                (e.protocol == ProtocolKind::Chat)
                    .then(|| ChatRoom::new(config.limits, config.output_limit, chat_bus.is_some()))
            })
            .collect();
        let bus = chat_bus.and_then(|bus| start_bus(bus, shared_rooms, config.output_limit));
        let mut signals = signals;
        if let Some(signals) = signals.as_mut() {
            poll.registry()
                .register(signals, SIGNAL_TOKEN, Interest::READABLE)?;
        }
        let (tls, uploads) = start_helpers(&poll, &endpoints, &config, upload_io_in_loop)?;
        Ok(Reactor {
            uploads,
            upload_completions: Vec::new(),
            upload_blocked: Vec::new(),
            notifier: Arc::new(Notifier::disabled()),
            watchdog_every: None,
            poll,
            endpoints,
            clients: Slab::new(),
            shared: SharedBuffers::new(config.output_limit).with_reply_delay(config.reply_delay),
            rooms,
            deliveries: Vec::new(),
            outbox: Outbox::default(),
            config,
            clock: Clock::default(),
            signals,
            still_ready: Vec::new(),
            finished: Vec::new(),
            timers: BinaryHeap::new(),
            next_connection_id: 1,
            reserve_fd: ReserveFd::new(),
            refusing: false,
            shutdown_deadline: None,
            bus,
            bus_wake: None,
            tls,
            loop_counters: counters::LoopCounters::default(),
            exposition: Vec::new(),
        })
    }

    /// Reports to systemd through `notifier`: `STOPPING=1` when a graceful shutdown begins,
    /// and, every `watchdog_every`, `WATCHDOG=1` and a `STATUS=` line from the loop's own turn.
    /// (`READY=1` is the caller's, once the listening lines are out.)
    pub(crate) fn notify_systemd(
        &mut self,
        notifier: Arc<Notifier>,
        watchdog_every: Option<Duration>,
    ) {
        self.notifier = notifier;
        self.watchdog_every = watchdog_every;
        if let Some(every) = watchdog_every {
            self.timers
                .push(Reverse((Instant::now() + every, Wake::Watchdog)));
        }
    }

    /// How many client connections are open: those in the slab, less those that finished this
    /// turn and only wait to be removed after the batch (their clients are gone; counting them
    /// would refuse a newcomer that arrived in the same batch as a leaver).
    pub(crate) fn open_connection_count(&self) -> usize {
        self.clients.len() - self.finished.len()
    }

    /// Serves until a graceful shutdown completes (`Ok`) or the poller fails.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let served = self.serve_until_stopped();
        if let Some(uploads) = self.uploads.take() {
            // Discards of uploads cut short at the end are still to run; commits were answered.
            uploads.shut_down(STORAGE_SHUTDOWN_WAIT);
        }
        served
    }

    /// The loop itself: poll, serve every event, then the work left over, until stopped.
    fn serve_until_stopped(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        if let Some(bus) = self.bus.as_mut() {
            bus.start(self.poll.registry(), Instant::now());
            self.schedule_bus();
        }
        // When the turn being served began (poll's return), and how many events it brought.
        let mut turn: Option<(Instant, usize)> = None;
        loop {
            if let Some((began, count)) = turn.take() {
                self.loop_counters.end_turn(count, began.elapsed());
            }
            let timeout = self.poll_timeout();
            trace!("poll: {}", describe_timeout(timeout));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    trace!("poll: interrupted by a signal; its pipe will say which");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let now = self.clock.now();
            turn = Some((now.instant, events.iter().count()));
            if log::log_enabled!(log::Level::Trace) {
                match events.iter().count() {
                    0 if timeout == Some(Duration::ZERO) => trace!("poll: no new event"),
                    0 => trace!("poll: woke with no event: a timer is due"),
                    1 => trace!("poll: woke with 1 event"),
                    n => trace!("poll: woke with {n} events"),
                }
            }
            for event in events.iter() {
                trace!("event: {}", self.describe_event(event));
                if event.token() == STORAGE_TOKEN {
                    self.on_storage_ready(&now);
                    self.on_tls_reloaded();
                    continue;
                }
                if event.token() == SIGNAL_TOKEN {
                    if self.on_signal(&now) == Stop::Now {
                        return Ok(());
                    }
                    continue;
                }
                if event.token() == BUS_COMMANDS_TOKEN || event.token() == BUS_SUBSCRIPTION_TOKEN {
                    self.on_bus_ready(event.token(), &now);
                    continue;
                }
                if let Some(client) = self.clients.get_mut(event.token().0) {
                    if event.is_read_closed() || event.is_error() {
                        client.conn.note_peer_closing();
                    }
                }
                if self.is_still_ready(event.token()) {
                    continue; // Served once this turn, from the still-ready queue below.
                }
                self.dispatch(event.token(), &now);
            }
            self.serve_still_ready(&now);
            self.serve_bus(&now);
            self.flush_chat_members(&now);
            self.fire_timers(&now);
            self.reap_finished();
            if self.shutdown_is_over(&now) {
                return Ok(());
            }
        }
    }

    /// What an event means, in words, for the trace: whose token it is and what its readiness
    /// promises (`listener echo tcp 127.0.0.1:7000 is readable: clients wait to be accepted`).
    fn describe_event(&self, event: &mio::event::Event) -> String {
        let token = event.token();
        let closed = if event.is_read_closed() || event.is_error() {
            ", and the peer has closed its side"
        } else {
            ""
        };
        let readiness =
            |readable: &str, writable: &str| match (event.is_readable(), event.is_writable()) {
                (true, true) => format!("is readable ({readable}) and writable ({writable})"),
                (true, false) => format!("is readable ({readable})"),
                (false, true) => format!("is writable ({writable})"),
                (false, false) => "has an error or hang-up".to_owned(),
            };
        if token == SIGNAL_TOKEN {
            return "the signal pipe is readable: a signal arrived".to_owned();
        }
        if token == STORAGE_TOKEN {
            return "a helper thread rang the waker: file operations finished, or the TLS files \
                    were read again"
                .to_owned();
        }
        if token == BUS_COMMANDS_TOKEN {
            return format!(
                "the chat bus's command connection {}",
                readiness("replies from Redis", "room to send commands")
            );
        }
        if token == BUS_SUBSCRIPTION_TOKEN {
            return format!(
                "the chat bus's subscription {}",
                readiness("the rooms' lines, in order", "room to send")
            );
        }
        if token.0 >= LISTENER_TOKEN_BASE {
            let Some(endpoint) = self.endpoints.get(token.0 - LISTENER_TOKEN_BASE) else {
                return format!("token {} (no endpoint)", token.0);
            };
            return match endpoint.socket {
                Some(EndpointSocket::Datagram(_)) => format!(
                    "{} udp {} {}",
                    endpoint.protocol,
                    endpoint.local,
                    readiness("datagrams wait", "room to send")
                ),
                _ => format!(
                    "listener {} {} {} {}: clients wait to be accepted",
                    endpoint.protocol,
                    endpoint.local.transport(),
                    endpoint.local,
                    if event.is_readable() {
                        "is readable"
                    } else {
                        "is ready"
                    }
                ),
            };
        }
        match self.clients.get(token.0) {
            Some(client) => format!(
                "conn #{} (token {}) {}{closed}",
                client.conn.id,
                token.0,
                readiness("bytes or the end of stream to read", "room to write")
            ),
            None => format!("token {}, whose connection is gone: ignored", token.0),
        }
    }

    /// Whether the token waits in the still-ready queue (so an event for it changes nothing:
    /// it will be served from the queue this turn, once, within its budget).
    fn is_still_ready(&self, token: Token) -> bool {
        if token.0 >= LISTENER_TOKEN_BASE {
            self.endpoints
                .get(token.0 - LISTENER_TOKEN_BASE)
                .is_some_and(|l| l.queued)
        } else {
            self.clients.get(token.0).is_some_and(|c| c.conn.queued)
        }
    }

    /// Sends one token's readiness to its listener, datagram socket or connection.
    fn dispatch(&mut self, token: Token, now: &Now) {
        if token.0 < LISTENER_TOKEN_BASE {
            return self.drive_connection(token.0, now);
        }
        let index = token.0 - LISTENER_TOKEN_BASE;
        match self.endpoints.get(index).and_then(|e| e.socket.as_ref()) {
            Some(EndpointSocket::Listener(_)) => self.accept_ready(index, now),
            Some(EndpointSocket::Datagram(_)) => self.datagrams_ready(index, now),
            None => {} // Closed for shutdown.
        }
    }

    /// Answers datagrams until the socket would block or the turn's datagram budget is spent.
    fn datagrams_ready(&mut self, index: usize, now: &Now) {
        let endpoint = &mut self.endpoints[index];
        let Some(EndpointSocket::Datagram(socket)) = endpoint.socket.as_ref() else {
            return;
        };
        let budget_spent = datagram::serve_datagrams(
            socket,
            endpoint.protocol,
            &mut self.shared,
            &mut endpoint.stats,
            now,
        );
        if budget_spent && !endpoint.queued {
            endpoint.queued = true;
            self.still_ready.push(Token(LISTENER_TOKEN_BASE + index));
        }
    }

    /// Drives one connection and applies its verdict: requeue, timer, interest, or removal.
    fn drive_connection(&mut self, key: usize, now: &Now) {
        self.drive_connection_from(key, now, None);
    }

    /// [`drive_connection`](Self::drive_connection), with bytes already read for the protocol
    /// (`first`: what followed its PROXY header) taken before the socket is read again.
    ///
    /// The seam between the loop and the handlers: the one `match` on a client's kind, where
    /// each arm lends that kind what it needs from the loop (see [`handler`]).
    fn drive_connection_from(&mut self, key: usize, now: &Now, first: Option<FirstInput>) {
        let Some(client) = self.clients.get_mut(key) else {
            return; // A stale token: nothing lives there any more.
        };
        if client.conn.is_closed() {
            return; // Finished earlier this turn; reaped after the batch.
        }
        let Client { conn, handler } = client;
        let verdict = match handler {
            Handler::Header(_) => return self.drive_header(key, now),
            Handler::Metrics(_) => return self.drive_scraper(key, now, first),
            Handler::Handshake(_) => return self.drive_handshake(key, now),
            Handler::Chat(_) => return self.drive_member(key, now, first),
            Handler::Upload(work) => match self.uploads.as_mut() {
                Some(uploads) => {
                    let endpoint = &mut self.endpoints[conn.endpoint()];
                    let mut sink = upload::UploadSink {
                        uploads,
                        key,
                        conn: conn.id,
                        counters: &mut endpoint.counters,
                        service: (endpoint.protocol, &endpoint.local),
                        stored: None,
                    };
                    handler::upload::drive(conn, work, &mut self.shared, now, &mut sink, first)
                }
                None => {
                    // Refused at the accept when nothing stores uploads: cannot be.
                    conn.close(EndCause::Error, "no storage for uploads");
                    Verdict::default()
                }
            },
            Handler::Stream(session) => {
                handler::stream::drive(conn, session, None, &mut self.shared, now, first)
            }
            Handler::Delayed(delayed) => {
                let (session, held) = delayed.parts();
                handler::stream::drive(conn, session, Some(held), &mut self.shared, now, first)
            }
        };
        self.apply(key, verdict);
    }

    /// Acts on what a drive of connection `key` left for the loop: the linger timer it asked
    /// for, then [`settle`](Self::settle).
    fn apply(&mut self, key: usize, verdict: Verdict) {
        if let (Some(at), Some(client)) = (verdict.wake_at, self.clients.get(key)) {
            let id = client.conn.id;
            self.timers.push(Reverse((at, Wake::Linger { key, id })));
        }
        self.settle(key, verdict.still_ready);
    }

    /// After a connection has been driven (or closed): queue it for removal, or requeue it and
    /// bring its poller interest up to date.
    fn settle(&mut self, key: usize, still_ready: bool) {
        let client = &mut self.clients[key];
        if client.conn.is_closed() {
            self.finished.push(key);
            return;
        }
        if still_ready && !client.conn.queued {
            client.conn.queued = true;
            self.still_ready.push(Token(key));
        }
        if let Some(due) = client.reply_timer() {
            let id = client.conn.id;
            self.timers.push(Reverse((due, Wake::Reply { key, id })));
        }
        let wanted = client.wanted_interest(self.config.output_limit);
        let connection = &mut client.conn;
        if let Some(interest) = wanted.filter(|&i| i != connection.registered) {
            trace!(
                "conn #{}: poller interest now {interest:?}{}",
                connection.id,
                if interest.is_writable() {
                    " (replies wait for room in the socket)"
                } else {
                    " (nothing waits to be written)"
                }
            );
            match self
                .poll
                .registry()
                .reregister(connection.socket_mut(), Token(key), interest)
            {
                Ok(()) => connection.registered = interest,
                Err(e) => {
                    // Without the interest it needs, no event would ever wake it again.
                    warn!(
                        "conn #{}: cannot change poller interest: {e}",
                        connection.id
                    );
                    connection.close(EndCause::Error, "poller refused the interest change");
                    self.finished.push(key);
                }
            }
        }
    }

    /// Serves the tokens that stopped on a budget last turn.
    fn serve_still_ready(&mut self, now: &Now) {
        if self.still_ready.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.still_ready);
        for token in queue.drain(..) {
            // The `queued` flag, not the token, says whether there is work: a connection that
            // closed after queueing left its token behind (removing it from the middle of the
            // queue at reap time would cost O(queue) per closed connection), and its slab key
            // may have a new tenant by now, which must not be served on the old one's account.
            let queued = if token.0 >= LISTENER_TOKEN_BASE {
                let listener = &mut self.endpoints[token.0 - LISTENER_TOKEN_BASE];
                std::mem::take(&mut listener.queued)
            } else if let Some(client) = self.clients.get_mut(token.0) {
                std::mem::take(&mut client.conn.queued)
            } else {
                false
            };
            if queued {
                self.dispatch(token, now);
            }
        }
        if self.still_ready.is_empty() {
            self.still_ready = queue; // keep the allocation
        }
    }

    /// Removes the connections that finished this turn, in O(1) each. Dropping the socket closes
    /// it, which also removes it from the epoll set, so no `deregister` call is needed. A removed
    /// connection's token may stay in the still-ready queue: [`Reactor::serve_still_ready`]
    /// skips it.
    fn reap_finished(&mut self) {
        // A chat member's departure can drop other members (its `left` notice may put them
        // over their output limit), which finish in turn: reap until none is left.
        while !self.finished.is_empty() {
            let mut batch = std::mem::take(&mut self.finished);
            for key in batch.drain(..) {
                let Some(connection) = self.clients.try_remove(key) else {
                    continue;
                };
                self.count_and_log_end(&connection);
                trace!(
                    "conn #{}: removed (token {key} is free again)",
                    connection.conn.id
                );
                if let (Some((serial, cut_short)), Some(uploads)) =
                    (connection.upload_left_behind(), self.uploads.as_mut())
                {
                    uploads.forget(serial, cut_short);
                }
                if let Some(room) = connection.chat_room() {
                    self.leave_room(key, room);
                }
            }
            if self.finished.is_empty() {
                self.finished = batch;
            }
        }
        self.compact_timers();
    }

    /// Handles pending signals: the first starts a graceful shutdown, a second one means "now".
    fn on_signal(&mut self, now: &Now) -> Stop {
        let Some(signals) = self.signals.as_mut() else {
            return Stop::NotYet;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if signal == signal_hook::consts::SIGHUP {
                self.reload_tls();
                continue;
            }
            if self.shutdown_deadline.is_some() {
                info!("second signal ({signal}): exiting at once");
                return Stop::Now;
            }
            info!(
                "signal {signal}: shutting down (at most {} s)",
                self.config.shutdown_timeout.as_secs_f64()
            );
            self.begin_shutdown(now);
        }
        Stop::NotYet
    }

    /// Stops accepting, closes idle connections, and lets busy ones finish writing.
    fn begin_shutdown(&mut self, now: &Now) {
        self.notifier.stopping();
        // The members of shared rooms leave them for the other instances, before they close.
        self.leave_bus();
        self.shutdown_deadline = Some(now.instant + self.config.shutdown_timeout);
        for (index, endpoint) in self.endpoints.iter_mut().enumerate() {
            // Closing the socket deregisters it; clients connecting from now on are refused, and
            // datagrams from now on are not answered.
            match endpoint.socket.take() {
                Some(EndpointSocket::Listener(_)) => debug!("endpoint {index}: closed"),
                Some(EndpointSocket::Datagram(_)) => {
                    info!("udp {}: closed; {}", endpoint.local, endpoint.stats)
                }
                None => {}
            }
        }
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            if client.conn.is_closed() {
                continue;
            }
            // A chat member still in its room is told, after the lines it is already owed.
            let room = client.chat_room().and_then(|r| self.rooms[r].as_ref());
            if let (Some(chat), Some((conn, member))) = (room, client.as_member_mut()) {
                if member.is_joining() {
                    // Not in the room's order yet (its name, or its place, is on its way from
                    // the chat bus): it never joined, so it just goes.
                    conn.close(EndCause::Shutdown, "shutting down before it joined");
                    self.settle(key, false);
                    continue;
                }
                if chat.room.name(MemberId(key)).is_some() {
                    let notice = crate::protocol::room::SHUTDOWN_NOTICE;
                    member.queue_own_line(conn, &chat.log, notice.into());
                }
            }
            client.begin_shutdown(&mut self.shared, now);
            if client.conn.is_closed() {
                // Writing what the session held failed (the peer is gone): reap it now, or it
                // would hold the shutdown up until the timeout.
                self.settle(key, false);
                continue;
            }
            // Most can flush and shut down their side at once.
            self.drive_connection(key, now);
        }
    }

    /// Whether a graceful shutdown has finished: every connection is gone, or time is up.
    fn shutdown_is_over(&mut self, now: &Now) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        if self.clients.is_empty() && self.bus.as_ref().map_or(true, Bus::is_settled) {
            info!("shutdown complete");
            return true;
        }
        if now.instant >= deadline {
            warn!(
                "shutdown timeout: closing {} connections still busy",
                self.clients.len()
            );
            // They end here, for the shutdown: counted, and in the access log.
            for (_, client) in self.clients.iter_mut() {
                client.conn.end_as(EndCause::Shutdown);
            }
            for (_, client) in std::mem::take(&mut self.clients) {
                self.count_and_log_end(&client);
            }
            return true;
        }
        false
    }
}

/// The storage's answers: the arm of the seam for the I/O threads' waker.
impl Reactor {
    /// The I/O threads answered: each answer goes to its upload's connection, which may reply
    /// (`saved ...`), send the ops that waited for room, and read again.
    pub(super) fn on_storage_ready(&mut self, now: &Now) {
        let Some(uploads) = self.uploads.as_mut() else {
            return;
        };
        let mut completions = std::mem::take(&mut self.upload_completions);
        uploads.drain(&mut completions);
        match completions.len() {
            1 => trace!("storage: 1 answer from the I/O threads"),
            n => trace!("storage: {n} answers from the I/O threads"),
        }
        // The room those answers freed goes first to the connections that were refused for lack
        // of it, and only then to those whose answers these are, which would take it at once.
        let mut blocked = std::mem::take(&mut self.upload_blocked);
        if let Some(uploads) = self.uploads.as_mut() {
            uploads.take_blocked(&mut blocked);
        }
        for key in blocked.drain(..) {
            self.upload_answered(key, None, now);
        }
        self.upload_blocked = blocked;
        for (key, completion) in completions.drain(..) {
            self.upload_answered(key, Some(&completion), now);
        }
        self.upload_completions = completions;
    }

    /// Gives upload connection `key` an answer from the I/O threads (or, with `None`, a chance
    /// to send the ops that waited for room), and settles it.
    fn upload_answered(
        &mut self,
        key: usize,
        completion: Option<&crate::storage::pool::Completion>,
        now: &Now,
    ) {
        let (Some(client), Some(uploads)) = (self.clients.get_mut(key), self.uploads.as_mut())
        else {
            return;
        };
        let Client {
            conn,
            handler: Handler::Upload(work),
        } = client
        else {
            return;
        };
        let endpoint = &mut self.endpoints[conn.endpoint()];
        let mut sink = UploadSink {
            uploads,
            key,
            conn: conn.id,
            counters: &mut endpoint.counters,
            service: (endpoint.protocol, &endpoint.local),
            stored: None,
        };
        let verdict = handler::upload::on_completion(
            conn,
            work,
            completion,
            &mut self.shared,
            &mut sink,
            now,
        );
        self.apply(key, verdict);
    }
}

/// Whether the loop goes on after a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    NotYet,
    Now,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Peer, Stream};
    use crate::protocol::Limits;
    use crate::reactor::connection::MAX_READ_BYTES_PER_TURN;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    /// Waits, as the loop does — in the reactor's own `poll`, never a sleep — until the poller
    /// reports readiness for `token` (the test then drives it by hand).
    fn wait_for_event(reactor: &mut Reactor, token: Token) {
        let mut events = Events::with_capacity(64);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no event for token {} within 10 s",
                token.0
            );
            reactor.poll.poll(&mut events, Some(left)).unwrap();
            if events.iter().any(|event| event.token() == token) {
                return;
            }
        }
    }

    /// A reactor with no listeners and `count` real loopback connections to echo in its slab,
    /// with the client ends.
    fn reactor_with_connections(count: usize) -> (Reactor, Vec<std::net::TcpStream>, Now) {
        let mut reactor = Reactor::new(Vec::new(), Vec::new(), Config::default(), None).unwrap();
        let now = reactor.clock.now();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let clients = (0..count)
            .map(|_| {
                let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (accepted, peer) = listener.accept().unwrap();
                accepted.set_nonblocking(true).unwrap();
                let stream = Stream::Tcp(mio::net::TcpStream::from_std(accepted));
                reactor.open_connection(stream, Peer::Ip(peer), ProtocolKind::Echo, 0, &now);
                client
            })
            .collect();
        (reactor, clients, now)
    }

    /// Many queued connections closing in one turn cost O(1) each to reap: the still-ready queue
    /// is not searched once per closed connection (which made the reap quadratic), and the
    /// tokens they leave behind are skipped when the queue is served.
    #[test]
    fn reaping_queued_connections_leaves_the_queue_alone() {
        const COUNT: usize = 64;
        let (mut reactor, mut clients, now) = reactor_with_connections(COUNT);
        let keys: Vec<usize> = reactor.clients.iter().map(|(key, _)| key).collect();
        for &key in &keys {
            reactor.clients[key].conn.queued = true;
            reactor.still_ready.push(Token(key));
            reactor.clients[key].conn.close(EndCause::Error, "test");
            reactor.finished.push(key);
        }
        reactor.reap_finished();
        assert!(reactor.clients.is_empty());
        assert_eq!(
            reactor.still_ready.len(),
            COUNT,
            "reaping must not search the still-ready queue"
        );

        // A newcomer takes a reused key while the old tenant's token is still queued: serving
        // the queue must not drive it on the old tenant's account.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        reactor.open_connection(
            Stream::Tcp(mio::net::TcpStream::from_std(accepted)),
            Peer::Ip(peer),
            ProtocolKind::Echo,
            0,
            &now,
        );
        let reused = reactor.clients.iter().next().unwrap().0;
        assert!(keys.contains(&reused), "the slab reuses freed keys");
        client.write_all(b"ping").unwrap();
        wait_for_event(&mut reactor, Token(reused)); // the ping is in its receive queue
        reactor.serve_still_ready(&now);
        assert!(reactor.still_ready.is_empty(), "stale tokens are dropped");
        client.set_nonblocking(true).unwrap();
        let mut reply = [0u8; 4];
        assert!(
            client.read(&mut reply).is_err(),
            "a stale token drove the key's new tenant"
        );
        // Its own turn comes from its own event (or its own place in the queue).
        reactor.dispatch(Token(reused), &now);
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping");
        clients.clear();
    }

    /// A graceful shutdown answers what was already read: a timestamp line held back after a
    /// budget-limited read (the peer had not paused, so the line was not complete) is stamped
    /// and sent before the close, not dropped.
    #[test]
    fn shutdown_flushes_a_line_held_after_a_budget_limited_read() {
        const SENT: usize = MAX_READ_BYTES_PER_TURN + 44 * 1024;
        let config = Config {
            options: ServeOptions {
                limits: Limits {
                    max_line: 4 << 20,
                    ..Limits::default()
                },
                ..ServeOptions::default()
            },
            ..Config::default()
        };
        let mut reactor = Reactor::new(Vec::new(), Vec::new(), config, None).unwrap();
        let now = reactor.clock.now();
        // A receive buffer big enough to hold the whole message before the server reads any.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_recv_buffer_size(4 << 20).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(1).unwrap();
        let listener: std::net::TcpListener = listener.into();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let probe = accepted.try_clone().unwrap();
        reactor.open_connection(
            Stream::Tcp(mio::net::TcpStream::from_std(accepted)),
            Peer::Ip(peer),
            ProtocolKind::Timestamp,
            0,
            &now,
        );
        // The server's 4 MiB receive buffer takes the whole message without being read.
        client.write_all(&[b'x'; SENT]).unwrap();
        // Wait (in the poller, as the loop would) until every byte is in its receive queue.
        let key = reactor.clients.iter().next().unwrap().0;
        let mut peek = vec![0u8; SENT];
        while probe.peek(&mut peek).unwrap() < SENT {
            wait_for_event(&mut reactor, Token(key));
        }
        reactor.dispatch(Token(key), &now);
        assert!(
            reactor.clients[key].conn.queued,
            "the read stopped on its budget"
        );
        reactor.begin_shutdown(&now);

        // Read to the end of stream, driving the connection (as WRITABLE events would) while
        // its reply does not fit the socket buffers.
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no end of stream");
            match client.read(&mut chunk) {
                Ok(0) => break,
                Ok(count) => reply.extend_from_slice(&chunk[..count]),
                Err(_) => reactor.dispatch(Token(key), &now),
            }
        }
        let stamp = format!("[{}] ", String::from_utf8_lossy(now.ctime()));
        assert!(reply.starts_with(stamp.as_bytes()), "a stamped reply");
        assert_eq!(
            reply.len() - stamp.len(),
            MAX_READ_BYTES_PER_TURN,
            "the held bytes are answered whole"
        );
        assert!(reply[stamp.len()..].iter().all(|&b| b == b'x'));
    }

    /// A connection whose held bytes cannot be written at the shutdown (its peer reset it) is
    /// reaped, not left to hold the shutdown up until the timeout.
    #[test]
    fn shutdown_reaps_a_connection_whose_last_write_fails() {
        let mut reactor = Reactor::new(Vec::new(), Vec::new(), Config::default(), None).unwrap();
        let now = reactor.clock.now();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let stream = Stream::Tcp(mio::net::TcpStream::from_std(accepted));
        reactor.open_connection(stream, Peer::Ip(peer), ProtocolKind::Upper, 0, &now);
        let key = reactor.clients.iter().next().unwrap().0;
        client.write_all(b"abc\xc3").unwrap();
        wait_for_event(&mut reactor, Token(key));
        reactor.dispatch(Token(key), &now);
        let mut reply = [0u8; 3];
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ABC");
        // The client vanishes with a reset; the server has not looked yet.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        wait_for_event(&mut reactor, Token(key)); // the RST has landed
        reactor.begin_shutdown(&now);
        assert_eq!(
            reactor.open_connection_count(),
            0,
            "the dead connection still counts"
        );
        reactor.reap_finished();
        assert!(reactor.clients.is_empty());
    }

    /// `--max-connections` counts the connections still open, not those that closed this turn
    /// and wait in the slab for the end of the batch.
    #[test]
    fn connections_closed_this_turn_do_not_count_against_the_limit() {
        let (mut reactor, _clients, _now) = reactor_with_connections(3);
        assert_eq!(reactor.open_connection_count(), 3);
        let key = reactor.clients.iter().next().unwrap().0;
        reactor.clients[key].conn.close(EndCause::Error, "test");
        reactor.settle(key, false);
        assert_eq!(reactor.open_connection_count(), 2);
        reactor.reap_finished();
        assert_eq!(reactor.open_connection_count(), 2);
    }
}
