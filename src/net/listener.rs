//! Binding every service: TCP and Unix stream listeners, and UDP sockets.
//!
//! TCP listeners are bound with `socket2` so the accept backlog can be large.
//! mio's `TcpListener::bind` (like std's) listens with a backlog of 128. When thousands of clients
//! connect at once, the kernel drops SYNs that do not fit, and each dropped client waits for a
//! retransmit — one second, then three — before it is even seen. Asking for a large backlog costs
//! nothing: the kernel clamps it to `net.core.somaxconn` (4096 on current Linux).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use log::debug;
use socket2::{Domain, Protocol, Socket, Type};

use super::stream::{Peer, Stream};
use super::systemd::{self, ActivatedKind, ActivatedSocket};
use super::unix::{bind_unix, SocketFile};
use crate::service::{Address, ProtocolKind, ServiceSpec, SocketSource};

/// The backlog requested from `listen`; the kernel silently lowers it to `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: i32 = 65_535;

/// Opens a non-blocking TCP listener on `addr` with a large backlog.
///
/// `SO_REUSEADDR` lets a restarted server bind while the previous run's connections sit in
/// `TIME_WAIT` (what every production server does); it does not allow two live listeners on one
/// port.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Opens a non-blocking UDP socket on `addr`; on a wildcard address, one that reports each
/// datagram's destination, so that replies leave from it ([`super::datagram::answer`]).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    super::datagram::answer_from_destination(&socket)?;
    Ok(socket)
}

/// A listening stream socket, before it is handed to a driver.
#[derive(Debug)]
pub enum ListenSocket {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// A Unix stream socket.
    Unix(std::os::unix::net::UnixListener),
}

/// A bound, non-blocking listening socket and the protocol its connections speak. The reactor and
/// the comparison models start from the same list of these.
#[derive(Debug)]
pub struct BoundListener {
    /// The listening socket (non-blocking).
    pub socket: ListenSocket,
    /// What its connections speak.
    pub protocol: ProtocolKind,
    /// The address actually bound (the real port when port 0 was asked for), or the path.
    pub local: Address,
    /// The `FileDescriptorName=` of a socket systemd passed in (`fd:NAME`), if it was.
    pub passed_name: Option<String>,
}

impl BoundListener {
    /// The name of the chat room this listener serves, as the chat bus shares it between
    /// processes: the passed socket's name for `fd:NAME`, else the port (TCP) or the socket
    /// file's name (Unix) — what two instances of one deployment have in common.
    pub fn room_name(&self) -> String {
        if let Some(name) = &self.passed_name {
            return name.clone();
        }
        match &self.local {
            Address::Tcp(addr) | Address::Udp(addr) | Address::Tls { addr, .. } => {
                addr.port().to_string()
            }
            Address::Unix(path) => path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
        }
    }

    /// Hands the socket to mio, registered for `READABLE` under `token`: how both the reactor
    /// and the blocking models' acceptor wait for connections.
    pub fn register(
        self,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> io::Result<StreamListener> {
        let mut listener = match self.socket {
            ListenSocket::Tcp(socket) => {
                StreamListener::Tcp(mio::net::TcpListener::from_std(socket))
            }
            ListenSocket::Unix(socket) => {
                StreamListener::Unix(mio::net::UnixListener::from_std(socket))
            }
        };
        match &mut listener {
            StreamListener::Tcp(l) => registry.register(l, token, mio::Interest::READABLE)?,
            StreamListener::Unix(l) => registry.register(l, token, mio::Interest::READABLE)?,
        }
        Ok(listener)
    }

    /// Whether its connections speak TLS (a `tls:` service).
    pub fn is_tls(&self) -> bool {
        self.local.is_tls()
    }

    /// The `listening PROTOCOL TRANSPORT ADDRESS` line for this listener.
    pub fn listening(&self) -> Listening {
        Listening {
            protocol: self.protocol,
            address: self.local.clone(),
        }
    }
}

/// A listening stream socket registered with a poller.
#[derive(Debug)]
pub enum StreamListener {
    /// TCP.
    Tcp(mio::net::TcpListener),
    /// A Unix stream socket.
    Unix(mio::net::UnixListener),
}

impl StreamListener {
    /// Accepts one connection (non-blocking: `WouldBlock` when nobody waits). A Unix peer is
    /// named `unix-N`, and its credentials are logged at debug.
    pub fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            StreamListener::Tcp(l) => {
                let (stream, addr) = l.accept()?;
                Ok((Stream::Tcp(stream), Peer::Ip(addr)))
            }
            StreamListener::Unix(l) => {
                let (stream, _) = l.accept()?;
                let peer = Peer::next_unix();
                match crate::sys::peer_credentials(&stream) {
                    Ok(c) => debug!("{peer}: peer process {} (uid {})", c.pid, c.uid),
                    Err(e) => debug!("{peer}: no peer credentials: {e}"),
                }
                Ok((Stream::Unix(stream), peer))
            }
        }
    }
}

