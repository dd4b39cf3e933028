//! The harness every black-box test shares: start the real `oneloop` binary on port-0 addresses,
//! learn its ports from the `listening` lines, talk to it over loopback with a deadline on every
//! read, and kill it (by PID) when the test is done.
//!
//! Nothing here reaches into the server: the only things a test knows are what the contract
//! promises — the command line, the `listening` lines, the bytes on the wire, the exit code.
//!
//! Every wait is bounded by [`DEADLINE`], so a server that hangs fails the test with a message
//! instead of hanging the suite.
#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

pub mod metrics;
pub mod tls;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The longest any single wait may take: a read, the `listening` lines, a child's exit.
/// Generous because a loaded two-core machine running debug builds can be slow; a healthy server
/// answers in milliseconds, so reaching it means something is wrong.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The binary under test, as Cargo built it for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_oneloop");

thread_local! {
    /// The `--model` that servers started on this thread use (`None`: the default, reactor).
    static MODEL: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `test` with every server it starts serving `--model model`: the same black-box test
/// then checks the reactor and each comparison model. (Tests run one per thread, so a
/// thread-local is the test's own setting.)
pub fn as_model(model: &'static str, test: fn()) {
    MODEL.with(|current| current.set(Some(model)));
    test();
}

/// One `#[test]` per model for each listed test function, the one way every test file runs a
/// test under several `--model`s ([`as_model`]), so that a failure names its model:
///
/// - `per_model! { [reactor, pool]: [a, b] }` makes `reactor::a`, `reactor::b`, `pool::a` and
///   `pool::b`;
/// - `per_model! { pool: [a, b] }` is the one-model form;
/// - `per_model! { shutdown: [reactor, pool]: [a, b] }` puts them under a group,
///   `shutdown::reactor::a` and so on: for tests that only some of a file's models run (a
///   model's module can be made once per file or group, so a second list for the same model
///   needs a group of its own).
///
/// The test functions are the test file's own, at its top level. (Test files say
/// `#[macro_use] mod util;`.)
#[allow(unused_macros)] // Only some test binaries run tests per model.
macro_rules! per_model {
    ($group:ident: [$($model:ident),+ $(,)?]: $tests:tt) => {
        mod $group {
            per_model! { [$($model),+]: $tests }
        }
    };
    ([$($model:ident),+ $(,)?]: $tests:tt) => {
        $( per_model! { $model: $tests } )+
    };
    ($model:ident: [$($test:ident),* $(,)?]) => {
        mod $model {
            $(
                #[test]
                fn $test() {
                    crate::util::as_model(stringify!($model), crate::$test);
                }
            )*
        }
    };
}

/// A connection read line by line (chat, the upload protocol's replies), every wait bounded by
/// [`DEADLINE`]. Set the stream's read timeout too, so that one read cannot outlast it.
pub struct LineReader<S> {
    /// The connection.
    pub stream: S,
    /// Bytes read and not yet taken as lines.
    pub pending: Vec<u8>,
}

impl<S: Read + Write> LineReader<S> {
    /// Takes over `stream`.
    pub fn new(stream: S) -> LineReader<S> {
        LineReader {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes all of `bytes`; panics on an error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// The next line, without its `\n`. Panics on end of stream, an error or the deadline.
    pub fn line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no complete line within {DEADLINE:?}; pending {:?}",
                Snippet(&self.pending)
            );
            let mut buffer = [0; 4096];
            match self.stream.read(&mut buffer) {
                Ok(0) => panic!(
                    "end of stream while waiting for a line; pending {:?}",
                    Snippet(&self.pending)
                ),
                Ok(count) => self.pending.extend_from_slice(&buffer[..count]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("no line ({e}); pending {:?}", Snippet(&self.pending)),
            }
        }
    }

    /// Reads the next line and checks it.
    pub fn expect(&mut self, expected: &str) {
        assert_eq!(self.line(), expected);
    }
}

/// A child process killed (and reaped) when dropped, unless it has exited: a test that fails
/// an assertion must not leave its server running.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `--model` servers started on this thread use (`None`: the default, reactor).
pub fn model() -> Option<&'static str> {
    MODEL.with(|current| current.get())
}

/// One `listening PROTOCOL TRANSPORT ADDRESS` line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// `upper`, `timestamp`, `echo`, ...
    pub protocol: String,
    /// `tcp`, `udp` or `unix`.
    pub transport: String,
    /// The bound address, with the real port (unspecified, port 0, for a Unix socket).
    pub addr: SocketAddr,
    /// The socket path of a Unix socket.
    pub path: Option<PathBuf>,
}

/// Why a server did not come up: it exited before printing its `listening` lines.
#[derive(Debug)]
pub struct StartFailure {
    /// How it exited.
    pub status: ExitStatus,
    /// What it wrote on stderr.
    pub stderr: String,
}

