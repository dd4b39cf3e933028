//! `oneloop serve` socket-activated by the real `systemd-socket-activate` tool (systemd's own,
//! which binds the sockets, sets `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` and execs the
//! server on the first connection): passed TCP, UDP and Unix sockets served, `PROTOCOL@fd:NAME`
//! mapped by name and by number, a protocol taken from each socket's name when no `SERVICE` is
//! given, the activated Unix socket left in place at exit, the mistakes a unit file can make
//! reported in one line with exit 1, and a passed chat socket's room on the chat bus named by
//! its name (with a real `redis-server` too).
//!
//! The building blocks (descriptor checks, the variables' removal) are tested in
//! `tests/systemd.rs`; this file tests the program. Without the tool (Debian: `apt-get install
//! systemd`; systemd need not run) the tests that use it skip, one line each, or fail where
//! `ONELOOP_TEST_REQUIRE_TOOLS=1` is set, as `.ci/run` sets it.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Duration;

use util::{KillOnDrop, DEADLINE};

const TOOL: &str = "systemd-socket-activate";

/// The tool's process (the server, once it has exec'd), killed if a test ends early.
type Activated = KillOnDrop;

/// Waits for the process to exit, at most [`DEADLINE`]; panics (the guard then kills it) if it
/// does not.
fn wait_within(child: &mut Activated) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `systemd-socket-activate OPTIONS oneloop serve ARGS`, with stdout and stderr piped. The tool
/// prints `Listening on ...` on stderr once per socket, then waits for the first connection or
/// datagram before it execs the server (same process): call [`wait_bound`] before connecting.
/// The test must have checked for the tool first ([`util::require_tools`]).
fn activate(options: &[String], serve: &[&str]) -> Activated {
    let child = Command::new(TOOL)
        .args(options)
        // The tool passes the child only the variables named here (plus its own).
        .arg("--setenv=RUST_LOG=oneloop=info")
        .arg(env!("CARGO_BIN_EXE_oneloop"))
        .arg("serve")
        .args(serve)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {TOOL}: {e}"));
    KillOnDrop(child)
}

/// Reads the tool's stderr until it has reported `sockets` sockets bound; returns the reader,
/// which the caller drains at the end.
fn wait_bound(child: &mut Activated, sockets: usize) -> BufReader<std::process::ChildStderr> {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.starts_with("Listening on"))
        .count()
        < sockets
    {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("{TOOL} ended before binding: {seen:#?}");
        }
        seen.push(line);
    }
    stderr
}

/// The server's `listening` lines: `count` of them, then its stdout must stay silent.
fn listening_lines(stdout: &mut BufReader<ChildStdout>, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim_end().to_owned()
        })
        .collect()
}

/// SIGTERM (the server is the tool's process: it execs in place), then the exit status and the
/// rest of stderr.
fn stop(mut child: Activated, mut stderr: BufReader<std::process::ChildStderr>) -> (bool, String) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_within(&mut child);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (status.success(), rest)
}

/// Runs to its end a server that is expected to refuse to start; returns its exit code and
/// stderr. The first connection (to `poke`) is what makes the tool exec it.
fn refused(options: &[String], serve: &[&str], poke: SocketAddr, sockets: usize) -> (i32, String) {
    let mut child = activate(options, serve);
    let mut stderr = wait_bound(&mut child, sockets);
    let _poke = TcpStream::connect(poke).unwrap();
    let status = wait_within(&mut child);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let errors: Vec<&str> = rest.lines().filter(|l| l.starts_with("oneloop:")).collect();
    (status.code().unwrap_or(-1), errors.join("\n"))
}

