//! TLS inside the loop: a rustls `ServerConnection` between a connection's socket and its handler.
//!
//! rustls's connection is sans-I/O, like oneloop's protocols: ciphertext goes in with
//! `read_tls` and comes out with `write_tls`, plaintext comes out of `reader()` and goes in
//! through `writer()`. So TLS is one more layer the [`Connection`](super::connection::Connection)
//! passes its bytes through, and nothing above it changes: a handler still finds plaintext at the
//! start of the shared read buffer and still calls `send`. The rules of the plain path hold
//! through it:
//!
//! * **Drain or budget.** A socket read is one `read_tls` (rustls asks for up to 4 KiB past any
//!   partial record it holds); [`TlsLayer::read_socket`] records how much it was asked, so a
//!   short read still means "drained" and saves the `read` that would only say `WouldBlock`: one
//!   `read` per request, as over TCP.
//! * **Write eagerly, subscribe lazily.** Replies are encrypted the moment they exist and written
//!   with one `writev` of the records; only then, if the socket refused some, does the
//!   connection want `WRITABLE` — while rustls holds ciphertext, or plaintext waits to be
//!   encrypted.
//! * **Bounded.** rustls holds at most [`MAX_CIPHERTEXT_QUEUED`] bytes of records the socket
//!   has not taken; what a handler sends beyond that waits *as plaintext* in the connection's own
//!   queue, which is what `--output-limit` counts. On the way in, rustls holds at most one
//!   record (16 KiB) of ciphertext and 16 KiB of plaintext, and a handshake message at most
//!   64 KiB.
//! * **Ends are the protocol's.** A peer's close_notify is its end of stream, read as a FIN is
//!   over TCP; a TCP end without one is an abrupt end, handled as a reset. Ours goes out before
//!   our side shuts down ([`TlsLayer::queue_close_notify`]).
//!
//! Not allocation-free: rustls 0.23 copies each received record's plaintext into a `Vec`, and
//! encodes each sent record in one (both its buffered and its unbuffered API do). oneloop adds
//! no allocation of its own per request; the measured cost is in BENCHMARKS.md.

use std::io::{self, Read, Write};

use log::{debug, trace};
use rustls::ServerConnection;

/// Most ciphertext rustls may hold for one connection before the socket takes it: its own
/// default. Beyond it a handler's replies wait, unencrypted, in the connection's queue.
pub(super) const MAX_CIPHERTEXT_QUEUED: usize = 64 * 1024;

/// A connection's TLS session, and what its reads have learnt about the socket.
pub(super) struct TlsLayer {
    /// rustls's state: the handshake, the keys, the records buffered each way.
    session: ServerConnection,
    /// Plaintext decrypted and not yet handed to the handler.
    plaintext_pending: usize,
    /// Whether our close_notify is queued (it goes once, before our side shuts down).
    notified: bool,
    /// Whether the peer's close_notify has been processed: its end of stream waits behind
    /// the plaintext still pending, and no readiness edge will announce it.
    peer_notified: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.session.is_handshaking())
            .field("plaintext_pending", &self.plaintext_pending)
            .field("wants_write", &self.session.wants_write())
            .field("notified", &self.notified)
            .finish()
    }
}

/// What one [`TlsLayer::read_socket`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketRead {
    /// `count` ciphertext bytes, processed; `drained`: fewer than asked, the socket is empty.
    Bytes {
        /// How many bytes came off the socket.
        count: usize,
        /// Whether the read was short.
        drained: bool,
    },
    /// The socket's end of stream.
    End,
    /// Nothing to read.
    Blocked,
}

/// A `Read` of the socket that remembers how much rustls asked for.
struct Measured<'a, R> {
    inner: &'a mut R,
    asked: usize,
}

