//! The chat bus (`serve --chat-bus redis://HOST:PORT[/DB]`, contract v3, "Chat bus") from the
//! outside: real `oneloop serve` instances sharing a room through a real `redis-server` that each
//! test starts on a free loopback port of its own (persistence off) and kills when it ends.
//!
//! What is proven, from the wire, the `listening` lines and exit codes only:
//!
//! * only the reactor serves the bus: the other models refuse it at start (exit 2, one line);
//! * the room is named by the service: two instances whose chat services share a port (on
//!   127.0.0.1 and 127.0.0.2) or a socket file's name (in two directories) share one room, and a
//!   service with another port or file name is another room; so is another Redis database;
//! * the chat protocol holds across instances: greeting counts, who hears a line (never its
//!   sender), join, leave and rename notices, `/who`, `/nick` refused for a name held elsewhere,
//!   a `-2` suffix for a default name held elsewhere;
//! * one order: concurrent senders on both instances, and every member sees the same sequence,
//!   each sender's lines in the order sent;
//! * faults: an instance killed with SIGKILL (its members announced as left, their names free
//!   again), Redis unreachable at start, Redis killed and restarted, Redis stopped (SIGSTOP) for
//!   five seconds, Redis slow (`DEBUG SLEEP`) — with chat refused or dropped as the contract says,
//!   the echo service of the same process answering throughout, and chat back once Redis is;
//! * `oneloop load A B --protocol chat` over two instances on one bus is clean;
//! * regressions a review found: an instance stopped past its heartbeat's TTL drops its members
//!   when continued (its names were taken over meanwhile); a command Redis refuses (an ACL,
//!   `maxmemory`) loses the bus rather than leaving members waiting; SIGTERM while a newcomer
//!   waits for its name exits promptly and leaves no name behind; two chat services of one
//!   process with one room name are refused; a bus lost during a rename and a join never
//!   announces as left a member nobody saw arrive; a bus lost while connecting (through a relay
//!   that delays the subscription) answers the newcomer whose claim was already made, and frees
//!   that claim.
//!
//! "Nothing else arrived" is shown with a barrier, as in `tests/chat.rs`: after the action, a
//! member sends a line, and whatever a member reads before that line is all it was sent. Across
//! instances that holds because one Redis channel has one order. Waits are bounded (read
//! timeouts); no sleep is an assertion, and no duration is asserted as a performance figure
//! (the bounds are the contract's, made generous).
//!
//! Without `redis-server` (Debian: `apt-get install redis-server`) each test that needs it prints
//! one `skipped:` line and passes; `.ci/run` installs it and sets `ONELOOP_TEST_REQUIRE_TOOLS=1`,
//! under which they fail instead.

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{RedisServer, Server, DEADLINE};

/// How long a member of a dead instance may stay listed: the contract's 15 s, and room for a
/// loaded machine.
const DEAD_INSTANCE_BOUND: Duration = Duration::from_secs(20);

/// How long chat may take to come back once Redis is: the contract retries at most 5 s apart;
/// the rest is room for a reply timeout in flight and a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// How often a test knocks on the chat service while waiting for it to come back.
const RETRY_EVERY: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// A member: a TCP or Unix connection read line by line, every wait bounded.

/// A chat connection over either stream transport.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, timeout: Duration) {
        match self {
            Conn::Tcp(stream) => stream.set_read_timeout(Some(timeout)),
            Conn::Unix(stream) => stream.set_read_timeout(Some(timeout)),
        }
        .expect("set the read timeout");
    }
}

impl Read for Conn {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(stream) => stream.read(buffer),
            Conn::Unix(stream) => stream.read(buffer),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(stream) => stream.write(bytes),
            Conn::Unix(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One chat member: its connection, bytes read but not yet taken as lines, and its name.
struct Member {
    conn: Conn,
    buffer: Vec<u8>,
    name: String,
}

impl Member {
    /// A TCP connection to `addr` (read and write timeouts set), not yet greeted.
    fn tcp(addr: SocketAddr) -> Member {
        Member::over(Conn::Tcp(util::connect(addr)))
    }

    fn over(conn: Conn) -> Member {
        Member {
            conn,
            buffer: Vec::new(),
            name: String::from("(not greeted)"),
        }
    }

    /// Joins the room at `addr`; everyone in `others` (on any instance) must be told
    /// `* NAME joined`. Returns the member and the count its greeting gave.
    fn join(addr: SocketAddr, others: &mut [&mut Member]) -> (Member, usize) {
        Member::join_by(|| Member::tcp(addr), others)
    }

    /// Joins the room of the Unix socket at `path`, as [`Member::join`].
    fn join_unix(path: &Path, others: &mut [&mut Member]) -> (Member, usize) {
        let open = || {
            let stream = UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
            stream.set_write_timeout(Some(DEADLINE)).unwrap();
            Member::over(Conn::Unix(stream))
        };
        Member::join_by(open, others)
    }

    /// Joins through a connection `open` makes (and has sent any PROXY header on), as
    /// [`Member::join`]. An instance may reach Redis only after it is listening (its loop never
    /// waits for Redis); whether it holds a newcomer meanwhile or refuses it as while the bus is
    /// lost, the contract leaves open. So a join refused with `error chat unavailable` is tried
    /// again on a new connection, for at most [`DEADLINE`]. (A refused connection never joined,
    /// so nobody hears of it.)
    fn join_by(open: impl Fn() -> Member, others: &mut [&mut Member]) -> (Member, usize) {
        let start = Instant::now();
        loop {
            let mut member = open();
            let first = member.line();
            if first != "error chat unavailable" {
                return member.greeted_by(&first, others);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "chat still unavailable {DEADLINE:?} after the first try (Redis is up)"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads the greeting, takes the name from it, and checks that `others` see the join.
    fn greeted(mut self, others: &mut [&mut Member]) -> (Member, usize) {
        let greeting = self.line();
        self.greeted_by(&greeting, others)
    }

    /// Takes the name from `greeting` (already read) and checks that `others` see the join.
    fn greeted_by(mut self, greeting: &str, others: &mut [&mut Member]) -> (Member, usize) {
        let (name, count) = parse_greeting(greeting);
        self.name = name;
        for other in others.iter_mut() {
            other.expect(&format!("* {} joined", self.name));
        }
        (self, count)
    }

    /// Sends `text` and a newline.
    fn say(&mut self, text: &str) {
        self.send_raw(format!("{text}\n").as_bytes());
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.conn
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write {} bytes: {e}", self.name, bytes.len()));
    }

    /// The next line (without its `\n`) within `within`; `Ok(None)` when the server closed the
    /// connection (a reset counts: a dropped member may get one), `Err` on the deadline or
    /// another error.
    fn next_line(&mut self, within: Duration) -> Result<Option<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..newline]).into_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{}: no whole line within {within:?}; pending {:?}",
                    self.name,
                    String::from_utf8_lossy(&self.buffer)
                ));
            }
            self.conn.set_read_timeout(left);
            let mut chunk = [0; 16 * 1024];
            match self.conn.read(&mut chunk) {
                Ok(0) if self.buffer.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(format!(
                        "{}: end of stream inside a line: {:?}",
                        self.name,
                        String::from_utf8_lossy(&self.buffer)
                    ))
                }
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(format!("{}: read: {e}", self.name)),
            }
        }
    }

    /// The next line within [`DEADLINE`]; panics on end of stream, an error or the deadline.
    fn line(&mut self) -> String {
        match self.next_line(DEADLINE) {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{}: end of stream while waiting for a line", self.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// The next line must be `expected`.
    fn expect(&mut self, expected: &str) {
        let got = self.line();
        assert_eq!(got, expected, "{} received an unexpected line", self.name);
    }

    /// Reads up to the line `stop` and returns the lines before it.
    fn lines_until(&mut self, stop: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if line == stop {
                return before;
            }
            before.push(line);
        }
    }

    /// Nothing arrived before the line `stop` (which must come).
    fn expect_nothing_before(&mut self, stop: &str, what: &str) {
        let before = self.lines_until(stop);
        assert!(
            before.is_empty(),
            "{}: {what}, but received {before:?} before {stop:?}",
            self.name
        );
    }

    /// Every line until the server closes the connection, within `within`; `Err` (with what had
    /// arrived) if it is still open then.
    fn lines_to_end(&mut self, within: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left.max(Duration::from_millis(1))) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => return Ok(lines),
                Err(e) => return Err(format!("{e}; lines before: {lines:?}")),
            }
        }
    }

    /// The bus is lost: the member is told `* chat bus lost` (its last line) and the connection
    /// ends, within `within`.
    fn expect_bus_lost(&mut self, within: Duration) {
        match self.lines_to_end(within) {
            Ok(lines) => assert_eq!(
                lines.last().map(String::as_str),
                Some("* chat bus lost"),
                "{}: the lines before the close were {lines:?}",
                self.name
            ),
            Err(e) => panic!("expected `* chat bus lost` and the close: {e}"),
        }
    }
}

