//! The connections a threaded model is serving: the count `--max-connections` limits, and the
//! registry a graceful shutdown goes through to wake every one of them.
//!
//! A serving thread spends most of its life blocked in `read`, and nothing in the process can
//! reach into another thread's system call. What can be reached is the socket: the registry keeps
//! a second handle on each one (an [`Arc`], so no descriptor is duplicated), and at shutdown
//! [`Admission::stop`] calls `shutdown(SHUT_RD)` on each. On Linux a `read` blocked on that socket
//! then returns 0 at once, as if the client had half-closed; the thread flushes what the protocol
//! still holds, writes its last replies, and closes. Together with the stop flag (checked before
//! every `read`, because queued input stays readable after `SHUT_RD`) this is how the blocking
//! models "stop reading" without a poll of their own.
//!
//! [`shut_down`] is the rest of the shutdown for the models whose connections are threads: stop
//! accepting, stop every connection, and wait — at most `--shutdown-timeout`, or until a second
//! signal — for the count to reach zero.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::Waker;
use rustls::ServerConfig;
use signal_hook::consts::SIGHUP;
use slab::Slab;

use crate::net::tls::ServerTls;
use crate::net::{BlockingStream, Peer};
use crate::options::ServeOptions;

use crate::service::ProtocolKind;

use super::acceptor::{Acceptor, Next};
use super::chat::ChatRooms;
use super::conn::Wire;
use super::tls::{handshake, handshake_timeout, TlsSession};
use super::{proxy, refuse, serve_stream, Accepted, Conn, BLOCKING_READ_BYTES};

/// Counts and registers the connections being served.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Connections admitted and not yet closed.
    open: AtomicUsize,
    /// `--max-connections`.
    max: usize,
    /// Set once a graceful shutdown has begun: serving threads stop reading.
    stopping: AtomicBool,
    /// A handle on every admitted connection's socket, for [`Admission::stop`].
    streams: Mutex<Slab<Arc<BlockingStream>>>,
    /// Rung whenever the last open connection closes: the acceptor may be waiting for that.
    waker: Arc<Waker>,
    /// What new TLS handshakes use once a `SIGHUP` has reloaded the files (`None`: the
    /// configuration read at start, `--tls-*` in [`ServeOptions`]).
    tls_config: Mutex<Option<Arc<ServerConfig>>>,
}

impl Admission {
    /// Admits up to `max` connections at once; `waker` is rung each time the count drops to zero.
    pub(crate) fn new(max: usize, waker: Arc<Waker>) -> Admission {
        Admission {
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                max,
                stopping: AtomicBool::new(false),
                streams: Mutex::new(Slab::new()),
                waker,
                tls_config: Mutex::new(None),
            }),
        }
    }

    /// The connection, admitted and registered, or `None` after refusing it (the `error too many
    /// connections` line, then close), as the reactor does.
    pub(crate) fn admit(&self, mut accepted: Accepted) -> Option<Admitted> {
        if self.shared.open.fetch_add(1, Ordering::AcqRel) >= self.shared.max {
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            debug!("{}: too many connections; refusing", accepted.peer);
            refuse(&mut accepted);
            return None;
        }
        let stream = Arc::new(accepted.stream);
        let key = self.shared.streams().insert(Arc::clone(&stream));
        Some(Admitted {
            stream,
            protocol: accepted.protocol,
            service: accepted.service,
            peer: accepted.peer,
            tls: accepted.tls,
            slot: Slot {
                shared: Arc::clone(&self.shared),
                key,
            },
        })
    }

    /// How many admitted connections are still open.
    pub(crate) fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// `SIGHUP`: re-reads `--tls-cert`, `--tls-key` and `--tls-client-ca` (`tls`, from the
    /// options). New handshakes use the new set; open connections keep theirs; a bad file
    /// keeps the whole old set, with one error line. Without TLS services, nothing happens.
    /// The file reads block the accepting thread for as long as they take, as any blocking
    /// model's work does.
    pub(crate) fn reload_tls(&self, tls: Option<&ServerTls>) {
        let Some(tls) = tls else {
            debug!("SIGHUP: no tls: service; ignored");
            return;
        };
        match tls.files.load() {
            Ok(config) => {
                *lock(&self.shared.tls_config) = Some(config);
                info!("TLS files reloaded: new handshakes use them");
            }
            // The reactor's wording (reactor::handshake), so the logs read the same.
            Err(e) => {
                error!("TLS reload failed: {e}; keeping the certificate, key and client CA in use")
            }
        }
    }

    /// Begins a graceful shutdown of every admitted connection: each stops reading (its blocked
    /// `read` returns at once), finishes writing its replies, and closes.
    pub(crate) fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        for (_, stream) in self.shared.streams().iter() {
            // Fails only if the connection is already gone (ENOTCONN): nothing to wake then.
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, Slab<Arc<BlockingStream>>> {
        // The lock guards a slab insert or remove, which cannot leave it half-changed.
        lock(&self.streams)
    }
}

