//! The event loop: one thread, one `mio::Poll`, every connection.
//!
//! ## How a turn goes
//!
//! [`Reactor::run`] repeats one turn, and the whole of it is on one screen:
//!
//! 1. **Wait.** `poll` blocks until some socket is ready, or until the nearest timer — or not at
//!    all if a connection stopped on its budget last turn (the *still-ready* queue).
//! 2. **Dispatch.** Each event names a token. Listener tokens accept new connections; connection
//!    tokens drive that connection's state machine ([`Connection::drive`]).
//! 3. **Still ready.** Connections (and listeners) that stopped on a fairness budget are served
//!    again. Under edge triggering no new event will come for bytes that already arrived, so a
//!    budgeted connection must remember that it has work left.
//! 4. **Timers.** Deadlines that have passed (the end of a lingering close) are acted on.
//! 5. **Reap.** Connections that finished during the turn leave the slab *now*, after the batch,
//!    not in the middle of it: the slab reuses keys, and a key freed and reused mid-batch would
//!    let a later event of the old connection reach the new one.
//!
//! ## Tokens
//!
//! A connection's token is its slab key, so finding the connection for an event is an index.
//! Listeners sit at the top of the token space, from [`LISTENER_TOKEN_BASE`] up, where no slab key
//! will ever reach.

pub mod connection;
pub mod listener;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock::{Clock, Now};
use crate::protocol::{Limits, ProtocolKind, Session};

pub use connection::{Connection, SharedBuffers, Verdict};
pub use listener::{bind_services, BindError, BoundListener, Listening};

/// Tokens at and above this value are listeners (listener `i` is `LISTENER_TOKEN_BASE + i`).
pub const LISTENER_TOKEN_BASE: usize = usize::MAX / 2;

/// Most events taken from one `poll` call. Events beyond it stay queued in the kernel for the
/// next turn, so this bounds the turn's length, not what can be handled.
pub const EVENTS_PER_POLL: usize = 1024;

/// Most connections accepted from one listener per turn, so a connect storm cannot keep the loop
/// from serving the clients it already has. A listener that hits it goes on the still-ready queue.
pub const MAX_ACCEPTS_PER_TURN: usize = 256;

/// Default for `--output-limit`: 1 MiB of queued replies per connection.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1024 * 1024;

/// What the reactor needs from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Limits every protocol session gets.
    pub limits: Limits,
    /// `--output-limit`: queued reply bytes past which a connection stops being read.
    pub output_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }
}

/// A listening socket and the protocol its connections speak.
#[derive(Debug)]
struct Listener {
    socket: TcpListener,
    protocol: ProtocolKind,
    local: SocketAddr,
    /// Whether it is in the still-ready queue (it stopped on the accept budget).
    queued: bool,
}

/// A deadline the loop must wake for: when, and which connection (key and serial number, so a
/// timer outliving its connection cannot fire on the slab key's next tenant).
type Timer = Reverse<(Instant, usize, u64)>;

/// The single-threaded reactor serving every bound service.
#[derive(Debug)]
pub struct Reactor {
    poll: Poll,
    listeners: Vec<Listener>,
    connections: Slab<Connection>,
    /// Buffers lent to whichever connection is being driven.
    shared: SharedBuffers,
    config: Config,
    clock: Clock,
    /// Tokens to serve again before blocking: they stopped on a budget with work left.
    still_ready: Vec<Token>,
    /// Keys of connections that finished this turn, removed from the slab after the batch.
    finished: Vec<usize>,
    /// Pending deadlines, earliest first.
    timers: BinaryHeap<Timer>,
    /// Serial number for the next accepted connection.
    next_connection_id: u64,
}

impl Reactor {
    /// A reactor serving `listeners`. Nothing is served until [`Reactor::run`].
    pub fn new(listeners: Vec<BoundListener>, config: Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(index, bound)| {
                let mut socket = TcpListener::from_std(bound.socket);
                poll.registry().register(
                    &mut socket,
                    Token(LISTENER_TOKEN_BASE + index),
                    Interest::READABLE,
                )?;
                debug!(
                    "listener {index}: {} on tcp {}",
                    bound.protocol, bound.local
                );
                Ok(Listener {
                    socket,
                    protocol: bound.protocol,
                    local: bound.local,
                    queued: false,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Reactor {
            poll,
            listeners,
            connections: Slab::new(),
            shared: SharedBuffers::new(config.output_limit),
            config,
            clock: Clock::default(),
            still_ready: Vec::new(),
            finished: Vec::new(),
            timers: BinaryHeap::new(),
            next_connection_id: 1,
        })
    }

    /// How many client connections are open.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Serves until an unrecoverable poller error.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = self.poll_timeout();
            trace!("poll: waiting ({})", describe_timeout(timeout));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = self.clock.now();
            for event in events.iter() {
                trace!(
                    "event: token {} {}{}{}",
                    event.token().0,
                    if event.is_readable() { "readable " } else { "" },
                    if event.is_writable() { "writable " } else { "" },
                    if event.is_read_closed() || event.is_write_closed() {
                        "closed"
                    } else {
                        ""
                    },
                );
                if event.is_read_closed() || event.is_error() {
                    if let Some(connection) = self.connections.get_mut(event.token().0) {
                        connection.note_peer_closing();
                    }
                }
                self.dispatch(event.token(), &now);
            }
            self.serve_still_ready(&now);
            self.fire_timers(&now);
            self.reap_finished();
        }
    }

