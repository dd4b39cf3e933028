//! Faults of the blocking models (serial, threaded, pool, forking): running out of file
//! descriptors, and SIGINT/SIGTERM. The contract's rules name no exception for them, so each
//! test here runs against every model. The graceful shutdown's tests are the reactor's too, as
//! the reference: they are its only shutdown tests (`shutdown::reactor::*`), written once for
//! every model rather than once for the reactor and again here.
//!
//! Like every black-box test, these drive the real binary over loopback, send real signals with
//! `kill`, and bound every wait; nothing asserts speed.

#[macro_use]
mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    assert_bytes_eq, connect, read_exact_within, read_to_end_within, send, tcp_queues, Pseudo,
    Server, DEADLINE,
};

// ---------------------------------------------------------------------------------------------
// descriptor exhaustion

/// The open-file limit the flooded server runs under: a handful of descriptors for clients.
const FLOOD_FD_LIMIT: u32 = 24;

/// Clients in the flood: well past what [`FLOOD_FD_LIMIT`] leaves for connections.
const FLOOD_CLIENTS: usize = 40;

/// Whether the model holds a descriptor per waiting client, so that the flood must run it out of
/// descriptors (serial serves one client at a time, and the forking parent closes its copy of
/// each connection once the child has it).
fn model_runs_out_of_descriptors() -> bool {
    matches!(util::model(), Some("threaded" | "pool"))
}

