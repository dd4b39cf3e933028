//! The systemd building blocks over real sockets and real processes: socket activation through
//! the real `systemd-socket-activate` tool (and a shell, for what that tool never does wrong),
//! and notifications received on a real Unix datagram socket.
//!
//! Without `systemd-socket-activate` (Debian: `apt-get install systemd`; systemd need not run)
//! the tests that use it skip, one line each, or fail where `ONELOOP_TEST_REQUIRE_TOOLS=1` is set.
//!
//! The process that systemd starts is this test binary itself, re-run with only the test
//! `probe_entry` selected and `ONELOOP_ACTIVATION_PROBE` set: it then runs
//! `examples/activation_probe.rs` (included below), so the probe is always built from the code
//! under test. Each probe line starts with `probe `.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use oneloop::net::systemd::{take_matching, ActivatedKind, ActivatedSocket, Notifier};
use oneloop::net::Bound;
use oneloop::service::Address;
use oneloop::service::ProtocolKind;
use util::{KillOnDrop, DEADLINE};

#[path = "../examples/activation_probe.rs"]
#[allow(dead_code)]
mod probe;

/// Set in the environment of the re-run test binary that plays the activated process.
const PROBE_VARIABLE: &str = "ONELOOP_ACTIVATION_PROBE";

/// Not a test of its own: the activated process. Does nothing in a normal test run.
#[test]
fn probe_entry() {
    if std::env::var_os(PROBE_VARIABLE).is_some() {
        // The harness has printed `test probe_entry ... ` without a newline: end that line.
        println!();
        probe::run();
        std::process::exit(0);
    }
}

/// This test binary's arguments that make it run only [`probe_entry`].
fn probe_command() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    vec![
        exe.to_string_lossy().into_owned(),
        "--exact".into(),
        "probe_entry".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// What a probe printed (its `probe ` lines, without the prefix) and how it ended.
struct ProbeRun {
    lines: Vec<String>,
    success: bool,
    stderr: String,
}

impl ProbeRun {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn find(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no `probe {prefix}` line in {:#?}\n{}",
                    self.lines, self.stderr
                )
            })
    }
}

/// Waits for `child` to exit (killing it after [`DEADLINE`]) and collects its output.
///
/// In `--accept` mode `systemd-socket-activate` does not exec the probe but forks one per
/// connection and goes on listening: there, the probe has ended when the tool reports `Child N
/// died with code C`, and that code is the probe's.
fn finish(mut child: std::process::Child, stderr: mpsc::Receiver<String>) -> ProbeRun {
    let started = Instant::now();
    let mut errors = Vec::new();
    let success = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        errors.extend(stderr.try_iter());
        if let Some(code) = errors
            .iter()
            .find_map(|line| line.split_once(" died with code ").map(|(_, code)| code))
        {
            let success = code == "0";
            let _ = child.kill();
            let _ = child.wait();
            break success;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    errors.extend(stderr.try_iter());
    ProbeRun {
        lines: stdout
            .lines()
            .filter_map(|l| l.strip_prefix("probe "))
            .map(str::to_owned)
            .collect(),
        success,
        stderr: errors.join("\n"),
    }
}

/// Starts `program args` with stdout and stderr piped; stderr lines arrive on the receiver.
fn spawn(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut command = Command::new(program);
    command
        .args(args)
        .env(PROBE_VARIABLE, "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let (send, receive) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, receive)
}

/// Runs the probe under `systemd-socket-activate` with `options` (its `-l`, `-d`, `-a`,
/// `--fdname`), `wrap` in front of the probe (e.g. a shell), and waits until the tool reports
/// `listening` sockets. The probe starts at the first connection or datagram. `None` (after
/// the skip line) where the tool is not installed.
fn socket_activate(
    options: &[String],
    wrap: &[&str],
    listening: usize,
) -> Option<(std::process::Child, mpsc::Receiver<String>)> {
    let tool = "systemd-socket-activate";
    if !util::require_tools(&[tool]) {
        return None;
    }
    // The tool gives the child a fresh environment: only what `--setenv` names is passed.
    let mut args = vec![format!("--setenv={PROBE_VARIABLE}=1")];
    args.extend_from_slice(options);
    args.extend(wrap.iter().map(|s| s.to_string()));
    args.extend(probe_command());
    let (child, stderr) = spawn(tool, &args, &[]);
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.starts_with("Listening on"))
        .count()
        < listening
    {
        match stderr.recv_timeout(DEADLINE) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("{tool} never listened: {seen:#?}"),
        }
    }
    Some((child, stderr))
}

