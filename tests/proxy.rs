//! `--proxy-protocol` over real loopback sockets and the real binary: the PROXY header (v1 text,
//! v2 binary, built here by hand as HAProxy writes it) comes before the client's first byte, the
//! client it carries is the name in chat and in the logs, the bytes after it are the session's,
//! and a connection without a valid header within 3 s is closed without a reply — while the
//! others are served. Run against the reactor, then (at the end of the file) against each
//! blocking model where the test makes sense (chat: threaded and pool only; serial serves one
//! connection at a time, so not the tests that need two at once).

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    connect, half_close, read_exact_within, read_to_end_within, send, LineReader, Server, Snippet,
    DEADLINE,
};

/// The client every relayed connection in these tests comes from, as a balancer would name it.
const CLIENT: &str = "203.0.113.7:56324";

/// A v1 header for [`CLIENT`], as HAProxy's `send-proxy` writes it.
const V1: &[u8] = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\n";

/// The v2 signature every binary header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: version 2 with `command` (0 LOCAL, 1 PROXY), the family/transport byte, then
/// `body` (addresses and TLVs) with its length.
fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.push(0x20 | command);
    bytes.push(family);
    bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A v2 PROXY header for a TCP client over IPv4 (28 bytes, as `send-proxy-v2` writes it), with
/// `tlvs` after the addresses.
fn v2_tcp4(source: SocketAddrV4, destination: SocketAddrV4, tlvs: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&source.ip().octets());
    body.extend_from_slice(&destination.ip().octets());
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    v2(0x1, 0x11, &body)
}

/// A v2 PROXY header for a TCP client over IPv6 (52 bytes).
fn v2_tcp6(source: SocketAddrV6, destination: SocketAddrV6) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&source.ip().octets());
    body.extend_from_slice(&destination.ip().octets());
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    v2(0x1, 0x21, &body)
}

/// A v2 PROXY header for a Unix stream client: two 108-byte `sun_path`s.
fn v2_unix(source: &str, destination: &str) -> Vec<u8> {
    let mut body = vec![0; 216];
    body[..source.len()].copy_from_slice(source.as_bytes());
    body[108..108 + destination.len()].copy_from_slice(destination.as_bytes());
    v2(0x1, 0x31, &body)
}

/// The v2 LOCAL header a balancer's health check sends: no addresses (16 bytes).
fn v2_local() -> Vec<u8> {
    v2(0x0, 0x00, &[])
}

/// `client` in v2 over IPv4, with a NOOP TLV (type 0x04) that must be skipped.
fn v2_with_tlv(client: &str) -> Vec<u8> {
    let noop = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
    v2_tcp4(
        client.parse().unwrap(),
        "192.0.2.1:7000".parse().unwrap(),
        &noop,
    )
}

fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-p{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn unix_connect(path: &Path) -> UnixStream {
    let stream =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

// ---------------------------------------------------------------------------------------------
// Reading: lines for chat, the end of the stream for refused connections.

/// A chat member's connection, read line by line (see [`LineReader`]).
type Lines<S> = LineReader<S>;

impl<S: Read + Write> Lines<S> {
    /// Reads the greeting and returns the name it gives this member.
    fn greeting(&mut self) -> String {
        let line = self.line();
        let rest = line
            .strip_prefix("* welcome ")
            .unwrap_or_else(|| panic!("not a greeting: {line:?}"));
        rest.split_once("; ")
            .unwrap_or_else(|| panic!("not a greeting: {line:?}"))
            .0
            .to_string()
    }
}

/// Reads until the server closes: what it sent, and whether it closed with a reset rather than
/// an end of stream (both are "closed" for a connection refused without a reply).
fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "not closed within {DEADLINE:?}; got {:?}",
            Snippet(&got)
        );
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(count) => got.extend_from_slice(&chunk[..count]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read failed: {e}; got {:?}", Snippet(&got)),
        }
    }
}

/// Asserts that nothing arrives on `stream` for `wait` (the connection stays open and silent).
fn assert_silent_for(stream: &TcpStream, wait: Duration) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0; 1];
    match (&*stream).read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence for {wait:?}, got {other:?}"),
    }
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// Upper's answer to `header` then `request`, sent in one write, on a fresh connection.
fn upper_reply(addr: SocketAddr, header: &[u8], request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    send(&mut stream, &[header, request].concat());
    half_close(&stream);
    read_to_end_within(&mut stream)
}

