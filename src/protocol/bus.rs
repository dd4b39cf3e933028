//! The chat bus's wire: how one room spans several oneloop processes through Redis, as pure
//! functions and constants — no socket here (the loop's side is `reactor::bus`).
//!
//! ## Why Redis does the ordering
//!
//! A room promises one order: every member sees the same lines, joins, leaves and renames in
//! the same sequence. Across processes that needs one place that serialises them, and Redis is
//! one: it runs one command at a time, and every subscriber of a channel gets its messages in
//! the order they were published. So an instance never delivers its own members' broadcasts
//! straight from its loop; it publishes them on the room's channel and delivers what comes back
//! — its own lines included, at their place in the room's order.
//!
//! The sans-I/O [`Room`](super::room::Room) still decides everything a room decides (names,
//! notices, formatting, escaping): what travels is its formatted broadcasts, each with its
//! [`origin`](encode_event) (which instance and member sent it, so that the sender is skipped
//! as it is in one process). What one instance cannot decide alone — whether a name is free
//! anywhere in the room — goes to a small Lua script that Redis runs atomically:
//!
//! | Redis data | key | holds |
//! |---|---|---|
//! | the room's channel | `oneloop:DB:chat:ROOM` | broadcasts, as [`encode_event`] frames them |
//! | the room's names | `oneloop:chat:ROOM:names` (a hash) | NAME → its [`holder`] (`SESSION KEY`) |
//! | an instance's heartbeat | `oneloop:instance:SESSION` | `1`, expiring after [`HEARTBEAT_TTL`] |
//!
//! Channels are not per database in Redis (a `PUBLISH` reaches subscribers on every database),
//! so the channel's name carries the database number: two deployments on one Redis with
//! different databases share nothing.
//!
//! * **Names**: [`JOIN_SCRIPT`] claims a member's default name, or the first free `-2`, `-3`
//!   suffix, with `HSETNX` in one step; [`NICK_SCRIPT`] takes a new name and frees the old one
//!   *and* publishes the rename notice, so the notice's place in the order is the moment the
//!   name changed hands; [`RELEASE_SCRIPT`] frees a name and publishes its `left` notice, only if
//!   the name is still held by that holder (so two instances reaping the same dead member
//!   announce it once). `/who` reads the hash (`HKEYS`).
//! * **Dead instances**: each instance refreshes its heartbeat key every
//!   [`HEARTBEAT_EVERY`]; every instance looks for holders whose heartbeat has expired
//!   ([`DEAD_HOLDERS_SCRIPT`]) as often, and releases their names with the room's `left` notice.
//!   A member of an instance that died is announced within `HEARTBEAT_TTL` + `HEARTBEAT_EVERY` +
//!   one round trip: about 8 s, inside the contract's 15 s. An instance takes a new session name
//!   every time it connects, so the names its members held before a lost connection are reaped
//!   like a dead instance's, and can never be mistaken for its new members'.
//!
//! The RESP framing itself is the `redis-protocol` crate's ([`push_command`], [`next_reply`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

/// How long an instance's heartbeat key lives without a refresh.
pub(crate) const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// How often an instance refreshes its heartbeat and looks for dead instances' members.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The chat bus's address, `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]` (the form `redis-cli -u`
/// and every Redis client library take).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BusUrl {
    /// The host name or IP address (IPv6 in brackets in the URL, without them here).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// The database (`SELECT`): the names hash and the heartbeats live there, and it is part of
    /// the channel's name.
    pub db: u32,
    /// The ACL user (`AUTH USER PASSWORD`), if any.
    pub user: Option<String>,
    /// The password (`AUTH PASSWORD`, Redis's `requirepass`), if any.
    pub password: Option<String>,
}

impl FromStr for BusUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<BusUrl, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?}: the chat bus must be a redis:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, place) = match authority.rsplit_once('@') {
            Some((credentials, place)) => (Some(credentials), place),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (
                    (!user.is_empty()).then(|| user.to_owned()),
                    Some(password.to_owned()),
                ),
                // `AUTH` needs a password; a user alone would silently connect as `default`.
                None => {
                    return Err(format!(
                        "{url:?}: a user needs a password (redis://USER:PASSWORD@HOST:PORT)"
                    ))
                }
            },
        };
        let (host, port) = place
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?}: the chat bus needs HOST:PORT"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{url:?}: the chat bus needs a host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{url:?}: {port:?} is not a port (1 to 65535)"))?;
        let db = match path {
            "" => 0,
            path => path
                .parse::<u32>()
                .map_err(|_| format!("{url:?}: {path:?} is not a database number"))?,
        };
        Ok(BusUrl {
            host: host.to_owned(),
            port,
            db,
            user,
            password,
        })
    }
}

