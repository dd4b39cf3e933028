//! `oneloop load` against the real server binary, and against fake servers, over loopback.
//!
//! Most tests start `oneloop serve` on ephemeral ports (the `listening` lines say which), run
//! `oneloop load` for about a second, and check the exit code and the JSON it prints. The rest
//! run it against a [`FakeServer`]: a few lines of blocking std code in this process that
//! misbehaves in one precise way (closes early, swaps replies between connections, answers only
//! full batches), so that each claim the generator makes — "0 errors", "pipeline 4" — is checked
//! against something that would make it false. No test asserts a rate or a latency: on a loaded
//! two-core machine those are noise. Every wait has a deadline, and the server is killed by PID
//! when a test ends, passed or not.

mod util;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::Server;

/// Starts `oneloop serve` with echo, upper and timestamp on ephemeral ports.
fn start_server() -> Server {
    Server::start(&[
        "echo@127.0.0.1:0",
        "upper@127.0.0.1:0",
        "timestamp@127.0.0.1:0",
    ])
}

/// The address of `protocol`'s service, as `oneloop load` takes it.
fn address(server: &Server, protocol: &str) -> String {
    server.addr(protocol).to_string()
}

/// What a finished `oneloop load` left.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The one JSON object on stdout, as printed.
    fn json(&self) -> &str {
        let json = self.stdout.trim_end();
        assert!(
            !json.contains('\n'),
            "stdout is not one line: {:?}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        json
    }

    /// The JSON object, parsed.
    fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.json()).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON object ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// A number from the JSON object.
    fn number(&self, key: &str) -> f64 {
        let value = self.value();
        value
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no number {key} in {value}"))
    }

    /// An array of numbers from the JSON object.
    fn numbers(&self, key: &str) -> Vec<f64> {
        let value = self.value();
        value
            .get(key)
            .and_then(serde_json::Value::as_array)
            .and_then(|array| array.iter().map(serde_json::Value::as_f64).collect())
            .unwrap_or_else(|| panic!("no array of numbers {key} in {value}"))
    }
}