impl<R: Read> Read for Measured<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.asked = buffer.len();
        loop {
            match self.inner.read(buffer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl TlsLayer {
    /// A server session with nothing read yet.
    pub(super) fn new(session: ServerConnection) -> TlsLayer {
        let mut session = session;
        session.set_buffer_limit(Some(MAX_CIPHERTEXT_QUEUED));
        TlsLayer {
            session,
            plaintext_pending: 0,
            notified: false,
            peer_notified: false,
        }
    }

    /// Whether the handshake is still under way.
    pub(super) fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// The session, for what the handshake established (certificates, version).
    pub(super) fn session(&self) -> &ServerConnection {
        &self.session
    }

    /// Whether ciphertext waits for the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Decrypted bytes not yet handed on.
    pub(super) fn plaintext_pending(&self) -> usize {
        self.plaintext_pending
    }

    /// Ciphertext that arrived before the session existed (what followed a PROXY header in its
    /// read), processed as if just read. `Err`: the peer's bytes are not TLS.
    pub(super) fn take_early(&mut self, mut bytes: &[u8]) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            match self.session.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => self.process()?,
                // The record buffer is full: only a peer that is no TLS client fills it.
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
        }
        Ok(())
    }

    /// One socket read into rustls, and the records it completed processed. `Err`: the bytes
    /// broke the protocol (rustls has queued the alert that says so).
    pub(super) fn read_socket<R: Read>(
        &mut self,
        socket: &mut R,
        id: u64,
    ) -> io::Result<Result<SocketRead, rustls::Error>> {
        let mut measured = Measured {
            inner: socket,
            asked: 0,
        };
        let count = match self.session.read_tls(&mut measured) {
            Ok(0) => return Ok(Ok(SocketRead::End)),
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Ok(SocketRead::Blocked)),
            Err(e) => return Err(e),
        };
        let drained = count < measured.asked;
        trace!(
            "conn #{id}: read {count} bytes of TLS records{}",
            if drained {
                ", fewer than asked: drained"
            } else {
                ""
            }
        );
        Ok(self
            .process()
            .map(|()| SocketRead::Bytes { count, drained }))
    }

    /// Processes the records rustls holds: handshake messages answered, application data
    /// decrypted.
    fn process(&mut self) -> Result<(), rustls::Error> {
        let state = self.session.process_new_packets()?;
        self.plaintext_pending = state.plaintext_bytes_to_read();
        self.peer_notified = state.peer_has_closed();
        Ok(())
    }

    /// Whether everything decrypted has been handed on and no end of stream waits to be read:
    /// only then does a short socket read mean there is nothing more for the handler.
    pub(super) fn is_drained(&self) -> bool {
        self.plaintext_pending == 0 && !self.peer_notified
    }

    /// Hands decrypted bytes to `buffer`: `Ok(0)` is the peer's close_notify (its end of
    /// stream), `WouldBlock` means none is decrypted yet, `UnexpectedEof` an end without one.
    pub(super) fn read_plaintext(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.session.reader().read(buffer)?;
        self.plaintext_pending = self.plaintext_pending.saturating_sub(count);
        Ok(count)
    }

    /// Encrypts as much of `plaintext` as rustls's queue takes (all of it, unless
    /// [`MAX_CIPHERTEXT_QUEUED`] bytes already wait for the socket); returns how much.
    pub(super) fn encrypt(&mut self, plaintext: &[u8]) -> usize {
        // Writing to rustls's own buffer does not fail; it takes less when its queue is full.
        self.session.writer().write(plaintext).unwrap_or(0)
    }

    /// [`encrypt`](Self::encrypt) of several slices at once (a chat member's lines): records are
    /// cut across them, not one per slice.
    pub(super) fn encrypt_vectored(&mut self, slices: &[io::IoSlice<'_>]) -> usize {
        self.session.writer().write_vectored(slices).unwrap_or(0)
    }

    /// Writes queued records until the socket is full or none is left: `Ok(true)` when
    /// nothing waits any more, `Ok(false)` when the socket would block.
    pub(super) fn write_socket<W: Write>(&mut self, socket: &mut W, id: u64) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(socket) {
                Ok(count) => trace!("conn #{id}: wrote {count} bytes of TLS records"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    trace!("conn #{id}: socket full; TLS records wait for WRITABLE");
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues our close_notify, once: the last record before our side shuts down.
    pub(super) fn queue_close_notify(&mut self, id: u64) {
        if !std::mem::replace(&mut self.notified, true) {
            trace!("conn #{id}: sending TLS close_notify");
            self.session.send_close_notify();
        }
    }

    /// Logs why a session failed, at debug (a client's broken handshake is not the server's
    /// failure), with what the handshake had got to.
    pub(super) fn log_failure(&self, id: u64, error: &rustls::Error) {
        let stage = if self.session.is_handshaking() {
            "handshake"
        } else {
            "session"
        };
        debug!("conn #{id}: TLS {stage} failed: {error}; closing");
    }
}