/// `* welcome NAME; N members here; /nick NAME, /who, quit` → (NAME, N).
fn parse_greeting(line: &str) -> (String, usize) {
    fn bad<T>(line: &str) -> T {
        panic!("not a greeting: {line:?}")
    }
    let rest = line.strip_prefix("* welcome ").unwrap_or_else(|| bad(line));
    let (name, rest) = rest.split_once("; ").unwrap_or_else(|| bad(line));
    let rest = rest
        .strip_suffix(" here; /nick NAME, /who, quit")
        .unwrap_or_else(|| bad(line));
    let (count, noun) = rest.split_once(' ').unwrap_or_else(|| bad(line));
    let count: usize = count.parse().unwrap_or_else(|_| bad(line));
    let expected_noun = if count == 1 { "member" } else { "members" };
    assert_eq!(noun, expected_noun, "in the greeting {line:?}");
    (name.to_string(), count)
}

/// Renames `member` to `new`; everyone in `all` (the renamer included) sees the notice.
fn rename(member: usize, new: &str, all: &mut [&mut Member]) {
    let old = all[member].name.clone();
    all[member].say(&format!("/nick {new}"));
    let notice = format!("* {old} is now {new}");
    for other in all.iter_mut() {
        other.expect(&notice);
    }
    all[member].name = new.to_string();
}

/// The `/who` reply listing `names`, sorted bytewise as the room sorts them.
fn who_reply(names: &[&str]) -> String {
    let mut names = names.to_vec();
    names.sort_unstable();
    format!("* members: {}", names.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Instances and services.

/// `oneloop serve --chat-bus BUS SERVICES... EXTRA...`, started and listening.
fn instance(bus: &str, services: &[&str], extra: &[&str]) -> Server {
    let mut args = vec!["--chat-bus", bus];
    args.extend_from_slice(services);
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Two instances on `bus` whose chat services share one port: the first on 127.0.0.1 (port 0),
/// the second on 127.0.0.2 at the port the first was given. Each gets `extra` (per instance).
fn pair(bus: [&str; 2], extra: &[&str]) -> (Server, Server) {
    let a = instance(bus[0], &["chat@127.0.0.1:0"], extra);
    let port = a.addr("chat").port();
    let b = instance(bus[1], &[&format!("chat@127.0.0.2:{port}")], extra);
    (a, b)
}

/// A chat connection is refused while the bus is down: `error chat unavailable`, then a clean
/// close.
fn expect_unavailable(addr: SocketAddr) {
    let mut stream = util::connect(addr);
    let (got, end) = util::try_read_to_end_within(&mut stream);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "error chat unavailable\n",
        "a chat connection while the bus is down"
    );
    end.unwrap_or_else(|e| panic!("after `error chat unavailable`, expected a clean close: {e}"));
}

/// One echo round trip on a fresh connection.
fn expect_echo(addr: SocketAddr) {
    let mut stream = util::connect(addr);
    util::send(&mut stream, b"still here\n");
    let got = util::read_exact_within(&mut stream, b"still here\n".len());
    assert_eq!(got, b"still here\n", "the echo service's reply");
}

/// Knocks on the chat service at `addr` every [`RETRY_EVERY`] until a connection is greeted
/// instead of refused, for at most [`RECOVERY_BOUND`]. Then checks that the room really works:
/// the first member alone in it (the members dropped with the bus are gone, on every
/// instance), a second one seen joining and heard. Returns the two members and how long chat
/// took to come back.
fn expect_chat_back(addr: SocketAddr, server: &Server) -> (Member, Member, Duration) {
    let start = Instant::now();
    let mut first = loop {
        let mut member = Member::tcp(addr);
        match member.next_line(DEADLINE) {
            Ok(Some(line)) if line.starts_with("* welcome ") => {
                let (name, count) = parse_greeting(&line);
                member.name = name;
                assert_eq!(
                    count, 1,
                    "the first member after the bus came back should be alone: {line:?}"
                );
                break member;
            }
            Ok(Some(line)) if line == "error chat unavailable" => {}
            other => panic!("a chat connection while the bus comes back got {other:?}"),
        }
        assert!(
            start.elapsed() < RECOVERY_BOUND,
            "chat still unavailable {RECOVERY_BOUND:?} after Redis came back; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(RETRY_EVERY);
    };
    let elapsed = start.elapsed();
    let (mut second, count) = Member::tcp(addr).greeted(&mut [&mut first]);
    assert_eq!(count, 2);
    second.say("back again");
    first.expect(&format!("{}: back again", second.name));
    (first, second, elapsed)
}

/// Gives each test's socket directory a unique name within this test process.
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory for a test's socket files (removed by the caller's [`TempDir`]).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "oneloop-bus-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the socket directory");
        TempDir(dir)
    }

    /// `DIR/SUB/FILE`, with `DIR/SUB` created.
    fn file(&self, sub: &str, file: &str) -> PathBuf {
        let dir = self.0.join(sub);
        std::fs::create_dir_all(&dir).expect("create a socket subdirectory");
        dir.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// 0. The harness's Redis does what the fault tests make it do.

/// The Redis the tests start answers commands, dies on `kill`, comes back empty on the same
/// port on `restart`, and answers nothing while paused (and everything once resumed): so that a
/// fault test failing is the server's doing, not the harness's.
#[test]
fn the_test_redis_kills_restarts_and_pauses() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    assert_eq!(redis.command(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(redis.command(&["KEYS", "*"]), "*1\r\n$1\r\nk\r\n");
    let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
    redis.kill();
    assert!(
        TcpStream::connect(addr).is_err(),
        "a killed Redis still accepts"
    );
    redis.restart();
    assert_eq!(redis.port(), addr.port());
    assert_eq!(
        redis.command(&["GET", "k"]),
        "$-1\r\n",
        "a restarted Redis is empty"
    );

    redis.pause();
    let mut stream = util::connect(addr);
    util::send(&mut stream, b"PING\r\n");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut reply = [0; 7];
    assert!(stream.read(&mut reply).is_err(), "a paused Redis answered");
    redis.resume();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .read_exact(&mut reply)
        .expect("the reply once resumed");
    assert_eq!(&reply, b"+PONG\r\n");
}

// ---------------------------------------------------------------------------------------------
// 1. The models: only the reactor serves the bus.

/// Under a blocking model (run by `per_model!` below) `--chat-bus` with a chat service is
/// refused at start: exit 2 and one line. No Redis is needed: nothing may be tried first.
fn a_blocking_model_refuses_the_chat_bus() {
    let args = ["--chat-bus", "redis://127.0.0.1:1", "chat@127.0.0.1:0"];
    let failure = match Server::try_start(&args) {
        Ok(_) => panic!(
            "--model {} served chat with --chat-bus; the contract's reactor only",
            util::model().unwrap_or("(default)")
        ),
        Err(failure) => failure,
    };
    assert_eq!(
        failure.status.code(),
        Some(2),
        "exit status; stderr:\n{}",
        failure.stderr
    );
    let lines: Vec<&str> = failure.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", failure.stderr);
    let model = util::model().expect("run under per_model!");
    assert!(
        lines[0].contains(model),
        "the line says which model refuses: {:?}",
        lines[0]
    );
}

per_model! {
    refused: [threaded, pool, serial, forking]: [a_blocking_model_refuses_the_chat_bus]
}

// ---------------------------------------------------------------------------------------------
// 2. One room across instances: the chat protocol, unchanged.

#[test]
fn two_instances_whose_chat_ports_match_share_one_room() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut a, mut b) = pair([&url, &url], &[]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));

    // The greeting counts every member of every instance; joins are announced on both.
    let (mut a1, count) = Member::join(addr_a, &mut []);
    assert_eq!(count, 1);
    let (mut b1, count) = Member::join(addr_b, &mut [&mut a1]);
    assert_eq!(count, 2);
    let (mut a2, count) = Member::join(addr_a, &mut [&mut a1, &mut b1]);
    assert_eq!(count, 3);
    let (mut b2, count) = Member::join(addr_b, &mut [&mut a1, &mut b1, &mut a2]);
    assert_eq!(count, 4);

    // A line from either instance reaches every other member on both, never its sender.
    a1.say("hello from a");
    let from_a = format!("{}: hello from a", a1.name);
    for member in [&mut a2, &mut b1, &mut b2] {
        member.expect(&from_a);
    }
    b1.say("hello from b");
    let from_b = format!("{}: hello from b", b1.name);
    for member in [&mut a1, &mut a2, &mut b2] {
        member.expect(&from_b);
    }
    b2.say("barrier");
    let barrier = format!("{}: barrier", b2.name);
    a1.expect_nothing_before(&barrier, "its own line must not come back to it");
    b1.expect_nothing_before(&barrier, "its own line must not come back to it");
    a2.expect(&barrier);

    // /who lists every member of every instance, to the asker only.
    b2.say("/who");
    b2.expect(&who_reply(&[&a1.name, &a2.name, &b1.name, &b2.name]));
    a2.say("/who");
    a2.expect(&who_reply(&[&a1.name, &a2.name, &b1.name, &b2.name]));

    // A rename on B is announced on both, the renamer included.
    rename(2, "bee", &mut [&mut a1, &mut a2, &mut b1, &mut b2]);
    b1.say("renamed");
    for member in [&mut a1, &mut a2, &mut b2] {
        member.expect("bee: renamed");
    }

    // A name held on B is taken for A, and the refusal is A's alone.
    a1.say("/nick bee");
    a1.expect("error name taken");
    rename(0, "alice", &mut [&mut a1, &mut a2, &mut b1, &mut b2]);
    b2.say("/nick alice");
    b2.expect("error name taken");
    a2.say("barrier 2");
    let barrier = format!("{}: barrier 2", a2.name);
    for member in [&mut a1, &mut b1, &mut b2] {
        member.expect_nothing_before(&barrier, "a refused /nick is answered to its sender only");
    }

    // A member leaving A is announced on B too, and /who shrinks everywhere.
    let gone = a2.name.clone();
    drop(a2);
    let left = format!("* {gone} left");
    for member in [&mut a1, &mut b1, &mut b2] {
        member.expect(&left);
    }
    b2.say("/who");
    b2.expect(&who_reply(&["alice", "bee", &b2.name]));
    b1.say("quit");
    for member in [&mut a1, &mut b2] {
        member.expect("* bee left");
    }

    // A chat service on another port, on the same bus, is another room.
    let other = instance(&url, &["chat@127.0.0.1:0"], &[]);
    let (_stranger, count) = Member::join(other.addr("chat"), &mut []);
    assert_eq!(
        count,
        1,
        "a service on another port shares the room of port {}",
        addr_a.port()
    );
    a.assert_running();
    b.assert_running();
}