/// Runs `oneloop load ARGS...` (killed if it outlives the harness's deadline).
fn load(args: &[&str]) -> Outcome {
    let argv: Vec<&str> = std::iter::once("load")
        .chain(args.iter().copied())
        .collect();
    let run = util::run(&argv, b"");
    Outcome {
        status: run.status,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

/// A clean run: exit 0, verified requests, no error of any kind.
fn assert_clean(outcome: &Outcome, connections: f64) {
    assert_every_connection_without_errors(outcome, connections);
    assert_eq!(
        outcome.number("connections"),
        connections,
        "{}",
        outcome.json()
    );
    assert!(outcome.number("requests") > 0.0, "{}", outcome.json());
    assert!(outcome.number("rps") > 0.0, "{}", outcome.json());
    // The contract's latency keys (and the CPU figure) are present and numbers.
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "cpu_s"] {
        outcome.number(key);
    }
}

/// Exit 0, no error of any kind, and every connection established.
fn assert_every_connection_without_errors(outcome: &Outcome, connections: f64) {
    assert!(
        outcome.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        outcome.status,
        outcome.stdout,
        outcome.stderr
    );
    assert_eq!(outcome.number("errors"), 0.0, "{}", outcome.json());
    // Implied by no errors, but checked on its own: the server kept every connection.
    assert_eq!(outcome.number("dropped"), 0.0, "{}", outcome.json());
    assert_eq!(
        outcome.number("established"),
        connections,
        "{}",
        outcome.json()
    );
}

/// Loads `protocol` with pipeline 1 and 4 (the second on two threads). That pipelining and the
/// threads do what they say is checked apart, by `pipelining_keeps_k_requests_outstanding` and
/// `every_thread_carries_load`.
fn load_each_pipeline(protocol: &str) {
    let server = start_server();
    for (pipeline, threads) in [("1", "1"), ("4", "2")] {
        let outcome = load(&[
            &address(&server, protocol),
            "--protocol",
            protocol,
            "--connections",
            "4",
            "--duration",
            "1",
            "--pipeline",
            pipeline,
            "--threads",
            threads,
            "--json",
        ]);
        assert_clean(&outcome, 4.0);
    }
}

#[test]
fn every_thread_carries_load() {
    // Each thread's own count of verified requests, from the tally it returned: one per thread
    // asked for, and none idle (all connections on one thread would leave the other at 0).
    let server = start_server();
    let outcome = load(&[
        &address(&server, "echo"),
        "--connections",
        "4",
        "--threads",
        "2",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean(&outcome, 4.0);
    let shares = outcome.numbers("thread_requests");
    assert_eq!(shares.len(), 2, "{}", outcome.json());
    assert!(shares.iter().all(|&n| n > 0.0), "{}", outcome.json());
    assert_eq!(
        shares.iter().sum::<f64>(),
        outcome.number("requests"),
        "{}",
        outcome.json()
    );
}

#[test]
fn echo_load_verifies_every_reply() {
    load_each_pipeline("echo");
}

#[test]
fn upper_load_verifies_every_reply() {
    load_each_pipeline("upper");
}

#[test]
fn timestamp_load_verifies_every_reply() {
    load_each_pipeline("timestamp");
}

#[test]
fn timestamp_lines_larger_than_a_read_are_verified() {
    // The longest line the server accepts (64 KiB and its newline) takes more than one of the
    // server's 64 KiB reads, and arrives in several TCP segments: it may be answered in stamped
    // pieces, which must join into the line.
    let server = start_server();
    let outcome = load(&[
        &address(&server, "timestamp"),
        "--protocol",
        "timestamp",
        "--connections",
        "2",
        "--size",
        "65537",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean(&outcome, 2.0);
}

#[test]
fn upper_load_against_an_echo_server_fails() {
    let server = start_server();
    let outcome = load(&[
        &address(&server, "echo"),
        "--protocol",
        "upper",
        "--connections",
        "3",
        "--duration",
        "1",
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(outcome.number("errors") > 0.0, "{}", outcome.json());
    assert!(outcome.number("wrong_replies") > 0.0, "{}", outcome.json());
    // The first lowercase letter of request 0 comes back as it was sent: the error names it,
    // and the capital that should have come.
    let wrong_letter = ('a'..='z').any(|c| {
        let expected = c.to_ascii_uppercase();
        outcome
            .json()
            .contains(&format!("is '{c}', expected '{expected}'"))
    });
    assert!(wrong_letter, "{}", outcome.json());
}

#[test]
fn connections_that_cannot_be_made_are_errors() {
    // A port nobody listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let outcome = load(&[&address, "--connections", "2", "--duration", "1", "--json"]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert_eq!(
        outcome.number("connect_failures"),
        2.0,
        "{}",
        outcome.json()
    );
    assert_eq!(outcome.number("requests"), 0.0, "{}", outcome.json());
}

#[test]
fn idle_mode_holds_every_connection() {
    let server = start_server();
    let outcome = load(&[
        &address(&server, "echo"),
        "--idle",
        "--connections",
        "200",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean_idle(&outcome, 200.0);
    assert!(
        outcome
            .stderr
            .contains("established 200 of 200 connections in"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.json().contains("\"mode\":\"idle\""));
    assert!(
        outcome.number("connect_s") > 0.0,
        "connecting 200 clients takes time"
    );
}

fn assert_clean_idle(outcome: &Outcome, connections: f64) {
    assert_every_connection_without_errors(outcome, connections);
    // One verified round trip per held connection, and none lost while held.
    assert_eq!(
        outcome.number("requests"),
        connections,
        "{}",
        outcome.json()
    );
}

#[test]
fn idle_connections_the_server_closes_while_held_are_errors() {
    // The server's idle timeout (1 s) is shorter than the hold (3 s): the memory a script would
    // measure meanwhile is not that of the connections asked for, so the run fails.
    let server = Server::start(&["--idle-timeout", "1", "echo@127.0.0.1:0"]);
    let outcome = load(&[
        &address(&server, "echo"),
        "--idle",
        "--connections",
        "5",
        "--duration",
        "3",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .contains("errors      5 (5 connections dropped by the server)"),
        "{}",
        outcome.stdout
    );
}

#[test]
fn the_human_summary_labels_its_figures() {
    let server = start_server();
    let outcome = load(&[
        &address(&server, "upper"),
        "--protocol",
        "upper",
        "--connections",
        "2",
        "--duration",
        "0.5",
    ]);
    assert!(outcome.status.success(), "{}", outcome.stderr);
    for label in [
        "requests",
        "req/s",
        "p50 ",
        "p99 ",
        "p999 ",
        "max ",
        "errors",
        "client CPU",
    ] {
        assert!(
            outcome.stdout.contains(label),
            "{label}: {}",
            outcome.stdout
        );
    }
    // Not a terminal: no progress line on stderr.
    assert!(!outcome.stderr.contains('\r'), "{:?}", outcome.stderr);
}

#[test]
fn idle_mode_announces_on_stdout_without_json() {
    let server = start_server();
    let outcome = load(&[
        &address(&server, "timestamp"),
        "--protocol",
        "timestamp",
        "--idle",
        "--connections",
        "20",
        "--duration",
        "0.3",
    ]);
    assert!(outcome.status.success(), "{}", outcome.stderr);
    let first = outcome.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("established 20 of 20 connections in "),
        "{}",
        outcome.stdout
    );
}

#[test]
fn contradictory_options_are_usage_errors() {
    let outcome = load(&["127.0.0.1:9", "--duration", "1", "--warmup", "2"]);
    assert_eq!(outcome.status.code(), Some(2), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("warm-up"), "{}", outcome.stderr);
    for (argv, says) in [
        (&["--protocol", "chat", "--threads", "2"][..], "one thread"),
        (
            &["--protocol", "chat", "--connections", "3", "--senders", "4"],
            "senders",
        ),
        (&["--protocol", "chat", "--connections", "1"], "2 to"),
        (&["--senders", "2"], "chat"),
        (
            &["--protocol", "chat", "--idle", "--senders", "2"],
            "send nothing",
        ),
    ] {
        let mut args = vec!["127.0.0.1:9"];
        args.extend_from_slice(argv);
        let outcome = load(&args);
        assert_eq!(
            outcome.status.code(),
            Some(2),
            "{argv:?}: {}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains(says),
            "{argv:?}: {}",
            outcome.stderr
        );
    }
}

/// A fake server for one test: a listener on 127.0.0.1 port 0 whose accepted connections are
/// handed, `group` at a time in the order they were accepted, to `serve` on a thread of their
/// own. Every socket has [`util::DEADLINE`] as its read and write timeout, so no thread can hang;
/// dropping the server stops the accepting thread (connection threads end with their
/// connections).
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(group: usize, serve: impl Fn(Vec<TcpStream>) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let serve = Arc::new(serve);
        thread::spawn(move || {
            let mut waiting = Vec::with_capacity(group);
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(util::DEADLINE)).unwrap();
                stream.set_write_timeout(Some(util::DEADLINE)).unwrap();
                waiting.push(stream);
                if waiting.len() == group {
                    let streams = std::mem::replace(&mut waiting, Vec::with_capacity(group));
                    let serve = Arc::clone(&serve);
                    thread::spawn(move || serve(streams));
                }
            }
        });
        FakeServer { addr, stop }
    }

    /// The address, as `oneloop load` takes it.
    fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The one stamp the fake timestamp servers put before each reply.
const STAMP: &[u8] = b"[Wed Sep  9 16:42:46 2026] ";

/// How each protocol answers a whole request, as far as `oneloop load` can tell.
fn answer(protocol: &str, request: &[u8]) -> Vec<u8> {
    match protocol {
        "echo" => request.to_vec(),
        "upper" => request.to_ascii_uppercase(),
        "timestamp" => [STAMP, request].concat(),
        other => panic!("no fake {other} server"),
    }
}

#[test]
fn replies_swapped_between_connections_are_wrong() {
    // A server that mixes up its sockets: each connection of a pair gets the right answer to
    // the *other* connection's request. It waits for a request from both, so the two stay in
    // step: request n on one is answered with the answer to request n on the other. Only
    // payloads that differ from one connection to the next can reveal it.
    for protocol in ["echo", "upper", "timestamp"] {
        let server = FakeServer::start(2, move |pair| {
            let [mut a, mut b]: [TcpStream; 2] = pair.try_into().expect("a pair");
            let (mut from_a, mut from_b) = ([0; 64], [0; 64]);
            while a.read_exact(&mut from_a).is_ok() && b.read_exact(&mut from_b).is_ok() {
                let swapped = b.write_all(&answer(protocol, &from_a)).is_ok()
                    && a.write_all(&answer(protocol, &from_b)).is_ok();
                if !swapped {
                    break;
                }
            }
        });
        let outcome = load(&[
            &server.address(),
            "--protocol",
            protocol,
            "--connections",
            "4",
            "--size",
            "64",
            "--duration",
            "1",
            "--json",
        ]);
        assert!(!outcome.status.success(), "{protocol}: {}", outcome.stdout);
        assert_eq!(
            outcome.number("wrong_replies"),
            4.0,
            "{protocol}: {}",
            outcome.json()
        );
    }
}

#[test]
fn connections_the_server_closes_before_the_end_are_errors() {
    // An echo server that answers five 64-byte requests per connection, then closes: the last
    // reply and the end of stream leave together, with no request outstanding. Every connection
    // is gone within milliseconds of a 2 s run.
    let server = FakeServer::start(1, |streams| {
        let mut stream = streams.into_iter().next().expect("a connection");
        let mut left = 5 * 64;
        let mut buffer = [0; 64];
        while left > 0 {
            match stream.read(&mut buffer[..left.min(64)]) {
                Ok(count @ 1..) if stream.write_all(&buffer[..count]).is_ok() => left -= count,
                _ => return,
            }
        }
    });
    let args = [
        &server.address(),
        "--connections",
        "10",
        "--size",
        "64",
        "--duration",
        "2",
        "--warmup",
        "0",
    ];
    let outcome = load(&[&args[..], &["--json"]].concat());
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert_eq!(outcome.number("dropped"), 10.0, "{}", outcome.json());
    assert!(outcome.number("errors") >= 10.0, "{}", outcome.json());
    assert!(
        outcome.json().contains("closed the connection"),
        "{}",
        outcome.json()
    );
    // The rate is over the time the load really ran, not the 2 s asked for.
    let (requests, measured, rps) = (
        outcome.number("requests"),
        outcome.number("measured_s"),
        outcome.number("rps"),
    );
    assert!((40.0..=50.0).contains(&requests), "{}", outcome.json());
    assert!(measured > 0.0 && measured < 1.0, "{}", outcome.json());
    assert!(
        (rps - requests / measured).abs() <= rps * 0.01,
        "{}",
        outcome.json()
    );
    // The human summary says so too.
    let human = load(&args);
    assert!(!human.status.success(), "{}", human.stdout);
    assert!(
        human
            .stdout
            .contains("10 connections dropped by the server"),
        "{}",
        human.stdout
    );
}

#[test]
fn pipelining_keeps_k_requests_outstanding() {
    // An echo server that answers only whole batches of 4 requests: a connection that keeps
    // fewer than 4 outstanding never hears back.
    const BATCH: usize = 4 * 64;
    let server = FakeServer::start(1, |streams| {
        let mut stream = streams.into_iter().next().expect("a connection");
        let mut pending = Vec::new();
        let mut buffer = [0; 4096];
        while let Ok(count @ 1..) = stream.read(&mut buffer) {
            pending.extend_from_slice(&buffer[..count]);
            let whole = pending.len() / BATCH * BATCH;
            if stream.write_all(&pending[..whole]).is_err() {
                return;
            }
            pending.drain(..whole);
        }
    });
    let run = |pipeline: &str| {
        load(&[
            &server.address(),
            "--connections",
            "2",
            "--size",
            "64",
            "--pipeline",
            pipeline,
            "--duration",
            "1",
            "--json",
        ])
    };
    let outcome = run("4");
    assert_clean(&outcome, 2.0);
    // One request at a time stalls: each connection's first request is never answered.
    let stalled = run("1");
    assert!(!stalled.status.success(), "{}", stalled.stdout);
    assert_eq!(stalled.number("requests"), 0.0, "{}", stalled.json());
    assert_eq!(stalled.number("missing_replies"), 2.0, "{}", stalled.json());
}

/// A fresh socket path in the temporary directory, unique to this test process and `name`.
fn socket_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-l{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn load_over_unix_sockets_verifies_every_reply() {
    let (echo, upper) = (socket_path("echo"), socket_path("upper"));
    let server = Server::start(&[
        &format!("echo@unix:{}", echo.display()),
        &format!("upper@unix:{}", upper.display()),
    ]);
    for (protocol, path, pipeline) in [("echo", &echo, "1"), ("upper", &upper, "4")] {
        let address = format!("unix:{}", server.path(protocol).display());
        assert_eq!(server.path(protocol), *path);
        let outcome = load(&[
            &address,
            "--protocol",
            protocol,
            "--connections",
            "8",
            "--pipeline",
            pipeline,
            "--threads",
            "2",
            "--duration",
            "1",
            "--json",
        ]);
        assert_clean(&outcome, 8.0);
        assert!(
            outcome
                .json()
                .contains(&format!("\"address\":\"{address}\"")),
            "{}",
            outcome.json()
        );
    }
    // Idle mode too: every connection made, one round trip each, held.
    let outcome = load(&[
        &format!("unix:{}", echo.display()),
        "--idle",
        "--connections",
        "50",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert_clean_idle(&outcome, 50.0);
}

#[test]
fn load_over_a_unix_path_nobody_listens_on_fails() {
    let path = socket_path("nobody");
    let outcome = load(&[
        &format!("unix:{}", path.display()),
        "--connections",
        "1",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert_eq!(
        outcome.number("connect_failures"),
        1.0,
        "{}",
        outcome.json()
    );
}

#[test]
fn load_over_udp_verifies_every_reply() {
    let server = Server::start(&["echo@udp:127.0.0.1:0", "timestamp@udp:127.0.0.1:0"]);
    for (protocol, pipeline) in [("echo", "1"), ("timestamp", "4")] {
        let outcome = load(&[
            &format!("udp:{}", server.addr_of(protocol, "udp")),
            "--protocol",
            protocol,
            "--connections",
            "8",
            "--pipeline",
            pipeline,
            "--threads",
            "2",
            "--duration",
            "1",
            "--json",
        ]);
        assert_clean(&outcome, 8.0);
        assert_eq!(outcome.number("lost"), 0.0, "{}", outcome.json());
        assert_eq!(outcome.number("wrong_replies"), 0.0, "{}", outcome.json());
    }
}

/// A fake UDP server on 127.0.0.1 port 0 that hands each datagram to `answer` (with its running
/// number) and sends back what it returns, if anything. It runs until the test process ends.
fn fake_udp_server(answer: fn(u64, &[u8]) -> Option<Vec<u8>>) -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buffer = [0; 65536];
        for received in 0u64.. {
            let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                return;
            };
            if let Some(reply) = answer(received, &buffer[..len]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

#[test]
fn udp_replies_that_never_come_are_lost() {
    // An echo server that answers every other datagram: with pipeline 1 the losses are found by
    // the timeout, with pipeline 4 also by a later request's reply overtaking them.
    let addr = fake_udp_server(|n, datagram| (n % 2 == 0).then(|| datagram.to_vec()));
    for pipeline in ["1", "4"] {
        let outcome = load(&[
            &format!("udp:{addr}"),
            "--connections",
            "2",
            "--pipeline",
            pipeline,
            "--duration",
            "1",
            "--udp-timeout",
            "0.2",
            "--json",
        ]);
        assert!(!outcome.status.success(), "{}", outcome.stdout);
        assert!(outcome.number("lost") > 0.0, "{}", outcome.json());
        assert!(outcome.number("requests") > 0.0, "{}", outcome.json());
        assert_eq!(outcome.number("wrong_replies"), 0.0, "{}", outcome.json());
        assert!(
            outcome.stderr.contains("no reply to request"),
            "{}",
            outcome.stderr
        );
    }
}

#[test]
fn wrong_udp_replies_are_errors() {
    // An "echo" server that changes the last byte of every datagram.
    let addr = fake_udp_server(|_, datagram| {
        let mut reply = datagram.to_vec();
        if let Some(last) = reply.last_mut() {
            *last = b'!';
        }
        Some(reply)
    });
    let outcome = load(&[
        &format!("udp:{addr}"),
        "--connections",
        "2",
        "--duration",
        "0.5",
        "--udp-timeout",
        "0.2",
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(outcome.number("wrong_replies") > 0.0, "{}", outcome.json());
    assert_eq!(outcome.number("requests"), 0.0, "{}", outcome.json());
    assert_eq!(outcome.number("lost"), 0.0, "{}", outcome.json());
}

#[test]
fn udp_timestamp_replies_in_stamped_pieces_are_wrong() {
    // Over a stream a line may be answered in stamped pieces; a datagram is one message and gets
    // exactly one stamp. This server stamps each half of every datagram: `[ctime] half[ctime]
    // half` — each piece right, the whole wrong. (The real server passes the same run in
    // `load_over_udp_verifies_every_reply`.)
    let addr = fake_udp_server(|_, datagram| {
        const STAMP: &[u8] = b"[Wed Sep  9 16:42:46 2026] ";
        let (first, second) = datagram.split_at(datagram.len() / 2);
        Some([STAMP, first, STAMP, second].concat())
    });
    let outcome = load(&[
        &format!("udp:{addr}"),
        "--protocol",
        "timestamp",
        "--connections",
        "2",
        "--duration",
        "0.5",
        "--udp-timeout",
        "0.2",
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(outcome.number("wrong_replies") > 0.0, "{}", outcome.json());
    assert_eq!(outcome.number("requests"), 0.0, "{}", outcome.json());
    assert!(outcome.stderr.contains("'['"), "{}", outcome.stderr);
}

#[test]
fn udp_replies_after_the_timeout_are_late_not_wrong() {
    // An echo server that holds every 5th datagram's reply for three times the `--udp-timeout`,
    // then sends it: by then its request is lost, and the socket has others outstanding.
    const TIMEOUT: Duration = Duration::from_millis(200);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    thread::spawn(move || {
        let mut buffer = [0; 65536];
        let mut held: VecDeque<(Instant, Vec<u8>, SocketAddr)> = VecDeque::new();
        for received in 0u64.. {
            while held
                .front()
                .is_some_and(|(due, _, _)| *due <= Instant::now())
            {
                let (_, reply, to) = held.pop_front().unwrap();
                let _ = socket.send_to(&reply, to);
            }
            match socket.recv_from(&mut buffer) {
                Ok((len, from)) if received % 5 == 4 => {
                    held.push_back((Instant::now() + 3 * TIMEOUT, buffer[..len].to_vec(), from));
                }
                Ok((len, from)) => {
                    let _ = socket.send_to(&buffer[..len], from);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
    let outcome = load(&[
        &format!("udp:{addr}"),
        "--connections",
        "2",
        "--duration",
        "1.5",
        "--udp-timeout",
        &TIMEOUT.as_secs_f64().to_string(),
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(outcome.number("lost") > 0.0, "{}", outcome.json());
    assert!(outcome.number("late") > 0.0, "{}", outcome.json());
    assert!(outcome.number("requests") > 0.0, "{}", outcome.json());
    assert_eq!(outcome.number("wrong_replies"), 0.0, "{}", outcome.json());
    assert_eq!(
        outcome.number("errors"),
        outcome.number("lost"),
        "{}",
        outcome.json()
    );
}

/// How a [`FakeChat`] misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChatFault {
    /// Relays every line faithfully.
    Faithful,
    /// Does not pass the 100th numbered line to its first recipient.
    Drop,
    /// Passes the 100th numbered line to its first recipient twice.
    Duplicate,
    /// Passes the first `hello` to its first recipient twice.
    DuplicateHello,
    /// Shows the numbered lines of the members named `…-0` and `…-1` to every other member
    /// under each other's names, pairing them so that their sequence numbers stay in step: line
    /// k of one goes out with line k of the other, each under the other's name. (A line whose
    /// partner has not come within [`SWAP_WAIT`] goes out under its own name, and so does its
    /// partner, so the last lines of a run are never held back.) The two members themselves see
    /// each other's lines faithfully.
    SwapNames,
    /// From the 100th numbered line on, holds one sender's lines back from the member named
    /// `…-4` (a listener: with five members and two senders, no sender's observer) until the
    /// other sender's next line, which it gets first: every line, once, each sender's in order,
    /// but interleaved otherwise than at every other member.
    Reorder,
}

/// How long [`ChatFault::SwapNames`] holds a line for its partner.
const SWAP_WAIT: Duration = Duration::from_millis(50);

/// A fake chat room: its members, each one's name and the writing half of its socket, and the
/// state its fault needs.
#[derive(Default)]
struct RoomState {
    members: Vec<Option<(String, Box<dyn Write + Send>)>>,
    /// Numbered lines relayed so far.
    numbered: u64,
    /// `hello` lines relayed so far.
    hellos: u64,
    /// [`ChatFault::SwapNames`]: per swapped member (`…-0`, `…-1`), its numbered lines so far,
    /// and those held for their partner: (index, when held, the line without its name).
    swap_counts: [u64; 2],
    swap_held: [VecDeque<(u64, Instant, String)>; 2],
    /// Indices whose line went out under its own name: its partner's goes out so too.
    swap_unpaired: std::collections::HashSet<u64>,
    /// [`ChatFault::Reorder`]: the held sender and its lines, as shown; whether it is done.
    reorder_held: Vec<(usize, String)>,
    reorder_done: bool,
}

type Room = Arc<std::sync::Mutex<RoomState>>;

/// A fake chat server, just enough of the contract: a greeting, `* NAME joined` and `* NAME
/// left` notices, `/nick` announced to the others as `* OLD is now NEW`, `/who` (one `* ` line),
/// and every other line relayed to every other member as `NAME: LINE`. Over TCP or a Unix
/// socket; one blocking thread per member; writes under the room's lock.
struct FakeChat {
    address: String,
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn()>,
}

impl FakeChat {
    fn tcp(fault: ChatFault) -> FakeChat {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake chat server");
        let addr = listener.local_addr().unwrap();
        let (room, stop) = (Room::default(), Arc::new(AtomicBool::new(false)));
        let stopped = Arc::clone(&stop);
        release_unpaired_lines(&room, &stop, fault);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(util::DEADLINE)).unwrap();
                stream.set_write_timeout(Some(util::DEADLINE)).unwrap();
                // Each line is its own small write, as a real server's may be: no Nagle delay.
                stream.set_nodelay(true).unwrap();
                let name = stream.peer_addr().unwrap().to_string();
                let writer = Box::new(stream.try_clone().unwrap());
                chat_member(&room, name, Box::new(stream), writer, fault);
            }
        });
        FakeChat {
            address: addr.to_string(),
            stop,
            wake: Box::new(move || drop(TcpStream::connect(addr))),
        }
    }

    fn unix(fault: ChatFault, path: std::path::PathBuf) -> FakeChat {
        use std::os::unix::net::{UnixListener, UnixStream};
        let listener = UnixListener::bind(&path).expect("bind a fake chat socket");
        let (room, stop) = (Room::default(), Arc::new(AtomicBool::new(false)));
        let stopped = Arc::clone(&stop);
        release_unpaired_lines(&room, &stop, fault);
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(util::DEADLINE)).unwrap();
                stream.set_write_timeout(Some(util::DEADLINE)).unwrap();
                let writer = Box::new(stream.try_clone().unwrap());
                chat_member(&room, format!("unix-{n}"), Box::new(stream), writer, fault);
            }
        });
        let wake_path = path.clone();
        FakeChat {
            address: format!("unix:{}", path.display()),
            stop,
            wake: Box::new(move || drop(UnixStream::connect(&wake_path))),
        }
    }
}

impl Drop for FakeChat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        (self.wake)();
    }
}

/// [`ChatFault::SwapNames`]: a thread that, every few milliseconds until `stop`, sends out
/// under its own name each line held longer than [`SWAP_WAIT`] for its partner.
fn release_unpaired_lines(room: &Room, stop: &Arc<AtomicBool>, fault: ChatFault) {
    if fault != ChatFault::SwapNames {
        return;
    }
    let (room, stop) = (Arc::clone(room), Arc::clone(stop));
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(5));
            let mut guard = room.lock().unwrap();
            let state = &mut *guard;
            for side in 0..2 {
                while let Some((index, held, _)) = state.swap_held[side].front() {
                    if held.elapsed() < SWAP_WAIT {
                        break;
                    }
                    let index = *index;
                    let (_, _, line) = state.swap_held[side].pop_front().unwrap();
                    state.swap_unpaired.insert(index);
                    let pair = swapped_pair(&state.members);
                    if let Some(pair) = pair {
                        let shown = format!("{}: {line}", pair[side].1);
                        write_to_all_but(&mut state.members, &[pair[0].0, pair[1].0], &shown);
                    }
                }
            }
        }
    });
}

/// The members [`ChatFault::SwapNames`] swaps, (index, name) of `…-0` then `…-1`, once both
/// have taken those names.
fn swapped_pair(
    members: &[Option<(String, Box<dyn Write + Send>)>],
) -> Option<[(usize, String); 2]> {
    let find = |suffix: &str| {
        members.iter().enumerate().find_map(|(i, m)| match m {
            Some((name, _)) if name.starts_with("ld") && name.ends_with(suffix) => {
                Some((i, name.clone()))
            }
            _ => None,
        })
    };
    Some([find("-0")?, find("-1")?])
}

/// Writes `line` to every member whose index is not in `except`.
fn write_to_all_but(
    members: &mut [Option<(String, Box<dyn Write + Send>)>],
    except: &[usize],
    line: &str,
) {
    for (i, member) in members.iter_mut().enumerate() {
        if let Some((_, writer)) = member {
            if !except.contains(&i) {
                let _ = writer.write_all(line.as_bytes());
            }
        }
    }
}

/// [`ChatFault::SwapNames`]: relays numbered line `text` of member `me` if it is one of the two
/// swapped (see the fault); false if it is not, for the caller to relay it.
fn relay_swapped(state: &mut RoomState, me: usize, text: &str) -> bool {
    let Some(pair) = swapped_pair(&state.members) else {
        return false;
    };
    let Some(side) = (0..2).find(|&side| pair[side].0 == me) else {
        return false;
    };
    let (other, insiders) = (1 - side, [pair[0].0, pair[1].0]);
    // The partner sees it faithfully, at once.
    if let Some((_, writer)) = &mut state.members[pair[other].0] {
        let _ = writer.write_all(format!("{}: {text}\n", pair[side].1).as_bytes());
    }
    let index = state.swap_counts[side];
    state.swap_counts[side] += 1;
    let line = format!("{text}\n");
    if state.swap_unpaired.remove(&index) {
        let shown = format!("{}: {line}", pair[side].1);
        write_to_all_but(&mut state.members, &insiders, &shown);
    } else if let Some((held_index, _, held)) = state.swap_held[other].pop_front() {
        assert_eq!(held_index, index, "the pair's lines are in step");
        // The partner's line k under this member's name, then this one's under the partner's.
        let first = format!("{}: {held}", pair[side].1);
        write_to_all_but(&mut state.members, &insiders, &first);
        let second = format!("{}: {line}", pair[other].1);
        write_to_all_but(&mut state.members, &insiders, &second);
    } else {
        state.swap_held[side].push_back((index, Instant::now(), line));
    }
    true
}

/// [`ChatFault::Reorder`]: relays `shown`, numbered line `state.numbered` of member `me`, if the
/// fault has a use for it; false if not, for the caller to relay it.
fn relay_reordered(state: &mut RoomState, me: usize, shown: &str) -> bool {
    let victim = state.members.iter().position(|m| {
        m.as_ref()
            .is_some_and(|(name, _)| name.starts_with("ld") && name.ends_with("-4"))
    });
    let Some(victim) = victim else { return false };
    if state.reorder_done || me == victim || (state.reorder_held.is_empty() && state.numbered < 100)
    {
        return false;
    }
    if state
        .reorder_held
        .first()
        .map_or(true, |&(held, _)| held == me)
    {
        write_to_all_but(&mut state.members, &[me, victim], shown);
        state.reorder_held.push((me, shown.to_string()));
        return true;
    }
    // Another sender's line: to everyone, the victim first of all, then the held ones.
    broadcast(&mut state.members, me, shown.as_bytes(), 1);
    if let Some((_, writer)) = &mut state.members[victim] {
        for (_, held) in state.reorder_held.drain(..) {
            let _ = writer.write_all(held.as_bytes());
        }
    }
    state.reorder_done = true;
    true
}

/// Adds a member to `room` and serves it on a thread of its own.
fn chat_member(
    room: &Room,
    mut name: String,
    reader: Box<dyn Read + Send>,
    mut writer: Box<dyn Write + Send>,
    fault: ChatFault,
) {
    let room = Arc::clone(room);
    let me = {
        let mut guard = room.lock().unwrap();
        let count = guard.members.iter().flatten().count() + 1;
        let greeting = format!("* welcome {name}; {count} members here; /nick NAME, /who, quit\n");
        let _ = writer.write_all(greeting.as_bytes());
        broadcast(
            &mut guard.members,
            usize::MAX,
            format!("* {name} joined\n").as_bytes(),
            1,
        );
        guard.members.push(Some((name.clone(), writer)));
        guard.members.len() - 1
    };
    thread::spawn(move || {
        let mut reader = std::io::BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let mut guard = room.lock().unwrap();
            let state = &mut *guard;
            if let Some(new) = text.strip_prefix("/nick ") {
                let notice = format!("* {name} is now {new}\n");
                name = new.to_string();
                state.members[me].as_mut().unwrap().0 = name.clone();
                broadcast(&mut state.members, me, notice.as_bytes(), 1);
            } else if text == "/who" {
                let names: Vec<&str> = state
                    .members
                    .iter()
                    .flatten()
                    .map(|m| m.0.as_str())
                    .collect();
                let reply = format!("* members: {}\n", names.join(" "));
                let _ = state.members[me]
                    .as_mut()
                    .unwrap()
                    .1
                    .write_all(reply.as_bytes());
            } else {
                let mut copies = 1;
                if text.starts_with(|c: char| c.is_ascii_digit()) {
                    state.numbered += 1;
                    if fault == ChatFault::SwapNames && relay_swapped(state, me, &text) {
                        continue;
                    }
                    let shown = format!("{name}: {text}\n");
                    if fault == ChatFault::Reorder && relay_reordered(state, me, &shown) {
                        continue;
                    }
                    if state.numbered == 100 {
                        copies = match fault {
                            ChatFault::Drop => 0,
                            ChatFault::Duplicate => 2,
                            _ => 1,
                        };
                    }
                } else if text == "hello" {
                    state.hellos += 1;
                    if state.hellos == 1 && fault == ChatFault::DuplicateHello {
                        copies = 2;
                    }
                }
                let relayed = format!("{name}: {text}\n");
                broadcast(&mut state.members, me, relayed.as_bytes(), copies);
            }
        }
        let mut guard = room.lock().unwrap();
        guard.members[me] = None;
        broadcast(
            &mut guard.members,
            me,
            format!("* {name} left\n").as_bytes(),
            1,
        );
    });
}

/// Writes `line` to every member but `from`: `first_copies` times to the first, once to the rest.
fn broadcast(
    members: &mut [Option<(String, Box<dyn Write + Send>)>],
    from: usize,
    line: &[u8],
    first_copies: usize,
) {
    let mut first = true;
    for (i, member) in members.iter_mut().enumerate() {
        let Some((_, writer)) = member else { continue };
        if i == from {
            continue;
        }
        let copies = if first { first_copies } else { 1 };
        first = false;
        for _ in 0..copies {
            let _ = writer.write_all(line);
        }
    }
}

/// `oneloop load --protocol chat` against `address` with 5 members, 2 of them sending.
fn chat_load(address: &str, extra: &[&str]) -> Outcome {
    let mut args = vec![
        address,
        "--protocol",
        "chat",
        "--connections",
        "5",
        "--senders",
        "2",
        "--duration",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    load(&args)
}

#[test]
fn chat_load_checks_every_delivery() {
    let server = FakeChat::tcp(ChatFault::Faithful);
    for pipeline in ["1", "4"] {
        let outcome = chat_load(&server.address, &["--pipeline", pipeline, "--size", "40"]);
        assert_clean(&outcome, 5.0);
        let deliveries = outcome.number("deliveries");
        // Each line sent goes to the 4 other members.
        assert!(deliveries > 0.0, "{}", outcome.json());
        assert!(outcome.number("delivery_rps") > 0.0, "{}", outcome.json());
        assert!(
            deliveries <= 4.0 * (outcome.number("requests") + 8.0),
            "{}",
            outcome.json()
        );
    }
}

#[test]
fn chat_load_over_a_unix_socket() {
    let server = FakeChat::unix(ChatFault::Faithful, socket_path("chat"));
    let outcome = chat_load(&server.address, &[]);
    assert_clean(&outcome, 5.0);
    assert!(outcome.number("deliveries") > 0.0, "{}", outcome.json());
}

#[test]
fn chat_lines_dropped_or_duplicated_are_errors() {
    for (fault, key) in [
        (ChatFault::Drop, "missing_replies"),
        (ChatFault::Duplicate, "wrong_replies"),
    ] {
        let server = FakeChat::tcp(fault);
        let outcome = chat_load(&server.address, &[]);
        assert!(!outcome.status.success(), "{fault:?}: {}", outcome.json());
        assert!(
            outcome.number("errors") > 0.0,
            "{fault:?}: {}",
            outcome.json()
        );
        assert!(outcome.number(key) > 0.0, "{fault:?}: {}", outcome.json());
        assert!(
            outcome.stderr.contains("errors; first:"),
            "{fault:?}: {}",
            outcome.stderr
        );
    }
}

/// A chat load against a fake room with `fault` fails, counting wrong replies, and its first
/// error says what was wrong (`reason`).
fn assert_chat_fault_is_wrong(fault: ChatFault, reason: &str) {
    let server = FakeChat::tcp(fault);
    let outcome = chat_load(&server.address, &[]);
    assert!(!outcome.status.success(), "{}", outcome.json());
    assert!(outcome.number("wrong_replies") > 0.0, "{}", outcome.json());
    assert!(
        outcome.stderr.contains(reason),
        "the first error should say {reason:?}: {}",
        outcome.stderr
    );
}

#[test]
fn chat_lines_under_another_senders_name_are_wrong() {
    // Two senders' lines swapped between their names, their sequence numbers in step: only the
    // sender's number each line carries gives it away. (The real room passes the same run in
    // `chat_load_against_the_real_reactor`.) The first error says whose line it was.
    assert_chat_fault_is_wrong(ChatFault::SwapNames, "'s name");
}

#[test]
fn chat_lines_interleaved_otherwise_at_one_member_are_wrong() {
    // Every member gets every line once and each sender's in order, but one listener sees two
    // senders' lines in another order than the rest of the room: only the one-order check
    // catches it, and counts that member once.
    let server = FakeChat::tcp(ChatFault::Reorder);
    let outcome = chat_load(&server.address, &[]);
    assert!(!outcome.status.success(), "{}", outcome.json());
    assert_eq!(outcome.number("order_differs"), 1.0, "{}", outcome.json());
    assert_eq!(outcome.number("wrong_replies"), 1.0, "{}", outcome.json());
    assert_eq!(outcome.number("missing_replies"), 0.0, "{}", outcome.json());
    assert!(
        outcome.stderr.contains("-4 got ") && outcome.stderr.contains("in another order than"),
        "the first error should name the member: {}",
        outcome.stderr
    );
}

#[test]
fn a_hello_heard_twice_at_the_start_is_wrong() {
    assert_chat_fault_is_wrong(ChatFault::DuplicateHello, "hello a second time");
}

#[test]
fn chat_load_against_the_real_reactor() {
    // The fake chat server above pins the generator's checks; this is the real room, routed by
    // the loop: every line to every other member, once, in order, under the sender's name.
    let server = Server::start(&["chat@127.0.0.1:0"]);
    let address = server.addr("chat").to_string();
    let outcome = load(&[
        &address,
        "--protocol",
        "chat",
        "--connections",
        "30",
        "--senders",
        "5",
        "--pipeline",
        "4",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean(&outcome, 30.0);
    assert!(outcome.number("deliveries") > 0.0, "{}", outcome.json());
}

#[test]
fn idle_chat_members_are_each_greeted_and_held() {
    // The real room: each member's one check is its `* welcome` greeting; then the others'
    // join notices arrive while it is held, and are read and ignored.
    let server = Server::start(&["chat@127.0.0.1:0"]);
    let address = server.addr("chat").to_string();
    let outcome = load(&[
        &address,
        "--protocol",
        "chat",
        "--idle",
        "--connections",
        "50",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean_idle(&outcome, 50.0);
    assert!(
        outcome
            .stderr
            .contains("established 50 of 50 connections in"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn idle_chat_members_the_server_drops_are_errors() {
    let server = Server::start(&["--idle-timeout", "1", "chat@127.0.0.1:0"]);
    let address = server.addr("chat").to_string();
    let outcome = load(&[
        &address,
        "--protocol",
        "chat",
        "--idle",
        "--connections",
        "5",
        "--duration",
        "3",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .contains("errors      5 (5 connections dropped by the server)"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("greeting"), "{}", outcome.stdout);
}

/// Starts `oneloop load ARGS...` in the background, its output collected.
fn spawn_load(args: &[&str]) -> util::KillOnDrop {
    let child = std::process::Command::new(util::BIN)
        .arg("load")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start oneloop load");
    util::KillOnDrop(child)
}

/// Waits (within the harness's deadline) for `child` to exit; its status and output.
fn finish(mut child: util::KillOnDrop, within: Duration) -> (ExitStatus, String, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < within,
            "oneloop load still running {within:?} after the signal"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stdout, stderr)
}

/// Ctrl-C (a real SIGINT) ends a 60 s run at once with the summary of what was measured so far,
/// marked interrupted, and the usual exit status: 0, since every reply was right (contract v3).
/// In both forms: the human summary and `--json`.
#[test]
fn ctrl_c_ends_a_run_early_with_the_summary_so_far() {
    let server = start_server();
    for json in [false, true] {
        let address = address(&server, "echo");
        let mut args = vec![
            &address[..],
            "--duration",
            "60",
            "--warmup",
            "0",
            "--connections",
            "4",
        ];
        if json {
            args.push("--json");
        }
        let child = spawn_load(&args);
        thread::sleep(Duration::from_millis(1500));
        util::signal(child.id(), "INT");
        // The grace for replies in flight is 2 s; an echo server answers them in microseconds.
        let (status, stdout, stderr) = finish(child, util::DEADLINE);
        assert_eq!(
            status.code(),
            Some(0),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        if json {
            assert!(stdout.contains("\"interrupted\":true"), "{stdout}");
            let requests: u64 = stdout
                .split("\"requests\":")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("requests in {stdout}"));
            assert!(
                requests > 0,
                "requests measured before the Ctrl-C: {stdout}"
            );
        } else {
            assert!(
                stdout.starts_with("interrupted (Ctrl-C) before the 60 s were up"),
                "{stdout}"
            );
            assert!(
                stdout.contains("\nrequests    ") && stdout.contains("\nerrors      0"),
                "{stdout}"
            );
            assert!(!stdout.contains("no connection was left"), "{stdout}");
        }
    }
}

/// A second Ctrl-C exits at once (status 130), even while the first one's grace for missing
/// replies is still running: here a server that accepts and never answers, so every request is
/// outstanding and the grace would last its full 2 s.
#[test]
fn a_second_ctrl_c_exits_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream); // held open, never read or answered
        }
    });
    let child = spawn_load(&[&address, "--duration", "60", "--connections", "2"]);
    thread::sleep(Duration::from_millis(1000));
    let pid = child.id();
    util::signal(pid, "INT");
    thread::sleep(Duration::from_millis(300));
    util::signal(pid, "INT");
    let (status, stdout, stderr) = finish(child, Duration::from_millis(1500));
    assert_eq!(
        status.code(),
        Some(130),
        "stdout {stdout:?} stderr {stderr:?}"
    );
}

/// Several ADDRESSes (contract v3): the connections go to them in turn. Each server takes at
/// most two connections (`--max-connections 2` refuses the third with an error line, which the
/// load would count), so a clean run of four connections over two servers means two each — and
/// over two generator threads, whose connections are numbered across the run.
#[test]
fn several_addresses_share_the_connections_in_turn() {
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start(&["--max-connections", "2", "echo@127.0.0.1:0"]))
        .collect();
    let (a, b) = (address(&servers[0], "echo"), address(&servers[1], "echo"));
    for threads in ["1", "2"] {
        let outcome = load(&[
            &a,
            &b,
            "--connections",
            "4",
            "--threads",
            threads,
            "--duration",
            "1",
            "--json",
        ]);
        assert_clean(&outcome, 4.0);
        assert_eq!(
            outcome.value()["address"],
            format!("{a} {b}"),
            "{}",
            outcome.json()
        );
    }
    // The same four connections to one of them: two are refused, so the check above can fail.
    let crowded = load(&[&a, "--connections", "4", "--duration", "1", "--json"]);
    assert!(!crowded.status.success(), "{}", crowded.json());
    assert!(crowded.number("errors") > 0.0, "{}", crowded.json());
}

/// Over UDP too: with a second address where nobody listens, the sockets sent there get no
/// answer (the kernel's port-unreachable), and the run fails; the first address alone is clean.
#[test]
fn several_udp_addresses_share_the_sockets_in_turn() {
    let server = Server::start(&["echo@udp:127.0.0.1:0"]);
    let live = format!("udp:{}", server.addr_of("echo", "udp"));
    let dead = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        format!("udp:{}", socket.local_addr().unwrap())
    }; // closed here: nobody listens on that port now
    let args = ["--connections", "4", "--duration", "1", "--json"];
    let alone = load(&[&[live.as_str()][..], &args].concat());
    assert_clean(&alone, 4.0);
    let half_dead = load(&[&[live.as_str(), dead.as_str()][..], &args].concat());
    assert!(!half_dead.status.success(), "{}", half_dead.json());
    assert!(half_dead.number("errors") > 0.0, "{}", half_dead.json());
}

/// A chat load over two instances is one room only if they share a chat bus: two plain servers
/// are two rooms, and the members' start barrier says so (each never hears the other
/// instance's members) instead of passing or hanging.
#[test]
fn a_chat_load_over_two_separate_instances_finds_two_rooms() {
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start(&["chat@127.0.0.1:0"]))
        .collect();
    let (a, b) = (address(&servers[0], "chat"), address(&servers[1], "chat"));
    let outcome = load(&[
        &a,
        &b,
        "--protocol",
        "chat",
        "--connections",
        "4",
        "--duration",
        "2",
        "--json",
    ]);
    assert!(!outcome.status.success(), "{}", outcome.json());
    let first_error = outcome.value()["first_error"].to_string();
    assert!(
        first_error.contains("had not heard each other"),
        "{}",
        outcome.json()
    );
}

/// UDP and stream addresses in one run are a usage error: one kind of generator runs a load.
#[test]
fn udp_and_stream_addresses_do_not_mix() {
    let server = Server::start(&["echo@127.0.0.1:0", "echo@udp:127.0.0.1:0"]);
    let outcome = load(&[
        &address(&server, "echo"),
        &format!("udp:{}", server.addr_of("echo", "udp")),
        "--duration",
        "1",
    ]);
    assert_eq!(outcome.status.code(), Some(2), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("all udp: or all streams"),
        "{}",
        outcome.stderr
    );
}

/// TCP and Unix addresses mix (both are streams): the connections alternate between the two
/// transports of one echo server, and every reply is verified.
#[test]
fn tcp_and_unix_addresses_mix_in_one_run() {
    let path = socket_path("mixed-echo");
    let server = Server::start(&["echo@127.0.0.1:0", &format!("echo@unix:{}", path.display())]);
    let outcome = load(&[
        &address(&server, "echo"),
        &format!("unix:{}", server.path("echo").display()),
        "--connections",
        "4",
        "--duration",
        "1",
        "--json",
    ]);
    assert_clean(&outcome, 4.0);
}