/// The URL without its password (for logs): `redis://127.0.0.1:6379/0`.
impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let credentials = match (&self.user, &self.password) {
            (None, None) => String::new(),
            (Some(user), None) => format!("{user}@"),
            (user, Some(_)) => format!("{}:***@", user.as_deref().unwrap_or("")),
        };
        write!(f, "redis://{credentials}{host}:{}/{}", self.port, self.db)
    }
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The Redis names of one room on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomKeys {
    /// The channel its broadcasts are published on.
    pub channel: Vec<u8>,
    /// The hash of its members' names.
    pub names: Vec<u8>,
}

impl RoomKeys {
    /// The keys of room `room` (a port number, a socket file's name, a passed socket's name) on
    /// database `db`.
    pub(crate) fn new(db: u32, room: &str) -> RoomKeys {
        RoomKeys {
            channel: format!("oneloop:{db}:chat:{room}").into_bytes(),
            names: format!("oneloop:chat:{room}:names").into_bytes(),
        }
    }
}

/// What comes before a session's name in its heartbeat key.
pub(crate) const HEARTBEAT_PREFIX: &str = "oneloop:instance:";

/// The heartbeat key of the instance session `session`.
pub(crate) fn heartbeat_key(session: &str) -> Vec<u8> {
    format!("{HEARTBEAT_PREFIX}{session}").into_bytes()
}

/// Who holds a name, as the names hash stores it: `SESSION KEY` (the instance's session and the
/// member's slab key). A key is reused once its member is gone, but never while the member's
/// name is held: the release goes to Redis before any later claim, on the same connection.
pub(crate) fn holder(session: &str, key: usize) -> String {
    format!("{session} {key}")
}

/// The session named by a holder (its first word), if it is one.
pub(crate) fn holder_session(holder: &[u8]) -> Option<&str> {
    let end = holder.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&holder[..end]).ok()
}

/// Claims a joining member's name: `ARGV[1]` if free, else the first free of `ARGV[1]-2`,
/// `ARGV[1]-3`, ... (the room's suffix rule), for holder `ARGV[2]`. `KEYS[1]` is the names hash.
/// Returns `{name, members}`, the members counting the newcomer (its welcome says how many are
/// here, on every instance).
pub(crate) const JOIN_SCRIPT: &str = "\
local name = ARGV[1]
local n = 1
while redis.call('HSETNX', KEYS[1], name, ARGV[2]) == 0 do
  n = n + 1
  name = ARGV[1] .. '-' .. n
end
return {name, redis.call('HLEN', KEYS[1])}";

/// Renames holder `ARGV[3]` from `ARGV[1]` to `ARGV[2]` if `ARGV[2]` is free, and then publishes
/// `ARGV[4]` (the rename notice, as [`encode_event`] frames it) on `KEYS[2]`. `KEYS[1]` is the names
/// hash. Returns 1 if renamed, 0 if the name is taken.
pub(crate) const NICK_SCRIPT: &str = "\
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1";

/// Frees name `ARGV[1]` if holder `ARGV[2]` still holds it, and then publishes `ARGV[3]` (its `left`
/// notice; nothing if empty: a member that never got to join) on `KEYS[2]`. `KEYS[1]` is the names
/// hash. Returns 1 if released, 0 if it was not held by that holder (already released, by the
/// instance itself or by another that reaped it).
pub(crate) const RELEASE_SCRIPT: &str = "\
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('PUBLISH', KEYS[2], ARGV[3])
end
return 1";

/// Frees every name in hash `KEYS[1]` that holder `ARGV[1]` holds, unannounced: a newcomer's
/// claim whose answer was lost with the connection (its name, whatever suffix the claim gave,
/// was never announced). Walks the hash: run only when the bus comes back, for such claims.
pub(crate) const RELEASE_HOLDER_SCRIPT: &str = "\
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 0";