/// Locks `mutex`; each lock here guards one insert, remove or replacement, which a panic
/// cannot leave half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An admitted connection. Dropping it closes the socket, then frees its place in the count.
#[derive(Debug)]
pub(crate) struct Admitted {
    // Field order matters: this handle is dropped before `slot`, whose drop releases the
    // registry's handle — the last one — and so closes the socket before the count goes down.
    stream: Arc<BlockingStream>,
    protocol: ProtocolKind,
    service: usize,
    peer: Peer,
    /// A `tls:` service's connection: the handshake comes first.
    tls: bool,
    slot: Slot,
}

impl Admitted {
    /// Serves the connection to its end — a chat member in its service's room of `rooms`, any
    /// other with [`serve_stream`] — then closes it.
    ///
    /// Under `--proxy-protocol` its PROXY header is read first (the client it names is the peer
    /// from then on; the bytes that followed it are the session's first input), then, on a
    /// `tls:` service, the TLS handshake (see [`super::tls`]).
    pub(crate) fn serve(self, options: &ServeOptions, rooms: &ChatRooms) {
        let stopping = &self.slot.shared.stopping;
        let mut input = [0u8; BLOCKING_READ_BYTES];
        let Some((peer, mut first)) =
            proxy::client(&self.stream, self.peer, options, stopping, &mut input)
        else {
            return;
        };
        let tls = if self.tls {
            let Some(session) = self.handshake(options, &input[..first], peer) else {
                return;
            };
            // What followed the PROXY header was the handshake's.
            first = 0;
            Some(Arc::new(TlsSession::new(Arc::clone(&self.stream), session)))
        } else {
            None
        };
        if let Some(room) = rooms.get(self.service) {
            let name = tls.as_ref().and_then(|session| session.chat_name());
            let name = name.unwrap_or_else(|| peer.to_string());
            let wire = Wire {
                socket: Arc::clone(&self.stream),
                tls,
            };
            return room.serve(&wire, peer, &name, options, stopping, &mut input, first);
        }
        let conn = match &tls {
            Some(session) => Conn::Tls(session),
            None => Conn::Plain(&self.stream),
        };
        serve_stream(
            conn,
            self.protocol,
            peer,
            options,
            stopping,
            &mut input,
            first,
        );
    }

    /// The TLS handshake of a `tls:` service's connection from `peer`; `first`: what followed
    /// its PROXY header. `None`: the connection is to be closed (logged at debug).
    fn handshake(
        &self,
        options: &ServeOptions,
        first: &[u8],
        peer: Peer,
    ) -> Option<rustls::ServerConnection> {
        let reloaded = lock(&self.slot.shared.tls_config).clone();
        let Some(config) = reloaded.or_else(|| Some(Arc::clone(&options.tls.as_ref()?.config)))
        else {
            // `serve` reads the TLS files whenever a tls: service is configured.
            warn!("{peer}: no --tls-cert to serve TLS with; closing");
            return None;
        };
        let timeout = handshake_timeout(options.idle_timeout);
        let stopping = &self.slot.shared.stopping;
        handshake(&self.stream, &config, first, timeout, stopping, peer)
    }

    /// Closes a connection that was never served (it waited in the pool's queue until the
    /// shutdown): its end of stream at once. Nothing was read from it, so nothing is owed to it.
    pub(crate) fn close_unserved(self) {
        debug!("{}: never served; closing for the shutdown", self.peer);
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The client's address, for logs.
    pub(crate) fn peer(&self) -> Peer {
        self.peer
    }
}

/// One admitted connection's place in the count and the registry.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    key: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.shared.streams().remove(self.key));
        if self.shared.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: wake the acceptor, which may be waiting for exactly this.
            if let Err(e) = self.shared.waker.wake() {
                warn!("cannot wake the acceptor: {e}");
            }
        }
    }
}

/// The graceful shutdown of a model whose connections are served by threads, after the first
/// `signal`: stops accepting, stops every connection ([`Admission::stop`]), and waits until they
/// have all closed, `timeout` has passed (connections still busy are then closed by the process's
/// exit), or a second signal arrives. `Ok` in every case: the process exits 0.
pub(crate) fn shut_down(
    acceptor: &mut Acceptor,
    admission: &Admission,
    signal: i32,
    timeout: Duration,
) -> io::Result<()> {
    info!(
        "signal {signal}: shutting down (at most {} s)",
        timeout.as_secs_f64()
    );
    acceptor.stop_accepting();
    admission.stop();
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let open = admission.open();
        if open == 0 {
            info!("shutdown complete");
            return Ok(());
        }
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            warn!("shutdown timeout: closing {open} connections still busy");
            return Ok(());
        }
        match acceptor.wait(left)? {
            // Nothing to reload for: no handshake starts any more.
            Next::Signal(SIGHUP) => debug!("SIGHUP during the shutdown: ignored"),
            Next::Signal(signal) => {
                info!("second signal ({signal}): exiting at once");
                return Ok(());
            }
            Next::Accepted(_) | Next::Woken | Next::TimedOut => {}
        }
    }
}
