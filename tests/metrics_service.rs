//! The `metrics` service (contract v3) from the outside: the real binary on port-0 addresses,
//! scraped with raw HTTP bytes over loopback, the exposition read by a small parser here.
//!
//! What it checks: every counter is exact after a known amount of traffic (echo over TCP and
//! UDP, chat, upload, refusals); every family is declared on an idle server; the loop's own
//! families move and their histograms are well formed; the HTTP the service speaks (statuses,
//! heads, keep-alive, pipelining, closes); and that adversarial scrapers (a slowloris, a
//! pipeliner that never reads, one that resets halfway, an idle one) do not hurt anyone else.
//! Nothing is timed: every wait is bounded, and only behaviour is asserted.

mod util;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    connect, read_exact_within, read_to_end_within, run, send, try_read_to_end_within, Server,
    Snippet, DEADLINE,
};

use util::metrics::{
    family_of, head_end, read_response, scrape, scrape_until, service, with, Exposition, Scraper,
    GET, REQUIRED_FAMILIES, SCRAPE,
};

/// One echo round trip: `bytes` out, the same bytes back.
fn echo_round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    send(stream, bytes);
    assert_eq!(read_exact_within(stream, bytes.len()), bytes);
}

// ---------------------------------------------------------------------------------------------
// 1. Exact counters.

#[test]
fn echo_connections_and_bytes_are_counted_exactly() {
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let metrics = server.addr("metrics");
    let echo = service(&server, "echo", "tcp");
    let echo = with(&echo, &[]);
    let before = scrape(metrics);
    assert_eq!(before.int("oneloop_connections_accepted_total", &echo), 0);
    const N: usize = 20;
    const B: usize = 1000;
    let mut clients: Vec<TcpStream> = (0..N).map(|_| connect(server.addr("echo"))).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let payload: Vec<u8> = (0..B).map(|j| (i * 7 + j) as u8).collect();
        echo_round_trip(client, &payload);
    }
    let during = scrape(metrics);
    assert_eq!(during.int("oneloop_connections_open", &echo), N as u64);
    assert_eq!(
        during.int("oneloop_received_bytes_total", &echo),
        (N * B) as u64,
        "bytes of connections still open count too"
    );
    drop(clients);
    let after = scrape_until(metrics, "all echo connections closed", |e| {
        e.int("oneloop_connections_open", &echo) == 0
    });
    let echo_labels = service(&server, "echo", "tcp");
    let closed = with(&echo_labels, &[("reason", "client_closed")]);
    assert_eq!(
        after.int("oneloop_connections_accepted_total", &echo),
        N as u64
    );
    assert_eq!(
        after.int("oneloop_received_bytes_total", &echo),
        (N * B) as u64
    );
    assert_eq!(after.int("oneloop_sent_bytes_total", &echo), (N * B) as u64);
    assert_eq!(
        after.int("oneloop_connections_closed_total", &closed),
        N as u64
    );
    let all_closed: u64 = after
        .matching("oneloop_connections_closed_total", &echo)
        .iter()
        .map(|s| s.value as u64)
        .sum();
    assert_eq!(all_closed, N as u64, "every echo connection ended once");
}

#[test]
fn the_scrapers_own_bytes_are_counted_under_the_metrics_endpoint() {
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let labels = service(&server, "metrics", "tcp");
    let labels = with(&labels, &[]);
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let first = scraper.request(GET);
    let first_bytes = {
        // The whole answer as sent: its head and body.
        let head_len = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            first
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect::<String>()
        )
        .len();
        (head_len + first.body.len()) as u64
    };
    let first = first.exposition();
    assert_eq!(
        first.int("oneloop_received_bytes_total", &labels),
        GET.len() as u64,
        "the request read so far"
    );
    assert_eq!(first.int("oneloop_sent_bytes_total", &labels), 0);
    assert_eq!(first.int("oneloop_connections_accepted_total", &labels), 1);
    assert_eq!(first.int("oneloop_connections_open", &labels), 1);
    let second = scraper.scrape();
    assert_eq!(
        second.int("oneloop_received_bytes_total", &labels),
        2 * GET.len() as u64
    );
    assert_eq!(
        second.int("oneloop_sent_bytes_total", &labels),
        first_bytes,
        "the first answer, head and body"
    );
}