/// A running `oneloop serve`, killed and reaped when dropped.
pub struct Server {
    child: Child,
    listening: Vec<Listening>,
    /// Lines on stdout after the `listening` ones (the contract says there are none).
    stdout_rest: Receiver<String>,
    stderr_path: PathBuf,
}

/// Gives each server's stderr file a unique name within this test process.
static NEXT_SERVER: AtomicUsize = AtomicUsize::new(0);

impl Server {
    /// Starts `oneloop serve ARGS...` and waits for its `listening` lines; panics if they do not
    /// come within [`DEADLINE`] or the server exits first.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the server (e.g. `TZ`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        match Server::try_start_with_env(args, env) {
            Ok(server) => server,
            Err(failure) => panic!(
                "oneloop serve {args:?} exited with {} before listening; stderr:\n{}",
                failure.status, failure.stderr
            ),
        }
    }

    /// Like [`Server::start`], but a server that exits before listening (a bind failure, a
    /// refused option) is reported instead of panicking, for tests that may have to skip.
    pub fn try_start(args: &[&str]) -> Result<Server, StartFailure> {
        Server::try_start_with_env(args, &[])
    }

    /// [`Server::try_start`] with extra environment variables for the server.
    pub fn try_start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Server, StartFailure> {
        Server::launch(args, env, None)
    }

    /// Like [`Server::start`], with the server's open-file limit (soft and hard) set to
    /// `fd_limit`, for tests of what happens when it runs out of descriptors. The limit is set by
    /// `sh`, which then `exec`s the server, so the PID is still the server's.
    pub fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> Server {
        match Server::launch(args, &[], Some(fd_limit)) {
            Ok(server) => server,
            Err(failure) => panic!(
                "oneloop serve {args:?} (fd limit {fd_limit}) exited with {} before listening; \
                 stderr:\n{}",
                failure.status, failure.stderr
            ),
        }
    }

    fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        fd_limit: Option<u32>,
    ) -> Result<Server, StartFailure> {
        let stderr_path = std::env::temp_dir().join(format!(
            "oneloop-test-{}-{}.stderr",
            std::process::id(),
            NEXT_SERVER.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr_file = fs::File::create(&stderr_path).expect("create the stderr file");
        let mut command = match fd_limit {
            None => Command::new(BIN),
            Some(limit) => {
                let mut sh = Command::new("sh");
                // `$0` is the binary, `$@` the rest: no quoting of test arguments needed.
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
        };
        let model: Vec<&str> = MODEL
            .with(|current| current.get())
            .map_or_else(Vec::new, |model| vec!["--model", model]);
        let mut child = command
            .arg("serve")
            .args(model)
            .args(args)
            // Quiet logs: a test that needs them can read the stderr file.
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .expect("spawn oneloop");
        let lines = spawn_line_reader(child.stdout.take().expect("piped stdout"));
        let mut server = Server {
            child,
            listening: Vec::new(),
            stdout_rest: lines,
            stderr_path,
        };
        let expected = expected_services(args);
        let deadline = Instant::now() + DEADLINE;
        while server.listening.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.stdout_rest.recv_timeout(left) {
                Ok(line) => server.listening.push(parse_listening(&line)),
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the server is exiting. Reap it and say why.
                    let status = server.wait_for_exit();
                    return Err(StartFailure {
                        status,
                        stderr: server.stderr(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "oneloop serve {args:?}: only {} of {expected} listening lines after {:?}; \
                     stderr:\n{}",
                    server.listening.len(),
                    DEADLINE,
                    server.stderr()
                ),
            }
        }
        Ok(server)
    }

    /// Every `listening` line, in the order printed.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// The address of the (first) service speaking `protocol`.
    pub fn addr(&self, protocol: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|l| l.protocol == protocol)
            .unwrap_or_else(|| panic!("no {protocol} service in {:?}", self.listening))
            .addr
    }

    /// The address of the (first) `transport` service speaking `protocol` (`tcp` or `udp`).
    pub fn addr_of(&self, protocol: &str, transport: &str) -> SocketAddr {
        self.find(protocol, transport).addr
    }

    /// The socket path of the (first) Unix service speaking `protocol`.
    pub fn path(&self, protocol: &str) -> PathBuf {
        self.find(protocol, "unix").path.clone().unwrap()
    }

    fn find(&self, protocol: &str, transport: &str) -> &Listening {
        self.listening
            .iter()
            .find(|l| l.protocol == protocol && l.transport == transport)
            .unwrap_or_else(|| panic!("no {protocol} {transport} service in {:?}", self.listening))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Lines the server printed on stdout after its `listening` lines (none, by contract).
    pub fn extra_stdout(&self) -> Vec<String> {
        self.stdout_rest.try_iter().collect()
    }

    /// Panics if the server has exited (crashed) — call at the end of a test to make sure the
    /// server survived what the test did to it.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "the server exited with {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// The server's resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// How many file descriptors the server has open (entries in `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read the server's /proc fd directory")
            .count()
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...) to the server's PID, with `kill(1)`.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Waits (up to [`DEADLINE`]) for the server to exit and returns its status; kills it if it
    /// does not.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for the killed server");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only; `wait` reaps it so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stderr_path);
    }
}

/// How many `listening` lines `serve ARGS` should print: one per `PROTOCOL@ADDRESS`, or the three
/// default services when none is given.
fn expected_services(args: &[&str]) -> usize {
    match args.iter().filter(|a| a.contains('@')).count() {
        0 => 3,
        n => n,
    }
}

/// Parses `listening PROTOCOL TRANSPORT ADDRESS`, strictly (a socket path, the last word, may
/// hold spaces).
pub fn parse_listening(line: &str) -> Listening {
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["listening", protocol, "unix", path @ ..] if !path.is_empty() => Listening {
            protocol: protocol.to_string(),
            transport: "unix".to_string(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            path: Some(PathBuf::from(path.join(" "))),
        },
        ["listening", protocol, transport, address] => Listening {
            protocol: protocol.to_string(),
            transport: transport.to_string(),
            addr: address
                .parse()
                .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")),
            path: None,
        },
        _ => panic!("not a `listening PROTOCOL TRANSPORT ADDRESS` line: {line:?}"),
    }
}

/// Forwards what a child writes on `output` to a channel, a read's worth at a time, until it
/// closes (or nobody listens any more): a test can then wait for output with a deadline.
pub fn forward_output(mut output: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut buffer = [0; 4096];
        while let Ok(count @ 1..) = output.read(&mut buffer) {
            if sender.send(buffer[..count].to_vec()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Forwards each stdout line of the child to a channel until stdout closes.
fn spawn_line_reader(stdout: ChildStdout) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// A process's peak resident memory so far, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A process's resident memory now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` figure in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line"));
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {line:?}"))
}

/// Raises this test process's own open-file limit (for tests that open thousands of sockets);
/// returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    oneloop::sys::raise_fd_limit()
        .expect("raise RLIMIT_NOFILE")
        .now
}

/// Connects with [`DEADLINE`] as the read and write timeout, so no later read can hang.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, DEADLINE)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Writes all of `bytes`, panicking with context on failure.
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
}

/// Shuts down the sending side: the server sees end of stream.
pub fn half_close(stream: &TcpStream) {
    stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
}

/// One `read` (the seeds' `recv(1024)`), within the deadline; panics on timeout, error or EOF.
pub fn read_once(stream: &mut TcpStream, max: usize) -> Vec<u8> {
    let mut buffer = vec![0; max];
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    match stream.read(&mut buffer) {
        Ok(0) => panic!("the server closed the connection instead of answering"),
        Ok(count) => {
            buffer.truncate(count);
            buffer
        }
        Err(e) => panic!("no reply within {DEADLINE:?}: {e}"),
    }
}

/// Reads exactly `count` bytes (and not one more), within [`DEADLINE`] overall. Panics on EOF,
/// error or timeout, showing what had arrived.
pub fn read_exact_within(stream: &mut TcpStream, count: usize) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::with_capacity(count);
    let mut buffer = vec![0; 64 * 1024];
    while got.len() < count {
        let want = (count - got.len()).min(buffer.len());
        let read = read_step(stream, deadline, &mut buffer[..want], &got);
        got.extend_from_slice(&buffer[..read]);
    }
    got
}

