//! The PROXY protocol header (v1 text, v2 binary), read incrementally, bounded, sans-I/O.
//!
//! ## What it is for
//!
//! When one machine is not enough, several oneloop instances sit behind an L4 load balancer
//! such as HAProxy in `mode tcp`. The balancer accepts the client's TCP connection and opens its
//! own to an instance, so every connection an instance accepts comes *from the balancer*: its
//! peer address says nothing about the client, and logs and chat names would all show the
//! balancer. The PROXY protocol (haproxy's `doc/proxy-protocol.txt`) mends that: the balancer
//! writes one small header at the very start of each connection it opens, carrying the client's
//! address and port (and the address it connected to), and then relays the client's bytes
//! unchanged. `--proxy-protocol` makes a stream service expect that header.
//!
//! Two formats exist, and a receiver takes either (the first bytes tell which):
//!
//! * **v1**, one line of text: `PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n` (or `TCP6`, or
//!   `UNKNOWN` followed by anything). At most [`V1_MAX_BYTES`] (107) bytes, CRLF included.
//! * **v2**, binary: the 12-byte [`V2_SIGNATURE`], a version/command byte (`0x20` LOCAL, `0x21`
//!   PROXY), a family/transport byte (`0x11` TCP over IPv4, `0x21` TCP over IPv6, `0x31` Unix
//!   stream, `0x00` unspecified, ...), a 2-byte big-endian length, then that many bytes: the
//!   addresses, then TLVs (type, 2-byte length, value), which are skipped. HAProxy's
//!   `send-proxy-v2` writes 28 bytes for an IPv4 client and 52 for IPv6 (addresses only; TLVs
//!   such as ALPN, authority or SSL details only when the client's connection has them or
//!   `proxy-v2-options` asks), and a bare 16-byte LOCAL header when it has no addresses to give.
//!
//! ## Why before any protocol byte, and why bounded
//!
//! The header is the first thing on the connection, and nothing the client sent may be read as
//! protocol until it has been parsed: the address it carries is the one every log line and chat
//! name must use from the first one on. A reader that guessed whether a header is present would
//! let any client claim any address, so whether one is expected is configuration only
//! (`--proxy-protocol`), never decided from the bytes; and a connection that does not start with
//! one is refused at the first byte that proves it ([`Parse::Invalid`]).
//!
//! Everything before the header is complete is held by the server for a peer it knows nothing
//! about yet, so it is bounded by the protocol's own sizes, not by a setting:
//!
//! * **v1**: at most [`V1_MAX_BYTES`] held; a line with no CRLF by then is invalid (the spec's
//!   rule).
//! * **v2**: the 16 fixed bytes and the address block, at most 16 + 216 (two Unix paths) =
//!   [`MAX_HELD_BYTES`]. TLVs are *counted* as they pass, never held, so their length costs no
//!   memory; the length field is still capped so that the header ends within [`V2_MAX_BYTES`]
//!   (4 KiB). That is 8 times the 536 bytes the spec designs the header to fit in, and far above
//!   every registered TLV at its largest together (ALPN and authority 255 bytes each, a unique ID
//!   128, the SSL TLV's version, cipher, algorithms and certificate CN), while a length near the
//!   field's 64 KiB maximum would only mean garbage.
//!
//! Time is the driver's: this module has no clock. A client that sends half a header and waits
//! keeps getting [`Parse::NeedMore`]; the driver closes the connection if the header is not
//! complete within [`HEADER_TIMEOUT`] (3 s) of the accept (the contract's limit; the spec asks
//! for at least 3 s, to cover one TCP retransmission).
//!
//! ## Driving it
//!
//! The driver hands every read to [`ProxyHeader::on_input`] until it answers something other
//! than [`Parse::NeedMore`]. [`Parse::Done`] says how many bytes *of that read* were header
//! (`consumed`): a balancer may send the header and the client's first request in one segment,
//! and the bytes after the header are the session's first input. The parser takes no more than
//! the header, so those bytes are still in the driver's buffer.
//!
//! ```
//! use oneloop::protocol::proxy::{Header, Parse, ProxyHeader};
//!
//! let mut header = ProxyHeader::new();
//! assert_eq!(header.on_input(b"PROXY TCP4 203.0.113.7 192.0."), Parse::NeedMore);
//! let read = b"2.1 56324 7000\r\nhello\n";
//! let Parse::Done { header, consumed } = header.on_input(read) else { panic!() };
//! assert_eq!(header.source().unwrap().to_string(), "203.0.113.7:56324");
//! assert_eq!(&read[consumed..], b"hello\n"); // the session's first input
//! ```
//!
//! ## Choices where the spec leaves room
//!
//! * **LOCAL** (v2: the balancer's own connection, a health check), **UNKNOWN** (v1) and v2
//!   PROXY with an unspecified family or one this server has no use for (UDP, Unix datagram)
//!   are accepted: [`Header::source`] is `None`, and the driver keeps the real peer, as the spec
//!   says. For LOCAL the family byte is ignored and the whole block skipped, as the spec says.
//! * **Strictly as written**: exactly one space between v1 fields, no leading zeros in IPv4
//!   numbers or ports, a CRLF and never a lone LF; v2 version 2 only, commands LOCAL and PROXY
//!   only, unassigned family or transport values refused; the TLVs after a parsed address block
//!   must fill the rest of the header exactly. Only a balancer writes these headers, and a
//!   balancer that writes something else is misconfigured: better refused than misread.
//! * **Split headers are fine.** The spec lets a receiver refuse a header that does not arrive
//!   in one read; this one takes any split (TCP may segment, and the property tests split at
//!   every offset), bounded by the sizes above and the driver's 3 s.
//! * **The CRC32C TLV is not checked**: like every TLV it is skipped (TCP already checksums the
//!   bytes; the TLV guards against proxies that rewrite headers, which none here does).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long a driver waits, from the accept, for the header to be complete before it closes the
/// connection: the contract's 3 s, the least the spec allows (one TCP retransmission). Only a
/// duration: the clock is the driver's.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest v1 header, CRLF included: `PROXY UNKNOWN` with two full IPv6 addresses and
/// ports (the spec's worst case).
pub const V1_MAX_BYTES: usize = 107;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version/command, family/transport, length.
pub const V2_FIXED_BYTES: usize = 16;

