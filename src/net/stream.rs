//! A connection's socket, TCP or Unix, as one type.
//!
//! An enum, not a trait object: the reactor keeps one per connection in a slab, and an enum costs
//! no allocation and no indirect call on the hot path — `read` and `write` are a two-way match.
//! Protocols never see which it is; only the peer's name (an address, or `unix-N`) differs.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::protocol::proxy::{Address as ProxyAddress, Header};

/// Who is on the other end, as logs (and chat names) show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address: `127.0.0.1:53122`.
    Ip(SocketAddr),
    /// A Unix stream client, numbered from 1 in the order this process accepted them: `unix-3`.
    /// (Unix clients rarely bind a name of their own, so the address says nothing.)
    Unix(u64),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => write!(f, "{addr}"),
            Peer::Unix(n) => write!(f, "unix-{n}"),
        }
    }
}

/// The next `unix-N` number: one counter per process, shared by every Unix listener.
static NEXT_UNIX_PEER: AtomicU64 = AtomicU64::new(1);

impl Peer {
    /// A name for a newly accepted Unix client.
    pub fn next_unix() -> Peer {
        Peer::Unix(NEXT_UNIX_PEER.fetch_add(1, Ordering::Relaxed))
    }

    /// The client that a PROXY protocol header (`--proxy-protocol`) says this connection relays,
    /// named as logs and chat names show it, when `self` is who connected (the balancer).
    ///
    /// * An IP client is its address and port, as if it had connected itself.
    /// * A Unix client gets a `unix-N` number of its own, like every Unix peer: its path says
    ///   nothing (a client's socket is rarely bound, so the path is usually empty).
    /// * A header with no client address (LOCAL: the balancer's own health check; UNKNOWN)
    ///   leaves `self`, as the spec says.
    pub fn relayed_client(self, header: &Header) -> Peer {
        match header.source() {
            Some(ProxyAddress::Inet(address)) => Peer::Ip(*address),
            Some(ProxyAddress::Unix(_)) => Peer::next_unix(),
            None => self,
        }
    }
}

/// What a complete PROXY header changed, as the logs say it: `client 203.0.113.7:56324 via
/// 127.0.0.1:40000`; for a relayed Unix client also the name it got (`client unix:/run/c.sock
/// via 127.0.0.1:40000, named unix-4`); and for a header without a client address, why the
/// real peer is kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Relayed<'a> {
    /// The header.
    pub header: &'a Header,
    /// Who connected (the balancer, normally).
    pub via: Peer,
    /// The name the connection goes by from now on ([`Peer::relayed_client`]).
    pub client: Peer,
}

impl fmt::Display for Relayed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Relayed {
            header,
            via,
            client,
        } = self;
        match header.source() {
            Some(source @ ProxyAddress::Inet(_)) => write!(f, "client {source} via {via}"),
            Some(source @ ProxyAddress::Unix(_)) => {
                write!(f, "client {source} via {via}, named {client}")
            }
            None if **header == Header::Local => write!(
                f,
                "LOCAL (the balancer's own connection, a health check): keeping {via}"
            ),
            None => write!(f, "without a client address: keeping {via}"),
        }
    }
}

/// A non-blocking connection for the reactor (and the load generator).
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(mio::net::TcpStream),
    /// A Unix stream connection.
    Unix(mio::net::UnixStream),
}

