//! `tls:` services in the loop: where a connection's TLS session starts, how its handshake ends
//! and its protocol begins, and how `SIGHUP` swaps the certificate without stopping the loop.
//!
//! * **A handshake is a phase, not a wait.** An accepted `tls:` connection gets its session and
//!   [`Handler::Handshake`]; each readiness event moves the handshake on
//!   ([`Connection::drive_handshake`](super::connection::Connection::drive_handshake)), and
//!   nothing of its protocol exists yet — a chat member joins only once the handshake is
//!   complete, under its client certificate's name when it has one. A handshake not complete
//!   within [`handshake_timeout`] is closed by one more deadline in the timer heap
//!   (`Wake::Handshake`), and a failed one is closed at once; both quietly, logged at debug.
//!   Until then it counts against `--max-connections` like any other connection.
//! * **After a PROXY header.** With `--proxy-protocol` the header is read first, in plaintext
//!   (`reactor::proxy`); the bytes that followed it in the same read are the start of the
//!   ClientHello, and go into the session before the socket is read again.
//! * **Reloads never touch the loop's time.** At `SIGHUP` the files are read by a helper thread
//!   (disk I/O is never done in a turn, however small the files); the new configuration comes
//!   back through a channel and a [`Waker`], and replaces the old one whole — new handshakes
//!   use it, open sessions keep theirs (each holds an `Arc` of the configuration it started
//!   with). A bad file leaves the old configuration in place and is one error line.
//!
//! With `RUST_LOG=oneloop=trace`, one handshake over TLS 1.3 reads (the same exchange, from a
//! real run, is in `docs/ARCHITECTURE.md`):
//!
//! ```text
//! accept: conn #1 from 127.0.0.1:40000 for echo; token 0, registered for READABLE
//! conn #1: TLS: waiting for its handshake (at most 10 s) before any byte of echo
//! conn #1: read 1462 bytes of TLS records, fewer than asked: drained
//! conn #1: wrote 1843 bytes of TLS records
//! conn #1: read 140 bytes of TLS records, fewer than asked: drained
//! conn #1: wrote 184 bytes of TLS records
//! conn #1: TLS handshake complete: TLSv1_3, TLS13_AES_256_GCM_SHA384; echo starts
//! conn #1: 14 bytes decrypted
//! ```

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::Waker;
use rustls::{ServerConfig, ServerConnection};

use crate::clock::Now;
use crate::net::tls::{common_name, ServerTls, TlsFileError, HANDSHAKE_TIMEOUT};
use crate::net::Peer;
use crate::options::ServeOptions;
use crate::protocol::room::is_valid_name;

use super::connection::HandshakeStep;
use super::counters::EndCause;
use super::handler::Handler;
use super::timers::Wake;
use super::Reactor;

/// How long a reload may read before the next `SIGHUP` stops waiting for it.
const RELOAD_STUCK_AFTER: Duration = Duration::from_secs(30);

/// How long a handshake may take: the contract's 10 s, or `--idle-timeout` if shorter.
pub(super) fn handshake_timeout(options: &ServeOptions) -> Duration {
    options
        .idle_timeout
        .map_or(HANDSHAKE_TIMEOUT, |idle| idle.min(HANDSHAKE_TIMEOUT))
}

/// What one reload thread read: its number (in the order reloads started), and the new
/// configuration or why there is none.
struct Reloaded {
    number: u64,
    result: Result<Arc<ServerConfig>, TlsFileError>,
}

/// What the reactor keeps for its `tls:` services: the configuration new handshakes take, and
/// the way reloads come back.
pub(super) struct TlsServices {
    /// The files, and the configuration made from them last.
    current: ServerTls,
    /// Where reload threads send what they read.
    results: Receiver<Reloaded>,
    sender: Sender<Reloaded>,
    /// The number of the last reload started, and of the last one whose result was taken: a
    /// read that was stuck and finishes after a newer one must not put older files back.
    started: u64,
    taken: u64,
    /// Rung by a reload thread when its result is in the channel (the loop's one waker).
    waker: Arc<Waker>,
    /// When the reload thread now running started; another `SIGHUP` meanwhile means one more
    /// read after it.
    reloading: Option<Instant>,
    /// A `SIGHUP` came while reading: read again once this read is in.
    again: bool,
}

impl TlsServices {
    /// The `tls:` services' state, from the configuration read at start.
    /// The loop's waker (shared with the upload I/O threads) tells it a reload is read.
    pub(super) fn new(current: ServerTls, waker: Arc<Waker>) -> Self {
        let (sender, results) = mpsc::channel();
        TlsServices {
            current,
            results,
            sender,
            waker,
            reloading: None,
            again: false,
            started: 0,
            taken: 0,
        }
    }