/// The longest v2 header accepted, fixed part included: see the [module docs](self) for why
/// 4 KiB.
pub const V2_MAX_BYTES: usize = 4096;

/// The length of one Unix socket path in a v2 address block (`sun_path` on Linux).
const UNIX_PATH_BYTES: usize = 108;

/// The most a parser ever holds: a v2 fixed part and its largest address block (two Unix
/// paths). A v1 line ([`V1_MAX_BYTES`]) is shorter.
pub const MAX_HELD_BYTES: usize = V2_FIXED_BYTES + 2 * UNIX_PATH_BYTES;

/// How every v1 line may start; after `UNKNOWN` the spec allows anything up to the CRLF.
const V1_STARTS: [&[u8]; 4] = [
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN ",
    b"PROXY UNKNOWN\r",
];

/// v2 commands (the low four bits of the 13th byte).
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;

/// v2 family/transport bytes this server reads addresses from.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNIX_STREAM: u8 = 0x31;

/// What [`ProxyHeader::on_input`] made of the bytes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Parse {
    /// Every byte given was header, and the header is not complete: read more (until the
    /// driver's 3 s run out).
    NeedMore,
    /// The header is complete.
    Done {
        /// What it says.
        header: Header,
        /// How many bytes of *this* input were header; the rest belong to the session.
        consumed: usize,
    },
    /// Not a valid header: close the connection (no reply: the peer is a balancer, and the
    /// spec names none).
    Invalid(Reason),
}

/// What a complete header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// v2 LOCAL: the balancer's own connection (a health check). Keep the real peer.
    Local,
    /// v1 `UNKNOWN`, or v2 PROXY with an unspecified family or one a stream server has no use
    /// for (UDP, Unix datagram): the balancer relays a connection but gives no usable address.
    /// Keep the real peer.
    Unknown,
    /// A relayed connection: the client's address, and the one it connected to.
    Proxy {
        /// The client: the address to use in logs and chat names.
        source: Address,
        /// The address the client connected to (the balancer's, usually).
        destination: Address,
    },
}

impl Header {
    /// The client's address, or `None` when the real peer should be kept ([`Header::Local`],
    /// [`Header::Unknown`]).
    pub fn source(&self) -> Option<&Address> {
        match self {
            Header::Proxy { source, .. } => Some(source),
            Header::Local | Header::Unknown => None,
        }
    }

    /// This header as a v1 line, as a balancer writes it: `None` for what v1 cannot say
    /// (LOCAL, Unix addresses, a source and destination of different IP versions).
    pub fn to_v1(&self) -> Option<Vec<u8>> {
        let line = match self {
            Header::Local => return None,
            Header::Unknown => "PROXY UNKNOWN\r\n".to_owned(),
            Header::Proxy {
                source: Address::Inet(source),
                destination: Address::Inet(destination),
            } => {
                let family = match (source, destination) {
                    (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
                    (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
                    _ => return None,
                };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    source.ip(),
                    destination.ip(),
                    source.port(),
                    destination.port()
                )
            }
            Header::Proxy { .. } => return None,
        };
        Some(line.into_bytes())
    }

    /// This header in v2, as a balancer writes it, with no TLVs: `None` for what cannot be
    /// said (a source and destination of different kinds, a Unix path over 108 bytes).
    pub fn to_v2(&self) -> Option<Vec<u8>> {
        let (command, family, block) = match self {
            Header::Local => (V2_LOCAL, 0x00, Vec::new()),
            Header::Unknown => (V2_PROXY, 0x00, Vec::new()),
            Header::Proxy {
                source,
                destination,
            } => match (source, destination) {
                (Address::Inet(SocketAddr::V4(s)), Address::Inet(SocketAddr::V4(d))) => {
                    let mut block = Vec::with_capacity(12);
                    block.extend_from_slice(&s.ip().octets());
                    block.extend_from_slice(&d.ip().octets());
                    block.extend_from_slice(&s.port().to_be_bytes());
                    block.extend_from_slice(&d.port().to_be_bytes());
                    (V2_PROXY, V2_TCP4, block)
                }
                (Address::Inet(SocketAddr::V6(s)), Address::Inet(SocketAddr::V6(d))) => {
                    let mut block = Vec::with_capacity(36);
                    block.extend_from_slice(&s.ip().octets());
                    block.extend_from_slice(&d.ip().octets());
                    block.extend_from_slice(&s.port().to_be_bytes());
                    block.extend_from_slice(&d.port().to_be_bytes());
                    (V2_PROXY, V2_TCP6, block)
                }
                (Address::Unix(s), Address::Unix(d))
                    if s.len() <= UNIX_PATH_BYTES && d.len() <= UNIX_PATH_BYTES =>
                {
                    let mut block = vec![0; 2 * UNIX_PATH_BYTES];
                    block[..s.len()].copy_from_slice(s);
                    block[UNIX_PATH_BYTES..UNIX_PATH_BYTES + d.len()].copy_from_slice(d);
                    (V2_PROXY, V2_UNIX_STREAM, block)
                }
                _ => return None,
            },
        };
        let mut bytes = Vec::with_capacity(V2_FIXED_BYTES + block.len());
        bytes.extend_from_slice(&V2_SIGNATURE);
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(block.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&block);
        Some(bytes)
    }
}

/// An address a header carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// An IP address and port (TCP).
    Inet(SocketAddr),
    /// A Unix socket's `sun_path` bytes: a path up to its first NUL; an abstract name (Linux),
    /// which starts with a NUL, up to its last non-NUL byte; empty for an unnamed socket.
    Unix(Vec<u8>),
}

