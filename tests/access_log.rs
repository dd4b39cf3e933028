//! The access log (contract v3, "Logs"), black-box: the real binary at `RUST_LOG=oneloop=info`,
//! real clients over loopback, and every `oneloop::access` line of its stderr parsed as logfmt
//! (`key=value`, a value quoted with backslash escapes when it must be).
//!
//! Each test finds its lines by what it knows from the outside — the client's own address (the
//! `peer`), the service's listening address, the names it took — never by the server's
//! connection numbers. Every wait polls the stderr file with a deadline.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{connect, half_close, read_exact_within, read_to_end_within, send, LineReader, Server};
use util::{Snippet, DEADLINE};

/// The log level that turns the access log on, as the contract names it.
const INFO: (&str, &str) = ("RUST_LOG", "oneloop=info");

/// One access-log line: its fields in order (a key may not repeat).
#[derive(Clone, Debug)]
struct Entry {
    fields: Vec<(String, String)>,
    raw: String,
}

impl Entry {
    /// The value of `key`, if the line has it.
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`; panics, showing the line, if it is missing.
    fn field(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no {key}= in access line {:?}", self.raw))
    }

    fn event(&self) -> &str {
        self.field("event")
    }

    /// A field that must be a plain unsigned number.
    fn number(&self, key: &str) -> u64 {
        let value = self.field(key);
        assert!(
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
            "{key}={value:?} is not a plain number in {:?}",
            self.raw
        );
        value.parse().unwrap()
    }

    /// `duration`, which must be a non-negative decimal number of seconds.
    fn duration(&self) -> f64 {
        let value = self.field("duration");
        assert!(
            value.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
            "duration={value:?} is not a plain decimal in {:?}",
            self.raw
        );
        let seconds: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("duration={value:?} in {:?}", self.raw));
        assert!(seconds >= 0.0, "negative duration in {:?}", self.raw);
        seconds
    }

    /// Whether the line is `event` and has every `key=value` of `with`.
    fn is(&self, event: &str, with: &[(&str, &str)]) -> bool {
        self.get("event") == Some(event) && with.iter().all(|(k, v)| self.get(k) == Some(*v))
    }
}

/// Parses logfmt: `key=value` pairs separated by single spaces; a value is either bare (no
/// space, quote, `=`, backslash or control character) or double-quoted with backslash escapes
/// (`\"`, `\\`, `\n`, `\r`, `\t`, `\0`, `\u{HEX}`, as the implementation's doc promises).
fn parse_logfmt(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        if !fields.is_empty() && chars.next() != Some(' ') {
            return Err(format!("no single space before field {}", fields.len() + 1));
        }
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                other => return Err(format!("bad key {key:?} (then {other:?})")),
            }
        }
        if key.is_empty() {
            return Err("empty key".into());
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key}")),
                    Some('"') => break,
                    Some('\\') => value.push(unescape(&mut chars)?),
                    Some(c) if c.is_control() => {
                        return Err(format!("raw control {c:?} in quoted value of {key}"))
                    }
                    Some(c) => value.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(' ')) {
                return Err(format!("junk after the quoted value of {key}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if c == '"' || c == '=' || c == '\\' || c.is_control() {
                    return Err(format!("{c:?} in the bare value of {key}: it needs quotes"));
                }
                value.push(c);
                chars.next();
            }
            if value.is_empty() {
                return Err(format!(
                    "empty bare value of {key} (an empty value is \"\")"
                ));
            }
        }
        if fields.iter().any(|(k, _)| *k == key) {
            return Err(format!("{key} twice"));
        }
        fields.push((key, value));
    }
    Ok(fields)
}

/// The character a backslash escape stands for (the backslash is taken already).
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    Ok(match chars.next() {
        Some('"') => '"',
        Some('\\') => '\\',
        Some('\'') => '\'',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('0') => '\0',
        Some('u') => {
            if chars.next() != Some('{') {
                return Err("\\u without {".into());
            }
            let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad \\u{{{hex}}}"))?
        }
        other => return Err(format!("unknown escape \\{other:?}")),
    })
}

