//! The blocking models' acceptor: one small mio poll over the listeners, the stop signals and a
//! waker, answering "what happened next?" one thing at a time.
//!
//! Several services need several listening sockets, and a blocking `accept` can wait on only
//! one; a small poll lets one thread wait on all of them, as Python's `socketserver` does with
//! `selectors`. The same poll watches the signal pipe (SIGINT and SIGTERM, written by the signal
//! handler and read here, at a safe point) and a [`Waker`] the serving threads ring when the
//! last connection closes, so the thread that accepts is also the one that shuts down.
//!
//! mio's registrations are edge-triggered: a listener is reported once when clients arrive, not
//! again while some still wait. So each listener remembers whether it may have more (`ready`), and
//! only an `accept` that answers `WouldBlock` clears that. Running out of file descriptors is the
//! case that matters: `accept` fails with EMFILE and the client stays in the backlog, where no new
//! edge will ever announce it. The acceptor then spends its reserve descriptor
//! ([`ReserveFd::shed_one`]) to accept and close each waiting client, until the backlog is empty;
//! when even that is impossible (or the kernel is out of memory) the listener rests for
//! [`ACCEPT_PAUSE`] and is tried again — a timed retry, never a wait for an edge.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use crate::net::reserve::{is_out_of_descriptors, is_out_of_memory, ACCEPT_PAUSE};
use crate::net::systemd::Notifier;
use crate::net::{BlockingStream, BoundListener, Peer, ReserveFd, Shed, Stream, StreamListener};
use crate::service::Address;
use crate::service::ProtocolKind;

use super::Accepted;

/// The token of the signal pipe.
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// The token of the [`Waker`].
const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// Most accept attempts between two looks at the poll, so that a connect storm cannot keep the
/// acceptor from noticing a signal (the reactor's `MAX_ACCEPTS_PER_TURN`, for the same reason).
pub(crate) const ACCEPTS_PER_POLL: usize = 64;

/// What [`Acceptor::accept_next`] and [`Acceptor::wait`] report.
#[derive(Debug)]
pub(crate) enum Next {
    /// A new connection.
    Accepted(Accepted),
    /// A signal arrived (one of those the [`Signals`] watch).
    Signal(i32),
    /// The [`Waker`] was rung.
    Woken,
    /// The timeout passed first.
    TimedOut,
}

/// A listening socket and what the acceptor knows about it.
#[derive(Debug)]
struct Listener {
    socket: StreamListener,
    protocol: ProtocolKind,
    /// Its index among the listeners: which service its connections belong to.
    service: usize,
    local: Address,
    /// Clients may be waiting: set by a readiness edge, cleared only by `WouldBlock` (or an empty
    /// backlog found while shedding).
    ready: bool,
    /// Resting until then: out of descriptors with no reserve to spend, or out of memory.
    paused_until: Option<Instant>,
}

/// What one accept attempt on a listener came to.
enum Attempt {
    /// A connection to hand out.
    Accepted(Accepted),
    /// Nothing to hand out, but the listener may have more: try it again.
    Again,
    /// The backlog is empty, or the listener is resting: go on to the next one.
    Done,
}

/// Accepts connections from every listener, one at a time, for the blocking models, and reports
/// signals and wake-ups in between.
pub(crate) struct Acceptor {
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    /// The listener to try first next time, so one busy service cannot starve another.
    next: usize,
    /// Accept attempts since the poll was last consulted (see [`ACCEPTS_PER_POLL`]).
    attempts_since_poll: usize,
    /// The descriptor spent to shed a client when the process is out of them.
    reserve: ReserveFd,
    signals: Signals,
    /// Signals read from the pipe and not yet reported.
    pending_signals: VecDeque<i32>,
    /// Whether SIGHUP is reported ([`hear_hangups`](Acceptor::hear_hangups)); else ignored.
    hangups: bool,
    /// Whether the waker rang and that is not reported yet.
    woken: bool,
    /// systemd's notifications (a no-op outside `Type=notify`): `STOPPING=1` at
    /// [`stop_accepting`](Acceptor::stop_accepting), and the watchdog below.
    notifier: Arc<Notifier>,
    /// When `WATCHDOG_USEC` is set: how often to ping, and when next.
    watchdog: Option<(Duration, Instant)>,
}