impl fmt::Display for Address {
    /// `203.0.113.7:56324`, `[2001:db8::1]:443`, `unix:/run/app.sock`, `unix:@abstract`, or
    /// `unix:` for an unnamed socket; a path that is not UTF-8 is shown lossily.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(address) => address.fmt(f),
            Address::Unix(path) => match path.split_first() {
                Some((0, name)) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
                _ => write!(f, "unix:{}", String::from_utf8_lossy(path)),
            },
        }
    }
}

/// Why a header was refused. For the server's logs: the peer gets no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The first bytes are neither `PROXY` nor the v2 signature.
    NotProxy,
    /// v1: no CRLF within 107 bytes; v2: a length that would end the header past
    /// [`V2_MAX_BYTES`].
    TooLong,
    /// v1: the line ends with a lone LF.
    BadLineEnd,
    /// v1: not `TCP4`, `TCP6` or `UNKNOWN` after `PROXY `.
    BadProtocol,
    /// v1: not exactly five fields after `PROXY`, one space apart.
    BadFields,
    /// v1: an address that is not one of the protocol's family, in its canonical form.
    BadAddress,
    /// v1: a port that is not a decimal number from 0 to 65535 without leading zeros.
    BadPort,
    /// v2: a version other than 2.
    BadVersion,
    /// v2: a command other than LOCAL or PROXY.
    BadCommand,
    /// v2: an unassigned address family or transport.
    BadFamily,
    /// v2: a length shorter than the address block of the family it announces.
    ShortAddresses,
    /// v2: the TLVs after the addresses do not fill the rest of the header exactly.
    BadTlv,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotProxy => "not a PROXY protocol header",
            Reason::TooLong => "PROXY header too long",
            Reason::BadLineEnd => "PROXY line not ended by CRLF",
            Reason::BadProtocol => "PROXY line's protocol is not TCP4, TCP6 or UNKNOWN",
            Reason::BadFields => "PROXY line's fields are malformed",
            Reason::BadAddress => "bad address in PROXY line",
            Reason::BadPort => "bad port in PROXY line",
            Reason::BadVersion => "PROXY v2 header of another version",
            Reason::BadCommand => "PROXY v2 header with an unknown command",
            Reason::BadFamily => "PROXY v2 header with an unknown family or transport",
            Reason::ShortAddresses => "PROXY v2 header too short for its addresses",
            Reason::BadTlv => "PROXY v2 header with malformed TLVs",
        })
    }
}

impl std::error::Error for Reason {}

/// Reads one PROXY protocol header from the start of a connection.
///
/// About 350 bytes, all inline (no allocation until a Unix address is parsed), and needed only
/// until the header is complete: see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProxyHeader {
    /// The header's first bytes: the v1 line, or v2's fixed part and address block.
    held: [u8; MAX_HELD_BYTES],
    /// How many bytes of `held` are in use.
    held_len: usize,
    state: State,
}

/// Where the parser is.
#[derive(Clone, Debug)]
enum State {
    /// Holding bytes in `held`: deciding the version, then the v1 line, or the v2 fixed part
    /// and its address block.
    Holding,
    /// v2: the addresses are read; counting off the rest of the header.
    Skipping(Skip),
    /// The header is complete: later calls repeat it, with nothing consumed.
    Done(Header),
    /// The header was refused: later calls repeat why.
    Failed(Reason),
}

/// The rest of a v2 header after its address block.
#[derive(Clone, Debug)]
struct Skip {
    header: Header,
    /// Header bytes still to come.
    remaining: usize,
    /// Where we are in the TLVs, if they are checked (after an address block this server
    /// parsed); otherwise the rest is skipped unread (LOCAL, unspecified or unused families).
    tlvs: Option<TlvCursor>,
}

/// A position in a run of TLVs: inside one's 3-byte head, or inside its value.
#[derive(Clone, Copy, Debug, Default)]
struct TlvCursor {
    head: [u8; 3],
    head_len: usize,
    value_left: usize,
}

/// What one step of the parser did with the bytes it was given.
enum Next {
    /// Made progress (bytes used, or the state moved on): step again.
    Continue,
    /// Needs more bytes than it was given.
    NeedMore,
    /// The header is complete.
    Done(Header),
    /// The header is refused.
    Invalid(Reason),
}

impl Default for ProxyHeader {
    fn default() -> Self {
        ProxyHeader::new()
    }
}

impl ProxyHeader {
    /// A parser waiting for a header's first byte.
    ///
    /// It takes no limits: its bounds are the protocol's own ([`V1_MAX_BYTES`],
    /// [`MAX_HELD_BYTES`], [`V2_MAX_BYTES`]), and its deadline is the driver's.
    pub fn new() -> ProxyHeader {
        ProxyHeader {
            held: [0; MAX_HELD_BYTES],
            held_len: 0,
            state: State::Holding,
        }
    }