#[test]
fn the_logfmt_parser_reads_what_it_should_and_refuses_the_rest() {
    let fields = parse_logfmt(r#"a=plain b="two words" c="x=\"y\"\n\u{1b}" d="" e=42"#).unwrap();
    let expect = [
        ("a", "plain"),
        ("b", "two words"),
        ("c", "x=\"y\"\n\u{1b}"),
        ("d", ""),
        ("e", "42"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(fields, expect);
    for bad in [
        "a=b c", "a=b  c=d", "a=\"b", "a=b\"c", "a=", "a=1 a=2", "a=\"b\"c",
    ] {
        assert!(parse_logfmt(bad).is_err(), "{bad:?} parsed");
    }
}

/// Every access line in `stderr`, parsed; panics on a line that is not clean logfmt, or that is
/// not an env_logger `INFO` line of the target `oneloop::access`.
fn access_lines(stderr: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in stderr.lines() {
        let Some(at) = line.find(" oneloop::access] ") else {
            assert!(
                !line.contains("event="),
                "an access-looking line outside the oneloop::access target: {line:?}"
            );
            continue;
        };
        assert!(
            line.starts_with('[') && line[..at].contains(" INFO "),
            "an access line not at INFO: {line:?}"
        );
        let body = &line[at + " oneloop::access] ".len()..];
        let fields = parse_logfmt(body)
            .unwrap_or_else(|e| panic!("access line {body:?} is not clean logfmt: {e}"));
        let entry = Entry {
            fields,
            raw: body.to_owned(),
        };
        let event = entry.event().to_owned();
        assert!(
            ["close", "join", "leave", "stored"].contains(&event.as_str()),
            "unknown event in {body:?}"
        );
        entries.push(entry);
    }
    entries
}

/// Polls the server's stderr until `count` access lines match `wanted`, within `within`;
/// returns every access line then. Panics with the whole stderr if they do not come.
fn wait_for_lines(
    server: &Server,
    within: Duration,
    count: usize,
    what: &str,
    wanted: impl Fn(&Entry) -> bool,
) -> Vec<Entry> {
    let deadline = Instant::now() + within;
    loop {
        let entries = access_lines(&server.stderr());
        if entries.iter().filter(|e| wanted(e)).count() >= count {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} access line within {within:?}; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for one access line matching `wanted` and returns it.
fn wait_for(server: &Server, what: &str, wanted: impl Fn(&Entry) -> bool) -> Entry {
    let entries = wait_for_lines(server, DEADLINE, 1, what, &wanted);
    entries.into_iter().find(|e| wanted(e)).unwrap()
}

/// The `close` line of the connection from `peer`, once it is there.
fn close_of(server: &Server, peer: &str) -> Entry {
    wait_for(server, &format!("close of {peer}"), |e| {
        e.is("close", &[("peer", peer)])
    })
}

/// Lets the server log anything that would come late (a second line for a connection that
/// already has one), then returns its access lines about `peer`.
fn settled_lines_of(server: &Server, peer: &str) -> Vec<Entry> {
    thread::sleep(Duration::from_millis(300));
    access_lines(&server.stderr())
        .into_iter()
        .filter(|e| e.get("peer") == Some(peer))
        .collect()
}

/// Starts `oneloop serve ARGS` with the access log on.
fn logging_server(args: &[&str]) -> Server {
    Server::start_with_env(args, &[INFO])
}

/// Sends `request` and reads its echo back, whole.
fn echo_round(stream: &mut TcpStream, request: &[u8]) {
    send(stream, request);
    assert_eq!(read_exact_within(stream, request.len()), request);
}

#[test]
fn an_echo_connection_gets_one_close_line_with_its_service_peer_bytes_and_cause() {
    let server = logging_server(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut client = connect(addr);
    let peer = client.local_addr().unwrap().to_string();
    echo_round(&mut client, b"hello");
    drop(client);

    let close = close_of(&server, &peer);
    assert_eq!(close.field("protocol"), "echo", "{}", close.raw);
    assert_eq!(close.field("transport"), "tcp", "{}", close.raw);
    assert_eq!(close.field("address"), addr.to_string(), "{}", close.raw);
    assert_eq!(close.number("bytes_in"), 5, "{}", close.raw);
    assert_eq!(close.number("bytes_out"), 5, "{}", close.raw);
    assert_eq!(close.field("end"), "client closed", "{}", close.raw);
    assert!(close.duration() < DEADLINE.as_secs_f64(), "{}", close.raw);
    close.number("conn");
    assert_eq!(
        close.get("name"),
        None,
        "an echo client has no name: {}",
        close.raw
    );
    let lines = settled_lines_of(&server, &peer);
    assert_eq!(lines.len(), 1, "one line per connection, got {lines:#?}");
}

#[test]
fn many_requests_on_one_connection_still_give_one_line() {
    let server = logging_server(&["echo@127.0.0.1:0", "upper@127.0.0.1:0"]);
    let mut echo = connect(server.addr("echo"));
    let mut upper = connect(server.addr("upper"));
    let (echo_peer, upper_peer) = (
        echo.local_addr().unwrap().to_string(),
        upper.local_addr().unwrap().to_string(),
    );
    for n in 0..20 {
        echo_round(&mut echo, format!("request {n}\n").as_bytes());
        send(&mut upper, b"abc");
        assert_eq!(read_exact_within(&mut upper, 3), b"ABC");
    }
    // Half-close, then read the server's end: the close is the client's, at a known point.
    half_close(&echo);
    assert_eq!(read_to_end_within(&mut echo), b"");
    drop((echo, upper));
    let echo_close = close_of(&server, &echo_peer);
    let upper_close = close_of(&server, &upper_peer);
    let echo_bytes: u64 = (0..20).map(|n| format!("request {n}\n").len() as u64).sum();
    assert_eq!(
        echo_close.number("bytes_in"),
        echo_bytes,
        "{}",
        echo_close.raw
    );
    assert_eq!(
        echo_close.number("bytes_out"),
        echo_bytes,
        "{}",
        echo_close.raw
    );
    assert_eq!(
        upper_close.field("protocol"),
        "upper",
        "{}",
        upper_close.raw
    );
    assert_eq!(upper_close.number("bytes_in"), 60, "{}", upper_close.raw);
    assert_eq!(upper_close.number("bytes_out"), 60, "{}", upper_close.raw);
    assert_eq!(
        echo_close.field("end"),
        "client closed",
        "{}",
        echo_close.raw
    );
    assert_eq!(
        upper_close.field("end"),
        "client closed",
        "{}",
        upper_close.raw
    );
    assert_eq!(settled_lines_of(&server, &echo_peer).len(), 1);
    assert_eq!(settled_lines_of(&server, &upper_peer).len(), 1);
    let all = access_lines(&server.stderr());
    assert_eq!(all.len(), 2, "nothing per request: {all:#?}");
}

#[test]
fn an_idle_connection_ends_for_the_idle_timeout() {
    let server = logging_server(&["echo@127.0.0.1:0", "--idle-timeout", "1"]);
    let mut client = connect(server.addr("echo"));
    let peer = client.local_addr().unwrap().to_string();
    echo_round(&mut client, b"hi");
    let close = close_of(&server, &peer);
    assert_eq!(close.field("end"), "idle timeout", "{}", close.raw);
    assert!(close.duration() >= 0.9, "ended too soon: {}", close.raw);
    assert_eq!(close.number("bytes_in"), 2, "{}", close.raw);
    assert_eq!(close.number("bytes_out"), 2, "{}", close.raw);
    assert_eq!(read_to_end_within(&mut client), b"");
}

#[test]
fn a_connection_open_at_sigterm_ends_for_the_shutdown() {
    let mut server = logging_server(&["echo@127.0.0.1:0"]);
    let mut client = connect(server.addr("echo"));
    let peer = client.local_addr().unwrap().to_string();
    echo_round(&mut client, b"still here");
    server.signal("TERM");
    assert!(server.wait_for_exit().success(), "{}", server.stderr());
    let close = close_of(&server, &peer);
    assert_eq!(close.field("end"), "shutdown", "{}", close.raw);
    assert_eq!(close.number("bytes_in"), 10, "{}", close.raw);
    assert_eq!(close.number("bytes_out"), 10, "{}", close.raw);
    assert!(server.stderr().contains("shutdown complete"));
}

#[test]
fn an_overlong_line_is_ended_by_the_server() {
    let server = logging_server(&["timestamp@127.0.0.1:0", "--max-line", "10"]);
    let mut client = connect(server.addr("timestamp"));
    let peer = client.local_addr().unwrap().to_string();
    send(&mut client, b"0123456789abcdefghij\n");
    let reply = read_to_end_within(&mut client);
    assert!(
        reply.ends_with(b"error line too long\n"),
        "{:?}",
        Snippet(&reply)
    );
    let close = close_of(&server, &peer);
    assert_eq!(close.field("end"), "server ended it", "{}", close.raw);
    assert_eq!(close.field("protocol"), "timestamp", "{}", close.raw);
    assert_eq!(
        close.number("bytes_out"),
        reply.len() as u64,
        "{}",
        close.raw
    );
    let bytes_in = close.number("bytes_in");
    assert!((11..=21).contains(&bytes_in), "{}", close.raw);
}

/// A connection to `addr` whose close resets (SO_LINGER 0).
fn resetting_client(addr: SocketAddr) -> TcpStream {
    let stream = connect(addr);
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    stream
}

#[test]
fn a_client_reset_mid_stream_ends_as_client_closed_or_error() {
    let server = logging_server(&["echo@127.0.0.1:0"]);
    let mut client = resetting_client(server.addr("echo"));
    let peer = client.local_addr().unwrap().to_string();
    echo_round(&mut client, b"first");
    // Mid-stream: a megabyte on its way, its echo unread, then the reset.
    let block = vec![b'x'; 1 << 20];
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = client.write_all(&block);
    drop(client);
    let close = close_of(&server, &peer);
    let end = close.field("end");
    util::say(&format!(
        "a client reset mid-stream logs end={end:?}: {}",
        close.raw
    ));
    assert!(end == "client closed" || end == "error", "{}", close.raw);
    assert!(close.number("bytes_in") >= 5, "{}", close.raw);
}

/// A chat member: its connection, as a line reader, and the name its greeting gave it.
struct Member {
    reader: LineReader<TcpStream>,
    name: String,
}

impl Member {
    /// Reads the greeting from a new member's `stream`.
    fn greeted(stream: TcpStream) -> Member {
        let mut reader = LineReader::new(stream);
        let greeting = reader.line();
        let name = greeting
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("not a greeting: {greeting:?}"))
            .to_owned();
        Member { reader, name }
    }

    fn peer(&self) -> String {
        self.reader.stream.local_addr().unwrap().to_string()
    }
}

#[test]
fn a_chat_member_joins_renames_and_quits_under_its_new_name() {
    let server = logging_server(&["chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let mut alice = Member::greeted(connect(addr));
    let peer = alice.peer();
    assert_eq!(alice.name, peer, "a member's default name is its address");
    let join = wait_for(&server, "join", |e| e.is("join", &[("peer", &peer)]));
    assert_eq!(join.field("name"), peer, "{}", join.raw);
    assert_eq!(join.field("protocol"), "chat", "{}", join.raw);
    assert_eq!(join.field("address"), addr.to_string(), "{}", join.raw);

    alice.reader.send(b"/nick bob\n");
    alice.reader.expect(&format!("* {peer} is now bob"));
    alice.reader.send(b"hello\n");
    alice.reader.send(b"quit\n");
    let close = close_of(&server, &peer);
    assert_eq!(close.field("name"), "bob", "{}", close.raw);
    util::say(&format!(
        "a chat member's quit logs end={:?}",
        close.field("end")
    ));
    assert!(
        ["client closed", "server ended it"].contains(&close.field("end")),
        "{}",
        close.raw
    );
    let lines = settled_lines_of(&server, &peer);
    let events: Vec<&str> = lines.iter().map(Entry::event).collect();
    assert_eq!(events, ["join", "leave", "close"], "{lines:#?}");
    assert_eq!(lines[1].field("name"), "bob", "{}", lines[1].raw);
}

#[test]
fn a_rename_and_quit_in_one_packet_still_leave_under_the_new_name() {
    let server = logging_server(&["chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let mut watcher = Member::greeted(connect(addr));
    let mut alice = Member::greeted(connect(addr));
    watcher.reader.expect(&format!("* {} joined", alice.name));
    let peer = alice.peer();
    alice.reader.send(b"/nick carol\nquit\n");
    watcher
        .reader
        .expect(&format!("* {} is now carol", alice.name));
    watcher.reader.expect("* carol left");
    let close = close_of(&server, &peer);
    let lines = settled_lines_of(&server, &peer);
    let leave = lines
        .iter()
        .find(|e| e.event() == "leave")
        .unwrap_or_else(|| panic!("no leave line: {lines:#?}"));
    assert_eq!(
        leave.field("name"),
        "carol",
        "the room said `* carol left`: {}",
        leave.raw
    );
    assert_eq!(close.field("name"), "carol", "{}", close.raw);
}

#[test]
fn a_rename_cut_short_by_the_end_of_stream_still_leaves_under_the_new_name() {
    let server = logging_server(&["chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let mut watcher = Member::greeted(connect(addr));
    let mut alice = Member::greeted(connect(addr));
    watcher.reader.expect(&format!("* {} joined", alice.name));
    let peer = alice.peer();
    // The last line has no newline: the room takes it as a line at the end of stream.
    alice.reader.send(b"/nick dave");
    half_close(&alice.reader.stream);
    watcher
        .reader
        .expect(&format!("* {} is now dave", alice.name));
    watcher.reader.expect("* dave left");
    let close = close_of(&server, &peer);
    let lines = settled_lines_of(&server, &peer);
    let leave = lines
        .iter()
        .find(|e| e.event() == "leave")
        .unwrap_or_else(|| panic!("no leave line: {lines:#?}"));
    assert_eq!(
        leave.field("name"),
        "dave",
        "the room said `* dave left`: {}",
        leave.raw
    );
    assert_eq!(close.field("name"), "dave", "{}", close.raw);
}

#[test]
fn a_name_with_quotes_and_equals_signs_is_quoted_and_parses_back() {
    let server = logging_server(&["chat@127.0.0.1:0"]);
    let mut member = Member::greeted(connect(server.addr("chat")));
    let peer = member.peer();
    let name = r#"a"b=c\d"#;
    member.reader.send(format!("/nick {name}\n").as_bytes());
    member.reader.expect(&format!("* {peer} is now {name}"));
    member.reader.send(b"quit\n");
    let close = close_of(&server, &peer);
    assert_eq!(close.field("name"), name, "{}", close.raw);
}

#[test]
fn a_member_that_never_reads_is_dropped_for_falling_behind_and_leaves() {
    let server = logging_server(&["chat@127.0.0.1:0", "--output-limit", "65536"]);
    let addr = server.addr("chat");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
    let slow = Member::greeted(socket.into());
    let slow_peer = slow.peer();
    let mut talker = Member::greeted(connect(addr));
    // The talker talks (in a thread) until the slow member's close line is there.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut stream, stop) = (talker.reader.stream.try_clone().unwrap(), stop.clone());
        thread::spawn(move || {
            let line = [&[b'z'; 199][..], b"\n"].concat();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                if stream.write_all(&line).is_err() {
                    break;
                }
            }
        })
    };
    let close = wait_for(&server, "slow member's close", |e| {
        e.is("close", &[("peer", &slow_peer)])
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(
        close.field("end"),
        "dropped for falling behind",
        "{}",
        close.raw
    );
    assert_eq!(close.field("name"), slow.name, "{}", close.raw);
    let lines = settled_lines_of(&server, &slow_peer);
    let events: Vec<&str> = lines.iter().map(Entry::event).collect();
    assert_eq!(events, ["join", "leave", "close"], "{lines:#?}");
    assert_eq!(lines[1].field("name"), slow.name, "{}", lines[1].raw);
    // The talker's stream still works: it is not the one dropped.
    talker.reader.send(b"/who\n");
    let deadline = Instant::now() + DEADLINE;
    while !talker.reader.line().starts_with("* members: ") {
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn two_members_behind_one_address_are_logged_by_the_names_the_room_gave_them() {
    let server = logging_server(&["chat@127.0.0.1:0", "--proxy-protocol"]);
    let addr = server.addr("chat");
    let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 7000\r\n";
    let mut first = connect(addr);
    send(&mut first, header);
    let first = Member::greeted(first);
    let mut second = connect(addr);
    send(&mut second, header);
    let mut second = Member::greeted(second);
    assert_eq!(first.name, "203.0.113.7:4242");
    assert_eq!(second.name, "203.0.113.7:4242-2");
    let entries = wait_for_lines(&server, DEADLINE, 2, "joins", |e| e.event() == "join");
    let names: Vec<&str> = entries
        .iter()
        .filter(|e| e.event() == "join")
        .map(|e| e.field("name"))
        .collect();
    assert_eq!(
        names,
        ["203.0.113.7:4242", "203.0.113.7:4242-2"],
        "the join lines should name each member as the room does"
    );
    second.reader.send(b"quit\n");
    let entries = wait_for_lines(&server, DEADLINE, 1, "a leave", |e| e.event() == "leave");
    let leave = entries.iter().find(|e| e.event() == "leave").unwrap();
    assert_eq!(leave.field("name"), "203.0.113.7:4242-2", "{}", leave.raw);
    drop(first);
}

#[test]
fn over_the_chat_bus_members_are_logged_by_the_names_the_room_gave_them() {
    let Some(redis) = util::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let server = logging_server(&["chat@127.0.0.1:0", "--proxy-protocol", "--chat-bus", &url]);
    let addr = server.addr("chat");
    let header = b"PROXY TCP4 203.0.113.9 192.0.2.1 4242 7000\r\n";
    let mut first = connect(addr);
    send(&mut first, header);
    let mut first = Member::greeted(first);
    let mut second = connect(addr);
    send(&mut second, header);
    let mut second = Member::greeted(second);
    assert_eq!(second.name, "203.0.113.9:4242-2");
    first.reader.expect(&format!("* {} joined", second.name));
    let entries = wait_for_lines(&server, DEADLINE, 2, "joins", |e| e.event() == "join");
    let names: Vec<&str> = entries
        .iter()
        .filter(|e| e.event() == "join")
        .map(|e| e.field("name"))
        .collect();
    assert_eq!(names, [first.name.as_str(), second.name.as_str()]);
    second.reader.send(b"/nick erin\n");
    second
        .reader
        .expect(&format!("* {} is now erin", second.name));
    second.reader.send(b"quit\n");
    first
        .reader
        .expect(&format!("* {} is now erin", second.name));
    first.reader.expect("* erin left");
    let entries = wait_for_lines(&server, DEADLINE, 1, "a close", |e| e.event() == "close");
    let close = entries.iter().find(|e| e.event() == "close").unwrap();
    assert_eq!(close.field("name"), "erin", "{}", close.raw);
    let leave = entries.iter().find(|e| e.event() == "leave").unwrap();
    assert_eq!(leave.field("name"), "erin", "{}", leave.raw);
}

/// A fresh directory under the system's temp dir, removed by the test when it is done.
fn scratch(tag: &str) -> std::path::PathBuf {
    tls::scratch_dir(tag)
}

#[test]
fn a_stored_upload_gets_a_stored_line_with_its_stored_name_and_size_then_its_close() {
    let dir = scratch("access-upload");
    let server = logging_server(&[
        "upload@127.0.0.1:0",
        "--upload-dir",
        dir.to_str().unwrap(),
        "--min-free",
        "0",
    ]);
    let mut client = LineReader::new(connect(server.addr("upload")));
    let peer = client.stream.local_addr().unwrap().to_string();
    let sent_name = r#"a b"c=d.txt"#;
    let mut stored = Vec::new();
    for body in [&b"hello"[..], b"second body"] {
        client.send(format!("{} {sent_name}\n", body.len()).as_bytes());
        client.expect("ok");
        client.send(body);
        let saved = client.line();
        // `saved NAME SIZE CRC`, NAME possibly with spaces.
        let mut words = saved.rsplitn(3, ' ');
        let (_crc, size) = (words.next().unwrap(), words.next().unwrap());
        let name = words
            .next()
            .unwrap()
            .strip_prefix("saved ")
            .unwrap()
            .to_owned();
        assert_eq!(size, body.len().to_string());
        stored.push((name, body.len()));
    }
    assert_eq!(stored[0].0, sent_name);
    assert_ne!(
        stored[1].0, sent_name,
        "the second is renamed, not overwritten"
    );
    half_close(&client.stream);
    drop(client);
    let close = close_of(&server, &peer);
    assert_eq!(close.field("protocol"), "upload", "{}", close.raw);
    assert_eq!(close.field("end"), "client closed", "{}", close.raw);
    let lines = settled_lines_of(&server, &peer);
    let events: Vec<&str> = lines.iter().map(Entry::event).collect();
    assert_eq!(events, ["stored", "stored", "close"], "{lines:#?}");
    for (line, (name, size)) in lines.iter().zip(&stored) {
        assert_eq!(line.field("name"), name, "{}", line.raw);
        assert_eq!(line.number("size"), *size as u64, "{}", line.raw);
        assert!(dir.join(name).exists(), "{name:?} is not in the upload dir");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_proxy_headers_client_is_the_peer() {
    let server = logging_server(&["echo@127.0.0.1:0", "--proxy-protocol"]);
    let addr = server.addr("echo");
    let mut relayed = connect(addr);
    let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 7000\r\n";
    send(&mut relayed, header);
    echo_round(&mut relayed, b"hello");
    drop(relayed);
    let close = close_of(&server, "203.0.113.7:4242");
    assert_eq!(close.field("end"), "client closed", "{}", close.raw);
    util::say(&format!(
        "over PROXY, bytes_in={} (header {} + 5)",
        close.field("bytes_in"),
        header.len()
    ));

    let mut v6 = connect(addr);
    send(&mut v6, b"PROXY TCP6 2001:db8::7 2001:db8::1 4243 7000\r\n");
    echo_round(&mut v6, b"x");
    drop(v6);
    close_of(&server, "[2001:db8::7]:4243");

    // No header at all: refused, and logged under the real peer.
    let mut bare = connect(addr);
    let peer = bare.local_addr().unwrap().to_string();
    send(&mut bare, b"hello there, no header\r\n");
    let _ = read_to_end_within(&mut bare);
    let close = close_of(&server, &peer);
    assert_eq!(
        close.field("end"),
        "refused: no valid PROXY header",
        "{}",
        close.raw
    );
}

/// A TLS server with client certificates required, and the access log on.
fn tls_server(pki: &Pki, services: &[&str]) -> Server {
    let mut args: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    args.extend(pki.server_args());
    args.push("--tls-client-ca".into());
    args.push(pki.ca.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    logging_server(&args)
}

#[test]
fn a_tls_chat_member_is_named_by_its_certificate() {
    let dir = scratch("access-tls");
    let pki = Pki::new(&dir);
    let server = tls_server(&pki, &["chat@tls:127.0.0.1:0", "echo@tls:127.0.0.1:0"]);
    let config = tls::client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let mut stream = tls::connect(server.addr("chat"), &config);
    let peer = stream.sock.local_addr().unwrap().to_string();
    let greeting = tls::read_line(&mut stream);
    assert!(greeting.starts_with("* welcome alice;"), "{greeting:?}");
    let join = wait_for(&server, "join", |e| e.is("join", &[("peer", &peer)]));
    assert_eq!(join.field("name"), "alice", "{}", join.raw);
    assert_eq!(join.field("transport"), "tls", "{}", join.raw);
    tls::send(&mut stream, b"quit\n");
    let _ = tls::read_to_close_notify(&mut stream);
    drop(stream);
    let close = close_of(&server, &peer);
    assert_eq!(close.field("name"), "alice", "{}", close.raw);
    let lines = settled_lines_of(&server, &peer);
    let events: Vec<&str> = lines.iter().map(Entry::event).collect();
    assert_eq!(events, ["join", "leave", "close"], "{lines:#?}");
    assert!(
        lines.iter().all(|e| e.get("name") == Some("alice")),
        "{lines:#?}"
    );

    // An echo client over TLS is named by its certificate too.
    let mut echo = tls::connect(server.addr("echo"), &config);
    let echo_peer = echo.sock.local_addr().unwrap().to_string();
    tls::send(&mut echo, b"ping");
    assert_eq!(tls::read_exact(&mut echo, 4), b"ping");
    echo.conn.send_close_notify();
    let _ = echo.flush();
    let _ = tls::read_to_close_notify(&mut echo);
    drop(echo);
    let close = close_of(&server, &echo_peer);
    assert_eq!(close.field("name"), "alice", "{}", close.raw);
    assert_eq!(close.field("end"), "client closed", "{}", close.raw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_tls_handshake_is_logged_as_refused() {
    let dir = scratch("access-tls-refused");
    let pki = Pki::new(&dir);
    let server = tls_server(&pki, &["echo@tls:127.0.0.1:0"]);
    let addr = server.addr("echo");

    let mut plain = connect(addr);
    let peer = plain.local_addr().unwrap().to_string();
    send(&mut plain, b"hello, this is not TLS\r\n\r\n");
    let _ = read_to_end_within(&mut plain);
    let close = close_of(&server, &peer);
    assert_eq!(
        close.field("end"),
        "refused: TLS handshake failed",
        "{}",
        close.raw
    );
    assert_eq!(close.get("name"), None, "{}", close.raw);

    // A client without a certificate, refused by --tls-client-ca.
    let config = tls::client_config(&pki.ca, None);
    let mut anonymous = tls::connect(addr, &config);
    let peer = anonymous.sock.local_addr().unwrap().to_string();
    let _ = tls::handshake(&mut anonymous).and_then(|()| {
        anonymous.write_all(b"x")?;
        anonymous.flush()?;
        anonymous.read(&mut [0; 1])
    });
    drop(anonymous);
    let close = close_of(&server, &peer);
    assert_eq!(
        close.field("end"),
        "refused: TLS handshake failed",
        "{}",
        close.raw
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves echo with `env`, makes one connection and a SIGTERM shutdown, and returns the
/// server's whole stderr.
fn stderr_of_one_echo_and_a_shutdown(env: &[(&str, &str)]) -> String {
    let mut server = Server::start_with_env(&["echo@127.0.0.1:0"], env);
    let mut client = connect(server.addr("echo"));
    echo_round(&mut client, b"hello");
    drop(client);
    thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    assert!(server.wait_for_exit().success());
    server.stderr()
}

#[test]
fn at_the_default_level_there_is_no_access_line() {
    for env in [&[][..], &[("RUST_LOG", "oneloop=warn")][..]] {
        let stderr = stderr_of_one_echo_and_a_shutdown(env);
        assert!(
            !stderr.contains("oneloop::access") && !stderr.contains("event="),
            "{env:?}: {stderr}"
        );
    }
}

#[test]
fn the_access_target_alone_shows_the_access_lines_and_nothing_else() {
    let all = stderr_of_one_echo_and_a_shutdown(&[INFO]);
    assert!(all.contains("shutdown complete"), "the control: {all}");
    let alone = stderr_of_one_echo_and_a_shutdown(&[("RUST_LOG", "oneloop::access=info")]);
    let closes: Vec<Entry> = access_lines(&alone)
        .into_iter()
        .filter(|e| e.event() == "close")
        .collect();
    assert_eq!(closes.len(), 1, "{alone}");
    for line in alone.lines() {
        assert!(
            line.contains(" oneloop::access] "),
            "not an access line: {line:?}"
        );
    }
}

#[test]
fn a_unix_socket_path_with_a_space_and_a_quote_is_quoted_and_parses_back() {
    let dir = scratch("access-unix");
    let path = dir.join(r#"a b"c=\d.sock"#);
    let service = format!("echo@unix:{}", path.display());
    let server = logging_server(&[&service]);
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"hi").unwrap();
    let mut got = [0; 2];
    client.read_exact(&mut got).unwrap();
    drop(client);
    let close = wait_for(&server, "unix close", |e| {
        e.is("close", &[("transport", "unix")])
    });
    assert_eq!(Path::new(close.field("address")), path, "{}", close.raw);
    assert_eq!(close.field("protocol"), "echo", "{}", close.raw);
    assert!(close.field("peer").starts_with("unix-"), "{}", close.raw);
    assert_eq!(close.number("bytes_in"), 2, "{}", close.raw);
    assert_eq!(close.field("end"), "client closed", "{}", close.raw);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
