//! The transports over real sockets: Unix stream sockets (the socket file's whole life: stale,
//! live, replaced, its mode, its removal) and UDP (one datagram, one reply; oversize, reflection,
//! floods), under the reactor and the comparison models, and the client over both.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{assert_bytes_eq, check_stamped_reply, Pseudo, Server, DEADLINE};

const MODELS: [&str; 5] = ["reactor", "serial", "threaded", "pool", "forking"];

/// A fresh socket path in the temporary directory, unique to this test process and `name`; any
/// file left there by an earlier run is removed first.
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-t{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn unix_spec(protocol: &str, path: &Path) -> String {
    format!("{protocol}@unix:{}", path.display())
}

fn unix_connect(path: &Path) -> UnixStream {
    let stream =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

fn read_exact(stream: &mut impl Read, count: usize) -> Vec<u8> {
    let mut got = vec![0; count];
    stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {count} bytes: {e}"));
    got
}

fn read_to_end(stream: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read to the end");
    got
}

/// Starts a server that must fail before listening; returns its exit code and stderr.
fn failed_start(args: &[&str]) -> (i32, String) {
    match Server::try_start(args) {
        Ok(_) => panic!("oneloop serve {args:?} started, but should have failed"),
        Err(failure) => (failure.status.code().expect("an exit code"), failure.stderr),
    }
}

// ---------------------------------------------------------------------------------------------
// Unix stream sockets

fn every_protocol_over_unix(model: &str) {
    let (upper, timestamp, echo) = (
        socket_path(&format!("{model}-upper")),
        socket_path(&format!("{model}-timestamp")),
        socket_path(&format!("{model}-echo")),
    );
    let server = Server::start(&[
        "--model",
        model,
        &unix_spec("upper", &upper),
        &unix_spec("timestamp", &timestamp),
        &unix_spec("echo", &echo),
    ]);
    assert_eq!(
        server.path("upper"),
        upper,
        "the listening line names the path"
    );

    let mut stream = unix_connect(&upper);
    stream.write_all("straße é".as_bytes()).unwrap();
    assert_eq!(read_exact(&mut stream, 10), "STRASSE É".as_bytes());
    stream.write_all(b"ab\xffc\xc3").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_bytes_eq(&read_to_end(&mut stream), b"AB\xffC\xc3", "upper over unix");

    // The seeds' timestamp client: no newline, then wait.
    let mut stream = unix_connect(&timestamp);
    stream.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"hello") {
        let mut chunk = [0u8; 256];
        let count = stream.read(&mut chunk).expect("a stamped reply");
        assert!(count > 0, "end of stream before the reply");
        reply.extend_from_slice(&chunk[..count]);
    }
    check_stamped_reply(&reply, b"hello").unwrap();
    drop(stream); // The serial model serves one connection at a time.

    let mut stream = unix_connect(&echo);
    let mut input = vec![0; 10_000];
    Pseudo::new(3).fill(&mut input);
    stream.write_all(&input).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_bytes_eq(&read_to_end(&mut stream), &input, "echo over unix");
}

#[test]
fn every_protocol_over_unix_under_every_model() {
    for model in MODELS {
        every_protocol_over_unix(model);
    }
}

#[test]
fn four_mib_echo_over_unix() {
    let path = socket_path("bulk");
    let _server = Server::start(&[&unix_spec("echo", &path)]);
    let stream = unix_connect(&path);
    let mut input = vec![0; 4 << 20];
    Pseudo::new(44).fill(&mut input);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let input = input.clone();
        thread::spawn(move || {
            stream.write_all(&input).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut stream = stream;
    let got = read_to_end(&mut stream);
    writer.join().unwrap();
    assert_bytes_eq(&got, &input, "4 MiB through echo over unix");
}

#[test]
fn sigterm_and_sigint_remove_the_socket_file_under_every_model() {
    for model in MODELS {
        for signal in ["TERM", "INT"] {
            let path = socket_path(&format!("signal-{model}-{signal}"));
            let mut server = Server::start(&["--model", model, &unix_spec("echo", &path)]);
            // One connection served, so a forking server has had a child.
            let mut stream = unix_connect(&path);
            stream.write_all(b"x").unwrap();
            assert_eq!(read_exact(&mut stream, 1), b"x");
            drop(stream);
            server.signal(signal);
            assert_eq!(server.wait_for_exit().code(), Some(0), "{model}");
            assert!(
                !path.exists(),
                "{model}: SIG{signal} left {} behind",
                path.display()
            );
        }
    }
}

#[test]
fn a_socket_file_replaced_before_shutdown_is_left_alone() {
    let path = socket_path("replaced");
    let mut server = Server::start(&[&unix_spec("echo", &path)]);
    // Another program takes the path over (as a restarted server would after a stale check).
    std::fs::remove_file(&path).unwrap();
    let theirs = UnixListener::bind(&path).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    server.signal("TERM");
    assert_eq!(server.wait_for_exit().code(), Some(0));
    assert_eq!(
        std::fs::metadata(&path).map(|m| m.ino()).ok(),
        Some(inode),
        "the other program's socket file was removed"
    );
    drop(theirs);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_stale_socket_is_replaced() {
    let path = socket_path("stale");
    drop(UnixListener::bind(&path).unwrap()); // A dead server's leftover: nobody answers.
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let _server = Server::start(&[&unix_spec("upper", &path)]);
    let mut stream = unix_connect(&path);
    stream.write_all(b"fresh").unwrap();
    assert_eq!(read_exact(&mut stream, 5), b"FRESH");
}

#[test]
fn a_live_socket_a_file_or_a_directory_is_refused_and_left_intact() {
    // A live socket: another server answers there.
    let path = socket_path("live");
    let live = UnixListener::bind(&path).unwrap();
    let (code, stderr) = failed_start(&[&unix_spec("echo", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "names the path: {stderr}"
    );
    assert!(path.exists(), "the live socket was removed");
    drop(live);
    std::fs::remove_file(&path).unwrap();

    // A regular file: never deleted.
    let path = socket_path("file");
    std::fs::write(&path, b"precious data").unwrap();
    let (code, stderr) = failed_start(&[&unix_spec("echo", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "names the path: {stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious data");
    std::fs::remove_file(&path).unwrap();

    // A directory.
    let path = socket_path("dir");
    std::fs::create_dir(&path).unwrap();
    let (code, stderr) = failed_start(&[&unix_spec("echo", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(path.is_dir());
    std::fs::remove_dir(&path).unwrap();
}

#[test]
fn a_path_too_long_for_a_socket_address_is_a_usage_error() {
    let path = format!("/tmp/{}", "x".repeat(103)); // 108 bytes: no room for the NUL
    let run = util::run(&["serve", &format!("echo@unix:{path}")], b"");
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(run.stderr.contains("108"), "{}", run.stderr);
    assert!(!Path::new(&path).exists());
}

#[test]
fn unix_mode_sets_the_socket_file_bits() {
    for (mode, bits) in [("600", 0o600), ("660", 0o660)] {
        let path = socket_path(&format!("mode-{mode}"));
        let _server = Server::start(&["--unix-mode", mode, &unix_spec("echo", &path)]);
        let actual = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, bits, "--unix-mode {mode}");
    }
    let run = util::run(
        &["serve", "--unix-mode", "999", "echo@unix:/tmp/x.sock"],
        b"",
    );
    assert_eq!(run.code(), 2);
}

#[test]
fn unix_peers_are_named_unix_n_and_their_credentials_logged() {
    let path = socket_path("names");
    let server = Server::start_with_env(
        &[&unix_spec("echo", &path)],
        &[("RUST_LOG", "oneloop=debug")],
    );
    for _ in 0..2 {
        let mut stream = unix_connect(&path);
        stream.write_all(b"x").unwrap();
        assert_eq!(read_exact(&mut stream, 1), b"x");
    }
    let stderr = server.stderr();
    let pid = std::process::id();
    for name in ["unix-1", "unix-2"] {
        assert!(
            stderr.contains(&format!("{name}: peer process {pid}")),
            "no credentials logged for {name}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// UDP

/// A UDP client socket on the same family as `server`, with a bounded wait for replies.
fn udp_client(server: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket
}

/// Sends one datagram and returns the reply (which must come from the server).
fn exchange(socket: &UdpSocket, server: SocketAddr, payload: &[u8]) -> Vec<u8> {
    socket.send_to(payload, server).unwrap();
    let mut reply = vec![0; 70_000];
    let (count, from) = socket.recv_from(&mut reply).expect("a reply datagram");
    assert_eq!(from, server, "the reply comes from the service's address");
    reply.truncate(count);
    reply
}

/// Asserts that nothing is waiting on `socket` once `probe` (sent after whatever should have
/// gone unanswered) has been answered: datagrams on one socket are served in order, so its
/// reply proves the earlier ones were seen.
fn assert_unanswered(socket: &UdpSocket, server: SocketAddr) {
    let probe = udp_client(server);
    assert_eq!(exchange(&probe, server, b"probe"), b"probe");
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 16];
    match socket.recv_from(&mut buffer) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("expected no reply, got {other:?}"),
    }
}

fn udp_protocols(model: &str) {
    let mut server = Server::start(&[
        "--model",
        model,
        "upper@udp:127.0.0.1:0",
        "timestamp@udp:127.0.0.1:0",
        "echo@udp:127.0.0.1:0",
        "echo@127.0.0.1:0",
    ]);
    // The stream services still work beside the UDP ones (under forking, the UDP servers are
    // processes, so the parent can still fork a child per connection).
    let mut tcp = util::connect(server.addr_of("echo", "tcp"));
    util::send(&mut tcp, b"tcp beside udp");
    assert_eq!(util::read_exact_within(&mut tcp, 14), b"tcp beside udp");
    drop(tcp);
    let upper = server.addr_of("upper", "udp");
    let client = udp_client(upper);
    assert_eq!(
        exchange(&client, upper, "straße €".as_bytes()),
        "STRASSE €".as_bytes()
    );
    assert_eq!(
        exchange(&client, upper, b"ab\xffc\xe2\x82"),
        b"AB\xffC\xe2\x82"
    );

    let timestamp = server.addr_of("timestamp", "udp");
    for payload in [&b"hello"[..], b"hello\n", b""] {
        let reply = exchange(&client, timestamp, payload);
        let (stamp, rest) = reply.split_at(reply.iter().position(|&b| b == b']').unwrap() + 1);
        util::parse_ctime(&stamp[1..stamp.len() - 1]).expect("a ctime stamp");
        assert_eq!(rest, [b" ", payload].concat(), "`[ctime] PAYLOAD`");
    }

    let echo = server.addr_of("echo", "udp");
    let mut big = vec![0; 60_000];
    Pseudo::new(60).fill(&mut big);
    assert_bytes_eq(
        &exchange(&client, echo, &big),
        &big,
        "a 60,000-byte datagram",
    );

    // A graceful stop ends the UDP servers too (threads, or forking's child processes): the
    // ports come free.
    server.signal("TERM");
    assert_eq!(server.wait_for_exit().code(), Some(0), "{model}");
    for port in [upper, timestamp, echo] {
        let deadline = Instant::now() + DEADLINE;
        while UdpSocket::bind(port).is_err() {
            assert!(
                Instant::now() < deadline,
                "{model}: udp {port} still bound after exit"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn udp_protocols_under_every_model() {
    for model in MODELS {
        udp_protocols(model);
    }
}

#[test]
fn twenty_concurrent_senders_are_each_answered_at_their_own_address() {
    let server = Server::start(&["echo@udp:127.0.0.1:0"]);
    let echo = server.addr_of("echo", "udp");
    let senders: Vec<_> = (0..20)
        .map(|sender| {
            thread::spawn(move || {
                let socket = udp_client(echo);
                for round in 0..50 {
                    let payload = format!("sender {sender} round {round}");
                    assert_eq!(
                        exchange(&socket, echo, payload.as_bytes()),
                        payload.as_bytes()
                    );
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender");
    }
}

#[test]
fn an_oversize_datagram_is_dropped_and_counted() {
    if !util::ipv6_loopback_available() {
        eprintln!("skipped: no IPv6 loopback here (IPv4 caps UDP payloads at 65,507 bytes)");
        return;
    }
    let mut server = Server::start_with_env(&["echo@udp:[::1]:0"], &[("RUST_LOG", "oneloop=info")]);
    let echo = server.addr_of("echo", "udp");
    let client = udp_client(echo);
    // The largest answered payload comes back; one byte more is dropped.
    assert_eq!(exchange(&client, echo, &vec![b'x'; 65_507]).len(), 65_507);
    client.send_to(&vec![b'y'; 65_508], echo).unwrap();
    assert_unanswered(&client, echo);
    server.signal("TERM");
    assert_eq!(server.wait_for_exit().code(), Some(0));
    assert!(
        server.stderr().contains("1 oversize dropped"),
        "{}",
        server.stderr()
    );
}

#[test]
fn datagrams_from_well_known_ports_get_no_reply() {
    let mut server =
        Server::start_with_env(&["echo@udp:127.0.0.1:0"], &[("RUST_LOG", "oneloop=info")]);
    let echo = server.addr_of("echo", "udp");
    // Binding a port below 1024 needs root (CI runs as root); anywhere else, say so and skip.
    let privileged = match (1000..1024).find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok()) {
        Some(socket) => socket,
        None => {
            eprintln!("skipped: cannot bind a UDP port below 1024 here (not root)");
            return;
        }
    };
    privileged.send_to(b"reflect me", echo).unwrap();
    assert_unanswered(&privileged, echo);
    server.signal("TERM");
    assert_eq!(server.wait_for_exit().code(), Some(0));
    assert!(
        server
            .stderr()
            .contains("1 from ports below 1024 not answered"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_busy_udp_port_is_a_bind_failure_naming_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, stderr) = failed_start(&[&format!("echo@udp:{addr}")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("udp {addr}")) && stderr.contains("address already in use"),
        "{stderr}"
    );
}

#[test]
fn a_datagram_flood_does_not_starve_tcp_clients() {
    let server = Server::start(&["echo@udp:127.0.0.1:0", "upper@127.0.0.1:0"]);
    let echo = server.addr_of("echo", "udp");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // Two flooders that never read their replies, bounded in count and time.
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            thread::spawn(move || {
                let socket = udp_client(echo);
                let started = Instant::now();
                let payload = [b'f'; 64];
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < DEADLINE
                    && sent.load(Ordering::Relaxed) < 5_000_000
                {
                    if socket.send_to(&payload, echo).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while sent.load(Ordering::Relaxed) < 10_000 {
        assert!(Instant::now() < deadline, "the flood never got going");
        thread::sleep(Duration::from_millis(1));
    }
    let before = sent.load(Ordering::Relaxed);
    let mut tcp = util::connect(server.addr_of("upper", "tcp"));
    // Round trips go on until the flood has sent another 20,000 datagrams meanwhile (and at
    // least 50 of them), so they overlap the flood however the threads are scheduled; each must
    // be answered within the harness deadline.
    let mut round = 0;
    while round < 50 || sent.load(Ordering::Relaxed) - before < 20_000 {
        assert!(Instant::now() < deadline + DEADLINE, "the flood stalled");
        let message = format!("round {round} ");
        util::send(&mut tcp, message.as_bytes());
        assert_eq!(
            util::read_exact_within(&mut tcp, message.len()),
            message.to_uppercase().as_bytes()
        );
        round += 1;
    }
    let during = sent.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap();
    }
    eprintln!("{round} TCP round trips answered while {during} datagrams were sent");
    assert!(
        during > 0,
        "the flood had stopped before the TCP round trips"
    );
}

// ---------------------------------------------------------------------------------------------
// the client

#[test]
fn the_client_over_unix_and_udp() {
    let path = socket_path("client");
    let server = Server::start(&[&unix_spec("upper", &path), "echo@udp:127.0.0.1:0"]);
    let run = util::run(
        &[
            "client",
            &format!("unix:{}", path.display()),
            "Hello",
            "world",
        ],
        b"",
    );
    assert_eq!(
        (run.code(), run.stdout.as_str()),
        (0, "HELLO WORLD"),
        "{}",
        run.stderr
    );

    let udp = format!("udp:{}", server.addr_of("echo", "udp"));
    let run = util::run(&["client", &udp, "one", "datagram"], b"");
    assert_eq!(
        (run.code(), run.stdout.as_str()),
        (0, "one datagram\n"),
        "{}",
        run.stderr
    );
    // Without words: each stdin line (without its newline) is one datagram, each reply a line.
    let run = util::run(&["client", &udp], b"first\nsecond\n");
    assert_eq!(
        (run.code(), run.stdout.as_str()),
        (0, "first\nsecond\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_udp_client_says_no_reply_and_exits_1() {
    // A bound socket that never answers: the datagram arrives, no reply comes.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp:{}", silent.local_addr().unwrap());
    let run = util::run(&["client", "--timeout", "0.3", &addr, "anyone?"], b"");
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("no reply"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// socat: an outside program people already have

/// Runs `socat ARGS` with `input` on its stdin (the caller has checked that socat is here).
fn socat(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("socat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run socat: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().expect("socat's output");
    assert!(output.status.success(), "socat {args:?}: {}", output.status);
    output.stdout
}

#[test]
fn socat_speaks_to_the_unix_and_udp_services() {
    if !util::require_tools(&["socat"]) {
        return;
    }
    let path = socket_path("socat");
    let server = Server::start(&[&unix_spec("upper", &path), "timestamp@udp:127.0.0.1:0"]);
    let unix = format!("UNIX-CONNECT:{}", path.display());
    let reply = socat(&["-t5", "-", &unix], "hello ünïx\n".as_bytes());
    assert_eq!(reply, "HELLO ÜNÏX\n".as_bytes());
    // socat sends each read of its input as one datagram and prints each reply.
    let udp = format!("UDP:{}", server.addr_of("timestamp", "udp"));
    let reply = socat(&["-t2", "-", &udp], b"stamp me");
    check_stamped_reply(&reply, b"stamp me").unwrap();
}

/// The first signal ends the UDP services and closes every listener at once, under every model,
/// even while a busy stream connection holds the rest of the shutdown up (the reactor's
/// behaviour is the reference). Under forking, the UDP servers are child processes: they must
/// not keep the stream listeners open, or connections would still be taken after the signal.
#[test]
fn at_the_first_signal_udp_stops_and_listeners_close_under_every_model() {
    for model in MODELS {
        if model == "serial" {
            continue; // Its one serving thread is the busy connection: covered by the others.
        }
        let mut server = Server::start_with_env(
            &[
                "--model",
                model,
                "--shutdown-timeout",
                "60",
                "echo@udp:127.0.0.1:0",
                "echo@127.0.0.1:0",
            ],
            &[("RUST_LOG", "oneloop=info")],
        );
        let (udp, tcp) = (server.addr_of("echo", "udp"), server.addr_of("echo", "tcp"));
        let client = udp_client(udp);
        assert_eq!(exchange(&client, udp, b"before"), b"before");
        // A connection the server cannot finish: it echoes to a client that never reads. Writing
        // until a write times out shows the server has stopped reading it (blocked writing, or
        // over its output limit), so its replies stay unacknowledged whatever the scheduling.
        let busy = util::connect(tcp);
        {
            let mut busy = busy.try_clone().unwrap();
            busy.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let chunk = vec![b'b'; 64 * 1024];
            let deadline = Instant::now() + DEADLINE;
            while busy.write_all(&chunk).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "{model}: the server kept reading"
                );
            }
        }
        server.signal("TERM");

        // The UDP service closes first — the busy connection holds the rest of the shutdown up
        // (for the whole timeout, or for the 2 s linger of a blocking model's thread).
        let closed = format!("udp {udp}: closed");
        let deadline = Instant::now() + DEADLINE;
        let stderr = loop {
            let stderr = server.stderr();
            if stderr.contains(&closed) {
                break stderr;
            }
            assert!(
                Instant::now() < deadline,
                "{model}: no `{closed}`: {stderr}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !stderr.contains("shutdown complete"),
            "{model}: the UDP service closed only at the end of the shutdown: {stderr}"
        );
        while std::net::TcpStream::connect(tcp).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{model}: still accepting after the signal"
            );
            thread::sleep(Duration::from_millis(20));
        }
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            client.send_to(b"after", udp).unwrap();
            let mut reply = [0u8; 16];
            if client.recv_from(&mut reply).is_err() {
                break; // No answer: the UDP service has stopped.
            }
            assert!(
                Instant::now() < deadline,
                "{model}: udp still answered after the signal"
            );
        }
        server.signal("INT");
        assert_eq!(server.wait_for_exit().code(), Some(0), "{model}");
        drop(busy);
    }
}