/// A TCP port nobody listens on right now (the tool cannot bind port 0 and report it).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-act{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn tcp_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn unix_line(path: &Path) -> String {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// No `SERVICE`: each passed socket serves the protocol its `FileDescriptorName=` names, with a
/// `listening` line showing its real address; the Unix socket file, systemd's, outlives the
/// server. (That the variables leave the environment is `tests/systemd.rs`'s: `/proc/PID/environ`
/// shows the environment as it was at exec, so it cannot tell from outside.)
#[test]
fn with_no_service_each_passed_socket_serves_the_protocol_it_is_named_after() {
    if !util::require_tools(&[TOOL]) {
        return;
    }
    let port = free_port();
    let path = temp_path("chat.sock");
    let mut child = activate(
        &[
            format!("--listen=127.0.0.1:{port}"),
            format!("--listen={}", path.display()),
            "--fdname=upper:chat".into(),
        ],
        &[],
    );
    let stderr = wait_bound(&mut child, 2);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The first connection makes the tool exec the server; the kernel holds it meanwhile.
    assert_eq!(tcp_exchange(addr, "straße\n".as_bytes()), "STRASSE\n");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(
        listening_lines(&mut stdout, 2),
        [
            format!("listening upper tcp 127.0.0.1:{port}"),
            format!("listening chat unix {}", path.display()),
        ]
    );
    assert!(
        unix_line(&path).starts_with("* welcome unix-"),
        "the passed Unix socket speaks chat"
    );
    let (clean, rest) = stop(child, stderr);
    assert!(clean, "not a clean exit: {rest}");
    assert!(path.exists(), "the activated Unix socket file was removed");
    let _ = std::fs::remove_file(&path);
    let mut extra = String::new();
    stdout.read_to_string(&mut extra).unwrap();
    assert_eq!(extra, "", "stdout holds only the listening lines");
}

/// `PROTOCOL@fd:NAME` chooses by name (every socket of that name) or by number, and the passed
/// sockets are served alongside one the server binds itself, listening lines in the order given.
#[test]
fn services_choose_passed_sockets_by_name_or_number() {
    if !util::require_tools(&[TOOL]) {
        return;
    }
    let first = free_port();
    let second = free_port();
    let mut child = activate(
        &[
            format!("--listen=127.0.0.1:{first}"),
            format!("--listen=127.0.0.1:{second}"),
            "--fdname=front".into(),
        ],
        // fd 4 is the second `front` socket; `front` then selects only the first, since fd 4 is
        // taken. A socket bound by oneloop itself sits between them.
        &["echo@fd:4", "timestamp@127.0.0.1:0", "upper@fd:front"],
    );
    let stderr = wait_bound(&mut child, 2);
    let upper: SocketAddr = format!("127.0.0.1:{first}").parse().unwrap();
    let echo: SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    assert_eq!(tcp_exchange(echo, b"as it is"), "as it is");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let lines = listening_lines(&mut stdout, 3);
    assert_eq!(lines[0], format!("listening echo tcp 127.0.0.1:{second}"));
    assert!(
        lines[1].starts_with("listening timestamp tcp 127.0.0.1:"),
        "{lines:?}"
    );
    assert_eq!(lines[2], format!("listening upper tcp 127.0.0.1:{first}"));
    assert_eq!(tcp_exchange(upper, b"up"), "UP");
    let (clean, rest) = stop(child, stderr);
    assert!(clean, "{rest}");
}

/// A passed UDP socket is served as UDP: the datagram that woke the server is answered too
/// (it waited in the socket's queue while the server started).
#[test]
fn a_passed_udp_socket_is_served() {
    if !util::require_tools(&[TOOL]) {
        return;
    }
    let port = free_udp_port();
    let mut child = activate(
        &[
            "--datagram".into(),
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=upper".into(),
        ],
        &["upper@fd:upper"],
    );
    let stderr = wait_bound(&mut child, 1);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client
        .send_to(b"wake up", ("127.0.0.1", port))
        .expect("send");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(
        listening_lines(&mut stdout, 1),
        [format!("listening upper udp 127.0.0.1:{port}")]
    );
    let mut reply = [0; 64];
    let (n, _) = client.recv_from(&mut reply).unwrap();
    assert_eq!(&reply[..n], b"WAKE UP");
    let (clean, rest) = stop(child, stderr);
    assert!(clean, "{rest}");
}