impl Stream {
    /// Shuts down one or both directions (the lingering close shuts down writes).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// Turns off Nagle's algorithm on TCP (replies are written whole; a delay only adds
    /// latency). Unix sockets have no such delay.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Connects, without blocking, to a TCP or Unix `address` (the load generator's client
    /// side); [`connect_outcome`](Stream::connect_outcome) says when the connect is decided. A
    /// UDP address is refused: a datagram socket is no stream.
    pub fn connect(address: &crate::service::Address) -> io::Result<Stream> {
        use crate::service::Address;
        match address {
            // TLS runs over the TCP stream; the handshake is the caller's.
            Address::Tcp(addr) | Address::Tls { addr, .. } => {
                mio::net::TcpStream::connect(*addr).map(Stream::Tcp)
            }
            Address::Unix(path) => mio::net::UnixStream::connect(path).map(Stream::Unix),
            Address::Udp(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a UDP address has no stream",
            )),
        }
    }

    /// Whether a non-blocking connect has been decided, as mio's docs prescribe checking it after
    /// a `WRITABLE` event: `Ok(true)` connected, `Ok(false)` still under way (a spurious or
    /// early event), `Err` failed.
    pub fn connect_outcome(&self) -> io::Result<bool> {
        let (error, peer) = match self {
            Stream::Tcp(s) => (s.take_error(), s.peer_addr().map(drop)),
            Stream::Unix(s) => (s.take_error(), s.peer_addr().map(drop)),
        };
        if let Some(e) = error? {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == io::ErrorKind::NotConnected
                    || e.raw_os_error() == Some(libc::EINPROGRESS) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The blocking equivalent, for the comparison models.
    pub fn into_blocking(self) -> io::Result<BlockingStream> {
        let stream = match self {
            Stream::Tcp(s) => BlockingStream::Tcp(std::net::TcpStream::from(s)),
            Stream::Unix(s) => BlockingStream::Unix(std::os::unix::net::UnixStream::from(s)),
        };
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A blocking connection, for the comparison models and the client.
#[derive(Debug)]
pub enum BlockingStream {
    /// A TCP connection.
    Tcp(std::net::TcpStream),
    /// A Unix stream connection.
    Unix(std::os::unix::net::UnixStream),
}

impl BlockingStream {
    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.shutdown(how),
            BlockingStream::Unix(s) => s.shutdown(how),
        }
    }

    /// Bounds every blocking read (`None`: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_read_timeout(timeout),
            BlockingStream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Bounds every blocking write (`None`: wait for ever).
    pub fn set_write_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_write_timeout(timeout),
            BlockingStream::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    /// Switches between blocking and non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_nonblocking(nonblocking),
            BlockingStream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// Turns off Nagle's algorithm on TCP; nothing to do on Unix sockets.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_nodelay(true),
            BlockingStream::Unix(_) => Ok(()),
        }
    }

    /// Another handle to the same socket (for a second thread, or to shut it down from outside).
    pub fn try_clone(&self) -> io::Result<BlockingStream> {
        Ok(match self {
            BlockingStream::Tcp(s) => BlockingStream::Tcp(s.try_clone()?),
            BlockingStream::Unix(s) => BlockingStream::Unix(s.try_clone()?),
        })
    }

    /// Whether input is waiting to be read, without taking it or blocking: one `recv` of one
    /// byte with `MSG_PEEK | MSG_DONTWAIT` (std has no stable `peek` for Unix sockets, and
    /// switching the socket to non-blocking and back would cost two more system calls).
    pub fn input_waiting(&self) -> bool {
        let socket = match self {
            BlockingStream::Tcp(s) => socket2::SockRef::from(s),
            BlockingStream::Unix(s) => socket2::SockRef::from(s),
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket.recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT),
            Ok(count) if count > 0
        )
    }
}

/// Reads through a shared reference, as `&TcpStream` does: one socket can be served by one thread
/// and shut down from another (a graceful shutdown's `shutdown(SHUT_RD)`).
impl Read for &BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => (&*s).read(buf),
            BlockingStream::Unix(s) => (&*s).read(buf),
        }
    }
}

/// Writes through a shared reference, like [`Read`] above.
impl Write for &BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => (&*s).write(buf),
            BlockingStream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::os::fd::AsFd for BlockingStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            BlockingStream::Tcp(s) => s.as_fd(),
            BlockingStream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.read(buf),
            BlockingStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.write(buf),
            BlockingStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for BlockingStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            BlockingStream::Tcp(s) => s.as_raw_fd(),
            BlockingStream::Unix(s) => s.as_raw_fd(),
        }
    }
}
