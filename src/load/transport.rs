//! A load connection's transport: the plain stream (TCP or Unix), or a TLS session over TCP.
//!
//! The generators read and write a [`Transport`] as they did a stream: a read fills the buffer
//! as far as the socket allows (a short read still means drained, under edge triggering), a
//! write takes what it can. Over TLS two things are added: the handshake, which
//! [`Transport::handshake`] moves on when the socket is ready (plain streams have none), and
//! ciphertext rustls holds that the socket has not taken yet ([`Transport::wants_write`], so the
//! generator keeps `WRITABLE` interest while there is some). A plain stream pays one `match` per
//! call and nothing more.

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::net::tls_client::TlsClient;
use crate::net::Stream;

/// A connection's socket, with its TLS session over `tls:`.
#[derive(Debug)]
pub(super) enum Transport {
    /// TCP or Unix, as is.
    Plain(Stream),
    /// TLS over TCP.
    Tls(Box<TlsTransport>),
}

/// A TLS session and the socket under it.
#[derive(Debug)]
pub(super) struct TlsTransport {
    socket: Stream,
    session: TlsClient,
}

impl Transport {
    /// `socket` with `session` over it (`None`: plain).
    pub(super) fn new(socket: Stream, session: Option<TlsClient>) -> Transport {
        match session {
            None => Transport::Plain(socket),
            Some(session) => Transport::Tls(Box::new(TlsTransport { socket, session })),
        }
    }

    /// The socket under it.
    pub(super) fn socket(&self) -> &Stream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &tls.socket,
        }
    }

    /// Whether it is a TLS session.
    pub(super) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Moves the handshake on (see [`TlsClient::handshake`]): `Ok(true)` once complete (at
    /// once for a plain stream), `Ok(false)` while it waits for the server.
    pub(super) fn handshake(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(tls) => tls.session.handshake(&mut tls.socket),
        }
    }

    /// Over TLS, whether the end has been read already, so a short read is not the end of what
    /// there is to read (see [`TlsClient::end_seen`]); never for a plain stream, whose end is
    /// the socket's own.
    pub(super) fn end_seen(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.session.end_seen(),
        }
    }

    /// Whether ciphertext waits for the socket to take it (never for a plain stream).
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.session.wants_write(),
        }
    }

    /// Over TLS, once the handshake is done: queues the close_notify (this side's end) and sends
    /// what the socket takes now, before the socket is closed. Best effort: the conversation is
    /// over either way.
    pub(super) fn close_notify(&mut self) {
        if let Transport::Tls(tls) = self {
            if !tls.session.is_handshaking() {
                let _ = tls.session.close_notify(&mut tls.socket);
            }
        }
    }

    /// Sends the ciphertext waiting, as far as the socket takes it.
    pub(super) fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(tls) => tls.session.flush(&mut tls.socket),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(tls) => tls.session.read(&mut tls.socket, buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(bytes),
            Transport::Tls(tls) => tls.session.write(&mut tls.socket, bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.register(registry, token, interests),
            Transport::Tls(tls) => tls.socket.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.reregister(registry, token, interests),
            Transport::Tls(tls) => tls.socket.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.deregister(registry),
            Transport::Tls(tls) => tls.socket.deregister(registry),
        }
    }
}