/// A TCP port nobody listens on right now (systemd-socket-activate cannot bind port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port nobody listens on right now.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-sd{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn read_reply(stream: &mut impl Read) -> String {
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn tcp_reply(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    read_reply(&mut stream)
}

fn unix_reply(path: &Path) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    read_reply(&mut stream)
}

#[test]
fn tcp_and_unix_sockets_are_taken_with_their_names() {
    let port = free_port();
    let path = temp_path("chat.sock");
    let Some((child, stderr)) = socket_activate(
        &[
            format!("--listen=127.0.0.1:{port}"),
            format!("--listen={}", path.display()),
            "--fdname=upper:chat".into(),
        ],
        &[],
        2,
    ) else {
        return;
    };
    // The first connection starts the probe; each socket answers with its own name.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(tcp_reply(addr), "upper\n");
    assert_eq!(unix_reply(&path), "chat\n");
    let run = finish(child, stderr);
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    assert!(run.has("activated 2"), "{:#?}", run.lines);
    assert!(
        run.has(&format!(
            "socket fd=3 name=upper transport=tcp local=127.0.0.1:{port} flags=nonblocking,cloexec"
        )),
        "{:#?}",
        run.lines
    );
    assert!(
        run.has(&format!(
            "socket fd=4 name=chat transport=unix local={} flags=nonblocking,cloexec",
            path.display()
        )),
        "{:#?}",
        run.lines
    );
    // The variables are gone, so nothing the probe started could take the sockets again.
    assert!(
        run.has("env LISTEN_PID=unset LISTEN_FDS=unset LISTEN_FDNAMES=unset"),
        "{:#?}",
        run.lines
    );
    assert!(run.has("done"));
    // systemd's socket file is not ours to remove.
    assert!(path.exists(), "the activated socket file was removed");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_udp_socket_is_taken() {
    let port = free_udp_port();
    let Some((child, stderr)) = socket_activate(
        &[
            "--datagram".into(),
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=echo".into(),
        ],
        &[],
        1,
    ) else {
        return;
    };
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    let mut buffer = [0u8; 64];
    let (count, _) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(&buffer[..count], b"echo\n");
    let run = finish(child, stderr);
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    assert!(
        run.has(&format!(
            "socket fd=3 name=echo transport=udp local=127.0.0.1:{port} flags=nonblocking,cloexec"
        )),
        "{:#?}",
        run.lines
    );
}

#[test]
fn a_connection_passed_by_accept_mode_is_refused_by_number_and_name() {
    let port = free_port();
    let Some((child, stderr)) = socket_activate(
        &[
            "--accept".into(),
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=upper".into(),
        ],
        &[],
        1,
    ) else {
        return;
    };
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let run = finish(child, stderr);
    drop(client);
    assert!(!run.success);
    let error = run.find("error:");
    assert!(error.contains("fd 3 (\"upper\")"), "{error}");
    assert!(error.contains("not a listening one"), "{error}");
    assert!(error.contains("Accept=no"), "{error}");
}

#[test]
fn a_unix_datagram_socket_is_refused() {
    let path = temp_path("dgram.sock");
    let Some((child, stderr)) = socket_activate(
        &[
            "--datagram".into(),
            format!("--listen={}", path.display()),
            "--fdname=chat".into(),
        ],
        &[],
        1,
    ) else {
        return;
    };
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"wake up", &path)
        .unwrap();
    let run = finish(child, stderr);
    assert!(!run.success);
    let error = run.find("error:");
    assert!(error.contains("fd 3 (\"chat\")"), "{error}");
    assert!(error.contains("Unix datagram socket"), "{error}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sockets_for_another_process_are_ignored_and_the_variables_removed() {
    let port = free_port();
    // The shell is the activated process, but it hands the probe a LISTEN_PID that is not the
    // probe's: as if the probe were a program the activated server had started.
    let Some((child, stderr)) = socket_activate(
        &[
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=upper".into(),
        ],
        &["sh", "-c", "export LISTEN_PID=1; exec \"$0\" \"$@\""],
        1,
    ) else {
        return;
    };
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let run = finish(child, stderr);
    drop(client);
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    assert!(run.has("activated 0"), "{:#?}", run.lines);
    assert!(
        run.has("env LISTEN_PID=unset LISTEN_FDS=unset LISTEN_FDNAMES=unset"),
        "{:#?}",
        run.lines
    );
}

/// Runs the probe through `sh -c SCRIPT`, the script ending by exec'ing the probe.
fn probe_through_shell(script: &str, env: &[(&str, &str)]) -> ProbeRun {
    let mut args = vec!["-c".to_string(), format!("{script}; exec \"$0\" \"$@\"")];
    args.extend(probe_command());
    let (child, stderr) = spawn("sh", &args, env);
    finish(child, stderr)
}

#[test]
fn a_passed_descriptor_that_is_not_a_socket_is_refused() {
    let run = probe_through_shell(
        "exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=upper",
        &[],
    );
    assert!(!run.success);
    let error = run.find("error:");
    assert!(error.contains("fd 3 (\"upper\"): not a socket"), "{error}");
}

#[test]
fn a_passed_descriptor_that_is_not_open_is_refused() {
    let run = probe_through_shell("exec 3<&-; export LISTEN_PID=$$ LISTEN_FDS=1", &[]);
    assert!(!run.success);
    let error = run.find("error:");
    assert!(
        error.contains("fd 3 (\"unknown\"): not an open descriptor"),
        "{error}"
    );
}

#[test]
fn without_the_variables_nothing_happens() {
    let run = probe_through_shell("true", &[]);
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    assert!(run.has("activated 0"));
    assert!(run.has("notify disabled"));
    assert!(run.has("watchdog None"));
}

/// Receives one datagram within [`DEADLINE`], as text.
fn receive(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buffer = [0u8; 4096];
    let count = socket.recv(&mut buffer).expect("no notification arrived");
    String::from_utf8_lossy(&buffer[..count]).into_owned()
}

#[test]
fn notify_socket_from_the_environment_receives_every_message_in_order() {
    let path = temp_path("notify.sock");
    let receiver = UnixDatagram::bind(&path).unwrap();
    let run = probe_through_shell(
        "export WATCHDOG_PID=$$",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "3000000"),
        ],
    );
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    assert!(run.has("notify enabled"));
    assert!(run.has("watchdog Some(1.5s)"), "{:#?}", run.lines);
    assert_eq!(receive(&receiver), "STATUS=probe status second line");
    assert_eq!(receive(&receiver), "READY=1");
    assert_eq!(receive(&receiver), "WATCHDOG=1");
    assert_eq!(receive(&receiver), "STOPPING=1");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_watchdog_for_another_process_is_off() {
    let run = probe_through_shell("export WATCHDOG_PID=1", &[("WATCHDOG_USEC", "3000000")]);
    assert!(run.has("watchdog None"), "{:#?}", run.lines);
}

