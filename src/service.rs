//! What `serve` is asked to serve: `PROTOCOL@ADDRESS` specs.
//!
//! ```
//! use oneloop::service::{Address, SocketSource, ProtocolKind, ServiceSpec};
//!
//! let spec: ServiceSpec = "upper@127.0.0.1:9999".parse().unwrap();
//! assert_eq!(spec.protocol, ProtocolKind::Upper);
//! assert_eq!(spec.source, SocketSource::Bind(Address::Tcp("127.0.0.1:9999".parse().unwrap())));
//! assert!("upper@nowhere".parse::<ServiceSpec>().is_err());
//!
//! // A socket systemd passed in (socket activation), chosen by its FileDescriptorName=:
//! let passed: ServiceSpec = "chat@fd:chat".parse().unwrap();
//! assert_eq!(passed.source, SocketSource::Passed("chat".into()));
//! ```

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// The protocols the contract names, whether or not this build serves them yet.
///
/// It lives here, in the bottom layer, rather than in [`protocol`](crate::protocol): a
/// [`ServiceSpec`] names one, and the protocols, the transports and every driver all take it from
/// below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolKind {
    /// Upper-cases a byte stream (the seeds' "translation" server).
    Upper,
    /// Stamps each message with `[ctime] ` (the seeds' timestamp server).
    Timestamp,
    /// Sends every byte back (RFC 862).
    Echo,
    /// Line-based group chat.
    Chat,
    /// File upload with a size header.
    Upload,
    /// The server's own counters, for Prometheus: HTTP `GET /metrics` (contract v3).
    Metrics,
}

impl ProtocolKind {
    /// Every protocol, in the order the contract lists them.
    pub(crate) const ALL: [ProtocolKind; 6] = [
        ProtocolKind::Upper,
        ProtocolKind::Timestamp,
        ProtocolKind::Echo,
        ProtocolKind::Chat,
        ProtocolKind::Upload,
        ProtocolKind::Metrics,
    ];

    /// The name used on the command line and in `listening` lines.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Upper => "upper",
            ProtocolKind::Timestamp => "timestamp",
            ProtocolKind::Echo => "echo",
            ProtocolKind::Chat => "chat",
            ProtocolKind::Upload => "upload",
            ProtocolKind::Metrics => "metrics",
        }
    }
}

impl fmt::Display for ProtocolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProtocolKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ProtocolKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown protocol {name:?} (expected upper, timestamp, echo, chat or upload)"
                )
            })
    }
}

/// The services `serve` runs when none is named: the seeds' upper, timestamp and echo servers.
pub(crate) const DEFAULT_SERVICES: [&str; 3] = [
    "upper@127.0.0.1:9999",
    "timestamp@127.0.0.1:21567",
    "echo@127.0.0.1:9000",
];

/// The longest Unix socket path Linux takes: `sun_path` is 108 bytes, one of them the
/// terminating NUL. A longer `unix:PATH` is a bad address (exit 2), not a bind failure.
pub(crate) const MAX_UNIX_PATH: usize = 107;

/// Where a service listens, or where a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP address: `HOST:PORT` or `tcp:HOST:PORT`.
    Tcp(SocketAddr),
    /// A UDP address: `udp:HOST:PORT`.
    Udp(SocketAddr),
    /// A Unix stream socket: `unix:PATH`.
    Unix(PathBuf),
    /// TLS over TCP: `tls:HOST:PORT`.
    Tls {
        /// The resolved socket address.
        addr: SocketAddr,
        /// HOST as written (without an IPv6 address's brackets): the name a client checks the
        /// server's certificate against unless `--tls-server-name` says otherwise.
        host: String,
    },
}

impl Address {
    /// The transport's name as the `listening` line prints it: `tcp`, `udp`, `unix` or `tls`.
    pub fn transport(&self) -> &'static str {
        match self {
            Address::Tcp(_) => "tcp",
            Address::Udp(_) => "udp",
            Address::Unix(_) => "unix",
            Address::Tls { .. } => "tls",
        }
    }

    /// The IP socket address of a TCP or TLS address (what a stream connects to over IP).
    pub fn stream_ip(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(addr) | Address::Tls { addr, .. } => Some(*addr),
            Address::Udp(_) | Address::Unix(_) => None,
        }
    }

    /// Whether it is a `tls:` address.
    pub fn is_tls(&self) -> bool {
        matches!(self, Address::Tls { .. })
    }
}

impl From<SocketAddr> for Address {
    /// A bare socket address is TCP, as on the command line.
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr)
    }
}