    /// Starts a thread that reads the files again — or, if one is still reading, asks for
    /// another read after it. A read that has not finished in [`RELOAD_STUCK_AFTER`] (a file
    /// that blocks, such as a FIFO or a hung network mount) no longer holds the next ones up:
    /// its thread is left to it, and its result, if it ever comes, is used only if no newer
    /// reload's has been.
    fn start_reload(&mut self, now: Instant) {
        if let Some(started) = self.reloading {
            if now.duration_since(started) < RELOAD_STUCK_AFTER {
                warn!(
                    "SIGHUP: the previous reload is still reading the files; one more follows it"
                );
                self.again = true;
                return;
            }
            error!(
                "SIGHUP: the previous reload has not finished in {} s (a file that blocks?); \
                 starting another",
                RELOAD_STUCK_AFTER.as_secs()
            );
        }
        self.reloading = Some(now);
        self.started += 1;
        let number = self.started;
        let files = self.current.files.clone();
        let (sender, waker) = (self.sender.clone(), Arc::clone(&self.waker));
        let spawned = std::thread::Builder::new()
            .name("oneloop-tls-reload".into())
            .spawn(move || {
                // A panic in the reading must not leave the loop waiting for an answer forever.
                let result = std::panic::catch_unwind(|| files.load()).unwrap_or_else(|_| {
                    Err(TlsFileError {
                        path: files.cert.clone(),
                        reason: "reading the TLS files panicked".into(),
                    })
                });
                let _ = sender.send(Reloaded { number, result });
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            self.reloading = None;
            error!("SIGHUP: cannot start reading the TLS files: {e}; keeping the current ones");
        }
    }
}

impl Reactor {
    /// Starts the TLS session of connection `key` (already a [`Handler::Handshake`]), with
    /// `early`, ciphertext already read, and sets its handshake deadline.
    pub(super) fn start_handshake(&mut self, key: usize, endpoint: usize, early: &[u8], now: &Now) {
        let timeout = handshake_timeout(&self.config);
        let config = self.tls.as_ref().map(|tls| Arc::clone(&tls.current.config));
        let client = &mut self.clients[key];
        let id = client.conn.id;
        let session = match config.map(ServerConnection::new) {
            Some(Ok(session)) => session,
            failed => {
                match failed {
                    Some(Err(e)) => warn!("conn #{id}: cannot start a TLS session: {e}; closing"),
                    _ => warn!("conn #{id}: no TLS configuration for a tls: service; closing"),
                }
                client.conn.close(EndCause::TlsHandshake, "no TLS session");
                return self.settle(key, false);
            }
        };
        trace!(
            "conn #{id}: TLS: waiting for its handshake (at most {} s) before any byte of {}",
            timeout.as_secs_f64(),
            self.endpoints[endpoint].protocol
        );
        if client.conn.start_tls(session, early) {
            let deadline = now.instant + timeout;
            self.timers
                .push(std::cmp::Reverse((deadline, Wake::Handshake { key, id })));
        } else {
            self.settle(key, false); // Not TLS: closed, reaped after the batch.
        }
    }

    /// Drives connection `key`'s handshake: on to its protocol once it is complete.
    pub(super) fn drive_handshake(&mut self, key: usize, now: &Now) {
        let client = &mut self.clients[key];
        let step = client.conn.drive_handshake();
        client.conn.note_activity(now);
        match step {
            HandshakeStep::Pending | HandshakeStep::Failed => self.settle(key, false),
            HandshakeStep::BudgetSpent => self.settle(key, true),
            HandshakeStep::Done => self.finish_handshake(key, now),
        }
    }

    /// The handshake is complete: the client is named (by its certificate's common name, when
    /// it presented one that is a valid chat name), and its protocol starts.
    fn finish_handshake(&mut self, key: usize, now: &Now) {
        let client = &mut self.clients[key];
        let Handler::Handshake(waiting) = &client.handler else {
            return;
        };
        let (endpoint, peer) = (waiting.endpoint, waiting.peer);
        let Some(session) = client.conn.tls().map(|tls| tls.session()) else {
            return;
        };
        let certified = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(common_name);
        if log::log_enabled!(log::Level::Trace) {
            let version = session.protocol_version();
            let suite = session.negotiated_cipher_suite().map(|s| s.suite());
            trace!(
                "conn #{}: TLS handshake complete: {}, {}{}; {} starts",
                client.conn.id,
                version.map_or_else(|| "?".to_owned(), |v| format!("{v:?}")),
                suite.map_or_else(|| "?".to_owned(), |s| format!("{s:?}")),
                certified
                    .as_deref()
                    .map_or(String::new(), |cn| format!(", client certificate CN={cn}")),
                self.endpoints[endpoint].protocol
            );
        }
        if let (Some(record), Some(cn)) = (client.conn.access_mut(), certified.as_ref()) {
            record.name = Some(cn.clone());
        }
        let name = name_of(&peer, certified.as_deref());
        self.start_protocol(key, endpoint, &name, None, now);
    }

    /// `SIGHUP`: the certificate, key and client CA are read again, off the loop.
    pub(super) fn reload_tls(&mut self) {
        match self.tls.as_mut() {
            Some(tls) => {
                info!("SIGHUP: reading the TLS certificate, key and client CA again");
                tls.start_reload(Instant::now());
            }
            None => debug!("SIGHUP: no tls: service; ignored"),
        }
    }

    /// A reload thread is done: its configuration replaces the current one, or its error is
    /// logged and the current one stays.
    pub(super) fn on_tls_reloaded(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        while let Ok(Reloaded { number, result }) = tls.results.try_recv() {
            if number == tls.started {
                tls.reloading = None; // The newest read is in; none is running any more.
            }
            if number <= tls.taken {
                warn!("a TLS reload stuck earlier has finished; newer files are in use: ignored");
                continue;
            }
            tls.taken = number;
            match result {
                Ok(config) => {
                    tls.current.config = config;
                    info!("TLS files reloaded: new handshakes use them");
                }
                Err(e) => error!(
                    "TLS reload failed: {e}; keeping the certificate, key and client CA in use"
                ),
            }
        }
        if tls.reloading.is_none() && std::mem::take(&mut tls.again) {
            tls.start_reload(Instant::now());
        }
    }
}

/// The name a client starts with: its certificate's common name, when it is one a chat member
/// may take, else its address.
fn name_of(peer: &Peer, certified: Option<&str>) -> String {
    match certified {
        Some(name) if is_valid_name(name) => name.to_owned(),
        _ => peer.to_string(),
    }
}
