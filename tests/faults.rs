//! Faults and floods: what the reactor does on its worst day (docs/RELIABILITY.md). Its graceful
//! shutdown is tested with every model's, in `models_faults.rs` (`shutdown::reactor::*`): the
//! same black-box tests hold for all of them, so they are written once.
//!
//! Every test here drives the real binary over loopback and asserts behaviour, never speed; the
//! CPU check on descriptor exhaustion compares CPU *time* used against time passed, which a
//! loaded machine does not inflate.

mod util;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, half_close, read_exact_within, read_to_end_within, send, Server, DEADLINE};

fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime, in USER_HZ (100 per second on Linux).
    (fields[11] + fields[12]) as f64 / 100.0
}

// ---------------------------------------------------------------------------------------------
// idle timeout

#[test]
fn idle_connections_are_closed_and_active_ones_are_not() {
    let mut server = Server::start(&["--idle-timeout", "1", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut idle = connect(addr);
    let mut active = connect(addr);
    // Three seconds of a message every 200 ms: never idle for a second, so never cut, although
    // the connection is three times older than the timeout.
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let message = format!("tick {round}");
        send(&mut active, message.as_bytes());
        assert_eq!(
            read_exact_within(&mut active, message.len()),
            message.as_bytes()
        );
        thread::sleep(Duration::from_millis(200));
        round += 1;
    }
    // Meanwhile the silent one was closed, cleanly.
    assert_eq!(read_to_end_within(&mut idle), b"");
    server.assert_running();
}

#[test]
fn a_stalled_line_is_still_subject_to_the_idle_timeout() {
    // Slowloris: half a line, then silence. The pending line does not keep the connection alive.
    let server = Server::start(&["--idle-timeout", "1", "timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"GET / HTTP/1.1\r\nHost: ");
    let got = read_to_end_within(&mut stream);
    let pieces = util::parse_stamped(&got).unwrap_or_else(|e| panic!("{e}"));
    let joined: Vec<u8> = pieces.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(joined, b"GET / HTTP/1.1\r\nHost: ", "answered, then closed");
}

#[test]
fn a_flood_of_silent_connections_is_shed_by_the_idle_timeout() {
    util::raise_fd_limit();
    let mut server = Server::start(&["--idle-timeout", "1", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let baseline_fds = server.open_fds();
    let silent: Vec<TcpStream> = (0..1000).map(|_| connect(addr)).collect();
    // Served while the flood holds its connections.
    let mut client = connect(addr);
    send(&mut client, b"still here");
    assert_eq!(read_exact_within(&mut client, 10), b"still here");
    drop(client);
    // Every silent connection is closed by the server, which gives back their descriptors.
    for mut stream in silent {
        assert_eq!(read_to_end_within(&mut stream), b"");
    }
    let deadline = Instant::now() + DEADLINE;
    while server.open_fds() > baseline_fds {
        assert!(Instant::now() < deadline, "descriptors were not released");
        thread::sleep(Duration::from_millis(20));
    }
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// connection limit and descriptor exhaustion

#[test]
fn connections_past_the_limit_are_closed_at_once_and_service_resumes() {
    let mut server = Server::start(&["--max-connections", "5", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut admitted: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for (i, stream) in admitted.iter_mut().enumerate() {
        let message = format!("admitted {i}");
        send(stream, message.as_bytes());
        assert_eq!(read_exact_within(stream, message.len()), message.as_bytes());
    }
    let mut extra = connect(addr);
    assert_eq!(
        read_to_end_within(&mut extra),
        b"error too many connections\n"
    );
    // The admitted ones are unaffected.
    send(&mut admitted[0], b"unaffected");
    assert_eq!(read_exact_within(&mut admitted[0], 10), b"unaffected");
    // A slot frees up: the next client is served (the server notices the close first).
    let mut leaving = admitted.pop().unwrap();
    half_close(&leaving);
    assert_eq!(read_to_end_within(&mut leaving), b"");
    drop(leaving);
    let mut next = connect(addr);
    send(&mut next, b"my turn");
    assert_eq!(read_exact_within(&mut next, 7), b"my turn");
    server.assert_running();
}

#[test]
fn out_of_descriptors_the_loop_does_not_spin_and_recovers() {
    // 300 clients against a server allowed 40 descriptors (and a connection limit that does not
    // step in first): accept fails with EMFILE while the backlog is full.
    let mut server =
        Server::start_with_fd_limit(40, &["--max-connections", "100000", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut clients: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    // Hold them all for a second and measure the server's CPU time meanwhile. A loop spinning
    // on a listener it cannot drain burns the whole second.
    let before = cpu_seconds(server.pid());
    let started = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(server.pid()) - before;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "out of descriptors: server CPU {used:.2} s in {elapsed:.2} s ({:.0}%)",
        100.0 * used / elapsed
    );
    assert!(
        used < 0.5 * elapsed,
        "the server used {used:.2} s of CPU in {elapsed:.2} s while out of descriptors"
    );
    // Every client got an answer: served, or closed at once — nobody hangs in the backlog.
    let mut served = 0;
    for (i, stream) in clients.iter_mut().enumerate() {
        let message = format!("client {i}\n");
        if stream.write_all(message.as_bytes()).is_err() {
            continue;
        }
        let mut reply = vec![0; message.len()];
        match stream.read_exact(&mut reply) {
            Ok(()) => {
                assert_eq!(reply, message.as_bytes());
                served += 1;
            }
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "client {i} was left hanging: {e}"
            ),
        }
    }
    assert!(served > 0, "nobody was served");
    // Once the clients leave, service is back.
    drop(clients);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect(addr);
        send(&mut stream, b"back");
        let mut reply = [0; 4];
        if stream.read_exact(&mut reply).is_ok() && &reply == b"back" {
            break;
        }
        assert!(Instant::now() < deadline, "service did not recover");
        thread::sleep(Duration::from_millis(50));
    }
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// peers that misbehave

#[test]
fn a_reset_while_the_server_writes_does_not_kill_it() {
    // SIGPIPE: the server writes to a connection the peer has reset. The write fails with EPIPE
    // or ECONNRESET; the process must not die of a signal.
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    for round in 0..20 {
        let mut stream = connect(addr);
        let chunk = vec![round as u8; 256 * 1024];
        let _ = stream.write_all(&chunk);
        // Linger zero: close sends an RST, with the server mid-reply.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }
    let mut stream = connect(addr);
    send(&mut stream, b"alive");
    assert_eq!(read_exact_within(&mut stream, 5), b"alive");
    server.assert_running();
}

/// The blocking models honour `--max-connections` and `--idle-timeout` like the reactor.
#[test]
fn the_blocking_models_honour_the_connection_limit_and_the_idle_timeout() {
    for model in ["threaded", "pool", "forking"] {
        let mut server = Server::start(&[
            "--model",
            model,
            "--max-connections",
            "2",
            "--idle-timeout",
            "1",
            "echo@127.0.0.1:0",
        ]);
        let addr = server.addr("echo");
        let mut admitted: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
        for stream in &mut admitted {
            send(stream, b"in");
            assert_eq!(read_exact_within(stream, 2), b"in", "{model}");
        }
        let mut extra = connect(addr);
        assert_eq!(
            read_to_end_within(&mut extra),
            b"error too many connections\n",
            "{model}"
        );
        // Both admitted connections now go quiet: the idle timeout closes them.
        for stream in &mut admitted {
            assert_eq!(read_to_end_within(stream), b"", "{model}: idle timeout");
        }
        server.assert_running();
    }
}