/// A chat member relayed as [`CLIENT`] by a v1 header, greeted; returns it and its name.
fn relayed_member(addr: SocketAddr, header: &[u8]) -> (Lines<TcpStream>, String) {
    let mut member = Lines::new(connect(addr));
    member.send(header);
    let name = member.greeting();
    (member, name)
}

// ---------------------------------------------------------------------------------------------
// The client's address, carried by the header, is the chat name.

fn v1_header_names_the_chat_member_after_the_client_it_carries() {
    let server = Server::start(&["--proxy-protocol", "chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let (mut first, first_name) =
        relayed_member(addr, b"PROXY TCP4 198.51.100.1 192.0.2.1 1111 7000\r\n");
    assert_eq!(first_name, "198.51.100.1:1111");

    // Before its header, a connection is nobody: not greeted, not announced.
    let second = connect(addr);
    assert_silent_for(&second, Duration::from_millis(300));
    let mut second = Lines::new(second);
    second.send(V1);
    assert_eq!(second.greeting(), CLIENT);
    first.expect(&format!("* {CLIENT} joined"));
    second.send(b"hi\n");
    first.expect(&format!("{CLIENT}: hi"));
    first.send(b"/who\n");
    first.expect(&format!("* members: 198.51.100.1:1111, {CLIENT}"));
}

fn v2_headers_ipv4_and_ipv6_name_the_chat_member() {
    let server = Server::start(&["--proxy-protocol", "chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let (mut listener, _) = relayed_member(addr, V1);

    let (mut four, name) = relayed_member(
        addr,
        &v2_tcp4(
            "198.51.100.9:40000".parse().unwrap(),
            "192.0.2.1:7000".parse().unwrap(),
            &[],
        ),
    );
    assert_eq!(name, "198.51.100.9:40000");
    listener.expect("* 198.51.100.9:40000 joined");
    four.send(b"over v2\n");
    listener.expect("198.51.100.9:40000: over v2");

    let six_client = SocketAddrV6::new("2001:db8::7".parse::<Ipv6Addr>().unwrap(), 443, 0, 0);
    let six_server = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7000, 0, 0);
    let (mut six, name) = relayed_member(addr, &v2_tcp6(six_client, six_server));
    assert_eq!(name, "[2001:db8::7]:443");
    listener.expect("* [2001:db8::7]:443 joined");
    six.send(b"hi from six\n");
    listener.expect("[2001:db8::7]:443: hi from six");

    // With a TLV after the addresses (skipped).
    let (_with_tlv, name) = relayed_member(addr, &v2_with_tlv("198.51.100.10:1010"));
    assert_eq!(name, "198.51.100.10:1010");
    listener.expect("* 198.51.100.10:1010 joined");
}

fn v2_local_and_v1_unknown_keep_the_real_peer() {
    let server = Server::start(&["--proxy-protocol", "chat@127.0.0.1:0"]);
    let addr = server.addr("chat");
    let (mut listener, _) = relayed_member(addr, V1);

    // A health check: the balancer's own connection, named by its real address.
    let local = connect(addr);
    let own_name = local.local_addr().unwrap().to_string();
    let mut local = Lines::new(local);
    local.send(&v2_local());
    assert_eq!(local.greeting(), own_name);
    listener.expect(&format!("* {own_name} joined"));
    local.send(b"still here\n");
    listener.expect(&format!("{own_name}: still here"));

    let unknown = connect(addr);
    let own_name = unknown.local_addr().unwrap().to_string();
    let mut unknown = Lines::new(unknown);
    unknown.send(b"PROXY UNKNOWN\r\n");
    assert_eq!(unknown.greeting(), own_name);
    listener.expect(&format!("* {own_name} joined"));
}

// ---------------------------------------------------------------------------------------------
// The bytes: split headers, and requests in the same write as the header.

fn a_header_sent_byte_by_byte_is_read_whole() {
    let server = Server::start(&with_chat(&["--proxy-protocol", "upper@127.0.0.1:0"]));
    for header in [V1.to_vec(), v2_with_tlv(CLIENT)] {
        let mut stream = connect(server.addr("upper"));
        stream.set_nodelay(true).unwrap();
        for byte in &header {
            send(&mut stream, &[*byte]);
            thread::sleep(Duration::from_millis(3));
        }
        send(&mut stream, b"hello");
        assert_eq!(read_exact_within(&mut stream, 5), b"HELLO");
    }
    server_is_chat_named_after_a_split_header(&server);
}

/// A chat member whose v2 header came in pieces has the client's name.
fn server_is_chat_named_after_a_split_header(server: &Server) {
    if !chat_is_served() {
        return;
    }
    let addr = server.addr("chat");
    let (mut listener, _) = relayed_member(addr, V1);
    let stream = connect(addr);
    stream.set_nodelay(true).unwrap();
    let mut member = Lines::new(stream);
    let header = v2_tcp4(
        "198.51.100.20:2020".parse().unwrap(),
        "192.0.2.1:7000".parse().unwrap(),
        &[],
    );
    for piece in header.chunks(5) {
        member.send(piece);
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(member.greeting(), "198.51.100.20:2020");
    listener.expect("* 198.51.100.20:2020 joined");
}

/// Whether the model these tests run under serves chat (serial and forking do not).
fn chat_is_served() -> bool {
    !matches!(util::model(), Some("serial" | "forking"))
}

/// `args`, and a chat service if the model serves chat.
fn with_chat<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if chat_is_served() {
        args.push("chat@127.0.0.1:0");
    }
    args
}

fn the_header_and_the_first_request_in_one_write_are_both_served() {
    let server = Server::start(&["--proxy-protocol", "upper@127.0.0.1:0"]);
    let addr = server.addr("upper");
    assert_eq!(upper_reply(addr, V1, b"hello"), b"HELLO");
    assert_eq!(upper_reply(addr, &v2_with_tlv(CLIENT), b"hello"), b"HELLO");
    // More than one read's worth after the header: the first bytes and the rest, in order.
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = upper_reply(addr, V1, &body);
    assert_eq!(reply.len(), body.len());
    assert!(
        reply == body.to_ascii_uppercase(),
        "the reply is not the upper-cased body"
    );
    // A chat line in the same write as the header is the member's first line.
    drop(server);
    if chat_is_served() {
        let server = Server::start(&["--proxy-protocol", "chat@127.0.0.1:0"]);
        let addr = server.addr("chat");
        let (mut listener, _) = relayed_member(addr, b"PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n");
        let mut member = Lines::new(connect(addr));
        member.send(&[V1, b"first line\n"].concat());
        assert_eq!(member.greeting(), CLIENT);
        listener.expect(&format!("* {CLIENT} joined"));
        listener.expect(&format!("{CLIENT}: first line"));
    }
}

/// A fresh, empty upload directory for the test `name` under the current model.
fn upload_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oneloop-p{}-{name}-{}",
        std::process::id(),
        util::model().unwrap_or("reactor")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn an_upload_in_the_same_write_as_the_header_is_stored() {
    let dir = upload_dir("upload");
    let dir_arg = dir.display().to_string();
    let server = Server::start(&[
        "--proxy-protocol",
        "--upload-dir",
        &dir_arg,
        "upload@127.0.0.1:0",
    ]);
    let reply = upper_reply(server.addr("upload"), V1, b"5 hello.txt\nhello");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "ok\nsaved hello.txt 5 3610a686\n"
    );
    assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hello");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// No valid header: closed, without a reply, and nobody else is disturbed.

fn a_malformed_or_overlong_header_is_closed_without_a_reply() {
    let mut server = Server::start(&["--proxy-protocol", "upper@127.0.0.1:0"]);
    let addr = server.addr("upper");
    let overlong = [&b"PROXY UNKNOWN "[..], &[b'x'; 120][..], &b"\r\nhello"[..]].concat();
    let cases: [&[u8]; 5] = [
        b"GET / HTTP/1.0\r\n\r\n",
        &overlong,
        b"hello\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\nhello", // a lone LF
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",               // v2 version 3
    ];
    for case in cases {
        let mut stream = connect(addr);
        send(&mut stream, case);
        let got = read_until_closed(&mut stream);
        assert!(
            got.is_empty(),
            "{:?} got a reply: {:?}",
            Snippet(case),
            Snippet(&got)
        );
    }
    assert_eq!(upper_reply(addr, V1, b"still served"), b"STILL SERVED");
    server.assert_running();
}

fn a_connection_without_a_header_is_closed_after_3_s_while_others_are_served() {
    let mut server = Server::start(&["--proxy-protocol", "upper@127.0.0.1:0"]);
    let addr = server.addr("upper");
    let started = Instant::now();
    let silent = connect(addr);
    // Sending part of a header does not put the deadline off: it runs from the accept.
    let trickler = thread::spawn(move || {
        let started = Instant::now();
        let mut stream = connect(addr);
        for piece in [&b"PROXY "[..], b"TCP4 ", b"203.0.113.7 "] {
            send(&mut stream, piece);
            thread::sleep(Duration::from_millis(1200));
        }
        let got = read_until_closed(&mut stream);
        (started.elapsed(), got)
    });
    thread::sleep(Duration::from_millis(200));
    // Meanwhile another client is served at once.
    let served = Instant::now();
    assert_eq!(upper_reply(addr, V1, b"hello"), b"HELLO");
    assert!(
        served.elapsed() < Duration::from_secs(2),
        "the relayed client waited {:?}",
        served.elapsed()
    );
    let mut silent = silent;
    let got = read_until_closed(&mut silent);
    let waited = started.elapsed();
    assert!(got.is_empty(), "got a reply: {:?}", Snippet(&got));
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "closed after {waited:?}, not about 3 s"
    );
    // Its last byte came at 2.4 s: closed at 3 s, not 3 s after that byte.
    let (waited, got) = trickler.join().unwrap();
    assert!(got.is_empty(), "got a reply: {:?}", Snippet(&got));
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_millis(4800),
        "the trickler was closed after {waited:?}, not about 3 s"
    );
    server.assert_running();
}

fn a_connection_awaiting_its_header_counts_and_is_closed_at_shutdown() {
    let mut server = Server::start(&[
        "--proxy-protocol",
        "--max-connections",
        "1",
        "upper@127.0.0.1:0",
    ]);
    let addr = server.addr("upper");
    let mut waiting = connect(addr);
    // The one connection allowed is taken by a client that has not sent its header yet.
    thread::sleep(Duration::from_millis(200));
    let mut refused = connect(addr);
    let got = read_until_closed(&mut refused);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "error too many connections\n"
    );

    // A graceful shutdown closes it at once: nothing of its protocol has started.
    let signalled = Instant::now();
    server.signal("TERM");
    let got = read_until_closed(&mut waiting);
    assert!(got.is_empty(), "got a reply: {:?}", Snippet(&got));
    let status = server.wait_for_exit();
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_millis(2500),
        "the shutdown took {:?}: it waited for the header's deadline",
        signalled.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Off by default, and never guessed.

fn without_the_flag_a_proxy_line_is_just_data() {
    let server = Server::start(&with_chat(&["upper@127.0.0.1:0"]));
    let reply = upper_reply(server.addr("upper"), V1, b"hello");
    assert_eq!(reply, [V1, b"HELLO"].concat());
    if chat_is_served() {
        let addr = server.addr("chat");
        let mut listener = Lines::new(connect(addr));
        listener.greeting();
        let member = connect(addr);
        let name = member.local_addr().unwrap().to_string();
        let mut member = Lines::new(member);
        assert_eq!(member.greeting(), name);
        listener.expect(&format!("* {name} joined"));
        member.send(V1);
        listener.expect(&format!(
            "{name}: PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000"
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Unix stream services, and the log.

fn a_unix_stream_service_expects_the_header_too() {
    let model = util::model().unwrap_or("reactor");
    let upper = socket_path(&format!("upper-{model}"));
    let mut server = Server::start(&[
        "--proxy-protocol",
        &format!("upper@unix:{}", upper.display()),
    ]);
    let mut stream = unix_connect(&upper);
    stream.write_all(&[V1, b"hello"].concat()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_until_closed(&mut stream), b"HELLO");
    let mut stream = unix_connect(&upper);
    stream.write_all(b"hello\n").unwrap();
    assert!(
        read_until_closed(&mut stream).is_empty(),
        "a reply without a header"
    );
    server.assert_running();
    drop(server);

    if chat_is_served() {
        let chat = socket_path(&format!("chat-{model}"));
        let server = Server::start(&["--proxy-protocol", &format!("chat@unix:{}", chat.display())]);
        // The server numbers Unix peers as it accepts them: the balancer's connection is
        // unix-1, and the Unix client it relays is a peer of its own, unix-2.
        let mut relayed_unix = Lines::new(unix_connect(&chat));
        relayed_unix.send(&v2_unix("", "/run/haproxy/chat.sock"));
        assert_eq!(relayed_unix.greeting(), "unix-2");
        // A TCP client relayed over the Unix socket is named by its address.
        let mut relayed_tcp = Lines::new(unix_connect(&chat));
        relayed_tcp.send(V1);
        assert_eq!(relayed_tcp.greeting(), CLIENT);
        relayed_unix.expect(&format!("* {CLIENT} joined"));
        relayed_tcp.send(b"over unix\n");
        relayed_unix.expect(&format!("{CLIENT}: over unix"));
        drop(server);
    }
}

fn the_debug_log_names_the_client_and_the_balancer() {
    let dir = upload_dir("log");
    let dir_arg = dir.display().to_string();
    let server = Server::start_with_env(
        &[
            "--proxy-protocol",
            "--upload-dir",
            &dir_arg,
            "upper@127.0.0.1:0",
            "upload@127.0.0.1:0",
        ],
        &[("RUST_LOG", "oneloop=debug")],
    );
    let mut stream = connect(server.addr("upper"));
    let via = stream.local_addr().unwrap();
    send(&mut stream, &[V1, b"hello"].concat());
    half_close(&stream);
    assert_eq!(read_to_end_within(&mut stream), b"HELLO");
    wait_for_log(&server, &format!("PROXY header: client {CLIENT} via {via}"));
    if util::model() != Some("reactor") {
        // The blocking models name a connection by its peer in every line: the client's now.
        // (The reactor names it `conn #N`, which the line above ties to the client.)
        let reply = upper_reply(server.addr("upload"), V1, b"5 hello.txt\nhello");
        assert!(reply.starts_with(b"ok\n"), "{:?}", Snippet(&reply));
        wait_for_log(
            &server,
            &format!("{CLIENT}: receiving \"hello.txt\" (5 bytes)"),
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (up to [`DEADLINE`]) until the server's stderr contains `expected`.
fn wait_for_log(server: &Server, expected: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = server.stderr();
        if log.contains(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {expected:?} in the log:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Each test under the reactor, and under the blocking models where it makes sense.

per_model! {
    [reactor, threaded, pool]: [
        v1_header_names_the_chat_member_after_the_client_it_carries,
        v2_headers_ipv4_and_ipv6_name_the_chat_member,
        v2_local_and_v1_unknown_keep_the_real_peer,
        a_header_sent_byte_by_byte_is_read_whole,
        the_header_and_the_first_request_in_one_write_are_both_served,
        an_upload_in_the_same_write_as_the_header_is_stored,
        a_malformed_or_overlong_header_is_closed_without_a_reply,
        a_connection_without_a_header_is_closed_after_3_s_while_others_are_served,
        a_connection_awaiting_its_header_counts_and_is_closed_at_shutdown,
        without_the_flag_a_proxy_line_is_just_data,
        a_unix_stream_service_expects_the_header_too,
        the_debug_log_names_the_client_and_the_balancer,
    ]
}

// No chat (a forked process per member would hold a room of its own): the chat parts of the
// tests above are skipped, and the chat-only tests are left out.
per_model! {
    forking: [
        a_header_sent_byte_by_byte_is_read_whole,
        the_header_and_the_first_request_in_one_write_are_both_served,
        an_upload_in_the_same_write_as_the_header_is_stored,
        a_malformed_or_overlong_header_is_closed_without_a_reply,
        a_connection_without_a_header_is_closed_after_3_s_while_others_are_served,
        a_connection_awaiting_its_header_counts_and_is_closed_at_shutdown,
        without_the_flag_a_proxy_line_is_just_data,
        a_unix_stream_service_expects_the_header_too,
        the_debug_log_names_the_client_and_the_balancer,
    ]
}

// One connection at a time: not the tests that need another client served meanwhile (a client
// without a header holds the server for its 3 s, as any slow client does under serial).
per_model! {
    serial: [
        a_header_sent_byte_by_byte_is_read_whole,
        the_header_and_the_first_request_in_one_write_are_both_served,
        an_upload_in_the_same_write_as_the_header_is_stored,
        a_malformed_or_overlong_header_is_closed_without_a_reply,
        without_the_flag_a_proxy_line_is_just_data,
        a_unix_stream_service_expects_the_header_too,
        the_debug_log_names_the_client_and_the_balancer,
    ]
}
