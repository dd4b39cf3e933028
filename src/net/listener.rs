//! Listening sockets: bound with `socket2` so the accept backlog can be large.
//!
//! mio's `TcpListener::bind` (like std's) listens with a backlog of 128. When thousands of clients
//! connect at once, the kernel drops SYNs that do not fit, and each dropped client waits for a
//! retransmit — one second, then three — before it is even seen. Asking for a large backlog costs
//! nothing: the kernel clamps it to `net.core.somaxconn` (4096 on current Linux).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::protocol::ProtocolKind;
use crate::service::{Address, ServiceSpec};

/// The backlog requested from `listen`; the kernel silently lowers it to `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Opens a non-blocking TCP listener on `addr` with a large backlog.
///
/// `SO_REUSEADDR` lets a restarted server bind while the previous run's connections sit in
/// `TIME_WAIT` (what every production server does); it does not allow two live listeners on one
/// port.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A bound, non-blocking listening socket and the protocol its connections speak. The reactor and
/// the comparison models start from the same list of these.
#[derive(Debug)]
pub struct BoundListener {
    /// The listening socket (non-blocking).
    pub socket: std::net::TcpListener,
    /// What its connections speak.
    pub protocol: ProtocolKind,
    /// The address actually bound (the real port when port 0 was asked for).
    pub local: SocketAddr,
}

impl BoundListener {
    /// Hands the socket to mio, registered for `READABLE` under `token`: how both the reactor
    /// and the blocking models' acceptor wait for connections.
    pub fn register(
        self,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> io::Result<mio::net::TcpListener> {
        let mut socket = mio::net::TcpListener::from_std(self.socket);
        registry.register(&mut socket, token, mio::Interest::READABLE)?;
        Ok(socket)
    }

    /// The `listening PROTOCOL TRANSPORT ADDRESS` line for this listener.
    pub fn listening(&self) -> Listening {
        Listening {
            protocol: self.protocol,
            address: Address::Tcp(self.local),
        }
    }
}

/// Binds every service, in order; the first failure is returned (earlier sockets are closed).
pub fn bind_services(services: &[ServiceSpec]) -> Result<Vec<BoundListener>, BindError> {
    services
        .iter()
        .map(|service| {
            let fail = |source| BindError {
                protocol: service.protocol,
                address: service.address.clone(),
                source,
            };
            let Address::Tcp(addr) = service.address else {
                return Err(fail(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "only tcp services are served by this build",
                )));
            };
            let socket = bind_tcp(addr).map_err(fail)?;
            let local = socket.local_addr().map_err(fail)?;
            Ok(BoundListener {
                socket,
                protocol: service.protocol,
                local,
            })
        })
        .collect()
}

/// A bound service, as the `listening` line reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// What it speaks.
    pub protocol: ProtocolKind,
    /// The address actually bound.
    pub address: Address,
}

impl fmt::Display for Listening {
    /// `listening upper tcp 127.0.0.1:40123`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listening {} {} {}",
            self.protocol,
            self.address.transport(),
            self.address
        )
    }
}

/// A service that could not be bound: which one, and the OS's reason.
#[derive(Debug)]
pub struct BindError {
    /// The protocol the service was to speak.
    pub protocol: ProtocolKind,
    /// The address that could not be bound.
    pub address: Address,
    /// The OS error.
    pub source: io::Error,
}

impl fmt::Display for BindError {
    /// `cannot listen on tcp 127.0.0.1:9999 (upper): address already in use`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot listen on {} {} ({}): {}",
            self.address.transport(),
            self.address,
            self.protocol,
            crate::sys::os_reason(&self.source)
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