#[test]
fn two_instances_whose_socket_files_share_a_name_share_one_room() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let dir = TempDir::new();
    let spec = |sub: &str, file: &str| format!("chat@unix:{}", dir.file(sub, file).display());
    let mut a = instance(&url, &[&spec("one", "room.sock")], &[]);
    let mut b = instance(&url, &[&spec("two", "room.sock")], &[]);

    let (mut on_a, count) = Member::join_unix(&a.path("chat"), &mut []);
    assert_eq!(count, 1);
    let (mut on_b, count) = Member::join_unix(&b.path("chat"), &mut [&mut on_a]);
    assert_eq!(count, 2, "room.sock in another directory is the same room");
    assert!(
        on_b.name.starts_with("unix-") && on_b.name != on_a.name,
        "two members named {:?} and {:?}: names are unique across the room",
        on_a.name,
        on_b.name
    );
    on_b.say("over unix, across instances");
    on_a.expect(&format!("{}: over unix, across instances", on_b.name));
    on_a.say("/who");
    on_a.expect(&who_reply(&[&on_a.name, &on_b.name]));

    // Another file name on the same bus is another room.
    let c = instance(&url, &[&spec("three", "other.sock")], &[]);
    let (_stranger, count) = Member::join_unix(&c.path("chat"), &mut []);
    assert_eq!(count, 1, "other.sock shares the room of room.sock");
    a.assert_running();
    b.assert_running();
}

/// The PROXY v1 header both test clients send: the same client address, so the same default
/// name, on both instances.
fn same_client_header(port: u16) -> Vec<u8> {
    format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {port}\r\n").into_bytes()
}

#[test]
fn a_default_name_held_on_the_other_instance_gets_a_suffix() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &["--proxy-protocol"]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));
    let header = same_client_header(addr_a.port());

    let relayed = |addr: SocketAddr| {
        let header = &header;
        move || {
            let mut member = Member::tcp(addr);
            member.send_raw(header);
            member
        }
    };
    let (mut first, count) = Member::join_by(relayed(addr_a), &mut []);
    assert_eq!((first.name.as_str(), count), ("10.1.2.3:5555", 1));
    let (mut second, count) = Member::join_by(relayed(addr_b), &mut [&mut first]);
    assert_eq!((second.name.as_str(), count), ("10.1.2.3:5555-2", 2));
    let (mut third, count) = Member::join_by(relayed(addr_a), &mut [&mut first, &mut second]);
    assert_eq!((third.name.as_str(), count), ("10.1.2.3:5555-3", 3));

    second.say("from the second");
    for member in [&mut first, &mut third] {
        member.expect("10.1.2.3:5555-2: from the second");
    }
    third.say("/who");
    third.expect("* members: 10.1.2.3:5555, 10.1.2.3:5555-2, 10.1.2.3:5555-3");
}

/// A client's first line sent in the same write as its PROXY header (as a relay may forward
/// them) is not lost while the newcomer takes its place in the room: it reaches the members of
/// both instances, after the newcomer's join.
#[test]
fn a_line_sent_with_the_proxy_header_reaches_both_instances() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &["--proxy-protocol"]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));
    let header = |client: &str, port: u16| {
        format!("PROXY TCP4 {client} 127.0.0.1 4000 {port}\r\n").into_bytes()
    };
    let relayed = |addr: SocketAddr, bytes: Vec<u8>| {
        move || {
            let mut member = Member::tcp(addr);
            member.send_raw(&bytes);
            member
        }
    };
    let (mut on_a, _) =
        Member::join_by(relayed(addr_a, header("10.0.0.1", addr_a.port())), &mut []);
    let (mut on_b, _) = Member::join_by(
        relayed(addr_b, header("10.0.0.2", addr_b.port())),
        &mut [&mut on_a],
    );

    let mut bytes = header("10.0.0.3", addr_a.port());
    bytes.extend_from_slice(b"first words\n");
    let (mut eager, _) = Member::join_by(relayed(addr_a, bytes), &mut [&mut on_a, &mut on_b]);
    assert_eq!(eager.name, "10.0.0.3:4000");
    for member in [&mut on_a, &mut on_b] {
        member.expect("10.0.0.3:4000: first words");
    }
    eager.say("and more");
    for member in [&mut on_a, &mut on_b] {
        member.expect("10.0.0.3:4000: and more");
    }

    // And as the very first connection of a just-started instance, which may still be
    // connecting to Redis: a `/who` in the header's write is answered once it is in the room.
    let c = instance(&url, &["chat@127.0.0.1:0"], &["--proxy-protocol"]);
    let addr_c = c.addr("chat");
    let mut bytes = header("10.0.0.4", addr_c.port());
    bytes.extend_from_slice(b"/who\n");
    let (mut first, _) = Member::join_by(relayed(addr_c, bytes), &mut []);
    first.expect("* members: 10.0.0.4:4000");
}