    /// Sends one token's readiness to its listener or connection.
    fn dispatch(&mut self, token: Token, now: &Now) {
        if token.0 >= LISTENER_TOKEN_BASE {
            self.accept_ready(token.0 - LISTENER_TOKEN_BASE);
        } else {
            self.drive_connection(token.0, now);
        }
    }

    /// Accepts until the listener would block or the turn's accept budget is spent.
    fn accept_ready(&mut self, index: usize) {
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let listener = &mut self.listeners[index];
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    let protocol = listener.protocol;
                    self.open_connection(stream, peer, protocol);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The client gave up before we got to it, or a signal interrupted us: next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    debug!("accept on {}: {e}", listener.local);
                }
                Err(e) => {
                    warn!("accept on {} failed: {e}", listener.local);
                    return;
                }
            }
        }
        let listener = &mut self.listeners[index];
        if !listener.queued {
            trace!("listener {index}: accept budget spent; more clients may be waiting");
            listener.queued = true;
            self.still_ready.push(Token(LISTENER_TOKEN_BASE + index));
        }
    }

    fn open_connection(&mut self, mut stream: TcpStream, peer: SocketAddr, protocol: ProtocolKind) {
        let id = self.next_connection_id;
        self.next_connection_id += 1;
        // Replies are written whole, once per request: Nagle's delay would only add latency.
        if let Err(e) = stream.set_nodelay(true) {
            debug!("conn #{id}: cannot set TCP_NODELAY: {e}");
        }
        let Some(session) = Session::new(protocol, self.config.limits) else {
            warn!("conn #{id}: {protocol} is not served by this build; closing");
            return;
        };
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            warn!("conn #{id}: cannot register with the poller: {e}; closing");
            return;
        }
        trace!("accept: conn #{id} from {peer} ({protocol}), token {key}");
        entry.insert(Connection::new(id, stream, session));
    }

    /// Drives one connection and applies its verdict: requeue, timer, interest, or removal.
    fn drive_connection(&mut self, key: usize, now: &Now) {
        let Some(connection) = self.connections.get_mut(key) else {
            return; // A stale token: nothing lives there any more.
        };
        if connection.is_closed() {
            return; // Finished earlier this turn; reaped after the batch.
        }
        let verdict = connection.drive(&mut self.shared, now);
        if connection.is_closed() {
            self.finished.push(key);
            return;
        }
        if verdict.still_ready && !connection.queued {
            connection.queued = true;
            self.still_ready.push(Token(key));
        }
        if let Some(at) = verdict.wake_at {
            self.timers.push(Reverse((at, key, connection.id)));
        }
        let wanted = connection.wanted_interest(self.config.output_limit);
        if let Some(interest) = wanted.filter(|&i| i != connection.registered) {
            trace!("conn #{}: interest now {interest:?}", connection.id);
            match self
                .poll
                .registry()
                .reregister(&mut connection.stream, Token(key), interest)
            {
                Ok(()) => connection.registered = interest,
                Err(e) => {
                    warn!(
                        "conn #{}: cannot change poller interest: {e}",
                        connection.id
                    );
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
            if token.0 >= LISTENER_TOKEN_BASE {
                self.listeners[token.0 - LISTENER_TOKEN_BASE].queued = false;
            } else if let Some(connection) = self.connections.get_mut(token.0) {
                connection.queued = false;
            }
            self.dispatch(token, now);
        }
        if self.still_ready.is_empty() {
            self.still_ready = queue; // keep the allocation
        }
    }

    /// Acts on every deadline that has passed.
    fn fire_timers(&mut self, now: &Now) {
        while let Some(&Reverse((at, key, id))) = self.timers.peek() {
            if at > now.instant {
                break;
            }
            self.timers.pop();
            if let Some(connection) = self.connections.get_mut(key) {
                if connection.id == id && !connection.is_closed() {
                    connection.on_deadline(now);
                    if connection.is_closed() {
                        self.finished.push(key);
                    }
                }
            }
        }
    }

    /// Removes the connections that finished this turn. Dropping the socket closes it, which
    /// also removes it from the epoll set, so no `deregister` call is needed.
    fn reap_finished(&mut self) {
        for key in self.finished.drain(..) {
            let connection = self.connections.remove(key);
            if connection.queued {
                self.still_ready.retain(|&token| token != Token(key));
            }
            trace!(
                "conn #{}: removed (token {key} is free again)",
                connection.id
            );
        }
    }

    /// Zero if work is left over from the last turn; otherwise until the nearest deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.still_ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let Reverse((at, _, _)) = self.timers.peek()?;
        Some(at.saturating_duration_since(Instant::now()))
    }
}

/// Logs the fd limit decision the way an operator wants to read it.
pub fn log_fd_limit(result: &io::Result<crate::sys::FdLimit>) {
    match result {
        Ok(limit) if limit.now > limit.before => info!(
            "open-file limit raised from {} to {} (the hard limit)",
            limit.before, limit.now
        ),
        Ok(limit) => info!("open-file limit is {}", limit.now),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

fn describe_timeout(timeout: Option<Duration>) -> String {
    match timeout {
        None => "no deadline".to_string(),
        Some(Duration::ZERO) => "not at all: connections still have work".to_string(),
        Some(d) => format!("at most {} ms", d.as_millis()),
    }
}