impl fmt::Display for Address {
    /// The address without its transport: `127.0.0.1:9999`, `[::1]:7000` or the socket path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) | Address::Udp(addr) | Address::Tls { addr, .. } => {
                write!(f, "{addr}")
            }
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Turns a host name and port into an address (the system resolver, or a stand-in in tests).
pub type Resolver<'a> = &'a dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// The system resolver: the first address `getaddrinfo` gives, as `nc` does.
pub(crate) fn system_resolver(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

impl FromStr for Address {
    type Err = String;

    /// Parses `HOST:PORT`, `tcp:HOST:PORT`, `udp:HOST:PORT`, `tls:HOST:PORT` or `unix:PATH`.
    ///
    /// HOST is an IP address (IPv6 in brackets) or a name such as `localhost`, which is resolved
    /// here and the first address used, as `nc` does.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Address::parse_with(text, &system_resolver)
    }
}

impl Address {
    /// Parses like [`FromStr`], resolving host names with `resolve`.
    pub(crate) fn parse_with(text: &str, resolve: Resolver<'_>) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/tmp/chat.sock".into());
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "unix:{path}: the path is {} bytes; a socket address holds at most {} \
                     (108 with the terminating NUL)",
                    path.len(),
                    MAX_UNIX_PATH
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(host_port) = text.strip_prefix("udp:") {
            return parse_host_port(host_port, resolve).map(Address::Udp);
        }
        if let Some(host_port) = text.strip_prefix("tls:") {
            let addr = parse_host_port(host_port, resolve)?;
            // Parsed, so it has a colon; an IPv6 host is in brackets.
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(host, _)| host);
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            return Ok(Address::Tls { addr, host });
        }
        let host_port = text.strip_prefix("tcp:").unwrap_or(text);
        parse_host_port(host_port, resolve).map(Address::Tcp)
    }
}

/// Parses `HOST:PORT` into one socket address.
fn parse_host_port(text: &str, resolve: Resolver<'_>) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not HOST:PORT (e.g. 127.0.0.1:9999 or [::1]:9999)"
        ));
    };
    if host.is_empty() || host.contains(':') {
        // Bare IPv6 needs brackets: `::1:80` is ambiguous.
        return Err(format!(
            "{text:?} is not HOST:PORT (IPv6 goes in brackets: [::1]:9999)"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} in {text:?} is not a port number (0-65535)"))?;
    resolve(host, port)
}

/// Where a service's listening socket comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSource {
    /// oneloop binds it: `HOST:PORT`, `tcp:`, `udp:`, `tls:` or `unix:`.
    Bind(Address),
    /// systemd bound it and passed it in (socket activation): `fd:NAME` selects every passed
    /// socket whose `FileDescriptorName=` is NAME, or the one whose descriptor number is NAME.
    /// Whether it is TCP, UDP or Unix is known only once the socket is in hand.
    Passed(String),
}

/// The longest `FileDescriptorName=` systemd accepts (`FDNAME_MAX`).
pub(crate) const MAX_FD_NAME: usize = 255;

impl SocketSource {
    /// Parses where a socket comes from: `fd:NAME`, or an [`Address`] resolved with `resolve`.
    pub(crate) fn parse_with(text: &str, resolve: Resolver<'_>) -> Result<SocketSource, String> {
        let Some(name) = text.strip_prefix("fd:") else {
            return Address::parse_with(text, resolve).map(SocketSource::Bind);
        };
        // systemd's own rule for FileDescriptorName= (`fdname_is_valid`): printable ASCII, no
        // colon (LISTEN_FDNAMES is colon-separated), at most 255 bytes. A name it could never
        // pass is a mistake worth an error now, not a "no such socket" later.
        if name.is_empty() {
            return Err(
                "fd: needs the name (FileDescriptorName=) or number of a socket systemd \
                        passes, e.g. fd:chat"
                    .into(),
            );
        }
        if name.len() > MAX_FD_NAME || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!(
                "fd:{name}: a passed socket's name is 1 to {MAX_FD_NAME} printable ASCII \
                 characters with no ':' or space, as systemd's FileDescriptorName= allows"
            ));
        }
        Ok(SocketSource::Passed(name.to_owned()))
    }
}

impl fmt::Display for SocketSource {
    /// As on the command line: `tcp:127.0.0.1:9999`, `unix:/tmp/chat.sock`, `fd:chat`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSource::Bind(address) => write!(f, "{}:{address}", address.transport()),
            SocketSource::Passed(name) => write!(f, "fd:{name}"),
        }
    }
}

/// One `PROTOCOL@ADDRESS` (or `PROTOCOL@fd:NAME`) service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// What is spoken.
    pub protocol: ProtocolKind,
    /// Where its socket comes from: bound by oneloop, or passed in by systemd.
    pub source: SocketSource,
}

impl FromStr for ServiceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ServiceSpec::parse_with(text, &system_resolver)
    }
}

