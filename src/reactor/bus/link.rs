//! One TCP connection to Redis, non-blocking: what waits to be sent, and what was read and not
//! yet decoded. The bus (`super`) decides what to send and what the replies mean; this only
//! moves bytes, as `reactor::connection` does for clients.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::protocol::bus::push_command;

/// Bytes read from Redis per `read`.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// The largest reply taken from Redis (a broadcast is one line of at most `--max-line`, a
/// `/who` one name per member): a peer sending more is not the Redis this was meant for.
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// One TCP connection to Redis: what waits to be sent, and what was read and not yet decoded.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) stream: TcpStream,
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
    pub(super) input: Vec<u8>,
    /// How much of `input` is decoded.
    pub(super) decoded: usize,
}

/// What one read of a link found.
pub(super) enum Filled {
    Bytes,
    Blocked,
    End,
}

impl Link {
    pub(super) fn open(addr: SocketAddr, registry: &Registry, token: Token) -> io::Result<Link> {
        let mut stream = TcpStream::connect(addr)?;
        // Both, once: under edge triggering WRITABLE only reports the socket's buffer becoming
        // free again after it was full, which is when the queue needs flushing.
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Link {
            stream,
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
            decoded: 0,
        })
    }

    pub(super) fn queue(&mut self, args: &[&[u8]]) {
        push_command(&mut self.out, args);
    }

    pub(super) fn unsent(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes until everything is sent or the socket is full.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break, // still connecting
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written >= READ_CHUNK {
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// One `read` into what waits to be decoded.
    pub(super) fn fill(&mut self) -> io::Result<Filled> {
        if self.decoded > 0 {
            self.input.drain(..self.decoded);
            self.decoded = 0;
        }
        if self.input.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a reply of more than 16 MiB",
            ));
        }
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let read = self.stream.read(&mut self.input[start..]);
        self.input.truncate(start + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => Ok(Filled::End),
            Ok(_) => Ok(Filled::Bytes),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Filled::Bytes),
            Err(e) => Err(e),
        }
    }
}