#[test]
fn notifications_reach_an_abstract_socket() {
    let name = format!("oneloop-test-notify-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = UnixDatagram::bind_addr(&address).unwrap();
    let notifier = Notifier::to(format!("@{name}").as_ref()).unwrap();
    assert!(notifier.is_enabled());
    notifier.ready();
    notifier.status("12 connections");
    notifier.watchdog();
    notifier.stopping();
    assert_eq!(receive(&receiver), "READY=1");
    assert_eq!(receive(&receiver), "STATUS=12 connections");
    assert_eq!(receive(&receiver), "WATCHDOG=1");
    assert_eq!(receive(&receiver), "STOPPING=1");
}

#[test]
fn a_notifier_never_waits_for_a_receiver_that_does_not_read() {
    let path = temp_path("full-notify.sock");
    // Bound, never read: its queue fills after a few hundred datagrams, and a blocking sender
    // would then wait for ever.
    let _receiver = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::to(path.as_os_str()).unwrap();
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        for _ in 0..10_000 {
            notifier.watchdog();
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(DEADLINE)
        .expect("the notifier blocked on a full receiver");
    // Nobody at the path at all: still no error, no wait.
    let _ = std::fs::remove_file(&path);
    Notifier::to(path.as_os_str()).unwrap().ready();
}

/// An [`ActivatedSocket`] made from a socket this test bound, as if systemd had passed it.
fn activated(fd: i32, name: &str, socket: ActivatedKind, local: Address) -> ActivatedSocket {
    ActivatedSocket {
        fd,
        name: name.into(),
        socket,
        local,
    }
}

#[test]
fn an_activated_unix_socket_is_served_but_never_unlinked() {
    let path = temp_path("kept.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut bound = Bound::default();
    let passed = activated(
        3,
        "chat",
        ActivatedKind::Unix(listener),
        Address::Unix(path.clone()),
    );
    bound.add_passed(passed, ProtocolKind::Chat).unwrap();
    assert_eq!(bound.listeners.len(), 1);
    assert_eq!(
        bound.lines[0].to_string(),
        format!("listening chat unix {}", path.display())
    );
    drop(bound);
    assert!(path.exists(), "the activated socket file was removed");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_activated_udp_socket_refuses_a_stream_only_protocol() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = udp.local_addr().unwrap();
    let mut bound = Bound::default();
    let passed = activated(5, "chat", ActivatedKind::Udp(udp), Address::Udp(local));
    let error = bound.add_passed(passed, ProtocolKind::Chat).unwrap_err();
    assert!(error.contains("fd 5 (\"chat\")"), "{error}");
    assert!(error.contains("not udp"), "{error}");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = udp.local_addr().unwrap();
    let passed = activated(5, "echo", ActivatedKind::Udp(udp), Address::Udp(local));
    bound.add_passed(passed, ProtocolKind::Echo).unwrap();
    assert_eq!(bound.datagrams.len(), 1);
    assert_eq!(
        bound.lines[0].to_string(),
        format!("listening echo udp {local}")
    );
}

#[test]
fn fd_names_select_every_socket_of_a_unit_or_one_by_number() {
    let tcp = |fd, name: &str| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = Address::Tcp(listener.local_addr().unwrap());
        activated(fd, name, ActivatedKind::Tcp(listener), local)
    };
    let mut sockets = vec![tcp(3, "echo"), tcp(4, "upper"), tcp(5, "echo")];
    let echo: Vec<i32> = take_matching(&mut sockets, "echo")
        .iter()
        .map(|s| s.fd)
        .collect();
    assert_eq!(echo, [3, 5]);
    assert_eq!(take_matching(&mut sockets, "chat").len(), 0);
    let by_number = take_matching(&mut sockets, "4");
    assert_eq!(by_number[0].name, "upper");
    assert!(sockets.is_empty());
}

/// `oneloop serve` itself, as systemd runs a `Type=notify` service, under every model:
/// `READY=1` once the listening lines are out, `WATCHDOG=1` at half of `WATCHDOG_USEC` (from the
/// reactor's loop, with a `STATUS=` line; from the blocking models' accepting thread), and
/// `STOPPING=1` when SIGTERM begins the graceful shutdown.
#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    for model in ["reactor", "serial", "threaded", "pool", "forking"] {
        tell_systemd(model);
    }
}