    /// Reads the next bytes of the connection. Uses only header bytes: when the answer is
    /// [`Parse::Done`], `input[consumed..]` is the session's.
    ///
    /// Once the answer is `Done` or `Invalid`, every later call gives the same answer (`Done`
    /// with nothing consumed).
    pub fn on_input(&mut self, input: &[u8]) -> Parse {
        match &self.state {
            State::Done(header) => {
                return Parse::Done {
                    header: header.clone(),
                    consumed: 0,
                }
            }
            State::Failed(reason) => return Parse::Invalid(*reason),
            State::Holding | State::Skipping(_) => {}
        }
        let mut consumed = 0;
        loop {
            let (used, next) = self.step(&input[consumed..]);
            consumed += used;
            match next {
                Next::Continue => {}
                Next::NeedMore => return Parse::NeedMore,
                Next::Done(header) => {
                    self.held_len = 0;
                    self.state = State::Done(header.clone());
                    return Parse::Done { header, consumed };
                }
                Next::Invalid(reason) => {
                    self.held_len = 0;
                    self.state = State::Failed(reason);
                    return Parse::Invalid(reason);
                }
            }
        }
    }

    /// How many bytes the parser holds now: never more than [`MAX_HELD_BYTES`], nor more than
    /// [`V1_MAX_BYTES`] for a v1 line; none once the header is complete or refused.
    #[cfg(any(test, feature = "fuzzing"))] // Only the property checks look.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_len
    }

    /// One step: uses some of `input` (maybe none), says what next. With empty input it either
    /// moves the state on or answers `NeedMore`, so [`on_input`](Self::on_input) always ends.
    fn step(&mut self, input: &[u8]) -> (usize, Next) {
        match &mut self.state {
            State::Holding => {
                let first = if self.held_len > 0 {
                    self.held[0]
                } else if let Some(&byte) = input.first() {
                    byte
                } else {
                    return (0, Next::NeedMore);
                };
                if first == b'P' {
                    self.hold_v1(input)
                } else {
                    self.hold_v2(input)
                }
            }
            // Complete: take the header out (`on_input` then sets the state to Done).
            State::Skipping(skip) if skip.remaining == 0 => (
                0,
                Next::Done(std::mem::replace(&mut skip.header, Header::Local)),
            ),
            State::Skipping(skip) => skip.advance(input),
            State::Done(_) | State::Failed(_) => unreachable!("on_input answers these itself"),
        }
    }

    /// Copies up to `want` held bytes in all from `input`; returns how many it took.
    fn hold(&mut self, input: &[u8], want: usize) -> usize {
        let take = want.saturating_sub(self.held_len).min(input.len());
        self.held[self.held_len..self.held_len + take].copy_from_slice(&input[..take]);
        self.held_len += take;
        take
    }

    /// v1: holds the line up to its LF (scanning only new bytes), refusing it as soon as its
    /// start cannot be a header's, or at 107 bytes without an LF.
    fn hold_v1(&mut self, input: &[u8]) -> (usize, Next) {
        let room = &input[..input.len().min(V1_MAX_BYTES - self.held_len)];
        let line_end = memchr::memchr(b'\n', room);
        let used = self.hold(room, self.held_len + line_end.map_or(room.len(), |i| i + 1));
        let line = &self.held[..self.held_len];
        if !V1_STARTS
            .iter()
            .any(|start| is_prefix_either_way(line, start))
        {
            let reason = if is_prefix_either_way(line, b"PROXY") {
                Reason::BadProtocol
            } else {
                Reason::NotProxy
            };
            return (used, Next::Invalid(reason));
        }
        let next = if line_end.is_some() {
            match parse_v1(line) {
                Ok(header) => Next::Done(header),
                Err(reason) => Next::Invalid(reason),
            }
        } else if self.held_len == V1_MAX_BYTES {
            Next::Invalid(Reason::TooLong)
        } else {
            Next::NeedMore
        };
        (used, next)
    }

    /// v2: holds the fixed part, checking each byte as it is held, then the address block;
    /// then moves on to skipping the rest.
    fn hold_v2(&mut self, input: &[u8]) -> (usize, Next) {
        let want = if self.held_len < V2_FIXED_BYTES {
            V2_FIXED_BYTES
        } else {
            V2_FIXED_BYTES + v2_address_bytes(self.held[12], self.held[13])
        };
        let used = self.hold(input, want);
        if let Err(reason) = check_v2_fixed(&self.held[..self.held_len]) {
            return (used, Next::Invalid(reason));
        }
        if self.held_len < want {
            return (used, Next::NeedMore);
        }
        let block_len = v2_address_bytes(self.held[12], self.held[13]);
        if self.held_len < V2_FIXED_BYTES + block_len {
            // The fixed part just arrived; the address block is next.
            return (used, Next::Continue);
        }
        let length = usize::from(u16::from_be_bytes([self.held[14], self.held[15]]));
        let block = &self.held[V2_FIXED_BYTES..self.held_len];
        let header = match (self.held[12] & 0x0f, self.held[13]) {
            (V2_LOCAL, _) => Header::Local,
            (_, V2_TCP4) => {
                let ip = |at: usize| {
                    IpAddr::V4(Ipv4Addr::from(
                        <[u8; 4]>::try_from(&block[at..at + 4]).unwrap(),
                    ))
                };
                let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
                Header::Proxy {
                    source: Address::Inet(SocketAddr::new(ip(0), port(8))),
                    destination: Address::Inet(SocketAddr::new(ip(4), port(10))),
                }
            }
            (_, V2_TCP6) => {
                let ip = |at: usize| {
                    IpAddr::V6(Ipv6Addr::from(
                        <[u8; 16]>::try_from(&block[at..at + 16]).unwrap(),
                    ))
                };
                let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
                Header::Proxy {
                    source: Address::Inet(SocketAddr::new(ip(0), port(32))),
                    destination: Address::Inet(SocketAddr::new(ip(16), port(34))),
                }
            }
            (_, V2_UNIX_STREAM) => {
                let (source, destination) = block.split_at(UNIX_PATH_BYTES);
                Header::Proxy {
                    source: Address::Unix(unix_path(source)),
                    destination: Address::Unix(unix_path(destination)),
                }
            }
            _ => Header::Unknown,
        };
        self.held_len = 0;
        self.state = State::Skipping(Skip {
            header,
            remaining: length - block_len,
            tlvs: (block_len > 0).then(TlvCursor::default),
        });
        (used, Next::Continue)
    }
}

