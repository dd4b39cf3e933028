//! `oneloop load` against the real server binary, over loopback.
//!
//! Each test starts `oneloop serve` on ephemeral ports (the `listening` lines say which), runs
//! `oneloop load` for about a second, and checks the exit code and the JSON it prints. No test
//! asserts a rate or a latency: on a loaded two-core machine those are noise. Every wait has a
//! deadline, and the server is killed by PID when a test ends, passed or not.

mod util;

use std::net::TcpListener;
use std::process::ExitStatus;

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

    /// A number from the JSON object.
    fn number(&self, key: &str) -> f64 {
        let value: serde_json::Value = serde_json::from_str(self.json()).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON object ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        });
        value
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no number {key} in {value}"))
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
    assert_eq!(
        outcome.number("established"),
        connections,
        "{}",
        outcome.json()
    );
}

/// Loads `protocol` with pipeline 1 and 4 (the second on two threads).
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
        assert_eq!(outcome.number("pipeline"), pipeline.parse::<f64>().unwrap());
        assert_eq!(outcome.number("threads"), threads.parse::<f64>().unwrap());
    }
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
    // Request 0 starts with 'a'; the echo server sends it back instead of 'A'.
    assert!(
        outcome.json().contains("expected 'A'"),
        "{}",
        outcome.json()
    );
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
    assert_eq!(outcome.number("dropped"), 0.0, "{}", outcome.json());
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
}