// ---------------------------------------------------------------------------------------------
// 3. One order.

#[test]
fn every_member_on_both_instances_sees_one_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    const LINES: usize = 150;
    // Two senders and a listener on each instance. Each joins after the previous one was seen
    // by all, so every member is in the room before the first line.
    let addrs = [a.addr("chat"), a.addr("chat"), a.addr("chat")]
        .into_iter()
        .chain([b.addr("chat"), b.addr("chat"), b.addr("chat")]);
    let mut members: Vec<Member> = Vec::new();
    for addr in addrs {
        let mut others: Vec<&mut Member> = members.iter_mut().collect();
        let (member, _) = Member::join(addr, &mut others);
        members.push(member);
    }
    let is_sender = |index: usize| index % 3 != 2;
    let senders = (0..members.len()).filter(|&i| is_sender(i)).count();

    let readers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(index, mut member)| {
            thread::spawn(move || {
                let expected = if is_sender(index) {
                    // A writer of its own, so that reading and writing overlap as with any
                    // client, and no buffer can deadlock the two.
                    let Conn::Tcp(stream) = &member.conn else {
                        unreachable!("TCP members")
                    };
                    let mut writer = stream.try_clone().expect("clone the stream");
                    thread::spawn(move || {
                        for n in 0..LINES {
                            writer
                                .write_all(format!("line {index} {n}\n").as_bytes())
                                .expect("send a numbered line");
                        }
                    });
                    (senders - 1) * LINES
                } else {
                    senders * LINES
                };
                let mut seen = Vec::with_capacity(expected);
                while seen.len() < expected {
                    let line = member.line();
                    assert!(
                        !line.starts_with("* "),
                        "{}: a notice among the lines: {line:?}",
                        member.name
                    );
                    seen.push(line);
                }
                (member.name.clone(), seen)
            })
        })
        .collect();
    let seen: Vec<(String, Vec<String>)> = readers
        .into_iter()
        .map(|reader| reader.join().expect("a member's reader"))
        .collect();

    // The listeners saw everything: one sequence, the same on both instances.
    let (listener_a, listener_b) = (&seen[2].1, &seen[5].1);
    assert!(
        listener_a == listener_b,
        "the listeners on A and B saw different orders; first difference at line {:?}",
        listener_a.iter().zip(listener_b).position(|(x, y)| x != y)
    );
    // Each sender saw that sequence without its own lines.
    for (index, (name, lines)) in seen.iter().enumerate().filter(|(i, _)| is_sender(*i)) {
        let prefix = format!("{name}: ");
        let others: Vec<&String> = listener_a
            .iter()
            .filter(|line| !line.starts_with(&prefix))
            .collect();
        let mine: Vec<&String> = lines.iter().collect();
        assert!(
            mine == others,
            "member {index} ({name}) saw another order than the listeners; first difference at \
             line {:?}",
            mine.iter().zip(&others).position(|(x, y)| x != y)
        );
    }
    // And in that sequence, each sender's lines come in the order sent, every one once.
    for (index, (name, _)) in seen.iter().enumerate().filter(|(i, _)| is_sender(*i)) {
        let prefix = format!("{name}: line {index} ");
        let numbers: Vec<usize> = listener_a
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert_eq!(
            numbers,
            (0..LINES).collect::<Vec<_>>(),
            "sender {index} ({name})'s lines as the listeners saw them"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Two deployments on one Redis: one database each.

#[test]
fn the_same_room_name_in_two_databases_is_two_rooms() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (format!("{}/1", redis.url()), format!("{}/2", redis.url()));
    let (a, b) = pair([&one, &two], &[]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));

    let (mut a1, count) = Member::join(addr_a, &mut []);
    assert_eq!(count, 1);
    let (mut b1, count) = Member::join(addr_b, &mut []);
    assert_eq!(count, 1, "database 2 is another room than database 1");
    let (mut a2, count) = Member::join(addr_a, &mut [&mut a1]);
    assert_eq!(count, 2);
    let (mut b2, count) = Member::join(addr_b, &mut [&mut b1]);
    assert_eq!(count, 2);

    // A name is per database.
    rename(0, "shared", &mut [&mut a1, &mut a2]);
    rename(0, "shared", &mut [&mut b1, &mut b2]);

    // A line goes round its own database's room (a2 hears it) and not the other's: B's barrier
    // is published after it, so in one shared channel it would come after it.
    a1.say("in database 1");
    a2.expect("shared: in database 1");
    b2.say("barrier b");
    b1.expect_nothing_before(
        &format!("{}: barrier b", b2.name),
        "database 1's room reached database 2's",
    );
    a2.say("barrier a");
    a1.expect_nothing_before(
        &format!("{}: barrier a", a2.name),
        "database 2's room (its joins, rename, barrier) reached database 1's",
    );
    b1.say("/who");
    b1.expect(&who_reply(&["shared", &b2.name]));
}

// ---------------------------------------------------------------------------------------------
// 5. Faults.

#[test]
fn a_killed_instances_members_are_announced_as_left_and_their_names_freed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut survivor, mut victim) = pair([&url, &url], &[]);
    let (mut a1, _) = Member::join(survivor.addr("chat"), &mut []);
    let (mut a2, _) = Member::join(survivor.addr("chat"), &mut [&mut a1]);
    let (mut doomed, count) = Member::join(victim.addr("chat"), &mut [&mut a1, &mut a2]);
    assert_eq!(count, 3);
    // A chosen name: a default-shaped one cannot be asked for with /nick.
    rename(2, "victim", &mut [&mut a1, &mut a2, &mut doomed]);

    victim.signal("KILL");
    victim.wait_for_exit();
    let killed = Instant::now();
    for member in [&mut a1, &mut a2] {
        match member.next_line(DEAD_INSTANCE_BOUND.saturating_sub(killed.elapsed())) {
            Ok(Some(line)) => assert_eq!(line, "* victim left", "{}", member.name),
            other => panic!(
                "{}: expected `* victim left` within {DEAD_INSTANCE_BOUND:?} of the SIGKILL, \
                 got {other:?}; survivor's stderr:\n{}",
                member.name,
                survivor.stderr()
            ),
        }
    }
    eprintln!(
        "the killed instance's member was announced as left {:?} after SIGKILL",
        killed.elapsed()
    );

    // The name is free again, and the room is the survivor's members.
    rename(0, "victim", &mut [&mut a1, &mut a2]);
    a2.say("/who");
    a2.expect(&who_reply(&["victim", &a2.name]));
    let (_, count) = Member::join(survivor.addr("chat"), &mut [&mut a1, &mut a2]);
    assert_eq!(
        count, 3,
        "the greeting still counts the dead instance's member"
    );
    survivor.assert_running();
}