impl Skip {
    /// Counts off header bytes after the address block (some are still to come), checking
    /// TLV framing if asked. Never answers `Done`: the caller sees `remaining` reach 0.
    fn advance(&mut self, input: &[u8]) -> (usize, Next) {
        let Some(tlv) = &mut self.tlvs else {
            let used = self.remaining.min(input.len());
            self.remaining -= used;
            return (used, self.more(used));
        };
        if tlv.value_left > 0 {
            let used = tlv.value_left.min(input.len());
            tlv.value_left -= used;
            self.remaining -= used;
            return (used, self.more(used));
        }
        // At (or inside) a TLV's head: a head that cannot fit is refused before its bytes come.
        if tlv.head_len == 0 && self.remaining < tlv.head.len() {
            return (0, Next::Invalid(Reason::BadTlv));
        }
        let Some(&byte) = input.first() else {
            return (0, Next::NeedMore);
        };
        tlv.head[tlv.head_len] = byte;
        tlv.head_len += 1;
        self.remaining -= 1;
        if tlv.head_len == tlv.head.len() {
            tlv.head_len = 0;
            tlv.value_left = usize::from(u16::from_be_bytes([tlv.head[1], tlv.head[2]]));
            if tlv.value_left > self.remaining {
                return (1, Next::Invalid(Reason::BadTlv));
            }
        }
        (1, Next::Continue)
    }

    /// After using `used` bytes: step again (to finish, or because input is left), or wait.
    fn more(&self, used: usize) -> Next {
        if self.remaining == 0 || used > 0 {
            Next::Continue
        } else {
            Next::NeedMore
        }
    }
}

/// Whether the shorter of `a` and `b` is a prefix of the other: `a` may still become (or
/// already starts with) `b`.
fn is_prefix_either_way(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Checks as much of a v2 fixed part as is held, byte by byte in order, so the same bytes give
/// the same reason however they arrived.
fn check_v2_fixed(held: &[u8]) -> Result<(), Reason> {
    if !is_prefix_either_way(held, &V2_SIGNATURE) {
        return Err(Reason::NotProxy);
    }
    let Some(&version_command) = held.get(12) else {
        return Ok(());
    };
    if version_command >> 4 != 2 {
        return Err(Reason::BadVersion);
    }
    let command = version_command & 0x0f;
    if command != V2_LOCAL && command != V2_PROXY {
        return Err(Reason::BadCommand);
    }
    let Some(&family) = held.get(13) else {
        return Ok(());
    };
    // LOCAL's family is ignored, as the spec says.
    if command == V2_PROXY && (family >> 4 > 3 || family & 0x0f > 2) {
        return Err(Reason::BadFamily);
    }
    if held.len() < V2_FIXED_BYTES {
        return Ok(());
    }
    let length = usize::from(u16::from_be_bytes([held[14], held[15]]));
    if V2_FIXED_BYTES + length > V2_MAX_BYTES {
        return Err(Reason::TooLong);
    }
    if length < v2_address_bytes(version_command, family) {
        return Err(Reason::ShortAddresses);
    }
    Ok(())
}

/// The address block this server reads for a v2 command and family: none for LOCAL and for
/// families it keeps the real peer for (their addresses are skipped with the TLVs).
fn v2_address_bytes(version_command: u8, family: u8) -> usize {
    if version_command & 0x0f != V2_PROXY {
        return 0;
    }
    match family {
        V2_TCP4 => 12,
        V2_TCP6 => 36,
        V2_UNIX_STREAM => 2 * UNIX_PATH_BYTES,
        _ => 0,
    }
}

/// A `sun_path` as [`Address::Unix`] keeps it.
fn unix_path(raw: &[u8]) -> Vec<u8> {
    match raw.split_first() {
        Some((0, _)) => {
            let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            raw[..end].to_vec()
        }
        _ => raw.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
    }
}

/// Parses a complete v1 line (ending in LF, starting as one of [`V1_STARTS`]).
fn parse_v1(line: &[u8]) -> Result<Header, Reason> {
    let text = line.strip_suffix(b"\r\n").ok_or(Reason::BadLineEnd)?;
    let rest = &text[b"PROXY ".len()..];
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(Header::Unknown);
    }
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err(Reason::BadFields);
    };
    let ip = |field: &[u8]| -> Result<IpAddr, Reason> {
        let text = std::str::from_utf8(field).map_err(|_| Reason::BadAddress)?;
        match protocol {
            b"TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            _ => text.parse::<Ipv6Addr>().map(IpAddr::V6),
        }
        .map_err(|_| Reason::BadAddress)
    };
    let (source, destination) = (ip(source)?, ip(destination)?);
    let (source_port, destination_port) = (port(source_port)?, port(destination_port)?);
    Ok(Header::Proxy {
        source: Address::Inet(SocketAddr::new(source, source_port)),
        destination: Address::Inet(SocketAddr::new(destination, destination_port)),
    })
}

