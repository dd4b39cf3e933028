//! TLS under `--model threaded` (and `pool`): the handshake on the connection's own thread, then
//! a rustls [`ServerConnection`] between the blocking socket and the protocol.
//!
//! The shape is rustls's `StreamOwned<ServerConnection, TcpStream>` — ciphertext read from the
//! socket into the session, plaintext read out of it; plaintext written into the session,
//! ciphertext written to the socket — with two differences a blocking model needs:
//!
//! * **Shared by two threads.** A chat member's reader thread blocks in `read` while its writer
//!   thread writes the room's lines (see [`super::chat`]), and a graceful shutdown's
//!   `shutdown(SHUT_RD)` must still reach the socket from a third. So the socket stays an
//!   [`Arc`]'d [`BlockingStream`] (the one the shutdown registry holds), and the session sits
//!   behind a [`Mutex`] that is never held across a blocking call: the reader reads ciphertext
//!   into a buffer of its own and only then locks the session to feed it. Ciphertext to send
//!   goes out under a second lock (`outgoing`), taken before the session's, so records reach
//!   the socket in the order they were sealed.
//! * **Timeouts keep what was sealed.** A write whose socket stays full past its send timeout
//!   (the chat writer's [`WRITE_CHECK_INTERVAL`](super::chat::WRITE_CHECK_INTERVAL), the
//!   others' `--idle-timeout`) has already sealed its plaintext into records; what the socket
//!   has not taken stays in `outgoing` and goes first at the next write or
//!   [`flush`](TlsSession::flush). A write that sealed its bytes reports them written.
//!
//! Ends: the peer's close_notify is its end of stream (`read` returns 0, as after a FIN); a
//! close without one is rustls's `UnexpectedEof`, an abrupt end (as a reset). Ours: every
//! orderly end — the lingering close after an error line, the answer to the client's own
//! close_notify, a graceful shutdown — sends close_notify ([`TlsSession::finish`]) before the
//! TCP FIN.
//!
//! The handshake ([`handshake`]) runs on the connection's thread, after a PROXY header if there
//! is one, with its own deadline ([`HANDSHAKE_TIMEOUT`], or `--idle-timeout` if shorter): a slow
//! or failed handshake costs its own thread, never another client's.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;
use rustls::{ServerConfig, ServerConnection};

use crate::net::tls::{common_name, HANDSHAKE_TIMEOUT};
use crate::net::{is_timeout, BlockingStream, Peer};
use crate::protocol::room::is_valid_name;

/// Ciphertext read from the socket at a time. What the session cannot take yet (it has
/// plaintext to give first) waits in the session's `inbound`, usually empty.
const RAW_READ_BYTES: usize = 16 * 1024;

/// How long a handshake may take: [`HANDSHAKE_TIMEOUT`], or `idle_timeout` if shorter.
pub(crate) fn handshake_timeout(idle_timeout: Option<Duration>) -> Duration {
    idle_timeout.map_or(HANDSHAKE_TIMEOUT, |idle| idle.min(HANDSHAKE_TIMEOUT))
}

/// Runs the server side of a TLS handshake on `socket` within `timeout`. `first`: bytes already
/// read (what followed a PROXY header), the start of the ClientHello. `None`: the handshake
/// failed (its alert sent, if rustls had one), timed out, the client left, or the server is
/// stopping — the connection is to be closed without a reply; logged at debug.
pub(crate) fn handshake(
    socket: &BlockingStream,
    config: &Arc<ServerConfig>,
    mut first: &[u8],
    timeout: Duration,
    stopping: &AtomicBool,
    peer: Peer,
) -> Option<ServerConnection> {
    let deadline = Instant::now() + timeout;
    let mut session = ServerConnection::new(Arc::clone(config))
        .map_err(|e| debug!("{peer}: cannot start a TLS session: {e}; closing"))
        .ok()?;
    let mut io = socket;
    let mut failed = false;
    while !first.is_empty() && !failed {
        if session.read_tls(&mut first).is_err() {
            return None;
        }
        failed = process(&mut session, peer);
    }
    loop {
        if stopping.load(Ordering::Acquire) {
            // Nothing of its protocol has started, so nothing is owed to it.
            debug!("{peer}: shutting down during its TLS handshake; closing");
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            debug!(
                "{peer}: TLS handshake not complete within {} s; closing",
                timeout.as_secs_f64()
            );
            return None;
        }
        // The server's flight, an alert, or (once done) TLS 1.3's session tickets: sealed whole,
        // then one write, so the flight leaves in as few packets as it can.
        if session.wants_write() {
            if let Err(e) = socket.set_write_timeout(Some(left)) {
                debug!("{peer}: cannot set the handshake's deadline: {e}; closing");
                return None;
            }
            let mut flight = Vec::new();
            if let Err(e) =
                seal(&mut session, &mut flight).and_then(|()| write_out(socket, &mut flight))
            {
                debug!("{peer}: TLS handshake: write failed: {e}; closing");
                return None;
            }
        }
        if failed {
            return None;
        }
        if !session.is_handshaking() {
            return Some(session);
        }
        if let Err(e) = socket.set_read_timeout(Some(left)) {
            debug!("{peer}: cannot set the handshake's deadline: {e}; closing");
            return None;
        }
        match session.read_tls(&mut io) {
            // The shutdown's SHUT_RD, or the client: the loop's next check tells which.
            Ok(0) if stopping.load(Ordering::Acquire) => {}
            Ok(0) => {
                debug!("{peer}: closed during its TLS handshake");
                return None;
            }
            Ok(_) => failed = process(&mut session, peer),
            // The deadline: the loop's next check ends it.
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("{peer}: TLS handshake: read failed: {e}; closing");
                return None;
            }
        }
    }
}