#[test]
fn redis_unreachable_at_start_refuses_chat_until_it_comes_up() {
    if !util::require_tools(&["redis-server"]) {
        return;
    }
    // Nobody listens there yet.
    let port = util::free_loopback_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = instance(&url, &["chat@127.0.0.1:0", "echo@127.0.0.1:0"], &[]);
    let (chat, echo) = (server.addr("chat"), server.addr("echo"));
    expect_unavailable(chat);
    expect_echo(echo);
    expect_unavailable(chat);
    server.assert_running();
    // And says so: a warning (the default log level shows warnings).
    let start = Instant::now();
    while !server.stderr().lines().any(|line| line.contains("WARN")) {
        assert!(
            start.elapsed() < DEADLINE,
            "no warning on stderr while Redis is unreachable: {:?}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }

    let _redis = RedisServer::start_on(port).expect("redis-server was found a moment ago");
    let (_, _, took) = expect_chat_back(chat, &server);
    eprintln!("chat came back {took:?} after Redis started");
    expect_echo(echo);
    server.assert_running();
}

#[test]
fn redis_killed_drops_the_members_and_chat_comes_back_with_it() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mut server = instance(&redis.url(), &["chat@127.0.0.1:0", "echo@127.0.0.1:0"], &[]);
    let (chat, echo) = (server.addr("chat"), server.addr("echo"));
    let (mut m1, _) = Member::join(chat, &mut []);
    let (mut m2, _) = Member::join(chat, &mut [&mut m1]);

    redis.kill();
    m1.expect_bus_lost(DEADLINE);
    m2.expect_bus_lost(DEADLINE);
    expect_echo(echo);
    expect_unavailable(chat);

    redis.restart();
    // Restarted empty: nobody's name survives in it.
    let (_, _, took) = expect_chat_back(chat, &server);
    eprintln!("chat came back {took:?} after Redis restarted");
    expect_echo(echo);
    server.assert_running();
}

#[test]
fn redis_stopped_for_five_seconds_drops_chat_but_not_echo() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mut server = instance(&redis.url(), &["chat@127.0.0.1:0", "echo@127.0.0.1:0"], &[]);
    let (chat, echo) = (server.addr("chat"), server.addr("echo"));
    let (mut m1, _) = Member::join(chat, &mut []);
    let (mut m2, _) = Member::join(chat, &mut [&mut m1]);
    // A chosen name, to ask for again once the bus is back.
    rename(0, "ghost", &mut [&mut m1, &mut m2]);
    // The echo client is connected before the pause: it is the loop, not accepting, on trial.
    let mut echo_client = util::connect(echo);

    const PAUSE: Duration = Duration::from_secs(5);
    redis.pause();
    let paused = Instant::now();
    // A line Redis cannot take now: it must not hold up anything but chat.
    m1.say("said while Redis is stopped");
    let members: Vec<_> = [m1, m2]
        .into_iter()
        .map(|mut member| {
            thread::spawn(move || {
                let result = member.lines_to_end(PAUSE + DEADLINE);
                (member.name.clone(), result)
            })
        })
        .collect();

    // 20 requests 200 ms apart, all while Redis is stopped, each answered within 2 s.
    const ANSWER_BOUND: Duration = Duration::from_secs(2);
    echo_client.set_read_timeout(Some(ANSWER_BOUND)).unwrap();
    for n in 0..20 {
        let request = format!("echo {n} during the pause\n");
        util::send(&mut echo_client, request.as_bytes());
        let asked = Instant::now();
        let mut reply = vec![0; request.len()];
        if let Err(e) = echo_client.read_exact(&mut reply) {
            panic!(
                "echo request {n} ({:?} into the pause): no whole reply within {ANSWER_BOUND:?} \
                 ({e}, after {:?}); the loop waited for Redis",
                asked - paused,
                asked.elapsed()
            );
        }
        assert_eq!(reply, request.as_bytes(), "echo reply {n}");
        thread::sleep(Duration::from_millis(200));
    }
    // Keep Redis stopped for the whole pause, then let it go.
    thread::sleep(PAUSE.saturating_sub(paused.elapsed()));
    redis.resume();

    for reader in members {
        let (name, result) = reader.join().expect("a member's reader");
        match result {
            Ok(lines) => assert_eq!(
                lines.last().map(String::as_str),
                Some("* chat bus lost"),
                "{name}: the lines before the close were {lines:?}"
            ),
            Err(e) => panic!(
                "{name}: expected `* chat bus lost` and the close, Redis having stopped \
                 answering for {PAUSE:?}: {e}; stderr:\n{}",
                server.stderr()
            ),
        }
    }
    let (mut first, mut second, took) = expect_chat_back(chat, &server);
    eprintln!("chat came back {took:?} after Redis was continued");
    expect_echo(echo);
    // The dropped members left the room for good: `/who` lists the new members only, and the
    // name one of them had chosen can be taken again.
    first.say("/who");
    first.expect(&who_reply(&[&first.name, &second.name]));
    rename(0, "ghost", &mut [&mut first, &mut second]);
    server.assert_running();
}

#[test]
fn a_slow_redis_delays_lines_but_loses_none() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    let (mut sender, _) = Member::join(a.addr("chat"), &mut []);
    let (mut receiver, _) = Member::join(b.addr("chat"), &mut [&mut sender]);

    // Redis sleeps half a second in one command; the sender keeps talking from before the
    // command is sent until its reply is back, so some of its lines meet a sleeping Redis.
    let redis = std::sync::Arc::new(redis);
    let sleeper = {
        let redis = std::sync::Arc::clone(&redis);
        thread::spawn(move || redis.command(&["DEBUG", "SLEEP", "0.5"]))
    };
    let mut sent = 0;
    while !sleeper.is_finished() || sent < 3 {
        sender.say(&format!("slow {sent}"));
        sent += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let reply = sleeper.join().expect("the DEBUG SLEEP thread");
    assert_eq!(reply, "+OK\r\n", "DEBUG SLEEP's reply");
    assert!(sent >= 8, "only {sent} lines during a 0.5 s sleep");

    for n in 0..sent {
        receiver.expect(&format!("{}: slow {n}", sender.name));
    }
    // The bus survived: no `* chat bus lost`, nothing else, on either side.
    receiver.say("after the sleep");
    sender.expect_nothing_before(
        &format!("{}: after the sleep", receiver.name),
        "Redis was only slow",
    );
    sender.say("still here");
    receiver.expect(&format!("{}: still here", sender.name));
}

// ---------------------------------------------------------------------------------------------
// 6. The load generator over two instances.

#[test]
fn a_chat_load_over_two_instances_on_one_bus_is_clean() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    // The load's members must not meet an instance that has not reached Redis yet.
    for server in [&a, &b] {
        util::wait_until_chat_greets(server.addr("chat"), b"");
    }
    let (addr_a, addr_b) = (a.addr("chat").to_string(), b.addr("chat").to_string());
    let run = util::run(
        &[
            "load",
            &addr_a,
            &addr_b,
            "--protocol",
            "chat",
            "--connections",
            "200",
            "--senders",
            "10",
            "--duration",
            "3",
            "--json",
        ],
        b"",
    );
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim_end()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {:?}\nstderr: {}",
            run.stdout, run.stderr
        )
    });
    assert!(
        run.status.success(),
        "exit {:?}: {json}\nstderr: {}\ninstance a:\n{}\ninstance b:\n{}",
        run.status,
        run.stderr,
        a.stderr(),
        b.stderr()
    );
    for (key, expected) in [("errors", 0.0), ("dropped", 0.0), ("established", 200.0)] {
        assert_eq!(json[key].as_f64(), Some(expected), "{key} in {json}");
    }
    assert!(json["requests"].as_f64() > Some(0.0), "{json}");
}

// ---------------------------------------------------------------------------------------------
// 7. Regressions: what a review found the bus getting wrong, each shown from the outside.

/// The strings of a RESP reply of bulk strings (`HKEYS`, `HGETALL`, `HGET`), in order: enough
/// for replies whose strings hold no `\r\n` (names, holders, numbers).
fn resp_strings(reply: &str) -> Vec<String> {
    let mut parts = reply.split("\r\n").filter(|part| !part.is_empty());
    let mut strings = Vec::new();
    while let Some(part) = parts.next() {
        match part.as_bytes()[0] {
            b'*' => {}
            b'$' if part == "$-1" => {}
            b'$' => strings.push(parts.next().unwrap_or_default().to_string()),
            b':' | b'+' => strings.push(part[1..].to_string()),
            _ => panic!("not a reply of strings: {reply:?}"),
        }
    }
    strings
}