/// A v1 port: 1 to 5 decimal digits, no leading zero (except `0` itself), at most 65535.
fn port(field: &[u8]) -> Result<u16, Reason> {
    let digits_only = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits_only || (field.len() > 1 && field[0] == b'0') {
        return Err(Reason::BadPort);
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| Reason::BadPort)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses `input` in one read.
    fn parse(input: &[u8]) -> Parse {
        ProxyHeader::new().on_input(input)
    }

    fn inet(text: &str) -> Address {
        Address::Inet(text.parse().unwrap())
    }

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxy {
            source: inet(source),
            destination: inet(destination),
        }
    }

    fn done(header: Header, consumed: usize) -> Parse {
        Parse::Done { header, consumed }
    }

    /// A v2 header: version/command, family/transport, then `body` (addresses and TLVs) with
    /// its length.
    fn v2(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[version_command, family]);
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// A TLV: type, 2-byte length, value.
    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
        bytes
    }

    const TCP4_BLOCK: [u8; 12] = [203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x1b, 0x58];

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n";
        assert_eq!(
            parse(line),
            done(proxied("203.0.113.7:56324", "192.0.2.1:7000"), line.len())
        );
        let line = b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 0 65535\r\n";
        assert_eq!(
            parse(line),
            done(
                proxied("[2001:db8::1]:0", "[::ffff:192.0.2.1]:65535"),
                line.len()
            )
        );
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN 2001:db8::1 2001:db8::2 1 2\r\n",
            b"PROXY UNKNOWN whatever \xff\r goes\r\n",
        ] {
            assert_eq!(parse(line), done(Header::Unknown, line.len()));
        }
        assert_eq!(Header::Unknown.source(), None);
    }

    #[test]
    fn v1_at_the_longest_is_accepted_and_one_byte_more_is_not() {
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_MAX_BYTES);
        assert_eq!(
            parse(longest.as_bytes()),
            done(Header::Unknown, V1_MAX_BYTES)
        );
        let too_long = longest.replacen("65535", "655350", 1);
        assert_eq!(parse(too_long.as_bytes()), Parse::Invalid(Reason::TooLong));
        // Refused at byte 107, without waiting for the rest.
        let mut header = ProxyHeader::new();
        assert_eq!(
            header.on_input(&too_long.as_bytes()[..106]),
            Parse::NeedMore
        );
        assert_eq!(header.held_bytes(), 106);
        assert_eq!(
            header.on_input(&too_long.as_bytes()[106..107]),
            Parse::Invalid(Reason::TooLong)
        );
        assert_eq!(header.held_bytes(), 0);
    }

    #[test]
    fn v1_malformed() {
        let cases: [(&[u8], Reason); 21] = [
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 080\r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 123456\r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 -1\r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 \r\n", Reason::BadPort),
            (b"PROXY TCP4 1.2.3.04 5.6.7.8 80 80\r\n", Reason::BadAddress),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 80 80\r\n",
                Reason::BadAddress,
            ),
            (b"PROXY TCP4 ::1 5.6.7.8 80 80\r\n", Reason::BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 80 80\r\n", Reason::BadAddress),
            (b"PROXY TCP6 ::1 fe80::1%1 80 80\r\n", Reason::BadAddress),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80\n", Reason::BadLineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", Reason::BadFields),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 80 80\r\n", Reason::BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80 \r\n", Reason::BadFields),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 80 80\r\n", Reason::BadProtocol),
            (b"PROXY UNKNOWNX\r\n", Reason::BadProtocol),
            (b"PROXY\r\n", Reason::BadProtocol),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 80 80\r\n", Reason::BadProtocol),
            (b"GET / HTTP/1.1\r\n", Reason::NotProxy),
            (b"PROXX", Reason::NotProxy),
        ];
        for (line, reason) in cases {
            assert_eq!(
                parse(line),
                Parse::Invalid(reason),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // A line with only a CR and no LF waits for its LF, up to the bound.
        assert_eq!(parse(b"PROXY UNKNOWN\r"), Parse::NeedMore);
        assert_eq!(
            parse(&[&b"PROXY UNKNOWN\r"[..], &[b'x'; 93]].concat()),
            Parse::Invalid(Reason::TooLong)
        );
    }

    #[test]
    fn what_is_not_a_header_is_refused_at_the_first_byte_that_tells() {
        for (input, at) in [
            (&b"GET / HTTP/1.1\r\n"[..], 1),
            (b"PROXX TCP4", 5),
            (b"PROXY TCP5", 10),
            (b"PROXY UNKNOWNX", 14),
            (b"\r\n\r\n\0\r\nQUIX\n", 11),
            (b"\r\n\r\n\0\r\nQUIT\n\x31", 13),
            (b"\r\n\r\n\0\r\nQUIT\n\x22", 13),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x41", 14),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x13", 14),
        ] {
            let mut header = ProxyHeader::new();
            for (i, byte) in input.iter().enumerate() {
                let parse = header.on_input(std::slice::from_ref(byte));
                if i + 1 < at {
                    assert_eq!(parse, Parse::NeedMore, "{input:?} at {i}");
                } else {
                    assert!(matches!(parse, Parse::Invalid(_)), "{input:?} at {i}");
                    break;
                }
            }
        }
    }

    #[test]
    fn v2_proxy_tcp4_tcp6_and_local() {
        let header = v2(0x21, 0x11, &TCP4_BLOCK);
        assert_eq!(header.len(), 28); // what HAProxy's send-proxy-v2 sends for IPv4
        assert_eq!(
            parse(&header),
            done(proxied("203.0.113.7:56324", "192.0.2.1:7000"), 28)
        );

        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0x01, 0xbb, 0x00, 0x50]);
        let header = v2(0x21, 0x21, &block);
        assert_eq!(header.len(), 52);
        assert_eq!(
            parse(&header),
            done(proxied("[2001:db8::7]:443", "[2001:db8::1]:80"), 52)
        );

        // LOCAL: the family is ignored, and so is any block (which need not be TLVs).
        for (family, body) in [(0x00, &[][..]), (0x11, &TCP4_BLOCK[..]), (0xff, b"\x01")] {
            let header = v2(0x20, family, body);
            assert_eq!(parse(&header), done(Header::Local, header.len()));
        }
        assert_eq!(Header::Local.source(), None);
    }

    #[test]
    fn v2_unspecified_and_unused_families_keep_the_real_peer() {
        for (family, body) in [
            (0x00, &[][..]),
            (0x00, &TCP4_BLOCK[..]),
            (0x12, &TCP4_BLOCK[..]), // UDP over IPv4
            (0x22, &[][..]),         // UDP over IPv6, addresses omitted: skipped unread
            (0x32, &[7; 216][..]),   // Unix datagram
            (0x10, &[1, 2, 3][..]),  // IPv4, unspecified transport
            (0x01, &[][..]),         // unspecified family, stream
        ] {
            let header = v2(0x21, family, body);
            assert_eq!(
                parse(&header),
                done(Header::Unknown, header.len()),
                "{family:#x}"
            );
        }
    }

    #[test]
    fn v2_tlvs_are_skipped_and_checked() {
        let tlvs = [
            tlv(0x01, b"h2"),
            tlv(0x02, b"example.com"),
            tlv(0x04, &[]),
            tlv(0x20, &[0x01, 0, 0, 0, 0]),
            tlv(0xe0, &[9; 600]),
        ]
        .concat();
        let header = v2(0x21, 0x11, &[&TCP4_BLOCK[..], &tlvs].concat());
        assert_eq!(
            parse(&header),
            done(proxied("203.0.113.7:56324", "192.0.2.1:7000"), header.len())
        );
        // A value longer than what is left, a head that does not fit, a truncated one.
        for bad in [
            tlv(0x01, b"h2")[..4].to_vec(),
            vec![0x04, 0x00],
            vec![0x04],
            [tlv(0x04, &[]), vec![0x01, 0xff, 0xff]].concat(),
        ] {
            let header = v2(0x21, 0x11, &[&TCP4_BLOCK[..], &bad].concat());
            assert_eq!(parse(&header), Parse::Invalid(Reason::BadTlv), "{bad:?}");
        }
    }

    #[test]
    fn v2_unix_addresses() {
        let mut block = vec![0; 216];
        block[..14].copy_from_slice(b"/run/front.soc");
        block[108..114].copy_from_slice(b"\0back\0");
        let header = v2(0x21, 0x31, &block);
        let expected = Header::Proxy {
            source: Address::Unix(b"/run/front.soc".to_vec()),
            destination: Address::Unix(b"\0back".to_vec()),
        };
        assert_eq!(parse(&header), done(expected.clone(), 232));
        assert_eq!(
            expected.source().unwrap().to_string(),
            "unix:/run/front.soc"
        );
        if let Header::Proxy { destination, .. } = &expected {
            assert_eq!(destination.to_string(), "unix:@back");
        }
        // A path stops at its first NUL; an unnamed socket is all NULs.
        block[13] = 0;
        block[14] = b'x';
        block[108..].fill(0);
        assert_eq!(
            parse(&v2(0x21, 0x31, &block)),
            done(
                Header::Proxy {
                    source: Address::Unix(b"/run/front.so".to_vec()),
                    destination: Address::Unix(Vec::new()),
                },
                232
            )
        );
    }

    #[test]
    fn v2_malformed() {
        let cases = [
            (v2(0x11, 0x11, &TCP4_BLOCK), Reason::BadVersion),
            (v2(0x31, 0x11, &TCP4_BLOCK), Reason::BadVersion),
            (v2(0x22, 0x11, &TCP4_BLOCK), Reason::BadCommand),
            (v2(0x2f, 0x00, &[]), Reason::BadCommand),
            (v2(0x21, 0x41, &TCP4_BLOCK), Reason::BadFamily),
            (v2(0x21, 0x13, &TCP4_BLOCK), Reason::BadFamily),
            (v2(0x21, 0x11, &TCP4_BLOCK[..11]), Reason::ShortAddresses),
            (v2(0x21, 0x21, &[0; 35]), Reason::ShortAddresses),
            (v2(0x21, 0x31, &[0; 215]), Reason::ShortAddresses),
            (v2(0x20, 0x00, &[0; V2_MAX_BYTES - 15]), Reason::TooLong),
        ];
        for (header, reason) in cases {
            assert_eq!(
                parse(&header),
                Parse::Invalid(reason),
                "{:x?}",
                &header[12..16]
            );
        }
        // The longest accepted, and the length check made from the fixed part alone.
        let longest = v2(0x20, 0x00, &[0; V2_MAX_BYTES - 16]);
        assert_eq!(parse(&longest), done(Header::Local, V2_MAX_BYTES));
        let too_long = v2(0x21, 0x00, &[0; V2_MAX_BYTES - 15]);
        assert_eq!(parse(&too_long[..16]), Parse::Invalid(Reason::TooLong));
    }

    #[test]
    fn truncated_headers_wait_for_more() {
        let headers = [
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n".to_vec(),
            v2(0x21, 0x11, &[&TCP4_BLOCK[..], &tlv(1, b"h2")].concat()),
            v2(0x21, 0x31, &[1; 216]),
            v2(0x20, 0x00, &[5; 30]),
        ];
        for header in headers {
            for end in 0..header.len() {
                let mut parser = ProxyHeader::new();
                assert_eq!(parser.on_input(&header[..end]), Parse::NeedMore);
                assert!(parser.held_bytes() <= MAX_HELD_BYTES);
            }
        }
    }

    #[test]
    fn the_bytes_after_the_header_are_the_sessions() {
        let payload = b"PROXY TCP4 but this is the client's first line\n";
        for header in [
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n".to_vec(),
            v2(0x21, 0x11, &TCP4_BLOCK),
            v2(0x20, 0x00, &[]),
        ] {
            let input = [&header[..], payload].concat();
            let Parse::Done { consumed, .. } = parse(&input) else {
                panic!("{input:?}")
            };
            assert_eq!(&input[consumed..], payload);
            // Split inside the header: the second read's consumed is the header's rest.
            let mut parser = ProxyHeader::new();
            assert_eq!(parser.on_input(&input[..10]), Parse::NeedMore);
            let Parse::Done { consumed, .. } = parser.on_input(&input[10..]) else {
                panic!()
            };
            assert_eq!(consumed, header.len() - 10);
        }
    }

    #[test]
    fn the_parser_is_small() {
        let size = std::mem::size_of::<ProxyHeader>();
        assert!(
            size <= 360,
            "ProxyHeader is {size} bytes; the docs say about 350"
        );
    }

    #[test]
    fn the_outcome_is_sticky() {
        let mut parser = ProxyHeader::new();
        let header = v2(0x21, 0x11, &TCP4_BLOCK);
        let first = parser.on_input(&header);
        let Parse::Done { header, .. } = first else {
            panic!()
        };
        assert_eq!(parser.on_input(b"more"), done(header, 0));
        assert_eq!(parser.held_bytes(), 0);

        let mut parser = ProxyHeader::new();
        assert_eq!(parser.on_input(b"X"), Parse::Invalid(Reason::NotProxy));
        assert_eq!(
            parser.on_input(b"PROXY UNKNOWN\r\n"),
            Parse::Invalid(Reason::NotProxy)
        );
    }

    #[test]
    fn encoders_write_what_the_parser_reads() {
        assert_eq!(Header::Local.to_v1(), None);
        assert_eq!(
            proxied("1.2.3.4:5", "[::1]:6").to_v1(),
            None,
            "v1 cannot mix families"
        );
        assert_eq!(
            proxied("203.0.113.7:56324", "192.0.2.1:7000")
                .to_v1()
                .unwrap(),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n"
        );
        assert_eq!(
            proxied("203.0.113.7:56324", "192.0.2.1:7000")
                .to_v2()
                .unwrap(),
            v2(0x21, 0x11, &TCP4_BLOCK)
        );
    }

    /// Any header this server can be sent: every kind, both versions where they can say it.
    fn any_header() -> impl Strategy<Value = Header> {
        let v4 =
            any::<(u32, u16)>().prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port)));
        let v6 = any::<(u128, u16)>()
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port)));
        let unix = prop_oneof![
            "/[a-z/.]{0,107}".prop_map(String::into_bytes),
            // An abstract name has at least one byte: a lone NUL is all zeros on the wire, which
            // is an unnamed socket.
            "[a-z]{1,107}".prop_map(|name| [&[0][..], name.as_bytes()].concat()),
            Just(Vec::new()),
        ];
        prop_oneof![
            Just(Header::Local),
            Just(Header::Unknown),
            (v4.clone(), v4).prop_map(|(s, d)| Header::Proxy {
                source: Address::Inet(s),
                destination: Address::Inet(d)
            }),
            (v6.clone(), v6).prop_map(|(s, d)| Header::Proxy {
                source: Address::Inet(s),
                destination: Address::Inet(d)
            }),
            (unix.clone(), unix).prop_map(|(s, d)| Header::Proxy {
                source: Address::Unix(s),
                destination: Address::Unix(d)
            }),
        ]
    }

    /// A header's bytes, v1 or v2 (with TLVs appended for v2), and what parsing them gives.
    fn any_encoded() -> impl Strategy<Value = (Vec<u8>, Header)> {
        let tlvs = proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..4,
        );
        (any_header(), any::<bool>(), tlvs).prop_map(|(header, v1, tlvs)| {
            if let (true, Some(line)) = (v1, header.to_v1()) {
                return (line, header);
            }
            let mut bytes = header.to_v2().unwrap();
            for (kind, value) in tlvs {
                bytes.extend_from_slice(&tlv(kind, &value));
            }
            let length = (bytes.len() - V2_FIXED_BYTES) as u16;
            bytes[14..16].copy_from_slice(&length.to_be_bytes());
            (bytes, header)
        })
    }

    /// Feeds `input` cut at `cuts`; returns the outcome and the header bytes consumed in all
    /// (0 when refused: how many pieces were taken before the refusal depends on the cutting).
    fn feed(input: &[u8], cuts: &[usize]) -> (Parse, usize) {
        let mut parser = ProxyHeader::new();
        let (mut start, mut total) = (0, 0);
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            let outcome = parser.on_input(&input[start..cut]);
            assert!(parser.held_bytes() <= MAX_HELD_BYTES);
            match outcome {
                Parse::NeedMore => total += cut - start,
                Parse::Done { header, consumed } => {
                    return (done(header, 0), total + consumed);
                }
                invalid => return (invalid, 0),
            }
            start = cut;
        }
        (Parse::NeedMore, total)
    }

    proptest! {
        /// However header and payload are cut into reads, the header is the same and so is
        /// the number of bytes it took in all: exactly its own.
        #[test]
        fn every_split_gives_the_same_header(
            (bytes, header) in any_encoded(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            cuts.sort_unstable();
            let input = [&bytes[..], &payload].concat();
            let whole = feed(&input, &[]);
            prop_assert_eq!(&whole, &(done(header, 0), bytes.len()));
            prop_assert_eq!(&feed(&input, &cuts), &whole);
            let every_byte: Vec<usize> = (1..input.len()).collect();
            prop_assert_eq!(&feed(&input, &every_byte), &whole);
        }

        /// Damaged headers too: whatever the outcome, it does not depend on the cutting.
        #[test]
        fn every_split_of_a_damaged_header_gives_the_same_outcome(
            (mut bytes, _) in any_encoded(),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..3),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            cuts.sort_unstable();
            for (at, byte) in damage {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let whole = feed(&bytes, &[]);
            prop_assert_eq!(&feed(&bytes, &cuts), &whole);
            let every_byte: Vec<usize> = (1..bytes.len()).collect();
            prop_assert_eq!(&feed(&bytes, &every_byte), &whole);
        }
    }
}