impl Acceptor {
    /// An acceptor over `listeners`, also watching `signals`.
    pub(crate) fn new(listeners: Vec<BoundListener>, mut signals: Signals) -> io::Result<Acceptor> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(index, bound)| {
                let (protocol, local) = (bound.protocol, bound.local.clone());
                Ok(Listener {
                    socket: bound.register(poll.registry(), Token(index))?,
                    protocol,
                    service: index,
                    local,
                    // Clients may have connected before the registration.
                    ready: true,
                    paused_until: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Acceptor {
            poll,
            events: Events::with_capacity(listeners.len() + 2),
            listeners,
            next: 0,
            attempts_since_poll: 0,
            reserve: ReserveFd::new(),
            signals,
            pending_signals: VecDeque::new(),
            hangups: false,
            woken: false,
            notifier: Arc::new(Notifier::disabled()),
            watchdog: None,
        })
    }

    /// Reports to systemd through `notifier`: `STOPPING=1` once the graceful shutdown stops
    /// accepting, and, every `watchdog_every` (half of `WATCHDOG_USEC`), `WATCHDOG=1`.
    ///
    /// The pings come from this thread, the one that accepts and watches the signals in every
    /// blocking model: while it turns, clients are admitted and a SIGTERM is heard. A worker
    /// stuck with one client does not stop them, and need not: the other workers still serve
    /// (the reactor pings from its one loop, where a stuck turn stops everything).
    pub(crate) fn notify_systemd(
        &mut self,
        notifier: Arc<Notifier>,
        watchdog_every: Option<Duration>,
    ) {
        self.notifier = notifier;
        self.watchdog = watchdog_every.map(|every| (every, Instant::now() + every));
    }

    /// Reports SIGHUP as a [`Next::Signal`], for a model that reloads the TLS files at it
    /// (threaded and pool). Without this it is ignored: it must never end the process.
    pub(crate) fn hear_hangups(&mut self) {
        self.hangups = true;
    }

    /// A waker that makes a waiting [`Acceptor::accept_next`] or [`Acceptor::wait`] return
    /// [`Next::Woken`], from any thread. A poll has one waker: call this once.
    pub(crate) fn waker(&self) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(self.poll.registry(), WAKER_TOKEN)?))
    }

    /// The next connection, signal or wake-up, waiting at most `timeout` (`None`: for ever).
    pub(crate) fn accept_next(&mut self, timeout: Option<Duration>) -> io::Result<Next> {
        self.next_event(true, timeout)
    }

    /// The next signal or wake-up, without accepting (clients wait in the backlog meanwhile),
    /// waiting at most `timeout` (`None`: for ever). Never [`Next::Accepted`].
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Next> {
        self.next_event(false, timeout)
    }

    /// Closes every listener: from now on clients are refused by the kernel.
    pub(crate) fn stop_accepting(&mut self) {
        self.notifier.stopping();
        // From here the shutdown is bounded by --shutdown-timeout, and systemd's stop timeout
        // governs: no more pings.
        self.watchdog = None;
        for listener in self.listeners.drain(..) {
            debug!("listener on {}: closed", listener.local);
        }
    }

    fn next_event(&mut self, accepting: bool, timeout: Option<Duration>) -> io::Result<Next> {
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        loop {
            if let Some(signal) = self.pending_signals.pop_front() {
                return Ok(Next::Signal(signal));
            }
            if std::mem::take(&mut self.woken) {
                return Ok(Next::Woken);
            }
            let now = Instant::now();
            if let Some((every, due)) = &mut self.watchdog {
                if *due <= now {
                    self.notifier.watchdog();
                    *due = now + *every;
                }
            }
            for listener in &mut self.listeners {
                if listener.paused_until.is_some_and(|until| until <= now) {
                    listener.paused_until = None; // `ready` is still set: try it again.
                }
            }
            if accepting {
                if let Some(accepted) = self.accept_one() {
                    return Ok(Next::Accepted(accepted));
                }
            }
            let wait = if accepting && self.listeners.iter().any(Listener::can_accept) {
                Some(Duration::ZERO) // Clients are waiting: only a look at signals, then on.
            } else if deadline.is_some_and(|deadline| deadline <= now) {
                return Ok(Next::TimedOut);
            } else {
                // Until the caller's deadline, the end of a listener's rest or the next
                // watchdog ping, the earliest.
                let resume = self.listeners.iter().filter_map(|l| l.paused_until).min();
                let resume = resume.filter(|_| accepting);
                let ping = self.watchdog.map(|(_, due)| due);
                [deadline, resume, ping]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| at.saturating_duration_since(now))
            };
            self.attempts_since_poll = 0;
            match self.poll.poll(&mut self.events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in self.events.iter() {
                match event.token() {
                    // SIGHUP reloads the TLS files: reported only to the models that serve tls:
                    // and asked for it; the others ignore it.
                    SIGNAL_TOKEN => {
                        let hangups = self.hangups;
                        self.pending_signals.extend(
                            self.signals
                                .pending()
                                .filter(|&signal| signal != signal_hook::consts::SIGHUP || hangups),
                        );
                    }
                    WAKER_TOKEN => self.woken = true,
                    Token(index) => {
                        if let Some(listener) = self.listeners.get_mut(index) {
                            listener.ready = true;
                        }
                    }
                }
            }
        }
    }

    /// Accepts one connection from the first listener, in round-robin order, that has one, within
    /// the [`ACCEPTS_PER_POLL`] budget.
    fn accept_one(&mut self) -> Option<Accepted> {
        let count = self.listeners.len();
        for _ in 0..count {
            let index = self.next;
            self.next = (index + 1) % count;
            let listener = &mut self.listeners[index];
            while listener.can_accept() && self.attempts_since_poll < ACCEPTS_PER_POLL {
                self.attempts_since_poll += 1;
                match listener.attempt(&mut self.reserve) {
                    Attempt::Accepted(accepted) => return Some(accepted),
                    Attempt::Again => {}
                    Attempt::Done => break,
                }
            }
        }
        None
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("listeners", &self.listeners)
            .field("pending_signals", &self.pending_signals)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Whether an accept may find a client now.
    fn can_accept(&self) -> bool {
        self.ready && self.paused_until.is_none()
    }

    /// One `accept`, and what its outcome means for this listener.
    fn attempt(&mut self, reserve: &mut ReserveFd) -> Attempt {
        match self.socket.accept() {
            Ok((stream, peer)) => match blocking(stream, peer) {
                Some(stream) => {
                    trace!("accept: {peer} ({})", self.protocol);
                    Attempt::Accepted(Accepted {
                        stream,
                        protocol: self.protocol,
                        service: self.service,
                        peer,
                        tls: self.local.is_tls(),
                    })
                }
                None => Attempt::Again,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Attempt::Done
            }
            Err(e) if is_out_of_descriptors(&e) => {
                match reserve.shed_one(&e, || self.socket.accept()) {
                    Shed::ClosedOne => Attempt::Again,
                    Shed::BacklogEmpty => {
                        self.ready = false;
                        Attempt::Done
                    }
                    Shed::NoReserve => self.pause(&e),
                }
            }
            Err(e) if is_out_of_memory(&e) => self.pause(&e),
            // The client gave up before we got to it (ECONNABORTED), a signal interrupted the
            // call, or an error about that one connection (EPROTO, ENETDOWN...): accept(2) says
            // to treat these like EAGAIN and carry on with the next client.
            Err(e) => {
                debug!("accept on {}: {e}", self.local);
                Attempt::Again
            }
        }
    }

    /// Rests the listener for [`ACCEPT_PAUSE`]; clients stay queued until it is tried again.
    fn pause(&mut self, error: &io::Error) -> Attempt {
        warn!(
            "accept on {}: {error}; trying again in {} ms",
            self.local,
            ACCEPT_PAUSE.as_millis()
        );
        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        Attempt::Done
    }
}

/// The accepted socket in blocking mode (with `TCP_NODELAY` on TCP), or `None` (and it is closed) if it
/// cannot be put in blocking mode: that is about this connection, not the server.
fn blocking(stream: Stream, peer: Peer) -> Option<BlockingStream> {
    let stream = match stream.into_blocking() {
        Ok(stream) => stream,
        Err(e) => {
            debug!("{peer}: cannot make the socket blocking: {e}; closing");
            return None;
        }
    };
    // Replies are written whole, once per request: Nagle's delay would only add latency.
    if let Err(e) = stream.set_nodelay() {
        debug!("{peer}: cannot set TCP_NODELAY: {e}");
    }
    Some(stream)
}