/// The room `room`'s names hash key (contract: `oneloop:chat:ROOM:names`).
fn names_key(room: u16) -> String {
    format!("oneloop:chat:{room}:names")
}

/// The names the room `room` holds in Redis, sorted.
fn names_held(redis: &RedisServer, room: u16) -> Vec<String> {
    let mut names = resp_strings(&redis.command(&["HKEYS", &names_key(room)]));
    names.sort_unstable();
    names
}

/// Polls until the room's names hash holds exactly `expected` (sorted), for at most `within`;
/// panics with what it held last.
fn wait_for_names(redis: &RedisServer, room: u16, expected: &[&str], within: Duration) {
    let start = Instant::now();
    loop {
        let held = names_held(redis, room);
        if held == expected {
            return;
        }
        assert!(
            start.elapsed() < within,
            "the names hash still holds {held:?} {within:?} on (expected {expected:?})"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A connection whose join met a lost bus is answered and closed, never left waiting: every
/// line until the close (within [`DEADLINE`]), the last one saying why.
fn expect_refused_or_lost(member: &mut Member, what: &str) -> Vec<String> {
    let lines = member
        .lines_to_end(DEADLINE)
        .unwrap_or_else(|e| panic!("{what}: left waiting instead of answered and closed: {e}"));
    assert!(
        matches!(
            lines.last().map(String::as_str),
            Some("error chat unavailable" | "* chat bus lost")
        ),
        "{what}: the lines before the close were {lines:?}"
    );
    lines
}

/// An instance stopped (SIGSTOP) past its heartbeat's TTL is taken for dead by the other one,
/// which announces its member as left and lets another member take the name. When the stopped
/// instance is continued, it must not carry on as if nothing happened — two holders of one
/// name, the old one's lines reaching the room: its members get `* chat bus lost` and are
/// closed, even a line waiting in the socket from before never goes out, and once it is back
/// its new members join the one room with the name held once.
#[test]
fn a_stopped_instance_continued_after_its_ttl_drops_its_members() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));
    let (mut alice, _) = Member::join(addr_a, &mut []);
    rename(0, "alice", &mut [&mut alice]);
    let (mut bob, _) = Member::join(addr_b, &mut [&mut alice]);
    let (mut carol, _) = Member::join(addr_b, &mut [&mut alice, &mut bob]);

    a.signal("STOP");
    let stopped = Instant::now();
    for member in [&mut bob, &mut carol] {
        match member.next_line(DEAD_INSTANCE_BOUND) {
            Ok(Some(line)) => assert_eq!(line, "* alice left", "{}", member.name),
            other => panic!(
                "{}: expected `* alice left` within {DEAD_INSTANCE_BOUND:?} of A's SIGSTOP, got \
                 {other:?}",
                member.name
            ),
        }
    }
    // Stopped well past the 6 s TTL, as a long pause (a VM migration, a debugger) would be.
    thread::sleep(Duration::from_secs(9).saturating_sub(stopped.elapsed()));
    rename(0, "alice", &mut [&mut bob, &mut carol]);
    // Waiting in A's socket when A wakes up.
    alice.say("the old alice speaking");

    a.signal("CONT");
    alice.expect_bus_lost(DEADLINE);

    // A is back on the bus with a new member; nothing of the old alice reached B meanwhile
    // (her line, a `left` for the name B's member now holds): the join is the next thing seen.
    let (mut dave, count) = Member::join(addr_a, &mut [&mut bob, &mut carol]);
    assert_eq!(count, 3, "the room is bob (now alice), carol and dave");
    dave.say("barrier");
    let barrier = format!("{}: barrier", dave.name);
    for member in [&mut bob, &mut carol] {
        member.expect_nothing_before(&barrier, "the continued instance's old member was dropped");
    }
    bob.name = "alice".to_string();
    dave.say("/who");
    dave.expect(&who_reply(&["alice", &carol.name, &dave.name]));
    assert_eq!(
        names_held(&redis, addr_a.port()),
        {
            let mut names = vec!["alice".to_string(), carol.name.clone(), dave.name.clone()];
            names.sort_unstable();
            names
        },
        "the names hash"
    );
}

/// A command Redis refuses (an ACL, `maxmemory`) cannot be taken as done: the members it
/// concerns get `* chat bus lost` and are closed (none left waiting for an answer that will
/// never come), and chat comes back once Redis takes the commands again.
fn a_refused_command_loses_the_bus(
    refuse: &[&str],
    restore: &[&str],
    act: impl FnOnce(SocketAddr, &mut Member, &mut Member),
) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut server = instance(&redis.url(), &["chat@127.0.0.1:0"], &[]);
    let chat = server.addr("chat");
    let (mut m1, _) = Member::join(chat, &mut []);
    let (mut m2, _) = Member::join(chat, &mut [&mut m1]);

    assert_eq!(redis.command(refuse), "+OK\r\n", "{refuse:?}");
    act(chat, &mut m1, &mut m2);
    for member in [&mut m1, &mut m2] {
        match member.lines_to_end(DEADLINE) {
            Ok(lines) => assert_eq!(
                lines.last().map(String::as_str),
                Some("* chat bus lost"),
                "{} after {refuse:?}: the lines before the close were {lines:?}",
                member.name
            ),
            Err(e) => panic!(
                "{} after {refuse:?}: expected `* chat bus lost` and the close: {e}; stderr:\n{}",
                member.name,
                server.stderr()
            ),
        }
    }

    assert_eq!(redis.command(restore), "+OK\r\n", "{restore:?}");
    let (_, _, took) = expect_chat_back(chat, &server);
    eprintln!("chat came back {took:?} after {restore:?}");
    server.assert_running();
}

#[test]
fn a_refused_publish_loses_the_bus_and_answers_the_newcomer() {
    a_refused_command_loses_the_bus(
        &["ACL", "SETUSER", "default", "-publish"],
        &["ACL", "SETUSER", "default", "+publish"],
        |chat, _, _| {
            // Its join cannot be announced: it must not wait for a greeting forever.
            let mut newcomer = Member::tcp(chat);
            newcomer.say("/who");
            let lines = expect_refused_or_lost(&mut newcomer, "a newcomer whose join is refused");
            eprintln!("the newcomer whose join PUBLISH was refused got {lines:?}");
        },
    );
}

#[test]
fn a_refused_who_loses_the_bus() {
    a_refused_command_loses_the_bus(
        &["ACL", "SETUSER", "default", "-hkeys"],
        &["ACL", "SETUSER", "default", "+hkeys"],
        |_, asker, _| asker.say("/who"),
    );
}

#[test]
fn a_refused_heartbeat_loses_the_bus() {
    // Out of memory: Redis refuses every write, the heartbeat's SET among them, so the other
    // instances will take this one for dead; its members must not stay on as if in the room.
    a_refused_command_loses_the_bus(
        &["CONFIG", "SET", "maxmemory", "1"],
        &["CONFIG", "SET", "maxmemory", "0"],
        |_, _, _| {},
    );
}