/// Reads into `got` until `done(got)` holds, within [`DEADLINE`] overall. Each read takes what
/// has arrived (up to 64 KiB), so use it only when nothing beyond the awaited reply is coming.
/// Panics on EOF, error or timeout, showing what had arrived.
pub fn read_until_within(
    stream: &mut TcpStream,
    got: &mut Vec<u8>,
    mut done: impl FnMut(&[u8]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = vec![0; 64 * 1024];
    while !done(got) {
        let read = read_step(stream, deadline, &mut buffer, got);
        got.extend_from_slice(&buffer[..read]);
    }
}

/// One read of at least one byte before `deadline`; panics (showing `so_far`) on EOF, an error or
/// the deadline.
fn read_step(stream: &mut TcpStream, deadline: Instant, buffer: &mut [u8], so_far: &[u8]) -> usize {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "reply incomplete after {DEADLINE:?}; got {} bytes: {:?}",
                so_far.len(),
                Snippet(so_far)
            );
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(buffer) {
            Ok(0) => panic!(
                "unexpected end of stream after {} bytes: {:?}",
                so_far.len(),
                Snippet(so_far)
            ),
            Ok(count) => return count,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!(
                "read failed ({e}) after {} bytes: {:?}",
                so_far.len(),
                Snippet(so_far)
            ),
        }
    }
}