/// A bound, non-blocking UDP socket and the protocol its datagrams speak.
#[derive(Debug)]
pub struct BoundDatagram {
    /// The socket (non-blocking).
    pub socket: std::net::UdpSocket,
    /// What its datagrams speak.
    pub protocol: ProtocolKind,
    /// The address actually bound.
    pub local: SocketAddr,
}

/// Everything `serve` bound, in the order the services were given.
#[derive(Debug, Default)]
pub struct Bound {
    /// Stream listeners (TCP and Unix).
    pub listeners: Vec<BoundListener>,
    /// UDP sockets.
    pub datagrams: Vec<BoundDatagram>,
    /// The Unix socket files created, removed when these are dropped (if still ours).
    pub socket_files: Vec<SocketFile>,
    /// The `listening` lines, one per service, in the order given.
    pub lines: Vec<Listening>,
}

impl Bound {
    /// Adds `passed`, a socket systemd passed in, as a service speaking `protocol`, with its
    /// `listening` line, exactly as [`bind_services`] adds a socket it bound — except that no
    /// socket file is recorded, so an activated Unix socket is never unlinked (systemd owns it).
    ///
    /// Fails, naming the socket, when `protocol` cannot run over its transport (chat or upload
    /// over UDP).
    pub fn add_passed(
        &mut self,
        passed: ActivatedSocket,
        protocol: ProtocolKind,
    ) -> Result<(), String> {
        let local = passed.local;
        let name = Some(passed.name.clone());
        match passed.socket {
            ActivatedKind::Tcp(listener) => {
                self.push_listener(ListenSocket::Tcp(listener), protocol, local, name);
            }
            ActivatedKind::Unix(listener) => {
                self.push_listener(ListenSocket::Unix(listener), protocol, local, name);
            }
            ActivatedKind::Udp(socket) => {
                if matches!(
                    protocol,
                    ProtocolKind::Chat | ProtocolKind::Upload | ProtocolKind::Metrics
                ) {
                    return Err(format!(
                        "passed socket fd {} ({:?}) is udp {local}: {protocol} runs over tcp or \
                         unix, not udp",
                        passed.fd, passed.name
                    ));
                }
                let Address::Udp(addr) = local else {
                    unreachable!("a UDP socket's address is a UDP address")
                };
                self.push_datagram(socket, protocol, addr);
            }
        }
        Ok(())
    }

    /// Adds a stream listener and its `listening` line.
    fn push_listener(
        &mut self,
        socket: ListenSocket,
        protocol: ProtocolKind,
        local: Address,
        passed_name: Option<String>,
    ) {
        self.lines.push(Listening {
            protocol,
            address: local.clone(),
        });
        self.listeners.push(BoundListener {
            socket,
            protocol,
            local,
            passed_name,
        });
    }

    /// Adds a UDP socket and its `listening` line.
    fn push_datagram(
        &mut self,
        socket: std::net::UdpSocket,
        protocol: ProtocolKind,
        local: SocketAddr,
    ) {
        self.lines.push(Listening {
            protocol,
            address: Address::Udp(local),
        });
        self.datagrams.push(BoundDatagram {
            socket,
            protocol,
            local,
        });
    }
}

