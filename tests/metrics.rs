//! The `metrics` service over real sockets: exact counters, the HTTP it speaks, and the access
//! log's lines, against the real binary.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, read_exact_within, send, Server};

/// Bounds every wait here.
const DEADLINE: Duration = Duration::from_secs(10);

/// One HTTP exchange on `stream`: the request, then one whole response (head and the body its
/// `Content-Length` gives). Returns the status line, the head and the body.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (String, String, String) {
    send(stream, request);
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (String, String, String) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = Vec::new();
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0; 1];
        let n = stream
            .read(&mut chunk)
            .expect("a response within the deadline");
        assert!(n > 0, "closed before a whole response head: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    let body = read_exact_within(stream, length);
    let status = head.lines().next().unwrap().to_owned();
    (status, head, String::from_utf8(body).unwrap())
}

/// A scrape on a new connection.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = connect(addr);
    let (status, _, body) = exchange(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn value(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let (series, _) = line.rsplit_once(' ').unwrap();
            let base = series.split('{').next().unwrap();
            base == name && labels.iter().all(|l| series.contains(l))
        })
        .and_then(|line| line.rsplit_once(' ').unwrap().1.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{exposition}"))
}

#[test]
fn counters_are_exact() {
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let (echo, metrics) = (server.addr("echo"), server.addr("metrics"));
    let echo_label = format!("address=\"{echo}\"");
    let (clients, size) = (20, 1000);
    for _ in 0..clients {
        let mut stream = connect(echo);
        send(&mut stream, &vec![b'x'; size]);
        assert_eq!(read_exact_within(&mut stream, size).len(), size);
    }
    let deadline = Instant::now() + DEADLINE;
    let exposition = loop {
        let exposition = scrape(metrics);
        if value(&exposition, "oneloop_connections_open", &[&echo_label]) == 0.0 {
            break exposition;
        }
        assert!(Instant::now() < deadline, "the echo clients never closed");
        thread::sleep(Duration::from_millis(20));
    };
    let echo = [echo_label.as_str()];
    let total = (clients * size) as f64;
    assert_eq!(
        value(&exposition, "oneloop_connections_accepted_total", &echo),
        20.0
    );
    assert_eq!(
        value(&exposition, "oneloop_received_bytes_total", &echo),
        total
    );
    assert_eq!(value(&exposition, "oneloop_sent_bytes_total", &echo), total);
    let closed = ["reason=\"client_closed\"", echo[0]];
    assert_eq!(
        value(&exposition, "oneloop_connections_closed_total", &closed),
        20.0
    );
    for family in [
        "oneloop_connections_refused_total",
        "oneloop_datagrams_received_total",
        "oneloop_datagrams_dropped_total",
        "oneloop_chat_members",
        "oneloop_chat_deliveries_total",
        "oneloop_chat_members_dropped_total",
        "oneloop_uploads_stored_total",
        "oneloop_upload_stored_bytes_total",
        "oneloop_uploads_failed_total",
        "oneloop_loop_turns_total",
        "oneloop_loop_events_total",
        "oneloop_loop_busy_seconds_total",
        "oneloop_loop_events_per_turn",
        "oneloop_loop_turn_duration_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            exposition.contains(&format!("# HELP {family} "))
                && exposition.contains(&format!("# TYPE {family} ")),
            "{family} is not declared"
        );
    }
    // The scrapes' own connections: each sent one request of known length.
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".len();
    let metrics_label = format!("address=\"{metrics}\"");
    let accepted = value(
        &exposition,
        "oneloop_connections_accepted_total",
        &[&metrics_label],
    );
    let received = value(
        &exposition,
        "oneloop_received_bytes_total",
        &[&metrics_label],
    );
    assert_eq!(received, accepted * request as f64);
}

#[test]
fn http_answers_as_a_scraper_expects() {
    let server = Server::start(&["metrics@127.0.0.1:0"]);
    let addr = server.addr("metrics");
    let mut stream = connect(addr);
    // Keep-alive, pipelined: three requests in one write, answered in order.
    send(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\nPOST /metrics HTTP/1.1\r\n\r\n",
    );
    let (status, head, body) = read_response(&mut stream);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4\r\n"));
    assert!(body.contains("# TYPE oneloop_loop_turns_total counter"));
    assert_eq!(read_response(&mut stream).0, "HTTP/1.1 404 Not Found");
    let (status, head, _) = read_response(&mut stream);
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(head.contains("Allow: GET\r\n"));
    // Still open: one more, then garbage gets 400 and the close.
    assert_eq!(
        exchange(&mut stream, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 200 OK"
    );
    let (status, head, _) = exchange(&mut stream, b"\x16\x03\x01\x00\xff\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(head.contains("Connection: close\r\n"));
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the close");
    assert!(rest.is_empty());
    // A head over 8 KiB: 400, whatever it holds.
    let mut long = connect(addr);
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    let _ = long.write_all(big.as_bytes());
    assert_eq!(read_response(&mut long).0, "HTTP/1.1 400 Bad Request");
}

#[test]
fn a_trickled_request_is_answered_and_others_are_served_meanwhile() {
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let mut slow = connect(server.addr("metrics"));
    let request = b"GET /metrics HTTP/1.1\r\n\r\n";
    for (index, byte) in request.iter().enumerate() {
        send(&mut slow, &[*byte]);
        if index % 8 == 0 {
            let mut echo = connect(server.addr("echo"));
            send(&mut echo, b"ping");
            assert_eq!(read_exact_within(&mut echo, 4), b"ping");
        }
    }
    assert_eq!(read_response(&mut slow).0, "HTTP/1.1 200 OK");
}

#[test]
fn the_access_log_has_one_line_per_connection() {
    let server = Server::start_with_env(&["echo@127.0.0.1:0"], &[("RUST_LOG", "oneloop=info")]);
    let echo = server.addr("echo");
    let mut stream = connect(echo);
    let local = stream.local_addr().unwrap();
    for _ in 0..3 {
        send(&mut stream, b"hello");
        assert_eq!(read_exact_within(&mut stream, 5), b"hello");
    }
    drop(stream);
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        let stderr = server.stderr();
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("oneloop::access] event=close"))
            .map(|l| l.split_once("] ").unwrap().1)
            .collect();
        if let Some(line) = lines.first() {
            assert_eq!(lines.len(), 1, "one line per connection, not per request");
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access line in\n{stderr}");
        thread::sleep(Duration::from_millis(20));
    };
    let expected = format!(
        "event=close conn=1 protocol=echo transport=tcp address={echo} peer={local} duration="
    );
    assert!(line.starts_with(&expected), "{line}");
    assert!(
        line.ends_with(" bytes_in=15 bytes_out=15 end=\"client closed\""),
        "{line}"
    );
}

#[test]
fn metrics_is_refused_where_it_is_not_served() {
    for args in [
        &["metrics@udp:127.0.0.1:0"][..],
        &["metrics@tls:127.0.0.1:0"],
        &["--model", "threaded", "metrics@127.0.0.1:0"],
        &["--model", "serial", "metrics@127.0.0.1:0"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_oneloop"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("metrics"), "{args:?}: {stderr}");
    }
}
