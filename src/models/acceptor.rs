//! The blocking models' acceptor: one small mio poll over the listeners, handing out accepted
//! connections one at a time.
//!
//! Several services need several listening sockets, and a blocking `accept` can wait on only
//! one; a small poll lets one thread wait on all of them, as Python's `socketserver` does with
//! `selectors`.
//!
//! mio's registrations are edge-triggered: a listener is reported once when clients arrive, not
//! again while some still wait. So each listener remembers whether it may have more (`ready`), and
//! only an `accept` that answers `WouldBlock` clears that. Running out of file descriptors is the
//! case that matters: `accept` fails with EMFILE and the client stays in the backlog, where no new
//! edge will ever announce it. The acceptor then spends its reserve descriptor
//! ([`ReserveFd::shed_one`]) to accept and close each waiting client, until the backlog is empty;
//! when even that is impossible (or the kernel is out of memory) the listener rests for
//! [`ACCEPT_PAUSE`] and is tried again — a timed retry, never a wait for an edge.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use mio::{Events, Poll, Token};

use crate::net::reserve::{is_out_of_descriptors, is_out_of_memory, ACCEPT_PAUSE};
use crate::net::{BlockingStream, BoundListener, Peer, ReserveFd, Shed, Stream, StreamListener};
use crate::protocol::ProtocolKind;
use crate::service::Address;

use super::Accepted;

/// A listening socket and what the acceptor knows about it.
#[derive(Debug)]
struct Listener {
    socket: StreamListener,
    protocol: ProtocolKind,
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

/// Accepts connections from every listener, one at a time, for the blocking models.
#[derive(Debug)]
pub struct Acceptor {
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    /// The listener to try first next time, so one busy service cannot starve another.
    next: usize,
    /// The descriptor spent to shed a client when the process is out of them.
    reserve: ReserveFd,
}

impl Acceptor {
    /// An acceptor over `listeners`.
    pub fn new(listeners: Vec<BoundListener>) -> io::Result<Acceptor> {
        let poll = Poll::new()?;
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(index, bound)| {
                let (protocol, local) = (bound.protocol, bound.local.clone());
                Ok(Listener {
                    socket: bound.register(poll.registry(), Token(index))?,
                    protocol,
                    local,
                    // Clients may have connected before the registration.
                    ready: true,
                    paused_until: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Acceptor {
            poll,
            events: Events::with_capacity(listeners.len().max(1)),
            listeners,
            next: 0,
            reserve: ReserveFd::new(),
        })
    }

    /// The next connection, waiting at most `timeout` (`None`: for ever). `Ok(None)` if the
    /// timeout passed first.
    pub fn accept_next(&mut self, timeout: Option<Duration>) -> io::Result<Option<Accepted>> {
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        loop {
            let now = Instant::now();
            for listener in &mut self.listeners {
                if listener.paused_until.is_some_and(|until| until <= now) {
                    listener.paused_until = None; // `ready` is still set: try it again.
                }
            }
            if let Some(accepted) = self.accept_one() {
                return Ok(Some(accepted));
            }
            if deadline.is_some_and(|deadline| deadline <= now) {
                return Ok(None);
            }
            // Until the caller's deadline or the end of a listener's rest, the earlier.
            let resume = self.listeners.iter().filter_map(|l| l.paused_until).min();
            let wait = [deadline, resume]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            match self.poll.poll(&mut self.events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in self.events.iter() {
                if let Some(listener) = self.listeners.get_mut(event.token().0) {
                    listener.ready = true;
                }
            }
        }
    }

    /// Accepts one connection from the first listener, in round-robin order, that has one.
    fn accept_one(&mut self) -> Option<Accepted> {
        let count = self.listeners.len();
        for _ in 0..count {
            let index = self.next;
            self.next = (index + 1) % count;
            let listener = &mut self.listeners[index];
            while listener.can_accept() {
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
                        peer,
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
