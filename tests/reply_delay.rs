//! `--reply-delay`: the seeds' `time.sleep(5)` demonstration of concurrency, under every model.
//!
//! Each reply is held that long after its request was read — by a timer in the reactor (which
//! serves everyone else meanwhile), by a sleep in the blocking models. The tests here assert
//! what the contract says: never answered early, concurrent models answer two clients at once
//! and `serial` one after the other, replies in order, held bytes counted against
//! `--output-limit`, no idle timeout while a reply is held, held replies delivered at a graceful
//! shutdown; and 10,000 delayed requests at once on the reactor, with its memory.
//!
//! The delay is 1 s, and the upper bounds leave the rest of a second for a loaded machine: what
//! is checked is "held, then sent", not how fast.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, read_exact_within, read_to_end_within, send, Server};

const DELAY: Duration = Duration::from_secs(1);

/// Sends `request` on a new connection at once, and returns the reply of `reply_len` bytes and
/// how long it took from `started` (a moment before the send).
fn timed_exchange(
    addr: SocketAddr,
    request: &[u8],
    reply_len: usize,
    started: Instant,
) -> (Vec<u8>, Duration) {
    let mut stream = connect(addr);
    send(&mut stream, request);
    let reply = read_exact_within(&mut stream, reply_len);
    (reply, started.elapsed())
}

/// Two clients at once: both answered after the delay under the concurrent models, one after the
/// other under `serial` — the seeds' lesson, and the tutorial's timing chapter.
fn two_clients_at_once() {
    let server = Server::start(&["--reply-delay", "1", "upper@127.0.0.1:0"]);
    let addr = server.addr("upper");
    // Both measured from one moment before either connects: under serial, the second reply
    // comes a whole delay after the first, whenever the second client sent.
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || timed_exchange(addr, b"hello", 5, started)))
        .collect();
    let mut waits: Vec<Duration> = clients
        .into_iter()
        .map(|client| {
            let (reply, waited) = client.join().unwrap();
            assert_eq!(reply, b"HELLO");
            waited
        })
        .collect();
    waits.sort();
    assert!(waits[0] >= DELAY, "answered before the delay: {waits:?}");
    if util::model() == Some("serial") {
        assert!(
            waits[1] >= 2 * DELAY,
            "serial answered the second client without waiting for the first: {waits:?}"
        );
    } else {
        assert!(
            waits[1] < 2 * DELAY,
            "the second client waited for the first: {waits:?}"
        );
    }
}

/// Pipelined requests come back in order, each held from when it was read: the second, sent
/// 300 ms after the first, is not answered with it.
fn replies_stay_in_order_each_held_from_its_request() {
    let server = Server::start(&["--reply-delay", "1", "echo@127.0.0.1:0"]);
    let mut stream = connect(server.addr("echo"));
    let started = Instant::now();
    send(&mut stream, b"first\n");
    thread::sleep(Duration::from_millis(300));
    send(&mut stream, b"second\n");
    assert_eq!(read_exact_within(&mut stream, 6), b"first\n");
    let first = started.elapsed();
    assert_eq!(read_exact_within(&mut stream, 7), b"second\n");
    let second = started.elapsed();
    assert!(first >= DELAY, "first reply after {first:?}");
    assert!(
        second >= DELAY + Duration::from_millis(300),
        "second reply after {second:?}: not held a whole delay from its own request"
    );
}

/// A connection quiet for longer than `--idle-timeout` while its reply is held is not idle: the
/// quiet is the server's. Once the reply is sent, the idle timeout runs again.
fn the_idle_timeout_waits_for_held_replies() {
    let server = Server::start(&[
        "--reply-delay",
        "2",
        "--idle-timeout",
        "1",
        "echo@127.0.0.1:0",
    ]);
    let mut stream = connect(server.addr("echo"));
    let started = Instant::now();
    send(&mut stream, b"still here?\n");
    assert_eq!(read_exact_within(&mut stream, 12), b"still here?\n");
    assert!(started.elapsed() >= 2 * DELAY);
    // Then, silent, it is closed by the idle timeout.
    assert_eq!(read_to_end_within(&mut stream), b"");
}