#[test]
fn udp_datagrams_and_their_bytes_are_counted_exactly() {
    let server = Server::start(&["echo@udp:127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let labels = service(&server, "echo", "udp");
    let labels = with(&labels, &[]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let sizes = [1usize, 10, 100, 1000, 1];
    for size in sizes {
        let payload = vec![b'u'; size];
        socket
            .send_to(&payload, server.addr_of("echo", "udp"))
            .unwrap();
        let mut reply = [0; 2048];
        let (len, _) = socket.recv_from(&mut reply).expect("an echo reply");
        assert_eq!(&reply[..len], &payload[..]);
    }
    let total: usize = sizes.iter().sum();
    let e = scrape(server.addr("metrics"));
    assert_eq!(
        e.int("oneloop_datagrams_received_total", &labels),
        sizes.len() as u64
    );
    assert_eq!(e.int("oneloop_received_bytes_total", &labels), total as u64);
    assert_eq!(e.int("oneloop_sent_bytes_total", &labels), total as u64);
    for reason in ["oversize", "source_port", "reply_dropped"] {
        let labels = service(&server, "echo", "udp");
        let dropped = with(&labels, &[("reason", reason)]);
        assert_eq!(e.int("oneloop_datagrams_dropped_total", &dropped), 0);
    }
    // UDP endpoints have no connections.
    assert!(e
        .matching("oneloop_connections_accepted_total", &labels)
        .is_empty());
}

#[test]
fn a_datagram_from_a_privileged_port_is_dropped_and_counted() {
    // Only root may bind a port below 1024; skip elsewhere.
    let Some(socket) = (600..1000).find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok())
    else {
        println!("skipped: cannot bind a UDP port below 1024 (needs root)");
        return;
    };
    let server = Server::start(&["echo@udp:127.0.0.1:0", "metrics@127.0.0.1:0"]);
    socket
        .send_to(b"reflect me", server.addr_of("echo", "udp"))
        .unwrap();
    let labels = service(&server, "echo", "udp");
    let dropped = with(&labels, &[("reason", "source_port")]);
    let e = scrape_until(server.addr("metrics"), "the datagram counted", |e| {
        e.int("oneloop_datagrams_received_total", &with(&labels, &[])) == 1
    });
    assert_eq!(e.int("oneloop_datagrams_dropped_total", &dropped), 1);
    assert_eq!(e.int("oneloop_sent_bytes_total", &with(&labels, &[])), 0);
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reply = [0; 64];
    assert!(
        socket.recv_from(&mut reply).is_err(),
        "no reply to a privileged port"
    );
}

/// Reads one line (up to its newline) from a chat member.
fn line(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    util::read_until_within(stream, &mut got, |g| g.ends_with(b"\n"));
    String::from_utf8(got).unwrap()
}

#[test]
fn chat_deliveries_and_members_are_counted_exactly() {
    let server = Server::start(&["chat@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let metrics = server.addr("metrics");
    let labels = service(&server, "chat", "tcp");
    let labels = with(&labels, &[]);
    // Joined one after the other: each greeting, then the others' `joined` notices, read whole
    // (so every delivery so far has been written).
    let mut members: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut newcomer = connect(server.addr("chat"));
        assert!(line(&mut newcomer).starts_with("* welcome "));
        for member in &mut members {
            assert!(line(member).ends_with(" joined\n"));
        }
        members.push(newcomer);
    }
    // 1 + 2 + 3 lines so far.
    let e = scrape(metrics);
    assert_eq!(e.int("oneloop_chat_members", &labels), 3);
    assert_eq!(e.int("oneloop_chat_deliveries_total", &labels), 6);
    send(&mut members[0], b"hello room\n");
    for member in &mut members[1..] {
        assert!(line(member).ends_with(": hello room\n"));
    }
    let e = scrape(metrics);
    assert_eq!(
        e.int("oneloop_chat_deliveries_total", &labels),
        8,
        "+2: one line to two others"
    );
    // They leave one after the other: 2 `left` notices, then 1, then none.
    while !members.is_empty() {
        drop(members.remove(0));
        for member in &mut members {
            assert!(line(member).ends_with(" left\n"));
        }
    }
    let e = scrape_until(metrics, "the room empty", |e| {
        e.int("oneloop_chat_members", &labels) == 0
    });
    assert_eq!(e.int("oneloop_chat_deliveries_total", &labels), 11);
    assert_eq!(e.int("oneloop_chat_members_dropped_total", &labels), 0);
}

/// A fresh, empty directory for one test's uploads (removed when dropped).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "oneloop-metrics-{what}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn uploads_stored_and_failed_are_counted_by_reason() {
    let dir = TempDir::new("upload");
    let server = Server::start(&[
        "--upload-dir",
        dir.path(),
        "--min-free",
        "0",
        "upload@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let metrics = server.addr("metrics");
    let upload = server.addr("upload");
    let labels = service(&server, "upload", "tcp");
    let reason = |r: &'static str| with(&labels, &[("reason", r)]);
    const K: usize = 12345;
    {
        let mut stream = connect(upload);
        send(&mut stream, format!("{K} stored.bin\n").as_bytes());
        assert_eq!(read_exact_within(&mut stream, 3), b"ok\n");
        send(&mut stream, &vec![b'k'; K]);
        let saved = line(&mut stream);
        assert!(
            saved.starts_with(&format!("saved stored.bin {K} ")),
            "{saved:?}"
        );
    }
    {
        let mut stream = connect(upload);
        send(&mut stream, b"not a header\n");
        assert_eq!(read_to_end_within(&mut stream), b"error bad header\n");
    }
    {
        let mut stream = connect(upload);
        send(&mut stream, b"100 cut.bin\n");
        assert_eq!(read_exact_within(&mut stream, 3), b"ok\n");
        send(&mut stream, &[b'c'; 10]);
    } // closed with 90 bytes still to come
    let e = scrape_until(metrics, "the cut-short upload counted", |e| {
        e.int("oneloop_uploads_failed_total", &reason("cut_short")) == 1
    });
    let all = with(&labels, &[]);
    assert_eq!(e.int("oneloop_uploads_stored_total", &all), 1);
    assert_eq!(e.int("oneloop_upload_stored_bytes_total", &all), K as u64);
    assert_eq!(
        e.int("oneloop_uploads_failed_total", &reason("bad_header")),
        1
    );
    let failed: u64 = e
        .matching("oneloop_uploads_failed_total", &all)
        .iter()
        .map(|s| s.value as u64)
        .sum();
    assert_eq!(failed, 2, "bad_header and cut_short, nothing else");
}

#[test]
fn a_connection_past_max_connections_is_refused_and_counted_and_the_scraper_counts() {
    let server = Server::start(&[
        "--max-connections",
        "1",
        "echo@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let _ = scraper.scrape(); // the scraper is in: it is the one connection allowed
    let mut refused = connect(server.addr("echo"));
    let _ = refused.write_all(b"anyone?\n");
    let (got, _) = try_read_to_end_within(&mut refused);
    assert!(
        got.is_empty() || got.starts_with(b"error"),
        "a refused connection gets at most an error line: {:?}",
        Snippet(&got)
    );
    let labels = service(&server, "echo", "tcp");
    let e = scraper.scrape();
    assert_eq!(
        e.int(
            "oneloop_connections_refused_total",
            &with(&labels, &[("reason", "max_connections")])
        ),
        1
    );
    assert_eq!(
        e.int("oneloop_connections_accepted_total", &with(&labels, &[])),
        0
    );
    assert_eq!(e.int("oneloop_connections_open", &with(&labels, &[])), 0);
}

#[test]
fn a_scraper_past_max_connections_is_refused_and_counted() {
    let server = Server::start(&[
        "--max-connections",
        "1",
        "echo@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let mut echo = connect(server.addr("echo"));
    echo_round_trip(&mut echo, b"I hold the one slot\n");
    let mut refused = connect(server.addr("metrics"));
    let _ = refused.write_all(GET);
    let (got, _) = try_read_to_end_within(&mut refused);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "a scraper past the limit is refused: {:?}",
        Snippet(&got)
    );
    drop(echo);
    let labels = service(&server, "metrics", "tcp");
    let refused = with(&labels, &[("reason", "max_connections")]);
    // Once the echo client is gone, a scrape gets in (retried: its close may take a turn).
    let deadline = Instant::now() + DEADLINE;
    let e = loop {
        let mut stream = connect(server.addr("metrics"));
        let _ = stream.write_all(SCRAPE);
        let (got, _) = try_read_to_end_within(&mut stream);
        if got.starts_with(b"HTTP/1.1 200") {
            let mut pending = got;
            break read_response(&mut io::empty(), &mut pending, true).exposition();
        }
        assert!(
            Instant::now() < deadline,
            "no scrape got in after the echo client left"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let refusals = e.int("oneloop_connections_refused_total", &refused);
    assert!(refusals >= 1, "the refused scraper counted: {refusals}");
}

#[test]
fn a_bad_proxy_header_is_refused_and_counted() {
    let server = Server::start(&[
        "--proxy-protocol",
        "echo@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let mut bad = connect(server.addr("echo"));
    send(&mut bad, b"HELLO this is no PROXY header\r\n");
    let (got, _) = try_read_to_end_within(&mut bad);
    assert!(
        got.is_empty(),
        "no reply to a bad PROXY header: {:?}",
        Snippet(&got)
    );
    // The scraper, a TCP stream service too, sends its PROXY header first.
    let mut scraper = Scraper::connect(server.addr("metrics"));
    send(
        &mut scraper.stream,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 9100\r\n",
    );
    let labels = service(&server, "echo", "tcp");
    let e = scraper.scrape();
    assert_eq!(
        e.int(
            "oneloop_connections_refused_total",
            &with(&labels, &[("reason", "proxy_header")])
        ),
        1
    );
    assert_eq!(e.int("oneloop_connections_open", &with(&labels, &[])), 0);
}

// ---------------------------------------------------------------------------------------------
// 2. Every family, and the loop's.

#[test]
fn every_family_is_declared_before_any_traffic() {
    // One service of each protocol, so each family could have samples.
    let dir = TempDir::new("families");
    let server = Server::start(&[
        "--upload-dir",
        dir.path(),
        "--min-free",
        "0",
        "echo@127.0.0.1:0",
        "echo@udp:127.0.0.1:0",
        "chat@127.0.0.1:0",
        "upload@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let e = scrape(server.addr("metrics"));
    for (family, kind) in REQUIRED_FAMILIES.iter().flat_map(|list| list.iter()) {
        assert!(e.helps.contains(*family), "no # HELP for {family}");
        assert_eq!(
            e.types.get(*family).map(String::as_str),
            Some(*kind),
            "# TYPE of {family}"
        );
    }
    for sample in &e.samples {
        assert!(
            e.helps.contains(family_of(&sample.name, &e.types)),
            "{sample:?} has no # HELP"
        );
        assert!(sample.value >= 0.0, "{sample:?}");
    }
    // Before traffic: every counter of the services is zero (the scraper's own aside).
    for sample in e.samples.iter().filter(|s| s.label("protocol").is_some()) {
        if sample.label("protocol") != Some("metrics") {
            assert_eq!(sample.value, 0.0, "{sample:?} before any traffic");
        }
    }
}

/// The `(le, count)` buckets, `_count` and `_sum` of histogram `name`.
fn histogram(e: &Exposition, name: &str) -> (Vec<(f64, u64)>, u64, f64) {
    let buckets: Vec<(f64, u64)> = e
        .matching(&format!("{name}_bucket"), &[])
        .iter()
        .map(|s| {
            let le = s
                .label("le")
                .unwrap_or_else(|| panic!("a bucket without le: {s:?}"));
            let le = match le {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap_or_else(|_| panic!("bad le {le:?}")),
            };
            (le, s.value as u64)
        })
        .collect();
    let count = e.int(&format!("{name}_count"), &[]);
    let sum = e.value(&format!("{name}_sum"), &[]);
    (buckets, count, sum)
}

fn check_histogram(e: &Exposition, name: &str) -> (u64, f64) {
    let (buckets, count, sum) = histogram(e, name);
    assert!(buckets.len() >= 2, "{name}: {buckets:?}");
    for pair in buckets.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{name}: le not rising: {buckets:?}");
        assert!(
            pair[0].1 <= pair[1].1,
            "{name}: not cumulative: {buckets:?}"
        );
    }
    let last = buckets.last().unwrap();
    assert_eq!(last.0, f64::INFINITY, "{name}: the last bucket is +Inf");
    assert_eq!(last.1, count, "{name}: +Inf equals _count");
    assert!(sum >= 0.0);
    (count, sum)
}

#[test]
fn the_loop_families_rise_and_the_histograms_are_well_formed() {
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let first = scraper.scrape();
    let mut echo = connect(server.addr("echo"));
    for _ in 0..10 {
        echo_round_trip(&mut echo, b"tick\n");
    }
    let second = scraper.scrape();
    for e in [&first, &second] {
        let turns = e.int("oneloop_loop_turns_total", &[]);
        let events = e.int("oneloop_loop_events_total", &[]);
        let (per_turn_count, per_turn_sum) = check_histogram(e, "oneloop_loop_events_per_turn");
        let (duration_count, duration_sum) =
            check_histogram(e, "oneloop_loop_turn_duration_seconds");
        assert_eq!(per_turn_count, turns, "one observation per turn");
        assert_eq!(
            per_turn_sum, events as f64,
            "the events per turn add up to the events"
        );
        assert_eq!(duration_count, turns, "one duration per turn");
        let busy = e.value("oneloop_loop_busy_seconds_total", &[]);
        assert!(
            (duration_sum - busy).abs() <= 1e-6 + busy * 1e-9,
            "the turn durations add up to the busy time: {duration_sum} vs {busy}"
        );
    }
    for name in [
        "oneloop_loop_turns_total",
        "oneloop_loop_events_total",
        "oneloop_loop_busy_seconds_total",
        "oneloop_loop_events_per_turn_count",
        "oneloop_loop_turn_duration_seconds_count",
    ] {
        let (a, b) = (first.value(name, &[]), second.value(name, &[]));
        assert!(b > a, "{name} did not rise: {a} then {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP.

fn metrics_server() -> Server {
    Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"])
}

#[test]
fn a_scrape_is_200_with_the_exposition_type_and_its_exact_length() {
    let server = metrics_server();
    let mut stream = connect(server.addr("metrics"));
    send(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let all = read_to_end_within(&mut stream);
    let end = head_end(&all).expect("a head");
    let mut pending = all.clone();
    let response = read_response(&mut &all[..], &mut pending, true);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4")
    );
    assert_eq!(
        response.header("Content-Length"),
        Some(&*(all.len() - end).to_string()),
        "Content-Length is the body's exact length (nothing follows it)"
    );
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(response.body.ends_with(b"\n"));
    let _ = response.exposition();
}

#[test]
fn other_paths_get_404_and_other_methods_405_with_allow_get() {
    let server = metrics_server();
    let mut scraper = Scraper::connect(server.addr("metrics"));
    for path in ["/", "/metric", "/metrics/", "/favicon.ico"] {
        let response =
            scraper.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(response.status, 404, "{path}");
    }
    let response =
        scraper.request(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
    // Still open, and still answering.
    assert_eq!(scraper.request(GET).status, 200);
}

#[test]
fn head_gets_405_with_allow_get_and_no_body_and_the_connection_stays_usable() {
    let server = metrics_server();
    let mut scraper = Scraper::connect(server.addr("metrics"));
    send(
        &mut scraper.stream,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    // A response to HEAD never has a body (RFC 9112 6.3), whatever its Content-Length says.
    let response = read_response(&mut scraper.stream, &mut scraper.pending, false);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
    if response.header("Connection") == Some("close") {
        let (rest, _) = try_read_to_end_within(&mut scraper.stream);
        scraper.pending.extend_from_slice(&rest);
        assert!(
            scraper.pending.is_empty(),
            "bytes after the answer to HEAD: {:?}",
            Snippet(&scraper.pending)
        );
        return;
    }
    let next = scraper.request(GET);
    assert_eq!(next.status, 200, "the next answer is read where it starts");
}

/// Sends `request`, expects a 400 then the server's clean close.
fn expect_400_and_close(addr: SocketAddr, request: &[u8]) {
    let mut stream = connect(addr);
    let _ = stream.write_all(request);
    let (got, end) = try_read_to_end_within(&mut stream);
    assert!(
        got.starts_with(b"HTTP/1.1 400 "),
        "want a 400 for {:?}, got {:?} ({end:?})",
        Snippet(&request[..request.len().min(64)]),
        Snippet(&got)
    );
    end.unwrap_or_else(|e| panic!("the close after the 400 was not clean: {e}"));
    let mut pending = got;
    let response = read_response(&mut io::empty(), &mut pending, true);
    assert_eq!(response.status, 400);
    assert!(
        pending.is_empty(),
        "nothing after the 400: {:?}",
        Snippet(&pending)
    );
}

#[test]
fn garbage_gets_400_and_a_close() {
    let server = metrics_server();
    let addr = server.addr("metrics");
    // The first bytes of a TLS ClientHello.
    expect_400_and_close(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    expect_400_and_close(addr, b"\x00\xff\xfe\xfd\r\n\r\n");
    expect_400_and_close(addr, b"GET /metrics HTTP/9.9\r\n\r\n");
    let _ = scrape(addr); // still serving
}

#[test]
fn a_head_over_8_kib_gets_400_and_a_close() {
    let server = metrics_server();
    let addr = server.addr("metrics");
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    long.resize(8192 + 1, b'a');
    expect_400_and_close(addr, &long);
    // Much more than 8 KiB, all sent before the answer comes: the server must not reset the
    // connection (and destroy its 400) for the bytes it did not read.
    let mut longer = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    longer.resize(64 * 1024, b'a');
    longer.extend_from_slice(b"\r\n\r\n");
    expect_400_and_close(addr, &longer);
    // A head of exactly 8 KiB is fine.
    let mut exact = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    exact.resize(8192 - 4, b'a');
    exact.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exact.len(), 8192);
    let mut scraper = Scraper::connect(addr);
    assert_eq!(scraper.request(&exact).status, 200);
}

#[test]
fn a_request_with_a_body_is_answered_then_closed_cleanly() {
    let server = metrics_server();
    // A body the server does not read: the 405 must still arrive, and the close must not be a
    // reset (which would destroy it) for the body bytes left unread.
    let mut request = b"POST /metrics HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
    request.resize(request.len() + 200_000, b'b');
    let mut stream = connect(server.addr("metrics"));
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let (got, end) = try_read_to_end_within(&mut stream);
    sender.join().unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 405 "),
        "want a 405, got {:?} ({end:?})",
        Snippet(&got)
    );
    end.unwrap_or_else(|e| panic!("the close after the 405 was not clean: {e}"));
    let _ = scrape(server.addr("metrics"));
}

#[test]
fn keep_alive_answers_requests_one_after_another() {
    let server = metrics_server();
    let labels = service(&server, "metrics", "tcp");
    let labels = with(&labels, &[]);
    let mut scraper = Scraper::connect(server.addr("metrics"));
    for i in 1..=3u64 {
        let e = scraper.scrape();
        assert_eq!(
            e.int("oneloop_connections_accepted_total", &labels),
            1,
            "one connection"
        );
        assert_eq!(
            e.int("oneloop_received_bytes_total", &labels),
            i * GET.len() as u64
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = metrics_server();
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let requests: [(&[u8], u16); 5] = [
        (GET, 200),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
    ];
    let all: Vec<u8> = requests
        .iter()
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    send(&mut scraper.stream, &all);
    let mut received = Vec::new();
    for (request, status) in requests {
        let response = read_response(&mut scraper.stream, &mut scraper.pending, true);
        assert_eq!(response.status, status, "{:?}", Snippet(request));
        if status == 200 {
            received.push(response.exposition().int(
                "oneloop_received_bytes_total",
                &with(&service(&server, "metrics", "tcp"), &[]),
            ));
        }
    }
    assert!(received[0] <= received[1], "{received:?}");
    assert!(scraper.pending.is_empty());
    // Five identical scrapes in one write: five whole answers.
    send(&mut scraper.stream, &GET.repeat(5));
    for _ in 0..5 {
        let _ = read_response(&mut scraper.stream, &mut scraper.pending, true).exposition();
    }
}

#[test]
fn connection_close_and_http_1_0_close_after_the_answer() {
    let server = metrics_server();
    for request in [
        &b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /metrics HTTP/1.0\r\n\r\n",
        b"GET /nope HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = connect(server.addr("metrics"));
        send(&mut stream, request);
        let mut pending = read_to_end_within(&mut stream);
        let response = read_response(&mut io::empty(), &mut pending, true);
        assert!(matches!(response.status, 200 | 404), "{response:?}");
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(pending.is_empty(), "{:?}", Snippet(&pending));
    }
}

#[test]
fn a_query_string_is_fine() {
    let server = metrics_server();
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let response = scraper.request(b"GET /metrics?x=1&name[]=y HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = response.exposition();
}

// ---------------------------------------------------------------------------------------------
// 4. Adversaries.

/// Checks that a well-behaved echo client and a scraper are both served right now.
fn others_are_served(server: &Server, echo: &mut TcpStream, round: usize) {
    echo_round_trip(echo, format!("round {round}\n").as_bytes());
    let _ = scrape(server.addr("metrics"));
}

#[test]
fn a_slowloris_is_answered_when_its_head_is_complete_and_hurts_nobody() {
    let server = metrics_server();
    let mut slow = connect(server.addr("metrics"));
    let mut slow_writer = slow.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for byte in GET {
            slow_writer.write_all(&[*byte]).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut echo = connect(server.addr("echo"));
    let mut round = 0;
    while !trickle.is_finished() {
        others_are_served(&server, &mut echo, round);
        round += 1;
        thread::sleep(Duration::from_millis(100));
    }
    trickle.join().unwrap();
    assert!(round > 0);
    let mut pending = Vec::new();
    let response = read_response(&mut slow, &mut pending, true);
    let e = response.exposition();
    let labels = service(&server, "metrics", "tcp");
    assert!(e.int("oneloop_connections_open", &with(&labels, &[])) >= 1);
}

/// The bytes the server has read from connections to `metrics` other than this scrape's and
/// `scrapes` earlier ones (each sent [`SCRAPE`]): what one other connection's reads took.
fn read_from_others(e: &Exposition, labels: &[(&str, &str)], scrapes: u64) -> u64 {
    e.int("oneloop_received_bytes_total", labels) - (scrapes + 1) * SCRAPE.len() as u64
}

#[test]
fn a_pipeliner_that_never_reads_is_bounded_and_hurts_nobody() {
    let server = Server::start(&[
        "--output-limit",
        "65536",
        "echo@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let labels = service(&server, "metrics", "tcp");
    let labels = with(&labels, &[]);
    let rss_before = server.rss_kib();
    let flood = connect(server.addr("metrics"));
    let mut writer = flood.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let sender = thread::spawn(move || {
        // Hundreds of thousands of GETs, never reading an answer: the writes stall once the
        // server stops reading (past --output-limit) and both sockets' buffers (up to tens of
        // MiB on loopback) fill; then the write timeout ends it.
        let burst = GET.repeat(1000);
        let mut sent = 0usize;
        for _ in 0..2000 {
            match writer.write(&burst) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut echo = connect(server.addr("echo"));
    let (mut round, mut scrapes, mut peak) = (0, 0, 0);
    while !sender.is_finished() {
        others_are_served(&server, &mut echo, round);
        (round, scrapes) = (round + 1, scrapes + 1);
        peak = peak.max(server.rss_kib());
        thread::sleep(Duration::from_millis(50));
    }
    let sent = sender.join().unwrap() as u64;
    let mut reads = Vec::new();
    for _ in 0..5 {
        others_are_served(&server, &mut echo, round);
        (round, scrapes) = (round + 1, scrapes + 1);
        peak = peak.max(server.rss_kib());
        let e = scrape(server.addr("metrics"));
        reads.push(read_from_others(&e, &labels, scrapes));
        scrapes += 1;
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "pipeliner sent {sent} bytes ({} requests), the server read {reads:?}; server RSS \
         {rss_before} KiB before, peak {peak} KiB",
        sent / GET.len() as u64
    );
    assert!(
        reads.windows(2).all(|w| w[0] == w[1]),
        "the server still reads a client that never reads: {reads:?} of {sent} bytes"
    );
    assert!(
        reads[0] < sent / 2,
        "the server read {} of the {sent} bytes of a client that never reads",
        reads[0]
    );
    assert!(
        peak < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );
    // The pipeliner's answers, when it finally reads, are whole, and reading resumes.
    let mut flood = flood;
    let mut pending = Vec::new();
    for _ in 0..20 {
        let response = read_response(&mut flood, &mut pending, true);
        assert_eq!(response.status, 200);
    }
}

#[test]
fn a_scraper_that_resets_halfway_is_counted_and_hurts_nobody() {
    let server = metrics_server();
    let labels = service(&server, "metrics", "tcp");
    {
        let mut half = connect(server.addr("metrics"));
        send(&mut half, b"GET /metr");
        // Let the server read the half it has before the reset.
        thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&half)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    } // dropped: a reset
    let errored = with(&labels, &[("reason", "error")]);
    let e = scrape_until(server.addr("metrics"), "the reset connection ended", |e| {
        e.int("oneloop_connections_closed_total", &errored) == 1
    });
    // Only the scrape itself is open.
    assert_eq!(e.int("oneloop_connections_open", &with(&labels, &[])), 1);
    let mut echo = connect(server.addr("echo"));
    others_are_served(&server, &mut echo, 0);
    // A half request then a clean close is not answered, and ends as client_closed.
    {
        let mut half = connect(server.addr("metrics"));
        send(&mut half, b"GET /metrics HTTP/1.1\r\n");
        half.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_to_end_within(&mut half);
        assert!(
            got.is_empty(),
            "a cut head is not answered: {:?}",
            Snippet(&got)
        );
    }
}

#[test]
fn idle_timeout_closes_an_idle_scraper() {
    let server = Server::start(&[
        "--idle-timeout",
        "1",
        "echo@127.0.0.1:0",
        "metrics@127.0.0.1:0",
    ]);
    let labels = service(&server, "metrics", "tcp");
    let mut scraper = Scraper::connect(server.addr("metrics"));
    let _ = scraper.scrape();
    let (rest, end) = try_read_to_end_within(&mut scraper.stream);
    assert!(rest.is_empty(), "{:?}", Snippet(&rest));
    end.expect("a clean close at the idle timeout");
    let idle = with(&labels, &[("reason", "idle_timeout")]);
    let e = scrape_until(server.addr("metrics"), "the idle close counted", |e| {
        e.int("oneloop_connections_closed_total", &idle) == 1
    });
    assert_eq!(e.int("oneloop_connections_open", &with(&labels, &[])), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. The command line.

#[test]
fn metrics_over_udp_or_tls_is_a_usage_error() {
    for service in ["metrics@udp:127.0.0.1:0", "metrics@tls:127.0.0.1:0"] {
        let run = run(&["serve", service], b"");
        assert_eq!(run.code(), 2, "{service}: {run:?}");
        assert!(run.stdout.is_empty(), "{service}: {run:?}");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("metrics") && first.contains(&service[8..11]),
            "{service}: the first line names metrics and the transport: {run:?}"
        );
    }
}

#[test]
fn blocking_models_refuse_metrics_with_one_line() {
    for model in ["threaded", "serial", "pool", "forking"] {
        let run = run(
            &[
                "serve",
                "--model",
                model,
                "echo@127.0.0.1:0",
                "metrics@127.0.0.1:0",
            ],
            b"",
        );
        assert_eq!(run.code(), 2, "{model}: {run:?}");
        assert!(run.stdout.is_empty(), "{model}: nothing listens: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{model}: one line: {run:?}");
        assert!(lines[0].contains("metrics"), "{model}: {run:?}");
    }
}

#[test]
fn metrics_over_a_unix_socket() {
    let dir = TempDir::new("unix");
    // Quotes and backslashes in the address label are escaped in the exposition.
    let path = format!("{}/met\\rics\"q.sock", dir.path());
    let server = Server::start(&["echo@127.0.0.1:0", &format!("metrics@unix:{path}")]);
    let mut stream = UnixStream::connect(server.path("metrics")).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(GET).unwrap();
    let mut pending = Vec::new();
    let e = read_response(&mut stream, &mut pending, true).exposition();
    let labels = service(&server, "metrics", "unix");
    assert_eq!(
        e.value("oneloop_connections_open", &with(&labels, &[])),
        1.0
    );
    assert_eq!(
        e.int("oneloop_received_bytes_total", &with(&labels, &[])),
        GET.len() as u64
    );
    // Keep-alive over Unix too.
    stream.write_all(GET).unwrap();
    let _ = read_response(&mut stream, &mut pending, true).exposition();
}