/// Processes the records read so far; `true` if the handshake failed (rustls then has an alert
/// to send).
fn process(session: &mut ServerConnection, peer: Peer) -> bool {
    match session.process_new_packets() {
        Ok(_) => false,
        Err(e) => {
            debug!("{peer}: TLS handshake failed: {e}; closing");
            true
        }
    }
}

/// An established TLS session over a served connection's socket, usable from several threads
/// (see the module docs).
#[derive(Debug)]
pub(crate) struct TlsSession {
    socket: Arc<BlockingStream>,
    session: Mutex<ServerConnection>,
    /// Ciphertext read from the socket and not yet fed to the session (it had plaintext to
    /// give first). Only the reading thread uses it; taken before `session`.
    inbound: Mutex<Vec<u8>>,
    /// Sealed records the socket has not taken yet; its lock is also the right to write to the
    /// socket, so records go out in order. Taken before `session` whenever both are.
    outgoing: Mutex<Vec<u8>>,
}

impl TlsSession {
    /// The session `handshake` established on `socket`.
    pub(crate) fn new(socket: Arc<BlockingStream>, session: ServerConnection) -> TlsSession {
        TlsSession {
            socket,
            session: Mutex::new(session),
            inbound: Mutex::new(Vec::new()),
            outgoing: Mutex::new(Vec::new()),
        }
    }

    /// The socket underneath.
    pub(crate) fn socket(&self) -> &BlockingStream {
        &self.socket
    }

    fn session(&self) -> MutexGuard<'_, ServerConnection> {
        // rustls's calls do not leave the session half-changed when they fail.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn inbound(&self) -> MutexGuard<'_, Vec<u8>> {
        self.inbound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outgoing(&self) -> MutexGuard<'_, Vec<u8>> {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name a chat member with this session starts with: its client certificate's subject
    /// common name, if it presented one and that is a valid chat name.
    pub(crate) fn chat_name(&self) -> Option<String> {
        let session = self.session();
        let certificate = session.peer_certificates()?.first()?;
        let name = common_name(certificate)?;
        is_valid_name(&name).then_some(name)
    }