impl ServiceSpec {
    /// Parses like [`FromStr`], resolving host names with `resolve`.
    pub(crate) fn parse_with(text: &str, resolve: Resolver<'_>) -> Result<ServiceSpec, String> {
        let (protocol, source) = text.split_once('@').ok_or_else(|| {
            format!("{text:?} is not PROTOCOL@ADDRESS (e.g. echo@127.0.0.1:9000)")
        })?;
        let protocol: ProtocolKind = protocol.parse()?;
        let source = SocketSource::parse_with(source, resolve)?;
        // A passed socket's transport is checked when it is taken (`Bound::add_passed`).
        if matches!(source, SocketSource::Bind(Address::Udp(_)))
            && matches!(
                protocol,
                ProtocolKind::Chat | ProtocolKind::Upload | ProtocolKind::Metrics
            )
        {
            return Err(format!("{protocol} runs over tcp or unix, not udp"));
        }
        // A scraper that can reach the metrics port can read them; TLS in front of them is a
        // reverse proxy's job (Prometheus's own exporters serve plain HTTP by default too).
        if matches!(&source, SocketSource::Bind(address) if address.is_tls())
            && protocol == ProtocolKind::Metrics
        {
            return Err(format!("{protocol} runs over tcp or unix, not tls"));
        }
        Ok(ServiceSpec { protocol, source })
    }
}

impl fmt::Display for ServiceSpec {
    /// `upper@tcp:127.0.0.1:9999`, `chat@fd:chat`: parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.protocol, self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ServiceSpec, String> {
        text.parse()
    }

    fn bind(address: Address) -> SocketSource {
        SocketSource::Bind(address)
    }

    #[test]
    fn parses_every_transport() {
        let tcp = spec("echo@tcp:127.0.0.1:0").unwrap();
        assert_eq!(
            tcp.source,
            bind(Address::Tcp("127.0.0.1:0".parse().unwrap()))
        );
        let v6 = spec("upper@[::1]:7000").unwrap();
        assert_eq!(v6.source, bind(Address::Tcp("[::1]:7000".parse().unwrap())));
        let udp = spec("echo@udp:[::1]:7000").unwrap();
        assert_eq!(udp.source.to_string(), "udp:[::1]:7000");
        let tls = spec("chat@tls:[::1]:7000").unwrap();
        assert_eq!(tls.source.to_string(), "tls:[::1]:7000");
        match "tls:localhost:443".parse::<Address>().unwrap() {
            Address::Tls { addr, host } => {
                assert!(addr.ip().is_loopback());
                assert_eq!((host.as_str(), addr.port()), ("localhost", 443));
            }
            other => panic!("{other:?}"),
        }
        let unix = spec("chat@unix:/tmp/chat.sock").unwrap();
        assert_eq!(unix.source, bind(Address::Unix("/tmp/chat.sock".into())));
        assert_eq!(unix.protocol, ProtocolKind::Chat);
        let longest = format!("unix:/{}", "p".repeat(MAX_UNIX_PATH - 1));
        assert!(longest.parse::<Address>().is_ok());
        let too_long = format!("unix:/{}", "p".repeat(MAX_UNIX_PATH));
        assert!(too_long.parse::<Address>().is_err());
    }

    #[test]
    fn passed_sockets_are_named_and_print_back() {
        let by_name = spec("chat@fd:chat").unwrap();
        assert_eq!(by_name.source, SocketSource::Passed("chat".into()));
        assert_eq!(by_name.to_string(), "chat@fd:chat");
        // A number is a name too; which one it means is decided against the passed sockets.
        let by_number = spec("upload@fd:3").unwrap();
        assert_eq!(by_number.source, SocketSource::Passed("3".into()));
        assert!(spec(&format!("echo@fd:{}", "n".repeat(MAX_FD_NAME))).is_ok());
        assert!(spec(&format!("echo@fd:{}", "n".repeat(MAX_FD_NAME + 1))).is_err());
    }

    #[test]
    fn defaults_parse() {
        for text in DEFAULT_SERVICES {
            spec(text).unwrap();
        }
    }

    #[test]
    fn resolves_localhost() {
        let s = spec("echo@localhost:9").unwrap();
        match s.source {
            SocketSource::Bind(Address::Tcp(addr)) => assert!(addr.ip().is_loopback()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (text, needle) in [
            ("echo", "PROTOCOL@ADDRESS"),
            ("ping@127.0.0.1:1", "unknown protocol"),
            ("echo@127.0.0.1", "HOST:PORT"),
            ("echo@127.0.0.1:99999", "port number"),
            ("echo@::1:80", "brackets"),
            ("echo@unix:", "socket path"),
            ("chat@udp:127.0.0.1:1", "not udp"),
            ("upload@udp:127.0.0.1:1", "not udp"),
            ("echo@tls:127.0.0.1", "HOST:PORT"),
            ("upper@fd:", "FileDescriptorName"),
            ("upper@fd:a:b", "no ':'"),
            ("upper@fd:a b", "no ':' or space"),
        ] {
            let err = spec(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
