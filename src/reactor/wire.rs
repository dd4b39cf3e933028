//! A client's socket, counting the bytes it moves.
//!
//! Every byte a client connection reads or writes goes through its [`Wire`]: the handlers'
//! reads and writes, the PROXY header's, a lingering close's discards, and under TLS the
//! records rustls reads and writes (they take the wire as their `Read` and `Write`). So the
//! counts are exact at the one place they can be, with no call site to forget: bytes on the
//! socket, which under TLS means ciphertext, the handshake included. They are plain integers
//! in the connection, which the loop alone touches: no atomic, no lock. The `metrics` service
//! adds them up by endpoint (`reactor::metrics`), and the access log prints them when the
//! connection ends.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};

use crate::net::Stream;

/// A client's socket and the bytes it has moved.
#[derive(Debug)]
pub(super) struct Wire {
    socket: Stream,
    /// Bytes read off the socket.
    pub received: u64,
    /// Bytes the socket has taken.
    pub sent: u64,
}

impl Wire {
    /// `socket`, which has moved nothing yet.
    pub(super) fn new(socket: Stream) -> Wire {
        Wire {
            socket,
            received: 0,
            sent: 0,
        }
    }

    /// The socket itself, for the poller (registering moves no bytes).
    pub(super) fn socket_mut(&mut self) -> &mut Stream {
        &mut self.socket
    }

    /// Shuts down one or both directions of the socket.
    pub(super) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }
}

impl Read for Wire {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.socket.read(buffer)?;
        self.received += count as u64;
        Ok(count)
    }
}

impl Write for Wire {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let count = self.socket.write(bytes)?;
        self.sent += count as u64;
        Ok(count)
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let count = self.socket.write_vectored(slices)?;
        self.sent += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

impl AsFd for Wire {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