    /// Reads plaintext, blocking on the socket (its read timeout applies) until some arrives.
    /// `Ok(0)`: the peer's close_notify; `UnexpectedEof`: the socket ended without one.
    pub(crate) fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let mut raw = [0u8; RAW_READ_BYTES];
        loop {
            match self.session().reader().read(buffer) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let mut inbound = self.inbound();
            if !inbound.is_empty() {
                let taken = self.take_in(&inbound, false)?;
                inbound.drain(..taken);
                continue;
            }
            // Not under the session's lock: a writer may seal and send meanwhile.
            let count = loop {
                match (&*self.socket).read(&mut raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    read => break read?,
                }
            };
            let taken = self.take_in(&raw[..count], count == 0)?;
            inbound.extend_from_slice(&raw[taken..count]);
        }
    }

    /// Reads plaintext only from what has already arrived: what the session holds, then at most
    /// `raw_left` more bytes of ciphertext queued in the socket (counted down). `Ok(0)`: nothing
    /// more has arrived. For a graceful shutdown, which serves what arrived and no more.
    pub(crate) fn read_queued(&self, buffer: &mut [u8], raw_left: &mut usize) -> io::Result<usize> {
        let mut raw = [0u8; RAW_READ_BYTES];
        loop {
            match self.session().reader().read(buffer) {
                Ok(count) => return Ok(count),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let mut inbound = self.inbound();
            if !inbound.is_empty() {
                let taken = self.take_in(&inbound, false)?;
                inbound.drain(..taken);
                continue;
            }
            let want = (*raw_left).min(raw.len());
            if want == 0 {
                return Ok(0);
            }
            let count = match (&*self.socket).read(&mut raw[..want]) {
                Ok(0) => return Ok(0),
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            *raw_left -= count;
            let taken = self.take_in(&raw[..count], false)?;
            inbound.extend_from_slice(&raw[taken..count]);
        }
    }

    /// Feeds ciphertext to the session until it yields plaintext, and says how much of `raw`
    /// it took: the rest is to be fed once that plaintext is read (rustls refuses more while
    /// its plaintext buffer is full). `ended`: the socket's end. Then sends what the records
    /// made the session say (an alert, a key update's answer).
    fn take_in(&self, raw: &[u8], ended: bool) -> io::Result<usize> {
        let mut rest = raw;
        let (result, reply) = {
            let mut session = self.session();
            let mut feed = || -> io::Result<()> {
                if ended {
                    // Records the end: the reader then says whether a close_notify came first.
                    session.read_tls(&mut rest)?;
                }
                loop {
                    if !rest.is_empty() {
                        session.read_tls(&mut rest)?;
                    }
                    let state = session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if rest.is_empty() || state.plaintext_bytes_to_read() > 0 {
                        return Ok(());
                    }
                }
            };
            let result = feed();
            (result, session.wants_write())
        };
        if reply {
            // Best effort: a failure shows at the next read or write.
            let _ = self.flush();
        }
        result.map(|()| raw.len() - rest.len())
    }

    /// Seals `bytes` and writes the records; `Ok(bytes.len())` once they are sealed, even if
    /// the socket's send timeout left some records unsent (they go first next time). An error
    /// before sealing (earlier records still not taken) means nothing of `bytes` was taken.
    pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut outgoing = self.outgoing();
        write_out(&self.socket, &mut outgoing)?;
        {
            let mut session = self.session();
            let mut rest = bytes;
            while !rest.is_empty() {
                let count = session.writer().write(rest)?;
                if count == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                rest = &rest[count..];
                seal(&mut session, &mut outgoing)?;
            }
        }
        match write_out(&self.socket, &mut outgoing) {
            Err(e) if !is_timeout(&e) => Err(e),
            _ => Ok(bytes.len()),
        }
    }

    /// Writes every record sealed so far (waiting as the socket's send timeout allows).
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut outgoing = self.outgoing();
        seal(&mut self.session(), &mut outgoing)?;
        write_out(&self.socket, &mut outgoing)
    }

    /// Our orderly end: close_notify, and every record before it, written.
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut outgoing = self.outgoing();
        {
            let mut session = self.session();
            session.send_close_notify();
            seal(&mut session, &mut outgoing)?;
        }
        write_out(&self.socket, &mut outgoing)
    }

    /// close_notify in one write that does not wait (`MSG_DONTWAIT`): best effort, for a peer
    /// that may not be reading. Skipped if another thread is writing at this moment.
    pub(crate) fn finish_at_once(&self) {
        let Ok(mut outgoing) = self.outgoing.try_lock() else {
            return;
        };
        {
            let mut session = self.session();
            session.send_close_notify();
            if seal(&mut session, &mut outgoing).is_err() {
                return;
            }
        }
        let socket = match &*self.socket {
            BlockingStream::Tcp(socket) => socket2::SockRef::from(socket),
            BlockingStream::Unix(socket) => socket2::SockRef::from(socket),
        };
        // The connection ends next: whatever the socket did not take is dropped with it.
        if let Err(e) = socket.send_with_flags(&outgoing, libc::MSG_DONTWAIT) {
            debug!("close_notify not sent: {e}");
        }
    }

    /// Whether plaintext is waiting: in the session, or (maybe) in ciphertext queued in the
    /// socket. Neither reads nor blocks.
    pub(crate) fn input_waiting(&self) -> bool {
        let held = self
            .session()
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
        held || !self.inbound().is_empty() || self.socket.input_waiting()
    }
}

/// Moves every record the session has ready into `outgoing`.
fn seal(session: &mut ServerConnection, outgoing: &mut Vec<u8>) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(outgoing)?;
    }
    Ok(())
}

/// Writes `outgoing` to `socket`, removing what it took; an error (a timeout too) leaves the
/// rest.
fn write_out(mut socket: &BlockingStream, outgoing: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    let result = loop {
        if written == outgoing.len() {
            break Ok(());
        }
        match socket.write(&outgoing[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    outgoing.drain(..written);
    result
}
