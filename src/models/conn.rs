//! The byte stream a blocking model serves: the socket itself, or a TLS session over it.
//!
//! A two-way enum, as [`BlockingStream`] is over TCP and Unix: the plaintext path costs a
//! `match`, no allocation and no indirect call. Everything below the protocol — reads, writes,
//! the end of a connection — goes through [`Conn`]; what must reach the socket itself (the
//! timeouts, `shutdown`, the send queue a lingering close watches) goes through
//! [`Conn::socket`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use crate::net::BlockingStream;

use super::tls::TlsSession;

/// A served connection's stream, borrowed: cheap to copy, readable and writable through a
/// shared reference (one thread reads, another may write, a third shuts the socket down).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Conn<'a> {
    /// Plaintext on the socket.
    Plain(&'a BlockingStream),
    /// TLS over the socket.
    Tls(&'a TlsSession),
}

impl<'a> Conn<'a> {
    /// The socket underneath.
    pub(crate) fn socket(self) -> &'a BlockingStream {
        match self {
            Conn::Plain(socket) => socket,
            Conn::Tls(session) => session.socket(),
        }
    }

    /// Bounds every blocking read of the socket (`None`: wait for ever).
    pub(crate) fn set_read_timeout(self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    /// Bounds every blocking write to the socket (`None`: wait for ever).
    pub(crate) fn set_write_timeout(self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    /// Whether input is waiting to be read, checked without blocking.
    pub(crate) fn input_waiting(self) -> bool {
        match self {
            Conn::Plain(socket) => socket.input_waiting(),
            Conn::Tls(session) => session.input_waiting(),
        }
    }

    /// Whether a read that filled less than its buffer has taken everything there was. True
    /// on a socket; not under TLS, where one read of ciphertext may hold more records than the
    /// plaintext a read returns.
    pub(crate) fn short_read_drains(self) -> bool {
        matches!(self, Conn::Plain(_))
    }

    /// Reads only what has already arrived: at most `raw_left` more bytes queued in the socket
    /// (counted down; under TLS, plus what the session holds). `Ok(0)`: nothing more.
    pub(crate) fn read_queued(self, buffer: &mut [u8], raw_left: &mut usize) -> io::Result<usize> {
        match self {
            Conn::Plain(mut socket) => {
                let want = (*raw_left).min(buffer.len());
                if want == 0 {
                    return Ok(0);
                }
                let count = socket.read(&mut buffer[..want])?;
                *raw_left -= count;
                Ok(count)
            }
            Conn::Tls(session) => session.read_queued(buffer, raw_left),
        }
    }

    /// Our orderly end of the stream, before the socket's: a TLS close_notify (best effort,
    /// within the socket's send timeout); nothing on a plain socket, whose end is the FIN.
    pub(crate) fn finish(self) {
        if let Conn::Tls(session) = self {
            if let Err(e) = session.finish() {
                log::debug!("cannot send close_notify: {e}");
            }
        }
    }

    /// Our orderly end of the stream when the peer may not be reading (the idle timeout): a
    /// TLS close_notify in one write that does not wait, dropped if the socket cannot take it
    /// at once; nothing on a plain socket.
    pub(crate) fn finish_at_once(self) {
        if let Conn::Tls(session) = self {
            session.finish_at_once();
        }
    }

    /// Our end of stream now: [`finish`](Conn::finish), then the FIN.
    pub(crate) fn shutdown_write(self) {
        self.finish();
        // Fails only if the client is gone.
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

impl Read for Conn<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.read(buffer),
            Conn::Tls(session) => session.read(buffer),
        }
    }
}

impl Write for Conn<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.write(bytes),
            Conn::Tls(session) => session.write(bytes),
        }
    }

    /// Nothing on a socket; under TLS, the records sealed and not yet taken by the socket.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(session) => session.flush(),
        }
    }
}

/// A served connection's stream, owned: what a chat member's writer thread and the room keep.
#[derive(Clone, Debug)]
pub(crate) struct Wire {
    /// The socket (the shutdown registry holds it too).
    pub socket: Arc<BlockingStream>,
    /// Its TLS session, for a `tls:` service.
    pub tls: Option<Arc<TlsSession>>,
}

impl Wire {
    /// The stream to read and write.
    pub(crate) fn conn(&self) -> Conn<'_> {
        match &self.tls {
            Some(session) => Conn::Tls(session),
            None => Conn::Plain(&self.socket),
        }
    }
}