/// A flood past the descriptor limit: every client gets its reply or a close — nobody is left
/// waiting in the backlog — and once the flood is gone a new client is served.
fn out_of_descriptors_every_client_gets_a_reply_or_a_close() {
    let server = Server::start_with_fd_limit(
        FLOOD_FD_LIMIT,
        &[
            "--max-connections",
            "1000",
            "--threads",
            "4",
            "echo@127.0.0.1:0",
        ],
    );
    let addr = server.addr("echo");
    let clients: Vec<TcpStream> = (0..FLOOD_CLIENTS).map(|_| connect(addr)).collect();
    // One deadline for the whole flood: a hanging client fails the test, it does not stall it
    // once per client.
    let deadline = Instant::now() + DEADLINE;
    let (mut served, mut closed) = (0, 0);
    // In connect order, each client leaving once answered, so that the pool's queue moves.
    for (i, mut stream) in clients.into_iter().enumerate() {
        let message = format!("client {i}\n");
        let _ = stream.write_all(message.as_bytes()); // Fails if it was closed already.
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no time left for client {i}");
        stream.set_read_timeout(Some(left)).unwrap();
        let mut reply = vec![0; message.len()];
        match stream.read_exact(&mut reply) {
            Ok(()) => {
                assert_eq!(reply, message.as_bytes(), "client {i}");
                served += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "client {i} got neither a reply nor a close ({served} served, {closed} closed \
                 before it); stderr:\n{}",
                server.stderr()
            ),
            Err(_) => closed += 1, // End of stream or a reset: shed for lack of descriptors.
        }
    }
    eprintln!("{served} served, {closed} closed for lack of descriptors");
    assert!(served > 0, "nobody was served");
    if model_runs_out_of_descriptors() && closed == 0 {
        // The premise, not the server: every client was answered, which the contract allows.
        // (Seen once in four runs for pool on a loaded machine; the shedding path is then
        // exercised by the other runs and by threaded.)
        eprintln!("note: the flood did not run the server out of descriptors this time");
    }
    // The flood is gone: a new client is served (descriptors come back as threads finish).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect(addr);
        let _ = stream.write_all(b"back\n");
        let mut reply = [0; 5];
        if stream.read_exact(&mut reply).is_ok() {
            assert_eq!(&reply, b"back\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume after the flood; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// SIGINT and SIGTERM

/// A shutdown timeout far beyond [`DEADLINE`]: when a test sees something happen within the
/// deadline, the shutdown did it, not the timeout.
const LONG_SHUTDOWN: &str = "3600";

/// The `--output-limit` of [`sigterm_finishes_writing_the_replies_to_requests_already_read`]:
/// 16 MiB, several times what loopback's socket buffers take.
const QUEUED_AT_SHUTDOWN: &str = "16777216";

/// Asserts the server exits, and with status 0 — not killed by the signal (the default action),
/// which `wait_for_exit` would report as no code at all.
fn assert_exits_zero(server: &mut Server, after: &str) {
    let status = server.wait_for_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "{after}: the server must exit 0, it ended with {status}; stderr:\n{}",
        server.stderr()
    );
}

/// A connection the server cannot finish on its own: the client has sent more than every buffer
/// on the way holds and reads nothing, so the server is blocked writing replies. Returns the
/// stream and every byte sent.
fn busy_echo_connection(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut bytes = Pseudo::new(12);
    let deadline = Instant::now() + DEADLINE;
    // Until a write makes no progress for half a second: the server has stopped reading (it is
    // blocked writing to us, or over its output limit) and every buffer is full.
    loop {
        assert!(
            Instant::now() < deadline,
            "the server kept reading a client that never reads"
        );
        bytes.fill(&mut chunk);
        match writer.write(&chunk) {
            Ok(count) => sent.extend_from_slice(&chunk[..count]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("writing to a busy connection: {e}"),
        }
    }
    (stream, sent)
}

/// How many of the `sent` bytes the server has read on `stream`: what left the client, less what
/// waits unread at the server (both from `/proc/net/tcp`), once that stops changing.
fn bytes_read_by_server(stream: &TcpStream, sent: usize) -> usize {
    let (client, server) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let read = || {
        let (unsent, _) = tcp_queues(client, server).expect("the client's socket in /proc");
        let (_, unread) = tcp_queues(server, client).expect("the server's socket in /proc");
        sent - (unsent + unread) as usize
    };
    let deadline = Instant::now() + DEADLINE;
    let mut last = read();
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the server never stopped reading"
        );
        last = now;
    }
}

/// (a) An idle connection gets its end of stream at once, and the server exits 0.
fn sigterm_closes_an_idle_connection_at_once_and_exits_zero() {
    let mut server = Server::start(&["--shutdown-timeout", LONG_SHUTDOWN, "echo@127.0.0.1:0"]);
    let mut idle = connect(server.addr("echo"));
    // Served (so accepted, and for serial the one being served), then quiet.
    send(&mut idle, b"hello");
    assert_eq!(read_exact_within(&mut idle, 5), b"hello");

    server.signal("TERM");
    assert_eq!(read_to_end_within(&mut idle), b"", "a clean end of stream");
    assert_exits_zero(&mut server, "SIGTERM with an idle connection");
}

/// What a session still holds when the shutdown comes is answered, as at the client's end of
/// stream: here the first byte of a two-byte UTF-8 character, which upper holds back until the
/// second comes (or the stream ends). The reactor does this too (its graceful shutdown flushes
/// `Session::on_end` before closing, see `Client::begin_shutdown`), so it runs against every
/// model.
fn sigint_answers_what_the_session_still_holds() {
    let mut server = Server::start(&["--shutdown-timeout", LONG_SHUTDOWN, "upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    send(&mut stream, b"stra\xc3");
    assert_eq!(read_exact_within(&mut stream, 4), b"STRA");

    server.signal("INT");
    assert_eq!(
        read_to_end_within(&mut stream),
        b"\xc3",
        "the held byte, then the end"
    );
    assert_exits_zero(&mut server, "SIGINT with a held byte");
}

/// (b) A connection whose replies are still being written (the client reads slowly) gets every
/// reply to what the server had read — no more, no less — then a clean end of stream. The
/// output limit is far above the socket buffers, so the reactor reads megabytes more than they
/// hold and has them queued when the signal comes (the blocking models stop reading as soon as a
/// write blocks).
fn sigterm_finishes_writing_the_replies_to_requests_already_read() {
    let mut server = Server::start(&[
        "--shutdown-timeout",
        LONG_SHUTDOWN,
        "--output-limit",
        QUEUED_AT_SHUTDOWN,
        "echo@127.0.0.1:0",
    ]);
    let (mut stream, sent) = busy_echo_connection(server.addr("echo"));
    let read = bytes_read_by_server(&stream, sent.len());
    assert!(read > 0, "the server read nothing");

    server.signal("TERM");
    thread::sleep(Duration::from_millis(200));
    server.assert_running(); // Still writing: the client has not read anything yet.
    let got = read_to_end_within(&mut stream);
    assert_bytes_eq(&got, &sent[..read], "the replies to the requests read");
    assert_exits_zero(&mut server, "SIGTERM while writing replies");
}

/// A pipelining client is still sending when the shutdown comes. Closing with its input unread
/// would send an RST, and the RST would destroy replies it has not read yet: it must see every
/// reply the server wrote, in order, then a clean end of stream.
fn sigterm_while_a_client_keeps_sending_ends_with_a_clean_close() {
    let mut server = Server::start(&["--shutdown-timeout", LONG_SHUTDOWN, "upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    let line = b"pipelined request\n";
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let lines = line.repeat(64);
            // Until the server stops taking them (a reset or a closed pipe ends this).
            while stream.write_all(&lines).is_ok() {}
        })
    };
    let first = read_exact_within(&mut stream, line.len());
    assert_eq!(first, b"PIPELINED REQUEST\n");

    server.signal("TERM");
    let (rest, ending) = util::try_read_to_end_within(&mut stream);
    assert!(
        ending.is_ok(),
        "the connection ended with {ending:?} after {} more bytes, not a clean end of stream",
        rest.len()
    );
    let all = [first, rest].concat();
    let expected = b"PIPELINED REQUEST\n".repeat(all.len() / line.len() + 1);
    assert!(
        expected.starts_with(&all),
        "replies out of order or damaged"
    );
    drop(stream);
    writer.join().expect("writer");
    assert_exits_zero(&mut server, "SIGTERM with a client still sending");
}

/// (c) A second signal exits at once, with status 0, although a connection is still busy; from
/// the first signal on, new connections are refused; and no child process (forking's busy child)
/// outlives the server.
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--shutdown-timeout", LONG_SHUTDOWN, "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let (_busy, _) = busy_echo_connection(addr);

    server.signal("TERM");
    assert_refused_soon(&server, addr);
    server.assert_running(); // The busy connection keeps it alive, for up to an hour.
    let children = util::child_pids(server.pid());
    server.signal("INT");
    assert_exits_zero(&mut server, "a second signal");
    for child in children {
        assert!(
            !util::process_exists(child),
            "child process {child} outlived the server"
        );
    }
}

/// At the first signal — SIGINT as well as SIGTERM — every listener closes, and each connection
/// is closed as soon as it is done, not at the end of the shutdown: an idle one gets its end of
/// stream at once while a busy one holds the server up; and once the busy client leaves, the
/// server exits 0 without waiting for the timeout. (Not serial: it serves one connection at a
/// time, so it cannot hold an idle and a busy one at once.)
fn sigint_closes_every_listener_and_an_idle_connection_while_a_busy_one_holds_on() {
    let mut server = Server::start(&[
        "--shutdown-timeout",
        LONG_SHUTDOWN,
        "echo@127.0.0.1:0",
        "upper@127.0.0.1:0",
    ]);
    let (echo, upper) = (server.addr("echo"), server.addr("upper"));
    let mut idle = connect(upper);
    send(&mut idle, b"served");
    assert_eq!(read_exact_within(&mut idle, 6), b"SERVED");
    let (busy, _) = busy_echo_connection(echo);

    server.signal("INT");
    assert_eq!(
        read_to_end_within(&mut idle),
        b"",
        "the idle connection: a clean end of stream, while the busy one is still served"
    );
    for addr in [echo, upper] {
        assert_refused_soon(&server, addr);
    }
    server.assert_running(); // The busy connection keeps it alive, for up to an hour.
    drop(busy);
    assert_exits_zero(&mut server, "SIGINT, once the busy client left");
}

/// Waits until connections to `addr` are refused: the listeners close soon after the first
/// signal (how soon depends on the machine's load), within [`DEADLINE`].
#[track_caller]
fn assert_refused_soon(server: &Server, addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            outcome => assert!(
                Instant::now() < deadline,
                "{addr}: connections must be refused once shutting down, got {outcome:?} after \
                 {DEADLINE:?}; stderr:\n{}",
                server.stderr()
            ),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A connection still busy at `--shutdown-timeout` holds the server up until then, is closed,
/// and the server exits 0.
fn the_shutdown_timeout_closes_connections_still_busy() {
    let mut server = Server::start(&["--shutdown-timeout", "2", "echo@127.0.0.1:0"]);
    let (_busy, _) = busy_echo_connection(server.addr("echo"));
    server.signal("TERM");
    // A server that ignored the graceful shutdown and exited at once would fail here. (It cannot
    // be over sooner; a loaded machine can only make it later.)
    thread::sleep(Duration::from_millis(500));
    server.assert_running();
    assert_exits_zero(&mut server, "the shutdown timeout");
}

/// The pool's queued connections (never read: every worker is busy) are closed at once, not
/// left waiting for a worker until the timeout.
fn the_pool_closes_queued_connections_at_once() {
    // The acceptor's trace says when it has taken a client from the backlog (and queued it).
    let mut server = Server::start_with_env(
        &[
            "--threads",
            "1",
            "--shutdown-timeout",
            LONG_SHUTDOWN,
            "echo@127.0.0.1:0",
        ],
        &[("RUST_LOG", "oneloop::models::acceptor=trace")],
    );
    let addr = server.addr("echo");
    let (_busy, _) = busy_echo_connection(addr); // The only worker is stuck writing.
    let mut queued = connect(addr);
    // A signal that came while the client was still in the backlog would close the listener
    // first, and the kernel would reset the client: wait until the pool holds it.
    let accepted = format!("accept: {} ", queued.local_addr().unwrap());
    let deadline = Instant::now() + DEADLINE;
    while !server.stderr().contains(&accepted) {
        assert!(
            Instant::now() < deadline,
            "the client was not accepted within {DEADLINE:?}; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    server.signal("TERM");
    assert_eq!(
        read_to_end_within(&mut queued),
        b"",
        "a clean end of stream"
    );
    server.assert_running();
    server.signal("TERM");
    assert_exits_zero(&mut server, "a second signal");
}

per_model! {
    descriptors: [serial, threaded, pool, forking]: [
        out_of_descriptors_every_client_gets_a_reply_or_a_close,
    ]
}

// The reactor's shutdown is the reference: the same tests run against it.
per_model! {
    shutdown: [reactor, serial, threaded, pool, forking]: [
        sigterm_closes_an_idle_connection_at_once_and_exits_zero,
        sigterm_finishes_writing_the_replies_to_requests_already_read,
        sigterm_while_a_client_keeps_sending_ends_with_a_clean_close,
        a_second_signal_exits_at_once,
        the_shutdown_timeout_closes_connections_still_busy,
        sigint_answers_what_the_session_still_holds,
    ]
}

per_model! {
    shutdown_concurrent: [reactor, threaded, pool, forking]: [
        sigint_closes_every_listener_and_an_idle_connection_while_a_busy_one_holds_on,
    ]
}

per_model! {
    shutdown_pool: [pool]: [
        the_pool_closes_queued_connections_at_once,
    ]
}