/// SIGTERM while a newcomer waits for Redis to answer its name claim (Redis busy in a
/// `DEBUG SLEEP`): the shutdown does not wait out `--shutdown-timeout` for the newcomer, the
/// process exits 0 soon after Redis answers, and no name it claimed is left in the room's hash.
#[test]
fn a_shutdown_while_a_newcomer_waits_for_its_name_is_quick_and_leaves_no_name() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut server = instance(
        &redis.url(),
        &["chat@127.0.0.1:0"],
        &["--shutdown-timeout", "8"],
    );
    let chat = server.addr("chat");
    let (mut member, _) = Member::join(chat, &mut []);

    let redis = std::sync::Arc::new(redis);
    let sleeper = {
        let redis = std::sync::Arc::clone(&redis);
        thread::spawn(move || redis.command(&["DEBUG", "SLEEP", "1.5"]))
    };
    // Let the sleep begin, then the newcomer's claim go out into it.
    thread::sleep(Duration::from_millis(150));
    let mut newcomer = Member::tcp(chat);
    thread::sleep(Duration::from_millis(200));

    server.signal("TERM");
    let signalled = Instant::now();
    let status = server.wait_for_exit();
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM with {status}");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        server.stderr()
    );
    const QUICK: Duration = Duration::from_secs(5);
    assert!(
        took < QUICK,
        "exit took {took:?} (Redis slept 1.5 s; --shutdown-timeout 8): the shutdown waited on \
         the newcomer; stderr:\n{}",
        server.stderr()
    );
    match member.lines_to_end(DEADLINE) {
        Ok(lines) => assert_eq!(
            lines.last().map(String::as_str),
            Some("* server shutting down"),
            "the member's lines: {lines:?}"
        ),
        Err(e) => panic!("the member after the exit: {e}"),
    }
    let newcomer_lines = newcomer.lines_to_end(DEADLINE);
    eprintln!("the newcomer got {newcomer_lines:?}");

    assert_eq!(
        sleeper.join().expect("the DEBUG SLEEP thread"),
        "+OK\r\n",
        "DEBUG SLEEP's reply"
    );
    let left = redis.command(&["HGETALL", &names_key(chat.port())]);
    assert_eq!(
        resp_strings(&left),
        Vec::<String>::new(),
        "names left in the hash after a graceful shutdown: {left:?}"
    );
}

/// Two chat services of one process whose rooms have the same name on the bus (one port on two
/// addresses; one socket file name in two directories) would be one room in Redis and two in
/// the process: refused at start, exit 2, one line naming the room. Nothing is asked of Redis
/// first, so none is needed.
#[test]
fn two_chat_services_with_one_room_name_are_refused() {
    let port = util::free_loopback_port();
    let dir = TempDir::new();
    let socket = |sub: &str| format!("chat@unix:{}", dir.file(sub, "room.sock").display());
    let cases = [
        (
            [
                format!("chat@127.0.0.1:{port}"),
                format!("chat@127.0.0.2:{port}"),
            ],
            port.to_string(),
        ),
        ([socket("one"), socket("two")], "room.sock".to_string()),
    ];
    for (services, room) in cases {
        let args = [
            "--chat-bus",
            "redis://127.0.0.1:1",
            &services[0],
            &services[1],
        ];
        let failure = match Server::try_start(&args) {
            Ok(_) => panic!("{services:?} on one bus were served: two rooms named {room}"),
            Err(failure) => failure,
        };
        assert_eq!(
            failure.status.code(),
            Some(2),
            "{services:?}: exit status; stderr:\n{}",
            failure.stderr
        );
        let lines: Vec<&str> = failure.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {:?}", failure.stderr);
        assert!(
            lines[0].contains(&room),
            "the line names the room {room}: {:?}",
            lines[0]
        );
    }
}

/// Redis stalls (`DEBUG SLEEP 3.8`, past the 3 s an instance waits for a reply) while a member
/// of A renames itself and a newcomer joins A: A loses the bus. An observer on B, which keeps
/// the bus, must see the room stay consistent: never a `left` for a name it never saw arrive
/// (the rename's new name, the newcomer's), A's dropped member announced as left, and the
/// names hash back to the live members within the contract's bound.
#[test]
fn a_bus_lost_during_a_rename_and_a_join_announces_only_what_was_seen() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));
    let room = addr_a.port();
    let (mut observer, _) = Member::join(addr_b, &mut []);
    rename(0, "obs", &mut [&mut observer]);
    let (mut alice, _) = Member::join(addr_a, &mut [&mut observer]);
    rename(1, "alice", &mut [&mut observer, &mut alice]);

    // B must keep the bus: its heartbeat goes every 2 s, and one sent in the sleep's first
    // 0.8 s would be answered over 3 s late. So the sleep starts just after B's heartbeat was
    // refreshed (its key's TTL at its full 6 s), B's next beat ~1.8 s into it.
    let holder = resp_strings(&redis.command(&["HGET", &names_key(room), "obs"]));
    let session_b = holder
        .first()
        .and_then(|holder| holder.split(' ').next())
        .unwrap_or_else(|| panic!("obs's holder: {holder:?}"))
        .to_string();
    let heartbeat_b = format!("oneloop:instance:{session_b}");
    let start = Instant::now();
    loop {
        let ttl = resp_strings(&redis.command(&["PTTL", &heartbeat_b]));
        let ttl: i64 = ttl.first().and_then(|t| t.parse().ok()).unwrap_or(-1);
        if ttl >= 5_850 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "B's heartbeat {heartbeat_b} never refreshed (PTTL {ttl})"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let redis = std::sync::Arc::new(redis);
    let sleeper = {
        let redis = std::sync::Arc::clone(&redis);
        thread::spawn(move || redis.command(&["DEBUG", "SLEEP", "3.8"]))
    };
    let slept = Instant::now();
    thread::sleep(Duration::from_millis(100));
    alice.say("/nick bob");
    let mut newcomer = Member::tcp(addr_a);

    let alice_lines = alice.lines_to_end(DEADLINE);
    let newcomer_lines = expect_refused_or_lost(&mut newcomer, "the newcomer on A");
    eprintln!("alice got {alice_lines:?}; the newcomer got {newcomer_lines:?}");
    match &alice_lines {
        Ok(lines) => assert_eq!(
            lines.last().map(String::as_str),
            Some("* chat bus lost"),
            "alice's lines: {lines:?}"
        ),
        Err(e) => panic!("alice: expected `* chat bus lost` and the close: {e}"),
    }
    assert_eq!(
        sleeper.join().expect("the DEBUG SLEEP thread"),
        "+OK\r\n",
        "DEBUG SLEEP's reply"
    );

    // Within the contract's 15 s (with room for a loaded machine) of the stall.
    wait_for_names(
        &redis,
        room,
        &["obs"],
        DEAD_INSTANCE_BOUND.saturating_sub(slept.elapsed()),
    );
    eprintln!(
        "the names hash held only the live member {:?} after the sleep began",
        slept.elapsed()
    );

    // Everything the observer was told, up to a join after the hash was clean: a member on B
    // (which kept the bus) whose join is the barrier.
    let (witness, _) = Member::tcp(addr_b).greeted(&mut []);
    let seen = observer.lines_until(&format!("* {} joined", witness.name));
    eprintln!("the observer saw {seen:?}");
    let mut present: std::collections::BTreeSet<String> =
        ["obs", "alice"].into_iter().map(String::from).collect();
    for line in &seen {
        assert_ne!(
            line, "* chat bus lost",
            "B lost the bus too: the sleep's timing against B's heartbeat missed"
        );
        if let Some(name) = line
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" joined"))
        {
            present.insert(name.to_string());
        } else if let Some((old, new)) = line
            .strip_prefix("* ")
            .and_then(|l| l.split_once(" is now "))
        {
            assert!(
                present.remove(old),
                "{line:?} for a name not in the room: {seen:?}"
            );
            present.insert(new.to_string());
        } else if let Some(name) = line
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" left"))
        {
            assert!(
                present.remove(name),
                "{line:?}: a `left` for a member the observer never saw arrive: {seen:?}"
            );
        } else {
            panic!("the observer got {line:?} among {seen:?}");
        }
    }
    assert_eq!(
        present.into_iter().collect::<Vec<_>>(),
        vec!["obs".to_string()],
        "A's dropped member (alice, or bob if the rename was seen) announced as left: {seen:?}"
    );
}