/// Sends `input` from a thread, then shuts down our sending side, while this thread reads every
/// reply until the server closes: the full-duplex pattern (reading while writing, so neither
/// side's buffers can deadlock the transfer). Returns what came back.
pub fn send_all_then_half_close_reading_replies(stream: &mut TcpStream, input: &[u8]) -> Vec<u8> {
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let input = input.to_vec();
        thread::spawn(move || {
            send(&mut stream, &input);
            half_close(&stream);
        })
    };
    let got = read_to_end_within(stream);
    writer.join().expect("writer");
    got
}

/// Reads until the server closes, within [`DEADLINE`] overall. The close must be clean: a reset
/// (or any other error) panics, showing what had arrived.
pub fn read_to_end_within(stream: &mut TcpStream) -> Vec<u8> {
    match try_read_to_end_within(stream) {
        (got, Ok(())) => got,
        (got, Err(e)) => panic!(
            "expected a clean end of stream, got `{e}` ({:?}) after {} bytes: {:?}",
            e.kind(),
            got.len(),
            Snippet(&got)
        ),
    }
}

/// Reads until end of stream or an error, within [`DEADLINE`]; returns the bytes and how the
/// stream ended. Panics only on the deadline.
pub fn try_read_to_end_within(stream: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "no end of stream within {DEADLINE:?}; got {} bytes: {:?}",
                got.len(),
                Snippet(&got)
            );
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return (got, Ok(())),
            Ok(count) => got.extend_from_slice(&buffer[..count]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return (got, Err(e)),
        }
    }
}

/// The send and receive queues, in bytes, of the IPv4 TCP socket bound to `local` and connected
/// to `remote`, from `/proc/net/tcp` (`tx_queue`: sent and not yet acknowledged, or not yet sent;
/// `rx_queue`: received and not yet read). `None` if no such socket is listed.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
        if port(fields.get(1)?)? != local.port() || port(fields.get(2)?)? != remote.port() {
            return None;
        }
        let (tx, rx) = fields.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// The process ids of `pid`'s child processes (from `/proc/PID/task/*/children`).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether a process `pid` exists (a zombie counts: it is not collected yet).
pub fn process_exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Whether this host can listen on the IPv6 loopback (containers often cannot).
pub fn ipv6_loopback_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A deterministic pseudo-random byte stream (xorshift64*), so a writer and a checker can
/// produce the same bytes independently without holding them all in memory.
pub struct Pseudo(u64);

impl Pseudo {
    /// A stream from a non-zero seed.
    pub fn new(seed: u64) -> Pseudo {
        Pseudo(seed | 1)
    }

    /// A number in `low..=high` from the stream.
    pub fn between(&mut self, low: usize, high: usize) -> usize {
        let mut word = [0; 8];
        self.fill(&mut word);
        low + (u64::from_le_bytes(word) % (high - low + 1) as u64) as usize
    }