/// Binds every service, in order; the first failure is returned (earlier sockets are closed and
/// their socket files removed). `unix_mode` is `--unix-mode`.
///
/// A `PROTOCOL@fd:NAME` service takes its sockets out of `passed` (the ones systemd passed in,
/// see [`systemd::take_activated_sockets`]) instead of binding: every passed socket NAME
/// selects, each with a `listening` line of its own. The sockets no service takes are left in
/// `passed`.
pub(crate) fn bind_services(
    services: &[ServiceSpec],
    unix_mode: Option<u32>,
    passed: &mut Vec<ActivatedSocket>,
) -> Result<Bound, ListenError> {
    let mut bound = Bound::default();
    let anything_passed = !passed.is_empty();
    for service in services {
        let protocol = service.protocol;
        let address = match &service.source {
            SocketSource::Bind(address) => address,
            SocketSource::Passed(name) => {
                take_passed(&mut bound, protocol, name, passed, anything_passed)?;
                continue;
            }
        };
        let fail = |source| {
            ListenError::Bind(BindError {
                protocol,
                address: address.clone(),
                source,
            })
        };
        match address {
            Address::Tcp(addr) => {
                let socket = bind_tcp(*addr).map_err(fail)?;
                let local = Address::Tcp(socket.local_addr().map_err(fail)?);
                bound.push_listener(ListenSocket::Tcp(socket), protocol, local, None);
            }
            Address::Tls { addr, host } => {
                let socket = bind_tcp(*addr).map_err(fail)?;
                let local = Address::Tls {
                    addr: socket.local_addr().map_err(fail)?,
                    host: host.clone(),
                };
                bound.push_listener(ListenSocket::Tcp(socket), protocol, local, None);
            }
            Address::Unix(path) => {
                let (socket, file) = bind_unix(path, unix_mode).map_err(fail)?;
                bound.socket_files.push(file);
                bound.push_listener(
                    ListenSocket::Unix(socket),
                    protocol,
                    Address::Unix(path.clone()),
                    None,
                );
            }
            Address::Udp(addr) => {
                let socket = bind_udp(*addr).map_err(fail)?;
                let local = socket.local_addr().map_err(fail)?;
                bound.push_datagram(socket, protocol, local);
            }
        }
    }
    Ok(bound)
}

/// `PROTOCOL@fd:NAME`: moves every passed socket NAME selects into `bound`, as a service speaking
/// `protocol`. None selected is an error naming what was passed, so a typo in a unit file reads
/// as one.
fn take_passed(
    bound: &mut Bound,
    protocol: ProtocolKind,
    name: &str,
    passed: &mut Vec<ActivatedSocket>,
    anything_passed: bool,
) -> Result<(), ListenError> {
    let service = format!("{protocol}@fd:{name}");
    let selected = systemd::take_matching(passed, name);
    if selected.is_empty() {
        let reason = if !anything_passed {
            "no socket was passed to this process (socket activation sets LISTEN_FDS and \
             LISTEN_PID; run it from a systemd .socket unit or systemd-socket-activate)"
                .to_owned()
        } else if passed.is_empty() {
            "every passed socket is already taken by an earlier service".to_owned()
        } else {
            let names: Vec<String> = passed
                .iter()
                .map(|socket| format!("fd {} {:?}", socket.fd, socket.name))
                .collect();
            format!(
                "no passed socket is named {name:?} or numbered {name} (left: {})",
                names.join(", ")
            )
        };
        return Err(ListenError::Passed { service, reason });
    }
    for socket in selected {
        bound
            .add_passed(socket, protocol)
            .map_err(|reason| ListenError::Passed {
                service: service.clone(),
                reason,
            })?;
    }
    Ok(())
}

/// Why `serve` cannot listen on one of its services.
#[derive(Debug)]
pub(crate) enum ListenError {
    /// Binding an address failed.
    Bind(BindError),
    /// A `PROTOCOL@fd:NAME` service has no passed socket to serve, or cannot serve the one it
    /// has.
    Passed {
        /// The service as given, `chat@fd:chat`.
        service: String,
        /// What is wrong, in words.
        reason: String,
    },
}

impl fmt::Display for ListenError {
    /// `cannot listen on tcp 127.0.0.1:9999 (upper): address already in use`, or
    /// `chat@fd:chat: no passed socket is named "chat" or numbered chat (left: fd 3 "upper")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Bind(error) => error.fmt(f),
            ListenError::Passed { service, reason } => write!(f, "{service}: {reason}"),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::Bind(error) => Some(error),
            ListenError::Passed { .. } => None,
        }
    }
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
pub(crate) struct BindError {
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