/// The mistakes a unit file or command line can make with passed sockets: each is one line on
/// stderr naming what is wrong, and exit 1 (like a bind failure), before anything is served.
#[test]
fn passed_socket_mistakes_are_named_and_exit_1() {
    if !util::require_tools(&[TOOL]) {
        return;
    }
    let port = free_port();
    let poke: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("--listen=127.0.0.1:{port}");

    // A name that names no socket: the error lists what was passed.
    let (code, message) = refused(
        &[listen.clone(), "--fdname=upper".into()],
        &["upper@fd:uper"],
        poke,
        1,
    );
    assert_eq!(code, 1, "{message}");
    assert!(
        message.contains("upper@fd:uper") && message.contains(r#"fd 3 "upper""#),
        "{message}"
    );

    // No SERVICE, and a socket whose name is not a protocol.
    let (code, message) = refused(&[listen.clone(), "--fdname=web".into()], &[], poke, 1);
    assert_eq!(code, 1, "{message}");
    assert!(
        message.contains(r#"fd 3 ("web""#) && message.contains("names no protocol"),
        "{message}"
    );

    // chat cannot run over a passed UDP socket.
    let udp_port = free_udp_port();
    let mut child = activate(
        &[
            "--datagram".into(),
            format!("--listen=127.0.0.1:{udp_port}"),
            "--fdname=chat".into(),
        ],
        &[],
    );
    let mut stderr = wait_bound(&mut child, 1);
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"x", ("127.0.0.1", udp_port))
        .unwrap();
    let status = wait_within(&mut child);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("chat runs over tcp or unix, not udp"),
        "{rest}"
    );
}

/// Without socket activation, `fd:NAME` has nothing to take: exit 1 saying so.
#[test]
fn fd_services_without_activation_exit_1() {
    let output = Command::new(env!("CARGO_BIN_EXE_oneloop"))
        .args(["serve", "echo@fd:echo"])
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout, b"", "nothing may be announced");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("echo@fd:echo: no socket was passed to this process"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// With `--chat-bus`, a passed socket's room is named by its `FileDescriptorName=`: an instance
/// serving `chat@fd:lobby` shares its room with one serving a Unix socket file named `lobby`
/// (the contract's room names: NAME for `fd:NAME`, the file's name for `unix:`), over a real
/// Redis.
#[test]
fn a_passed_chat_socket_shares_the_room_its_name_names() {
    if !util::require_tools(&[TOOL, "redis-server"]) {
        return;
    }
    let Some(redis) = util::RedisServer::start() else {
        return;
    };
    let dir = temp_path("lobby-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lobby");
    let url = redis.url();
    let unix = format!("chat@unix:{}", file.display());
    let mut other = util::Server::start(&[unix.as_str(), "--chat-bus", url.as_str()]);
    let mut first = util::LineReader::new(UnixStream::connect(&file).unwrap());
    let greeting = first.line();
    assert!(
        greeting.starts_with("* welcome unix-1; 1 member here"),
        "{greeting}"
    );
    let port = free_port();
    let mut child = activate(
        &[
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=lobby".into(),
        ],
        &["chat@fd:lobby", "--chat-bus", &url],
    );
    let stderr = wait_bound(&mut child, 1);
    // The first connection makes the tool exec the server; it is answered once the bus is up.
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let me = stream.local_addr().unwrap();
    let mut second = util::LineReader::new(stream);
    assert_eq!(
        second.line(),
        format!("* welcome {me}; 2 members here; /nick NAME, /who, quit"),
        "the passed socket's room is the unix socket's"
    );
    first.expect(&format!("* {me} joined"));
    second.send(b"hello from fd:lobby\n");
    first.expect(&format!("{me}: hello from fd:lobby"));
    let (clean, rest) = stop(child, stderr);
    assert!(clean, "{rest}");
    first.expect(&format!("* {me} left"));
    other.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}
