//! `oneloop load` against the real server binary, over loopback.
//!
//! Each test starts `oneloop serve` on ephemeral ports (the `listening` lines say which), runs
//! `oneloop load` for about a second, and checks the exit code and the JSON it prints. No test
//! asserts a rate or a latency: on a loaded two-core machine those are noise. Every wait has a
//! deadline, and the server is killed by PID when a test ends, passed or not.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_oneloop");

/// Longest any one `oneloop` process in these tests may run before it is killed.
const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// A running `oneloop serve`, killed when dropped.
struct Server {
    child: Child,
    echo: String,
    upper: String,
    timestamp: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "echo@127.0.0.1:0",
                "upper@127.0.0.1:0",
                "timestamp@127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start oneloop serve");
        let stdout = child.stdout.take().unwrap();
        // Read the listening lines on a thread, so a silent server fails the test instead of
        // hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().take(3) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            echo: String::new(),
            upper: String::new(),
            timestamp: String::new(),
        };
        for _ in 0..3 {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a listening line within 10 s");
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 4, "{line:?}");
            assert_eq!((parts[0], parts[2]), ("listening", "tcp"), "{line:?}");
            let address = parts[3].to_string();
            match parts[1] {
                "echo" => server.echo = address,
                "upper" => server.upper = address,
                "timestamp" => server.timestamp = address,
                other => panic!("unexpected protocol {other:?}"),
            }
        }
        server
    }

    fn address(&self, protocol: &str) -> &str {
        match protocol {
            "echo" => &self.echo,
            "upper" => &self.upper,
            "timestamp" => &self.timestamp,
            other => panic!("no {other} service"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill signals this child's own PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished `oneloop load` left.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The one JSON object on stdout.
    fn json(&self) -> &str {
        let json = self.stdout.trim_end();
        assert!(
            json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
            "stdout is not one JSON object: {:?}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        json
    }

    /// A number from the JSON object.
    fn number(&self, key: &str) -> f64 {
        let json = self.json();
        let pattern = format!("\"{key}\":");
        let at = json
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {key} in {json}"))
            + pattern.len();
        let text: String = json[at..]
            .chars()
            .take_while(|c| !matches!(c, ',' | '}'))
            .collect();
        text.parse()
            .unwrap_or_else(|_| panic!("{key} is {text:?}, not a number, in {json}"))
    }
}

/// Runs `oneloop load ARGS...`, killing it if it outlives [`PROCESS_DEADLINE`].
fn load(args: &[&str]) -> Outcome {
    let mut child = Command::new(BIN)
        .arg("load")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oneloop load");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oneloop load {args:?} still running after {PROCESS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
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
    Outcome {
        status,
        stdout,
        stderr,
    }
}

/// A clean run: exit 0, verified requests, no error of any kind.
fn assert_clean(outcome: &Outcome, connections: f64) {
    assert!(
        outcome.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        outcome.status,
        outcome.stdout,
        outcome.stderr
    );
    assert!(outcome.number("requests") > 0.0, "{}", outcome.json());
    assert_eq!(outcome.number("errors"), 0.0, "{}", outcome.json());
    assert_eq!(
        outcome.number("connections"),
        connections,
        "{}",
        outcome.json()
    );
    assert_eq!(
        outcome.number("established"),
        connections,
        "{}",
        outcome.json()
    );
    assert!(outcome.number("rps") > 0.0, "{}", outcome.json());
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "cpu_s"] {
        assert!(outcome.number(key) >= 0.0, "{}", outcome.json());
    }
}

/// Loads `protocol` with pipeline 1 and 4 (the second on two threads).
fn load_each_pipeline(protocol: &str) {
    let server = Server::start();
    for (pipeline, threads) in [("1", "1"), ("4", "2")] {
        let outcome = load(&[
            server.address(protocol),
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
    let server = Server::start();
    let outcome = load(&[
        &server.timestamp,
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
    let server = Server::start();
    let outcome = load(&[
        &server.echo,
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
    let server = Server::start();
    let outcome = load(&[
        &server.echo,
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
    assert!(outcome.number("connect_s") >= 0.0);
}

fn assert_clean_idle(outcome: &Outcome, connections: f64) {
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
    let server = Server::start();
    let outcome = load(&[
        &server.upper,
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
    let server = Server::start();
    let outcome = load(&[
        &server.timestamp,
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