/// SIGTERM while a reply is held: it is still sent (within `--shutdown-timeout`), then the
/// connection ends and the server exits 0.
fn a_graceful_shutdown_delivers_held_replies() {
    let mut server = Server::start(&["--reply-delay", "1", "upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    let started = Instant::now();
    send(&mut stream, b"bye");
    thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    assert_eq!(read_to_end_within(&mut stream), b"BYE");
    assert!(started.elapsed() >= DELAY);
    assert!(server.wait_for_exit().success());
}

per_model! {
    [reactor, serial, threaded, pool, forking]: [
        two_clients_at_once,
        replies_stay_in_order_each_held_from_its_request,
        the_idle_timeout_waits_for_held_replies,
        a_graceful_shutdown_delivers_held_replies,
    ]
}

/// Fractions of a second are allowed, as the contract says: a 0.3 s delay holds a reply that
/// long, not a whole second and not zero.
#[test]
fn a_fractional_delay_is_held_that_long() {
    let server = Server::start(&["--reply-delay", "0.3", "echo@127.0.0.1:0"]);
    let (reply, waited) = timed_exchange(server.addr("echo"), b"soon\n", 5, Instant::now());
    assert_eq!(reply, b"soon\n");
    assert!(
        waited >= Duration::from_millis(300) && waited < DELAY,
        "a 0.3 s delay answered after {waited:?}"
    );
}

/// Held replies count against `--output-limit`: a client that pours requests in while its
/// replies are held is not read past the limit, so the server does not grow with what it holds
/// (32 MiB sent in 2 s; without the limit the reactor would hold all of it).
#[test]
fn held_replies_count_against_the_output_limit() {
    let server = Server::start(&[
        "--reply-delay",
        "1",
        "--output-limit",
        "65536",
        "echo@127.0.0.1:0",
    ]);
    let before = server.rss_kib();
    let stream = connect(server.addr("echo"));
    let mut writer = stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pour = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sent = 0usize;
        while Instant::now() < deadline && sent < 32 << 20 {
            match writer.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => thread::sleep(Duration::from_millis(10)), // full: the server stopped reading
            }
        }
        sent
    });
    let sent = pour.join().unwrap();
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 4 * 1024,
        "the server grew {grown} KiB while a client poured {sent} bytes at held replies"
    );
    // What was held comes back, and reading resumes each time held bytes go: four times the
    // limit arrives (a server that never read again after its first stop would send only what
    // it held then).
    let mut reader = stream;
    let mut back = vec![0u8; 4 * 65536];
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    reader.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == b'x'));
}

/// 10,000 requests held at once by the reactor's one thread: all answered after the delay, none
/// before, and the memory each costs stated. `oneloop load` opens the connections and verifies
/// every reply; with one request in flight per connection, each is held for the whole delay.
#[test]
fn ten_thousand_delayed_requests_on_one_thread() {
    util::raise_fd_limit();
    let server = Server::start(&["--reply-delay", "1", "echo@127.0.0.1:0"]);
    let address = server.addr("echo").to_string();
    let run = util::run(
        &[
            "load",
            &address,
            "--connections",
            "10000",
            "--duration",
            "3",
            "--warmup",
            "0",
            "--json",
        ],
        b"",
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let number = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {json}"))
    };
    assert_eq!(number("errors"), 0.0, "{json}");
    assert_eq!(number("connections"), 10_000.0, "{json}");
    // Every reply is held a whole second, so the median took at least that long, and no
    // connection can have completed more than one request per second of the run (3 s, plus the
    // one in flight when it stopped): replies sent early would show as more requests.
    assert!(
        number("p50_us") >= 1_000_000.0,
        "half the replies came before the delay: {json}"
    );
    assert!(number("requests") >= 10_000.0, "{json}");
    assert!(
        number("requests") <= 40_000.0,
        "more requests than one per connection per second: replies were not held: {json}"
    );
    let threads = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_owned()))
        .unwrap();
    assert_eq!(threads, "1", "the reactor held them all on its one thread");
    let peak = util::peak_rss_kib(server.pid());
    println!(
        "10,000 delayed requests at once: peak RSS {peak} KiB, {:.0} bytes per connection",
        peak as f64 * 1024.0 / 10_000.0
    );
    assert!(
        peak < 64 * 1024,
        "{peak} KiB for 10,000 held requests: over 6 KiB each"
    );
}