/// A TCP relay on a free loopback port to the Redis on `redis_port`, which holds back by `delay`
/// every chunk Redis sends on the `nth` connection made through it (from 1); the others pass
/// at once. Its threads live as long as its connections (the accepting one, the test process).
fn delaying_relay(redis_port: u16, nth: usize, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let port = listener.local_addr().expect("the relay's address").port();
    fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
        let mut chunk = [0; 16 * 1024];
        while let Ok(count @ 1..) = from.read(&mut chunk) {
            thread::sleep(delay);
            if to.write_all(&chunk[..count]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    thread::spawn(move || {
        for (index, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                continue;
            };
            let delay = if index + 1 == nth {
                delay
            } else {
                Duration::ZERO
            };
            let (client_2, upstream_2) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            thread::spawn(move || pump(client, upstream, Duration::ZERO));
            thread::spawn(move || pump(upstream_2, client_2, delay));
        }
    });
    port
}

/// The bus lost while connecting (the subscription's answers 4 s late, past the 3 s an
/// instance waits) after a newcomer's name claim was answered on the other connection: the
/// newcomer is told and closed (not greeted into a room the instance is not in, nor left
/// waiting), its claim does not outlive the loss, and chat works once the bus is back.
#[test]
fn a_bus_lost_while_connecting_answers_the_newcomer_and_frees_its_claim() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The instance opens its command connection first, then its subscription.
    let relay = delaying_relay(redis.port(), 2, Duration::from_secs(4));
    let server = instance(
        &format!("redis://127.0.0.1:{relay}"),
        &["chat@127.0.0.1:0"],
        &[],
    );
    let chat = server.addr("chat");
    let mut newcomer = Member::tcp(chat);
    // Whether its claim was answered before the loss (the case at stake) depends on the
    // instance holding it meanwhile: said, not asserted.
    let claimed = Instant::now();
    let mut held = Vec::new();
    while held.is_empty() && claimed.elapsed() < Duration::from_millis(2500) {
        held = names_held(&redis, chat.port());
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("claimed while connecting: {held:?}");
    let lines = expect_refused_or_lost(&mut newcomer, "a newcomer while the bus connects");
    eprintln!("the newcomer while the bus connected got {lines:?}");
    wait_for_names(&redis, chat.port(), &[], RECOVERY_BOUND);
    let (_, _, took) = expect_chat_back(chat, &server);
    eprintln!("chat came back {took:?} after the newcomer was closed");
}

// ---------------------------------------------------------------------------------------------
// Adversaries across instances: a flood, garbage, a member that vanishes mid-line.

/// One write of 200,000 empty lines on one instance: the members that keep reading, on both
/// instances, get every line in order; a member on the other instance that never reads is
/// dropped (announced as left to the others), and the bus is not lost: the flooder is paced by
/// the round trip through Redis. Over Unix sockets, whose kernel buffers are small: over
/// loopback TCP the kernel would take megabytes for the silent member, which would then never
/// pass --output-limit (the same reason as `tests/chat.rs`'s burst test).
#[test]
fn a_flood_on_one_instance_reaches_the_readers_on_both_and_keeps_the_bus() {
    const LINES: usize = 200_000;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let dir = TempDir::new();
    let spec = |sub: &str| format!("chat@unix:{}", dir.file(sub, "room.sock").display());
    let a = instance(&url, &[&spec("a")], &[]);
    let b = instance(&url, &[&spec("b")], &[]);
    let (path_a, path_b) = (a.path("chat"), b.path("chat"));
    let (mut flooder, _) = Member::join_unix(&path_a, &mut []);
    let (mut near, _) = Member::join_unix(&path_a, &mut [&mut flooder]);
    let (mut far, _) = Member::join_unix(&path_b, &mut [&mut flooder, &mut near]);
    let (silent, _) = Member::join_unix(&path_b, &mut [&mut flooder, &mut near, &mut far]);
    let silent_name = silent.name.clone();
    let line = format!("{}: ", flooder.name);
    let readers: Vec<thread::JoinHandle<(usize, Vec<String>)>> = [near, far]
        .into_iter()
        .map(|mut reader| {
            let line = line.clone();
            thread::spawn(move || {
                let (mut got, mut other) = (0, Vec::new());
                while got < LINES {
                    let next = reader.line();
                    if next == line {
                        got += 1;
                    } else {
                        other.push(next);
                    }
                }
                (got, other)
            })
        })
        .collect();
    flooder.send_raw(&vec![b'\n'; LINES]);
    for reader in readers {
        let (got, other) = reader.join().expect("a reader panicked");
        assert_eq!(got, LINES);
        // 200,000 lines of `NAME: ` are megabytes: past --output-limit (1 MiB) the silent
        // member's instance drops it, and everyone hears it leave.
        assert_eq!(
            other,
            [format!("* {silent_name} left")],
            "a reader got {other:?} besides the flood"
        );
    }
    drop(silent);
    // The bus held: a newcomer on each instance is greeted, not refused.
    for path in [&path_a, &path_b] {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut member = Member::over(Conn::Unix(stream));
        let greeting = member.line();
        assert!(greeting.starts_with("* welcome "), "{greeting}");
    }
}

/// Bytes that could act on a terminal reach the other instance escaped, exactly as within one
/// (the room formats at the sender's instance; the bus carries its bytes unchanged), and a
/// member that vanishes in the middle of a line leaves without that partial line reaching
/// anyone, on either instance.
#[test]
fn garbage_arrives_escaped_and_a_vanished_members_partial_line_never_arrives() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = pair([&url, &url], &[]);
    let (addr_a, addr_b) = (a.addr("chat"), b.addr("chat"));
    let (mut sender, _) = Member::join(addr_a, &mut []);
    let (mut far, _) = Member::join(addr_b, &mut [&mut sender]);
    sender.send_raw(b"\x1b[2J\xff\xc2\x9b bell\x07\r\n");
    far.expect(&format!("{}: ^[[2J\\xff\\u{{9b}} bell^G", sender.name));
    let (mut vanishing, _) = Member::join(addr_a, &mut [&mut sender, &mut far]);
    let name = vanishing.name.clone();
    vanishing.send_raw(b"half a line, never ended");
    // A reset, not a clean end: the partial line is discarded with the member.
    if let Conn::Tcp(stream) = &vanishing.conn {
        socket2::SockRef::from(stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(vanishing);
    far.expect(&format!("* {name} left"));
    sender.expect(&format!("* {name} left"));
    sender.say("after");
    far.expect(&format!("{}: after", sender.name));
}

/// Retries back off, but never past 5 s between two (the contract): with Redis unreachable for
/// longer than the back-off takes to reach its cap (0.25 + 0.5 + 1 + 2 + 4 s), every wait the
/// server announces (debug log: `trying again in …`) is at most 5 s and the last ones are 5 s;
/// then chat comes back once Redis does.
#[test]
fn retries_back_off_to_at_most_five_seconds_apart() {
    if !util::require_tools(&["redis-server"]) {
        return;
    }
    let port = util::free_loopback_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = Server::start_with_env(
        &["--chat-bus", &url, "chat@127.0.0.1:0"],
        &[("RUST_LOG", "oneloop::reactor::bus=debug")],
    );
    let waits = |stderr: &str| -> Vec<Duration> {
        stderr
            .lines()
            .filter_map(|line| line.split("trying again in ").nth(1))
            .map(|wait| {
                let wait = wait.trim();
                match wait.strip_suffix("ms") {
                    Some(ms) => Duration::from_millis(ms.parse().unwrap()),
                    None => Duration::from_secs_f64(wait.trim_end_matches('s').parse().unwrap()),
                }
            })
            .collect()
    };
    let start = Instant::now();
    while !waits(&server.stderr()).contains(&Duration::from_secs(5)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the back-off never reached 5 s: {:?}",
            waits(&server.stderr())
        );
        thread::sleep(Duration::from_millis(200));
    }
    let seen = waits(&server.stderr());
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().all(|w| *w <= Duration::from_secs(5)),
        "waits between tries: {seen:?}"
    );
    let chat = server.addr("chat");
    let _redis = RedisServer::start_on(port).expect("redis-server was found a moment ago");
    expect_chat_back(chat, &server);
    server.assert_running();
}