/// The names in hash `KEYS[1]` whose holder's session has no heartbeat key (`ARGV[1]` followed by
/// the session) any more, as a flat `{name, holder, name, holder, ...}`.
pub(crate) const DEAD_HOLDERS_SCRIPT: &str = "\
local all = redis.call('HGETALL', KEYS[1])
local dead = {}
for i = 1, #all, 2 do
  local session = string.match(all[i + 1], '^(%S+) ')
  if session == nil or redis.call('EXISTS', ARGV[1] .. session) == 0 then
    dead[#dead + 1] = all[i]
    dead[#dead + 1] = all[i + 1]
  end
end
return dead";

/// Appends one command (`args`, as a RESP array of bulk strings) to `out`.
pub(crate) fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // At most a dozen arguments: the frame array lives on the stack.
    let mut frames = [const { BorrowedFrame::Null }; 12];
    assert!(
        args.len() <= frames.len(),
        "a bus command has at most 12 arguments"
    );
    for (frame, arg) in frames.iter_mut().zip(args) {
        *frame = BorrowedFrame::BulkString(arg);
    }
    let frame = BorrowedFrame::Array(&frames[..args.len()]);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    let written = encode_borrowed(&mut out[start..], &frame, false)
        .expect("the buffer was sized by encode_len");
    out.truncate(start + written);
}

/// One reply from Redis, borrowing from the buffer it was read into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// `+OK` and other simple strings.
    Status(&'a [u8]),
    /// `-ERR ...`: the command failed.
    Error(&'a [u8]),
    /// `:N`.
    Integer(i64),
    /// `$N` bulk string (`None`: the null bulk string).
    Bulk(Option<&'a [u8]>),
    /// `*N`: an array (a pub/sub message is one: `message`, channel, payload).
    Array(Vec<Reply<'a>>),
}

impl<'a> Reply<'a> {
    /// The bytes of a bulk or simple string.
    pub(crate) fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Reply::Bulk(bytes) => bytes,
            Reply::Status(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// A reply that is not RESP: the peer is not a Redis server (or is a broken one).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotResp(pub String);

/// The first complete reply at the start of `input`, and how many bytes it took; `None` while
/// it is incomplete.
pub(crate) fn next_reply(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, NotResp> {
    match decode_range(input) {
        Ok(Some((frame, used))) => Ok(Some((to_reply(input, frame), used))),
        Ok(None) => Ok(None),
        Err(error) => Err(NotResp(error.to_string())),
    }
}

fn to_reply(input: &[u8], frame: RangeFrame) -> Reply<'_> {
    match frame {
        RangeFrame::SimpleString((start, end)) => Reply::Status(&input[start..end]),
        RangeFrame::Error((start, end)) => Reply::Error(&input[start..end]),
        RangeFrame::Integer(i) => Reply::Integer(i),
        RangeFrame::BulkString((start, end)) => Reply::Bulk(Some(&input[start..end])),
        RangeFrame::Null => Reply::Bulk(None),
        RangeFrame::Array(frames) => Reply::Array(
            frames
                .into_iter()
                .map(|frame| to_reply(input, frame))
                .collect(),
        ),
    }
}

/// Who sent a broadcast: the instance session, and the member to skip (`None`: everyone gets
/// it, the sender too — a rename's confirmation, or a notice about a member who is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Origin<'a> {
    /// The publishing instance's session.
    pub session: &'a [u8],
    /// The member that must not get it: its slab key and connection serial on that instance.
    pub except: Option<(usize, u64)>,
}

/// Appends one broadcast as the channel carries it: a header line `SESSION KEY SERIAL` (or
/// `SESSION - -` for no member to skip), then the room's bytes unchanged.
pub(crate) fn encode_event(
    out: &mut Vec<u8>,
    session: &str,
    except: Option<(usize, u64)>,
    bytes: &[u8],
) {
    use std::io::Write as _;
    out.extend_from_slice(session.as_bytes());
    match except {
        Some((key, serial)) => {
            let _ = writeln!(out, " {key} {serial}");
        }
        None => out.extend_from_slice(b" - -\n"),
    }
    out.extend_from_slice(bytes);
}

/// A broadcast as [`encode_event`] framed it: its origin and the room's bytes. `None` for a
/// payload that is not one (published by something else on the channel), or whose bytes are not
/// whole lines.
pub(crate) fn decode_event(payload: &[u8]) -> Option<(Origin<'_>, &[u8])> {
    let newline = memchr::memchr(b'\n', payload)?;
    let header = std::str::from_utf8(&payload[..newline]).ok()?;
    let mut words = header.split(' ');
    let session = words.next().filter(|s| !s.is_empty())?;
    let except = match (words.next()?, words.next()?) {
        ("-", "-") => None,
        (key, serial) => Some((key.parse().ok()?, serial.parse().ok()?)),
    };
    let bytes = &payload[newline + 1..];
    // The room only ever publishes whole lines: anything else would break its members' framing.
    if words.next().is_some() || bytes.last() != Some(&b'\n') {
        return None;
    }
    Some((
        Origin {
            session: session.as_bytes(),
            except,
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_redis_clients_take_them() {
        let url: BusUrl = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("127.0.0.1", 6379, 0)
        );
        assert_eq!((url.user, url.password), (None, None));
        let url: BusUrl = "redis://:s3cret@redis.internal:7000/3".parse().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("redis.internal", 7000, 3)
        );
        assert_eq!(url.password.as_deref(), Some("s3cret"));
        assert_eq!(url.to_string(), "redis://:***@redis.internal:7000/3");
        let url: BusUrl = "redis://chat:p@ss@[::1]:6380/1".parse().unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.user.as_deref(), Some("chat"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.to_string(), "redis://chat:***@[::1]:6380/1");
        for bad in [
            "127.0.0.1:6379",
            "redis://127.0.0.1",
            "redis://:6379",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:1/x",
            "redis://user@h:1",
            "http://h:1",
        ] {
            assert!(bad.parse::<BusUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut out = b"*1\r\n$4\r\nPING\r\n".to_vec();
        push_command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(
            out,
            b"*1\r\n$4\r\nPING\r\n*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n"
        );
    }

    #[test]
    fn replies_are_read_one_at_a_time_and_wait_for_their_end() {
        let input = b"+OK\r\n:3\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$-1\r\n-ERR no\r\n$5\r\nhel";
        let (reply, used) = next_reply(input).unwrap().unwrap();
        assert_eq!((reply, used), (Reply::Status(b"OK"), 5));
        let rest = &input[used..];
        let (reply, used) = next_reply(rest).unwrap().unwrap();
        assert_eq!(reply, Reply::Integer(3));
        let rest = &rest[used..];
        let (reply, used) = next_reply(rest).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Bulk(Some(b"message")),
                Reply::Bulk(Some(b"ch")),
                Reply::Bulk(None)
            ])
        );
        let rest = &rest[used..];
        let (reply, used) = next_reply(rest).unwrap().unwrap();
        assert_eq!(reply, Reply::Error(b"ERR no"));
        assert_eq!(
            next_reply(&rest[used..]),
            Ok(None),
            "an incomplete bulk waits"
        );
        assert!(next_reply(b"hello\r\n").is_err(), "not RESP");
    }

    #[test]
    fn events_carry_their_origin_and_the_room_bytes_unchanged() {
        let mut out = Vec::new();
        encode_event(&mut out, "a1b2", Some((7, 42)), b"bob: hi\n");
        assert_eq!(out, b"a1b2 7 42\nbob: hi\n");
        let (origin, bytes) = decode_event(&out).unwrap();
        assert_eq!(origin.session, b"a1b2");
        assert_eq!(origin.except, Some((7, 42)));
        assert_eq!(bytes, b"bob: hi\n");
        out.clear();
        encode_event(&mut out, "a1b2", None, b"* bob left\n");
        let (origin, bytes) = decode_event(&out).unwrap();
        assert_eq!((origin.except, bytes), (None, &b"* bob left\n"[..]));
        for bad in [
            &b"no header"[..],
            b"s 1\nx",
            b"s x y\nz",
            b" 1 2\nz",
            b"s 1 2 3\n",
        ] {
            assert_eq!(
                decode_event(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn holders_name_their_session_first() {
        let holder = holder("a1b2", 7);
        assert_eq!(holder, "a1b2 7");
        assert_eq!(holder_session(holder.as_bytes()), Some("a1b2"));
        assert_eq!(holder_session(b"nospace"), None);
        assert_eq!(
            RoomKeys::new(2, "7000"),
            RoomKeys {
                channel: b"oneloop:2:chat:7000".to_vec(),
                names: b"oneloop:chat:7000:names".to_vec()
            }
        );
    }
}