fn tell_systemd(model: &str) {
    let path = temp_path(&format!("serve-notify-{model}"));
    let receiver = UnixDatagram::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_oneloop"))
        .args(["serve", "--model", model, "echo@127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if an assertion below fails: no server may outlive its test.
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening echo tcp "), "{line:?}");
    assert_eq!(receive(&receiver), "READY=1");
    // Every 100 ms: a WATCHDOG=1 and a STATUS= line. Count the pings in about a second.
    let started = Instant::now();
    let mut pings = 0;
    let mut status = String::new();
    while started.elapsed() < Duration::from_secs(1) {
        match receive(&receiver).as_str() {
            "WATCHDOG=1" => pings += 1,
            other if other.starts_with("STATUS=") => status = other.to_owned(),
            other => panic!("{model}: unexpected notification {other:?}"),
        }
    }
    assert!(
        (4..=20).contains(&pings),
        "{model}: {pings} WATCHDOG=1 in about a second; expected about 10 (every 100 ms)"
    );
    if model == "reactor" {
        assert_eq!(status, "STATUS=0 connections");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    loop {
        let message = receive(&receiver);
        if message == "STOPPING=1" {
            break;
        }
        assert!(
            message == "WATCHDOG=1" || message.starts_with("STATUS="),
            "{message:?}"
        );
    }
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
}