    /// Fills `buffer` with the next bytes of the stream.
    pub fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The outcome of running the binary to completion.
#[derive(Debug)]
pub struct Run {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// The exit code; panics if it was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// Runs `oneloop ARGS...` with `stdin` as its input and waits (up to [`DEADLINE`]) for it to
/// exit; a run that outlives the deadline is killed and the test fails.
pub fn run(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oneloop");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A separate thread, so a child that does not read its input cannot block us.
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oneloop {args:?} still running after {DEADLINE:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A running `oneloop` (not `serve`) with piped standard streams, for talking to it
/// interactively; killed and reaped when dropped.
pub struct Interactive {
    child: Child,
    /// Its standard input; `None` once closed.
    pub stdin: Option<std::process::ChildStdin>,
    stdout: Receiver<Vec<u8>>,
    /// Everything read from its standard output so far.
    pub output: Vec<u8>,
}

impl Interactive {
    /// Starts `oneloop ARGS...`.
    pub fn start(args: &[&str]) -> Interactive {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn oneloop");
        let stdout = child.stdout.take().expect("piped stdout");
        let receiver = forward_output(stdout);
        Interactive {
            stdin: child.stdin.take(),
            child,
            stdout: receiver,
            output: Vec::new(),
        }
    }

    /// Writes `bytes` to its standard input.
    pub fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Reads its standard output until `output` ends with `expected`, within [`DEADLINE`].
    pub fn expect_output_ending(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        while !self.output.ends_with(expected) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(bytes) => self.output.extend_from_slice(&bytes),
                Err(_) => panic!(
                    "waited for {:?}; the output so far is {:?}",
                    Snippet(expected),
                    Snippet(&self.output)
                ),
            }
        }
    }

    /// Closes its standard input and waits (up to [`DEADLINE`]) for it to exit.
    pub fn finish(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {DEADLINE:?} after its input ended"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pipe to its end on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Asserts two byte strings are equal; on failure shows where they first differ instead of
/// printing megabytes.
pub fn assert_bytes_eq(got: &[u8], expected: &[u8], what: &str) {
    if got == expected {
        return;
    }
    let first = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    let around = first.saturating_sub(16);
    panic!(
        "{what}: got {} bytes, expected {}; first difference at offset {first}:\n  got      \
         {:?}\n  expected {:?}",
        got.len(),
        expected.len(),
        Snippet(&got[around..got.len().min(first + 48)]),
        Snippet(&expected[around..expected.len().min(first + 48)]),
    );
}

/// Shows long byte strings as their start, length and end, so a failure message stays readable.
pub struct Snippet<'a>(pub &'a [u8]);

impl std::fmt::Debug for Snippet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 200;
        let bytes = self.0;
        if bytes.len() <= 2 * SHOWN {
            write!(f, "\"{}\"", bytes.escape_ascii())
        } else {
            write!(
                f,
                "\"{}\" ... ({} bytes) ... \"{}\"",
                bytes[..SHOWN].escape_ascii(),
                bytes.len(),
                bytes[bytes.len() - SHOWN..].escape_ascii()
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The timestamp protocol's `[Www Mmm dd hh:mm:ss yyyy] ` prefix.

/// Length of `[` + ctime + `] `.
pub const STAMP_LEN: usize = 1 + 24 + 2;

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A `time.ctime()` moment, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctime {
    /// Seconds since 1970-01-01 00:00:00 *in the same (local) zone* — only differences matter.
    pub local_seconds: i64,
}

/// Parses Python's `time.ctime()` text strictly: `Www Mmm dd hh:mm:ss yyyy`, the day padded with
/// a space, and the weekday the one that date really falls on.
pub fn parse_ctime(text: &[u8]) -> Result<Ctime, String> {
    let text = std::str::from_utf8(text).map_err(|_| format!("not UTF-8: {text:?}"))?;
    let fail = |why: &str| format!("{text:?} is not ctime text: {why}");
    let b = text.as_bytes();
    if b.len() != 24 {
        return Err(fail("not 24 characters"));
    }
    if b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
        return Err(fail("separators"));
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(fail("time separators"));
    }
    let weekday = WEEKDAYS
        .iter()
        .position(|&w| w == &text[0..3])
        .ok_or_else(|| fail("weekday"))?;
    let month = MONTHS
        .iter()
        .position(|&m| m == &text[4..7])
        .ok_or_else(|| fail("month"))? as i64
        + 1;
    let day = match (b[8], b[9]) {
        (b' ', d @ b'1'..=b'9') => i64::from(d - b'0'),
        (t @ b'1'..=b'3', d @ b'0'..=b'9') => i64::from(t - b'0') * 10 + i64::from(d - b'0'),
        _ => return Err(fail("day (space-padded, no leading zero)")),
    };
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = &text[range];
        if digits.bytes().all(|c| c.is_ascii_digit()) {
            Ok(digits.parse().unwrap())
        } else {
            Err(fail("digits"))
        }
    };
    let (hour, minute, second, year) = (
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        number(20..24)?,
    );
    if hour > 23 || minute > 59 || second > 60 || day > days_in_month(year, month) {
        return Err(fail("field out of range"));
    }
    let days = days_from_civil(year, month, day);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    if (days + 3).rem_euclid(7) as usize != weekday {
        return Err(fail("weekday does not match the date"));
    }
    Ok(Ctime {
        local_seconds: days * 86_400 + hour * 3600 + minute * 60 + second,
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The current local time as `time.ctime()` text, from an independent source: Python if it is
/// installed, else `date`, run with `env` added (e.g. the `TZ` a server was given). `None` if
/// neither answers (`date` is in every base system, so a test may then fail).
pub fn local_ctime_now(env: &[(&str, &str)]) -> Option<Ctime> {
    let attempts: [(&str, &[&str]); 2] = [
        ("python3", &["-c", "import time; print(time.ctime())"]),
        ("date", &["+%a %b %e %H:%M:%S %Y"]),
    ];
    for (program, args) in attempts {
        let Ok(output) = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if !output.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        if let Ok(ctime) = parse_ctime(text.trim_end_matches('\n').as_bytes()) {
            return Some(ctime);
        }
    }
    None
}

/// One stamped piece of a timestamp reply: its time and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The stamp's time.
    pub time: Ctime,
    /// The bytes after `] `, up to the next stamp.
    pub payload: Vec<u8>,
}

/// Splits a timestamp reply into stamped pieces, checking every stamp strictly. A payload runs
/// to the next `[`, so callers must send payloads without `[`. A payload may contain a newline
/// only as its last byte (one message per stamp).
pub fn parse_stamped(reply: &[u8]) -> Result<Vec<Stamped>, String> {
    let mut pieces = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        if rest.len() < STAMP_LEN || rest[0] != b'[' || &rest[25..27] != b"] " {
            return Err(format!(
                "expected a `[ctime] ` stamp at {:?}",
                Snippet(rest)
            ));
        }
        let time = parse_ctime(&rest[1..25])?;
        rest = &rest[STAMP_LEN..];
        let end = rest.iter().position(|&b| b == b'[').unwrap_or(rest.len());
        let payload = &rest[..end];
        if let Some(newline) = payload.iter().position(|&b| b == b'\n') {
            if newline != payload.len() - 1 {
                return Err(format!(
                    "a stamped piece holds more than one line: {:?}",
                    Snippet(payload)
                ));
            }
        }
        pieces.push(Stamped {
            time,
            payload: payload.to_vec(),
        });
        rest = &rest[end..];
    }
    Ok(pieces)
}

/// Checks a (long) timestamp reply against the bytes that were sent, without building the
/// pieces: every stamp well formed (each distinct ctime text parsed strictly once), every piece
/// non-empty and holding at most one line, and the payloads joining into exactly `sent`. Payloads
/// must contain no `[`. Returns how many stamped pieces there were.
pub fn check_stamped_reply(reply: &[u8], sent: &[u8]) -> Result<usize, String> {
    let mut last_ctime: &[u8] = &[];
    let mut pieces = 0;
    let mut at = 0; // in `reply`
    let mut matched = 0; // of `sent`
    while at < reply.len() {
        let stamp = reply.get(at..at + STAMP_LEN).unwrap_or(&reply[at..]);
        if stamp.len() < STAMP_LEN || stamp[0] != b'[' || &stamp[25..27] != b"] " {
            return Err(format!(
                "expected a `[ctime] ` stamp at reply offset {at}: {:?}",
                Snippet(&reply[at..reply.len().min(at + 64)])
            ));
        }
        let ctime = &stamp[1..25];
        if ctime != last_ctime {
            parse_ctime(ctime)?;
            last_ctime = ctime;
        }
        at += STAMP_LEN;
        let start = at;
        while at < reply.len() && reply[at] != b'[' {
            if matched >= sent.len() || reply[at] != sent[matched] {
                return Err(format!(
                    "payload byte {matched} (reply offset {at}) is {:?}, sent {:?}",
                    reply[at] as char,
                    sent.get(matched).map(|&b| b as char)
                ));
            }
            let newline = reply[at] == b'\n';
            at += 1;
            matched += 1;
            if newline && at < reply.len() && reply[at] != b'[' {
                return Err(format!("a stamped piece holds more than one line at {at}"));
            }
        }
        if at == start {
            return Err(format!("an empty stamped piece at reply offset {start}"));
        }
        pieces += 1;
    }
    if matched != sent.len() {
        return Err(format!(
            "the payloads hold {matched} bytes of the {} sent",
            sent.len()
        ));
    }
    Ok(pieces)
}

/// Payload bytes in a (possibly partial) timestamp reply whose payloads contain no `[`: the
/// length minus one stamp per `[`. Smaller than the true count while a stamp is cut short, so it
/// reaches the expected total only once the whole reply is in.
pub fn stamped_payload_len(reply: &[u8]) -> usize {
    let stamps = reply.iter().filter(|&&b| b == b'[').count();
    reply.len().saturating_sub(stamps * STAMP_LEN)
}

// ---------------------------------------------------------------------------------------------
// Outside programs: found, or the test skips saying so (or fails, where CI requires them)

/// Every outside program a test runs, with the Debian package that installs it. The README's
/// table and `.ci/run`'s list name the same ones (`tests/docs.rs` checks that all three agree).
/// Programs in every Debian base system (`sh`, `kill`, `mount`, `date`, coreutils) are not
/// listed: a test may take them for granted.
pub const TOOLS: &[(&str, &str)] = &[
    ("nc", "netcat-openbsd"),
    ("python3", "python3"),
    ("ps", "procps"),
    ("socat", "socat"),
    ("openssl", "openssl"),
    ("strace", "strace"),
    ("haproxy", "haproxy"),
    ("redis-server", "redis-server"),
    ("systemd-socket-activate", "systemd"),
    ("systemd-analyze", "systemd"),
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
];

/// The variable that turns a missing program from a skip into a failure: `.ci/run` sets it, so
/// that CI proves every test that runs a real outside program.
pub const REQUIRE_TOOLS: &str = "ONELOOP_TEST_REQUIRE_TOOLS";

/// The Debian package that installs `program` (from [`TOOLS`]); panics for a program not listed
/// there, so that a test cannot need a program the README's table does not name.
pub fn package_of(program: &str) -> &'static str {
    TOOLS
        .iter()
        .find(|(name, _)| *name == program)
        .map(|(_, package)| *package)
        .unwrap_or_else(|| {
            panic!("{program} is not in tests/util's TOOLS: add it (and its package)")
        })
}

/// Where `program` is: the first executable of that name in `PATH`, or in the `sbin` directory
/// beside one of `PATH`'s `bin` directories (Debian puts haproxy in `/usr/sbin`, which a
/// non-root `PATH` lacks). Only `PATH` decides, so hiding a program from `PATH` hides it here.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let sbins = dirs
        .iter()
        .filter(|dir| dir.file_name().is_some_and(|name| name == "bin"))
        .filter_map(|dir| Some(dir.parent()?.join("sbin")));
    let candidates: Vec<PathBuf> = dirs.iter().cloned().chain(sbins).collect();
    candidates
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|file| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why the program found at `file` will not do, if it will not: `nc` must be OpenBSD's, the one
/// with `-N` (shut down the sending side at end of input), which the docs' examples use.
fn unusable(program: &str, file: &std::path::Path) -> Option<String> {
    if program != "nc" {
        return None;
    }
    let help = Command::new(file)
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    let has_n = help.lines().any(|line| line.trim_start().starts_with("-N"));
    (!has_n).then(|| format!("{} has no -N: it is not OpenBSD's nc", file.display()))
}

/// Writes one line on the test process's own standard error, past the test harness's capture,
/// so that a skip shows in a plain `cargo test` run as well as with `--nocapture`.
pub fn say(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Whether every program in `programs` is here and usable. For each one that is not, prints one
/// line, `skipped: needs nc (Debian: apt-get install netcat-openbsd)`, and the caller returns
/// (the test passes, having said it checked nothing). With `ONELOOP_TEST_REQUIRE_TOOLS=1` it
/// panics instead, naming each missing program and its package first.
///
/// ```ignore
/// if !util::require_tools(&["nc", "python3"]) {
///     return;
/// }
/// ```
#[track_caller]
pub fn require_tools(programs: &[&str]) -> bool {
    let mut missing = Vec::new();
    for &program in programs {
        let package = package_of(program);
        let why = match find_program(program) {
            None => None,
            Some(file) => match unusable(program, &file) {
                None => continue,
                Some(why) => Some(why),
            },
        };
        let mut line = format!("needs {program} (Debian: apt-get install {package})");
        if let Some(why) = why {
            line.push_str(&format!(": {why}"));
        }
        missing.push(line);
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os(REQUIRE_TOOLS).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "{}; {REQUIRE_TOOLS} is set, so a missing program fails the test",
            missing.join("; ")
        );
    }
    for line in missing {
        say(&format!("skipped: {line}"));
    }
    false
}

/// [`require_tools`] for one program, giving its path (for one outside `PATH`, such as
/// `/usr/sbin/haproxy`); `None` after the skip line.
#[track_caller]
pub fn require_tool(program: &str) -> Option<PathBuf> {
    if require_tools(&[program]) {
        find_program(program)
    } else {
        None
    }
}

/// Sends signal `name` (`TERM`, `INT`, ...) to process `pid` with the real `kill`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

// ---------------------------------------------------------------------------------------------
// A real Redis, for the chat bus

/// Gives each Redis's directory a unique name within this test process.
static NEXT_REDIS: AtomicUsize = AtomicUsize::new(0);

/// A real `redis-server` on a loopback port of its own, with persistence off, for the chat bus's
/// tests: started by the test, signalled only by the PID it was started with (killed, stopped,
/// continued, restarted on the same port), and killed and reaped when dropped. Its directory
/// (its working directory and log) is removed then too.
pub struct RedisServer {
    binary: PathBuf,
    child: Child,
    port: u16,
    dir: PathBuf,
    /// Whether it is stopped (SIGSTOP): a stopped process must be continued before it can die
    /// of anything but SIGKILL, and [`Drop`] continues it anyway so nothing is left frozen.
    paused: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`. `None`
    /// (after the skip line of [`require_tool`]) where it is not installed.
    #[track_caller]
    pub fn start() -> Option<RedisServer> {
        let binary = require_tool("redis-server")?;
        // A port free a moment ago may be taken before Redis binds it: then another one.
        for _ in 0..5 {
            let port = free_loopback_port();
            if let Some(redis) = RedisServer::launch(binary.clone(), port) {
                return Some(redis);
            }
        }
        panic!("redis-server could not bind any of 5 free loopback ports");
    }

    /// Starts `redis-server` on `port` (one a test chose, e.g. one a server was already told
    /// to reach), retrying a few times if the port is briefly taken; `None` (after the skip
    /// line) where Redis is not installed.
    #[track_caller]
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let binary = require_tool("redis-server")?;
        Some(RedisServer::launch_retrying(binary, port))
    }

    /// `redis://127.0.0.1:PORT`: the `--chat-bus` URL of this Redis (database 0).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Sends one command (`&["HGETALL", "key"]`) on a connection of its own and returns the raw
    /// RESP reply (`+OK\r\n`, `*2\r\n$1\r\na\r\n...`), waiting up to [`DEADLINE`].
    /// Panics on an error or the deadline. A command that blocks (`DEBUG SLEEP 1`) blocks the
    /// caller as long: run it on a thread to act meanwhile.
    pub fn command(&self, args: &[&str]) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = connect(addr);
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        send(&mut stream, request.as_bytes());
        let mut reply = Vec::new();
        read_until_within(&mut stream, &mut reply, |got| resp_end(got, 0).is_some());
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Kills it with SIGKILL (no chance to say goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (after [`kill`](RedisServer::kill)), empty, and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let fresh = RedisServer::launch_retrying(self.binary.clone(), self.port);
        // Dropping the old one kills nothing (it is dead and reaped) and removes its directory.
        drop(std::mem::replace(self, fresh));
    }

    /// Stops it with SIGSTOP: its sockets stay open and accept nothing more (a network
    /// partition, as far as its clients can tell).
    pub fn pause(&mut self) {
        signal(self.pid(), "STOP");
        self.paused = true;
    }

    /// Continues it after [`pause`](RedisServer::pause) (SIGCONT).
    pub fn resume(&mut self) {
        if self.paused {
            signal(self.pid(), "CONT");
            self.paused = false;
        }
    }

    /// [`RedisServer::launch`] on one port, a few times: a port just given up (by a killed
    /// Redis, or by the test's own probe) can be briefly taken by someone else.
    fn launch_retrying(binary: PathBuf, port: u16) -> RedisServer {
        for _ in 0..10 {
            if let Some(redis) = RedisServer::launch(binary.clone(), port) {
                return redis;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server could not bind 127.0.0.1:{port} in 10 attempts");
    }

    /// Runs `redis-server` on `port` and waits (up to [`DEADLINE`]) for `+PONG`; `None` if it
    /// exited first (the port was taken).
    fn launch(binary: PathBuf, port: u16) -> Option<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "oneloop-redis-{}-{}",
            std::process::id(),
            NEXT_REDIS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create the redis directory");
        let log = fs::File::create(dir.join("redis.log")).expect("create the redis log");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Nothing written to disk: each start is empty, and no test leaves files behind.
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no"])
            // `DEBUG SLEEP` (the slow-Redis test) is off by default since Redis 7.
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut redis = RedisServer {
            binary,
            child,
            port,
            dir,
            paused: false,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if redis.child.try_wait().expect("try_wait redis").is_some() {
                return None; // Dropped: its directory goes.
            }
            if redis.pings() {
                return Some(redis);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer PING within {DEADLINE:?}; log:\n{}",
                redis.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a `PING` on a fresh connection gets `+PONG` (within a second).
    fn pings(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits (up to [`DEADLINE`]) until the chat service at `addr` greets a new member, which then
/// leaves. An instance on a chat bus may be listening before it has reached Redis (its loop
/// never waits for Redis), and the contract lets it refuse chat (`error chat unavailable`)
/// until it has; a test that hands the instance to something that must not meet that (the load
/// generator, HAProxy) waits here first.
/// `header` is sent first on each try: a PROXY header for a `--proxy-protocol` instance, or
/// nothing.
pub fn wait_until_chat_greets(addr: SocketAddr, header: &[u8]) {
    let start = Instant::now();
    loop {
        let mut member = LineReader::new(connect(addr));
        member.send(header);
        let first = member.line();
        if first.starts_with("* welcome ") {
            return;
        }
        assert_eq!(
            first, "error chat unavailable",
            "the first line from {addr}"
        );
        assert!(
            start.elapsed() < DEADLINE,
            "chat at {addr} still unavailable after {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a port-0 listener on 127.0.0.1")
        .port()
}

/// Where the RESP value starting at `at` in `bytes` ends, if it is complete: enough of the
/// protocol to know when a reply is whole (simple strings, errors, integers, bulk strings and
/// arrays of them), so [`RedisServer::command`] neither stops early nor waits for more.
fn resp_end(bytes: &[u8], at: usize) -> Option<usize> {
    let line_end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let after = line_end + 2;
    let number = || -> Option<i64> {
        std::str::from_utf8(&bytes[at + 1..line_end])
            .ok()?
            .parse()
            .ok()
    };
    match bytes[at] {
        b'+' | b'-' | b':' => Some(after),
        b'$' => match number()? {
            -1 => Some(after),
            length => {
                let end = after + length as usize + 2;
                (bytes.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let mut end = after;
            for _ in 0..number()?.max(0) {
                end = resp_end(bytes, end)?;
            }
            Some(end)
        }
        other => panic!("not a RESP reply: {:?} at {at}", other as char),
    }
}
