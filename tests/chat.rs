//! The chat protocol over real loopback sockets, as the contract and the room's module doc
//! describe it: who receives a line and under what name, `/nick`, `/who`, leaving, `--max-line`,
//! a slow member dropped at `--output-limit` without slowing the others, a thousand members, Unix
//! peers' `unix-N` names, CRLF and caret notation, one room per chat service, and SIGTERM.
//! Run against the reactor, then (at the end of the file) against `--model threaded` and `pool`.
//!
//! "Nothing was received" is checked with a barrier, never with a sleep: after the action under
//! test, another member sends a line; a member reads up to that line, and whatever it read before
//! it is all the room sent it in between (the server handles one member's input in order, and
//! the barrier was sent only after the action had visibly taken effect).

#[macro_use]
mod util;

use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, raise_fd_limit, Server, Snippet, DEADLINE};

/// The tests that load the machine (20 MiB through the room, a thousand members) take turns, so
/// neither makes the other's timing checks flaky on a two-core machine.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy_turn() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// A member: a connection read line by line, every wait bounded by `DEADLINE`.

/// A stream whose reads can be bounded.
trait Timed: Read + Write {
    fn set_timeout(&self, timeout: Duration);
}

impl Timed for TcpStream {
    fn set_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).unwrap();
    }
}

impl Timed for UnixStream {
    fn set_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).unwrap();
    }
}

/// One chat member: its connection, the bytes read but not yet taken as lines, and its name as
/// the server's greeting gave it.
struct Member<S: Timed = TcpStream> {
    stream: S,
    buffer: Vec<u8>,
    /// Where the unconsumed bytes in `buffer` start.
    start: usize,
    name: String,
    /// When bytes last arrived, and the longest wait between two arrivals.
    last_arrival: Option<Instant>,
    longest_gap: Duration,
}

impl<S: Timed> Member<S> {
    /// Takes over `stream`, reads its greeting, and checks that everyone in `others` is told
    /// `* NAME joined`. Returns the member and the member count the greeting announced.
    fn greeted(stream: S, others: &mut [&mut Member<S>]) -> (Member<S>, usize) {
        let mut member = Member {
            stream,
            buffer: Vec::new(),
            start: 0,
            name: String::new(),
            last_arrival: None,
            longest_gap: Duration::ZERO,
        };
        let greeting = member.line();
        let (name, count) = parse_greeting(&greeting);
        member.name = name;
        for other in others.iter_mut() {
            other.expect(&format!("* {} joined", member.name));
        }
        (member, count)
    }

    /// Sends `text` and a newline.
    fn say(&mut self, text: &str) {
        self.send_raw(format!("{text}\n").as_bytes());
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write {} bytes: {e}", self.name, bytes.len()));
    }

    /// Reads more bytes before `deadline`; `Ok(0)` at end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        // Drop what has been taken as lines, or a reader of 20 MiB of short lines copies an
        // ever-growing buffer and falls behind the very flood it is checking.
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
            }
            self.stream.set_timeout(left);
            match self.stream.read(&mut chunk) {
                Ok(count) => {
                    if count > 0 {
                        let now = Instant::now();
                        if let Some(last) = self.last_arrival {
                            self.longest_gap = self.longest_gap.max(now - last);
                        }
                        self.last_arrival = Some(now);
                    }
                    self.buffer.extend_from_slice(&chunk[..count]);
                    return Ok(count);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next line as bytes, without its `\n`, within `DEADLINE`; panics on end of stream,
    /// error or timeout.
    fn raw_line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let pending = &self.buffer[self.start..];
            if let Some(newline) = pending.iter().position(|&b| b == b'\n') {
                let line = pending[..newline].to_vec();
                self.start += newline + 1;
                return line;
            }
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "{}: end of stream while waiting for a line; pending {:?}",
                    self.name,
                    Snippet(&self.buffer[self.start..])
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: no complete line within {DEADLINE:?} ({e}); pending {:?}",
                    self.name,
                    Snippet(&self.buffer[self.start..])
                ),
            }
        }
    }

    /// The next line as text (lossily), without its `\n`.
    fn line(&mut self) -> String {
        String::from_utf8_lossy(&self.raw_line()).into_owned()
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
            assert!(
                before.len() < 100_000,
                "{}: no {stop:?} in {} lines",
                self.name,
                before.len()
            );
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

    /// The server closes the connection, cleanly, after sending `expected` (exactly).
    fn expect_end_after(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: expected a clean end of stream within {DEADLINE:?}, got {e}; received \
                     {:?}",
                    self.name,
                    Snippet(&self.buffer[self.start..])
                ),
            }
        }
        let rest = &self.buffer[self.start..];
        assert_eq!(
            rest,
            expected,
            "{}: before the end of stream it received {:?}, expected {:?}",
            self.name,
            Snippet(rest),
            Snippet(expected)
        );
        self.start = self.buffer.len();
    }
}

impl Member<TcpStream> {
    /// Connects to `addr` as a new member; everyone in `others` must see it join. Its name must
    /// be its own local address, `127.0.0.1:PORT`.
    fn join(addr: SocketAddr, others: &mut [&mut Member]) -> Member {
        let stream = connect(addr);
        let local = stream.local_addr().unwrap().to_string();
        let (member, _) = Member::greeted(stream, others);
        assert_eq!(member.name, local, "a TCP member is named by its address");
        member
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

fn chat_server(extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec!["chat@127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let addr = server.addr("chat");
    (server, addr)
}

/// Members `a`, `b`, `c` of a fresh room, each having seen the later ones join.
fn three(addr: SocketAddr) -> (Member, Member, Member) {
    let mut a = Member::join(addr, &mut []);
    let mut b = Member::join(addr, &mut [&mut a]);
    let c = Member::join(addr, &mut [&mut a, &mut b]);
    (a, b, c)
}

// ---------------------------------------------------------------------------------------------
// 1. Who receives a line, and how.

#[test]
fn a_line_reaches_every_other_member_under_the_senders_address_and_never_the_sender() {
    let (mut server, addr) = chat_server(&[]);
    let mut a = Member::join(addr, &mut []);
    assert!(a.name.starts_with("127.0.0.1:"), "{}", a.name);
    let mut b = Member::join(addr, &mut [&mut a]);
    let mut c = Member::join(addr, &mut [&mut a, &mut b]);

    a.say("hello from a");
    let expected = format!("{}: hello from a", a.name);
    b.expect(&expected);
    c.expect(&expected);

    // The exact bytes: `NAME: LINE\n`, nothing else before the next line.
    c.say("barrier");
    let barrier = format!("{}: barrier", c.name);
    a.expect_nothing_before(&barrier, "a member's own line must not come back to it");
    b.expect(&barrier);

    // And the other way round: C's line reached A and B, not C.
    b.say("from b");
    let from_b = format!("{}: from b\n", b.name);
    for member in [&mut a, &mut c] {
        let mut line = member.raw_line();
        line.push(b'\n');
        assert_eq!(line, from_b.as_bytes(), "{}", member.name);
    }
    a.say("barrier 2");
    c.expect_nothing_before(
        &format!("{}: barrier 2", a.name),
        "its own barrier came back",
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 2. /nick

#[test]
fn nick_renames_and_is_announced_and_bad_or_taken_names_are_refused_quietly() {
    let (mut server, addr) = chat_server(&[]);
    let (mut a, mut b, mut c) = three(addr);

    let old = a.name.clone();
    a.say("/nick alice");
    let announcement = format!("* {old} is now alice");
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&announcement); // The renamer too: its confirmation.
    }
    a.name = "alice".to_string();
    a.say("hi");
    b.expect("alice: hi");
    c.expect("alice: hi");

    // Refused: taken, starting with `*`, 33 bytes, a space, control characters, empty.
    let refused: Vec<Vec<u8>> = vec![
        b"/nick alice\n".to_vec(),
        b"/nick *x\n".to_vec(),
        format!("/nick {}\n", "n".repeat(33)).into_bytes(),
        b"/nick two words\n".to_vec(),
        b"/nick ctl\x01x\n".to_vec(),
        b"/nick esc\x1b[1m\n".to_vec(),
        b"/nick del\x7f\n".to_vec(),
        b"/nick\n".to_vec(),
        // Look-alikes (v3): format characters, and names shaped like a default name.
        "/nick alice\u{200b}\n".as_bytes().to_vec(),
        "/nick \u{202e}ecila\n".as_bytes().to_vec(),
        "/nick al\u{ad}ice\n".as_bytes().to_vec(),
        format!("/nick {}\n", c.name).into_bytes(),
        b"/nick 127.0.0.1:1\n".to_vec(),
        b"/nick [::1]:5000\n".to_vec(),
        b"/nick unix-7\n".to_vec(),
    ];
    for attempt in &refused {
        b.send_raw(attempt);
        let reply = b.line();
        assert!(
            reply.starts_with("error "),
            "`{}` got {reply:?}, expected an `error ...` line",
            attempt.escape_ascii()
        );
        assert!(
            !reply.contains('\x1b') && !reply.contains('\x01'),
            "an error line must not echo control characters: {reply:?}"
        );
    }
    // Nothing of it reached the others, and B kept its name.
    c.say("barrier");
    let barrier = format!("{}: barrier", c.name);
    a.expect_nothing_before(&barrier, "refused /nick attempts must not be broadcast");
    b.expect_nothing_before(&barrier, "one error line per refused /nick");
    b.say("still me");
    a.expect(&format!("{}: still me", b.name));
    c.expect(&format!("{}: still me", b.name));

    // 32 bytes is the limit, not over it; `*` inside a name is fine.
    b.say("/nick bee");
    let to_bee = format!("* {} is now bee", b.name);
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&to_bee);
    }
    b.name = "bee".to_string();
    let longest = format!("{}*b", "n".repeat(30));
    assert_eq!(longest.len(), 32);
    b.say(&format!("/nick {longest}"));
    let renamed = format!("* {} is now {longest}", b.name);
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&renamed);
    }
    // The old name is free again.
    c.say(&format!("/nick {}", b.name));
    let taken_over = format!("* {} is now {}", c.name, b.name);
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&taken_over);
    }
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 3. /who

#[test]
fn who_lists_every_member_sorted_to_the_asker_only() {
    let (mut server, addr) = chat_server(&[]);
    let (mut a, mut b, mut c) = three(addr);
    // Names that sort differently from join order: `127.0.0.1:...` < `Alpha` < `zed`.
    a.say("/nick zed");
    let renamed = format!("* {} is now zed", a.name);
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&renamed);
    }
    a.name = "zed".into();
    c.say("/nick Alpha");
    let renamed = format!("* {} is now Alpha", c.name);
    for member in [&mut a, &mut b, &mut c] {
        member.expect(&renamed);
    }
    c.name = "Alpha".into();

    b.say("/who");
    b.expect(&format!("* members: {}, Alpha, zed", b.name));

    // Neither A nor C saw anything of it.
    a.say("barrier a");
    c.expect_nothing_before("zed: barrier a", "/who answers the asker only");
    c.say("barrier c");
    a.expect_nothing_before("Alpha: barrier c", "/who answers the asker only");
    b.expect("zed: barrier a");
    b.expect("Alpha: barrier c");

    // After a departure the list shrinks.
    drop(c);
    a.expect("* Alpha left");
    b.expect("* Alpha left");
    a.say("/who");
    a.expect(&format!("* members: {}, zed", b.name));
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 4. Leaving

#[test]
fn quit_colon_q_and_a_plain_close_are_each_announced_and_quitting_closes() {
    let (mut server, addr) = chat_server(&[]);
    let mut o = Member::join(addr, &mut []);
    let mut p = Member::join(addr, &mut [&mut o]);
    let mut quitter = Member::join(addr, &mut [&mut o, &mut p]);
    let mut colon_q = Member::join(addr, &mut [&mut o, &mut p, &mut quitter]);
    let closer = Member::join(addr, &mut [&mut o, &mut p, &mut quitter, &mut colon_q]);

    quitter.say("quit");
    let left = format!("* {} left", quitter.name);
    o.expect(&left);
    p.expect(&left);
    colon_q.expect(&left);
    quitter.expect_end_after(b"");

    colon_q.say(":q");
    let left = format!("* {} left", colon_q.name);
    o.expect(&left);
    p.expect(&left);
    colon_q.expect_end_after(b"");

    let left = format!("* {} left", closer.name);
    drop(closer);
    o.expect(&left);
    p.expect(&left);

    // The room goes on with the two that stayed, and has only them.
    o.say("/who");
    let mut names = [o.name.clone(), p.name.clone()];
    names.sort();
    o.expect(&format!("* members: {}", names.join(", ")));
    o.say("still here");
    p.expect(&format!("{}: still here", o.name));
    server.assert_running();
}

/// The room's module doc: a member that quits is sent what was queued for it, then closed.
#[test]
fn a_reply_queued_before_quit_is_delivered_before_the_close() {
    let (mut server, addr) = chat_server(&[]);
    let mut o = Member::join(addr, &mut []);
    let mut q = Member::join(addr, &mut [&mut o]);
    let mut names = [o.name.clone(), q.name.clone()];
    names.sort();
    // One write: the `/who` reply is queued in the same turn as the quit.
    q.send_raw(b"/who\nquit\n");
    o.expect(&format!("* {} left", q.name));
    q.expect_end_after(format!("* members: {}\n", names.join(", ")).as_bytes());
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 5. --max-line

#[test]
fn a_line_over_max_line_closes_its_sender_and_is_never_broadcast() {
    let (mut server, addr) = chat_server(&["--max-line", "100"]);
    let (mut a, mut b, mut c) = three(addr);

    // 100 bytes is at the limit: a chat line.
    let at_limit = "y".repeat(100);
    a.say(&at_limit);
    b.expect(&format!("{}: {at_limit}", a.name));
    c.expect(&format!("{}: {at_limit}", a.name));

    let long = "x".repeat(200);
    a.say(&long);
    // The others see A leave (so the server has handled the long line), and nothing of it.
    let left = format!("* {} left", a.name);
    b.expect(&left);
    c.expect(&left);
    c.say("barrier");
    b.expect_nothing_before(
        &format!("{}: barrier", c.name),
        "no part of an over-long line may be broadcast",
    );
    b.say("we carry on");
    c.expect_nothing_before(
        &format!("{}: we carry on", b.name),
        "no part of an over-long line may be broadcast",
    );
    b.say("/who");
    let mut names = [b.name.clone(), c.name.clone()];
    names.sort();
    b.expect(&format!("* members: {}", names.join(", ")));
    // The sender: the error line, then the end of its connection.
    a.expect_end_after(b"error line too long\n");
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 6. A slow member is dropped, and nobody waits for it.

/// Bytes of each numbered line B sends (with its newline).
const FLOOD_LINE: usize = 100;
const FLOOD_BYTES: usize = 20 << 20;

fn flood_line(n: usize) -> Vec<u8> {
    let mut line = format!("{n:09} ").into_bytes();
    line.resize(FLOOD_LINE - 1, b'a' + (n % 26) as u8);
    line.push(b'\n');
    line
}

#[test]
fn a_member_that_never_reads_is_dropped_and_the_others_get_every_line_without_stalling() {
    let _turn = heavy_turn();
    // 4 MiB: plenty for A (who never reads) to pass within the 20 MiB flood, and room for C
    // (who reads) to fall behind for a moment on a loaded machine without being dropped too.
    let (mut server, addr) = chat_server(&["--output-limit", "4194304"]);

    // A: a tiny receive buffer, so the server's queue for it grows at once.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
    let a_stream: TcpStream = socket.into();
    let a_local = a_stream.local_addr().unwrap().to_string();
    let (mut a, _) = Member::greeted(a_stream, &mut []);
    assert_eq!(a.name, a_local);
    // From now on A reads nothing.
    let mut b = Member::join(addr, &mut []);
    let mut c = Member::join(addr, &mut [&mut b]);

    let lines = FLOOD_BYTES / FLOOD_LINE;
    let writer = {
        let stream = b.stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut out = BufWriter::with_capacity(64 * 1024, stream);
            for n in 0..lines {
                out.write_all(&flood_line(n))?;
            }
            out.flush()
        })
    };

    let started = Instant::now();
    let b_prefix = format!("{}: ", b.name);
    let a_left = format!("* {} left", a.name);
    let reader = thread::spawn(move || {
        let mut next = 0;
        let mut saw_a_leave = false;
        while next < lines {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "C got only {next} of {lines} lines in 120 s"
            );
            let line = c.raw_line();
            if line == a_left.as_bytes() {
                assert!(!saw_a_leave, "A left twice");
                saw_a_leave = true;
                continue;
            }
            let mut expected = b_prefix.clone().into_bytes();
            expected.extend_from_slice(&flood_line(next));
            expected.pop();
            if line != expected {
                panic!(
                    "C: line {next} is {:?}, expected {:?}",
                    Snippet(&line),
                    Snippet(&expected)
                );
            }
            next += 1;
        }
        (c, saw_a_leave)
    });

    let written = writer.join().expect("the writer thread");
    let (mut c, c_saw_a_leave) = match reader.join() {
        Ok(result) => result,
        Err(panic) => {
            eprintln!(
                "C's reader failed under --model {}",
                util::model().unwrap_or("reactor")
            );
            server.assert_running();
            std::panic::resume_unwind(panic);
        }
    };
    written.expect("B could write its whole 20 MiB");
    let took = started.elapsed();
    eprintln!(
        "20 MiB through the room in {took:?}; C's longest wait between reads {:?}",
        c.longest_gap
    );
    // Every model waits for A once, for the flow-control grace (1 s), before the room goes on
    // without it and drops it; the threaded models' writer threads add their scheduling.
    let gap_bound = match util::model() {
        Some("threaded" | "pool") => Duration::from_secs(3),
        _ => Duration::from_secs(2),
    };
    assert!(
        c.longest_gap <= gap_bound,
        "C waited {:?} between two reads (bound {gap_bound:?}): a slow member must not stall \
         the others",
        c.longest_gap
    );
    assert!(
        c_saw_a_leave,
        "A never read and is over --output-limit, yet C never saw `* {} left`",
        a.name
    );

    // B saw A leave too, and nothing else; the room still works.
    c.say("done");
    let before = b.lines_until(&format!("{}: done", c.name));
    assert_eq!(before, [format!("* {} left", a.name)]);
    server.assert_running();

    // A's connection was closed: draining it reaches the end (clean or reset) in bounded time.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match a.fill(deadline) {
            Ok(0) => break,
            Ok(_) => {
                let len = a.buffer.len();
                if len > 1 << 20 {
                    a.buffer.clear();
                    a.start = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                panic!("A, dropped by the server, was still open {DEADLINE:?} later")
            }
            Err(_) => break, // A reset: closed too.
        }
    }
}

/// `/who` answers the asker alone, and one read of `/who` lines asks for many answers: a member
/// that floods `/who` and reads nothing is dropped at `--output-limit` like any slow member,
/// instead of the server making hundreds of megabytes of answers for it.
#[test]
fn a_member_flooding_who_without_reading_is_dropped() {
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&["--output-limit", "65536"]);
    let mut others: Vec<Member> = Vec::new();
    for _ in 0..40 {
        let mut refs: Vec<&mut Member> = others.iter_mut().collect();
        let member = Member::join(addr, &mut refs);
        others.push(member);
    }
    let before = server.rss_kib();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
    let mut refs: Vec<&mut Member> = others.iter_mut().collect();
    let (flooder, _) = Member::greeted(TcpStream::from(socket), &mut refs);
    // 4 MiB of `/who`: about 800,000 answers of 40 names, 0.6 GB if all were made.
    let writer = {
        let mut stream = flooder.stream.try_clone().unwrap();
        thread::spawn(move || {
            let lines = b"/who\n".repeat(4 << 20 >> 5);
            stream.write_all(&lines)
        })
    };
    let left = format!("* {} left", flooder.name);
    others[0].lines_until(&left);
    // Whether the writer finished (the kernel's buffers may take it all) or was cut off.
    let _ = writer.join().expect("the writer thread");
    let grown_kib = server.rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 32 * 1024,
        "the server grew by {grown_kib} KiB answering /who to a member that never reads"
    );
    // The others are served as before.
    others[1].say("still here");
    let line = format!("{}: still here", others[1].name);
    others[0].lines_until(&line);
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 6b. Flow control (v3): a burst slows its sender, never gets the readers dropped; a member that
// reads a trickle, or nothing, is dropped and does not set the room's pace.

/// Line `n` of a burst: mostly empty lines (what costs the room most per byte read: each is a
/// whole `NAME: ` line for every member), every 100th numbered so the order is checked too.
fn burst_line(n: usize) -> String {
    if n % 100 == 0 {
        n.to_string()
    } else {
        String::new()
    }
}

/// Reads `lines` lines of `sender`'s burst, in order, then `sender: end`; `* GONE left` may come
/// in between, once each. Returns the member and the names seen leaving.
fn read_burst<S: Timed>(
    mut member: Member<S>,
    sender: &str,
    lines: usize,
) -> (Member<S>, Vec<String>) {
    let started = Instant::now();
    let mut left = Vec::new();
    let mut next = 0;
    while next <= lines {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}: got only {next} of {lines} lines in 120 s",
            member.name
        );
        let line = member.line();
        if let Some(gone) = line
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" left"))
        {
            assert!(!left.iter().any(|l| l == gone), "{gone} left twice");
            left.push(gone.to_string());
            continue;
        }
        let text = if next == lines {
            "end".to_string()
        } else {
            burst_line(next)
        };
        assert_eq!(
            line,
            format!("{sender}: {text}"),
            "{}: line {next} of the burst",
            member.name
        );
        next += 1;
    }
    (member, left)
}

/// A member floods the room with `LINES` lines in one write while two members read as fast as
/// they can and one never reads: both readers stay and get every line in order, the one that
/// never reads is dropped, and the sender stays (it was only read more slowly).
fn a_burst_keeps_its_readers<S: Timed + Send + 'static>(
    server: &mut Server,
    connect: impl Fn() -> S,
    silent: impl FnOnce() -> S,
) {
    const LINES: usize = 300_000;
    let (mut flooder, _) = Member::greeted(connect(), &mut []);
    let (mut one, _) = Member::greeted(connect(), &mut [&mut flooder]);
    let (mut two, _) = Member::greeted(connect(), &mut [&mut flooder, &mut one]);
    let (silent, _) = Member::greeted(silent(), &mut [&mut flooder, &mut one, &mut two]);
    let before_kib = server.rss_kib();
    let mut burst = String::new();
    for n in 0..LINES {
        burst += &burst_line(n);
        burst.push('\n');
    }
    burst += "end\n";
    let sender = flooder.name.clone();
    let started = Instant::now();
    let readers: Vec<_> = [one, two]
        .into_iter()
        .map(|member| {
            let sender = sender.clone();
            thread::spawn(move || read_burst(member, &sender, LINES))
        })
        .collect();
    flooder.send_raw(burst.as_bytes());
    let mut peak_kib = 0;
    let mut readers: Vec<(Member<S>, Vec<String>)> = readers
        .into_iter()
        .map(|reader| {
            peak_kib = peak_kib.max(server.rss_kib());
            match reader.join() {
                Ok(result) => result,
                Err(panic) => {
                    server.assert_running();
                    std::panic::resume_unwind(panic)
                }
            }
        })
        .collect();
    let took = started.elapsed();
    eprintln!(
        "burst of {LINES} lines ({} bytes) to two readers in {took:?}; both got all {LINES}; \
         server RSS {before_kib} KiB before, {} KiB after",
        burst.len(),
        server.rss_kib().max(peak_kib)
    );
    for (member, left) in &readers {
        assert_eq!(
            left,
            std::slice::from_ref(&silent.name),
            "{}: the member that never reads must be dropped, and only it",
            member.name
        );
    }
    // The sender is still a member: it hears the others.
    let (one, _) = &mut readers[0];
    one.say("still here?");
    flooder.lines_until(&format!("{}: still here?", one.name));
    server.assert_running();
}

#[test]
fn a_burst_over_unix_never_gets_the_members_who_keep_reading_dropped() {
    let _turn = heavy_turn();
    let path = socket_path("burst");
    let spec = format!("chat@unix:{}", path.display());
    let mut server = Server::start(&[&spec]);
    let connect = || {
        let stream = UnixStream::connect(&path).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream
    };
    a_burst_keeps_its_readers(&mut server, connect, connect);
}

#[test]
fn a_burst_over_tcp_never_gets_the_members_who_keep_reading_dropped() {
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&[]);
    // The silent member's receive buffer is small, so that loopback TCP's large buffers do
    // not hold the whole burst for it.
    let silent = || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
        TcpStream::from(socket)
    };
    a_burst_keeps_its_readers(&mut server, || connect(addr), silent);
}

/// While one member floods, another member's line still gets through long before the flood
/// ends: a flooder that the room reads more slowly does not starve the other senders.
#[test]
fn a_flooder_does_not_starve_another_sender() {
    let _turn = heavy_turn();
    const LINES: usize = 300_000;
    let path = socket_path("fair");
    let spec = format!("chat@unix:{}", path.display());
    let mut server = Server::start(&[&spec]);
    let (mut flooder, _) = unix_member(&path, &mut []);
    let (mut talker, _) = unix_member(&path, &mut [&mut flooder]);
    let (mut reader, _) = unix_member(&path, &mut [&mut flooder, &mut talker]);
    let mut burst = String::new();
    for n in 0..LINES {
        burst += &burst_line(n);
        burst.push('\n');
    }
    burst += "end\n";
    let writer = {
        let mut stream = flooder.stream.try_clone().unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        thread::spawn(move || stream.write_all(burst.as_bytes()))
    };
    // The talker reads what the room sends it (else it would rightly be dropped), until its
    // read side is shut down below.
    let drain = {
        let mut stream = talker.stream.try_clone().unwrap();
        thread::spawn(move || {
            stream.set_read_timeout(None).unwrap(); // shared with `talker`, which only writes now
            let mut chunk = [0; 64 * 1024];
            while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
        })
    };
    let from_flooder = format!("{}: ", flooder.name);
    let hello = format!("{}: hello", talker.name);
    let mut flood_lines = 0;
    let mut hello_after = None;
    loop {
        let line = reader.line();
        if line == hello {
            hello_after = Some(flood_lines);
            continue;
        }
        let text = line
            .strip_prefix(&from_flooder)
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        if text == "end" {
            break;
        }
        assert_eq!(text, burst_line(flood_lines), "flood line {flood_lines}");
        flood_lines += 1;
        if flood_lines == 1000 {
            talker.say("hello");
        }
    }
    writer
        .join()
        .unwrap()
        .expect("the flooder wrote everything");
    talker.stream.shutdown(std::net::Shutdown::Read).unwrap();
    drain.join().unwrap();
    let after = hello_after.expect("the other sender's line never arrived before the flood ended");
    eprintln!("the other sender's line arrived after {after} of the flood's {LINES} lines");
    assert!(
        after < LINES / 2,
        "the other sender's line waited for {after} of the flood's {LINES} lines"
    );
    server.assert_running();
}

/// A member that reads a trickle (32 bytes every 100 ms) is dropped once it is owed more than
/// `--output-limit`, and the member that reads at full pace gets every line meanwhile: the
/// trickle does not set the room's pace. Over Unix sockets, where each trickle read frees room
/// for about one more line well within a second (so a send timeout never fires).
#[test]
fn a_member_reading_a_trickle_is_dropped_and_does_not_pace_the_room() {
    let _turn = heavy_turn();
    const LINES: usize = 40_000; // of 100 bytes: 4 MB, sixteen times the limit
    let path = socket_path("trickle");
    let spec = format!("chat@unix:{}", path.display());
    let mut server = Server::start(&[&spec, "--output-limit", "262144"]);
    let (mut sender, _) = unix_member(&path, &mut []);
    let (mut reader, _) = unix_member(&path, &mut [&mut sender]);
    let (trickle, _) = unix_member(&path, &mut [&mut sender, &mut reader]);
    let trickle_name = trickle.name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = std::sync::Arc::clone(&stop);
        let mut stream = trickle.stream;
        thread::spawn(move || {
            let mut got = 0;
            let mut chunk = [0; 16];
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match stream.read(&mut chunk) {
                    Ok(0) => return (got, true),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(_) => return (got, true), // reset: closed too
                }
                thread::sleep(Duration::from_millis(100));
            }
            (got, false)
        })
    };
    let writer = {
        let stream = sender.stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut out = BufWriter::with_capacity(64 * 1024, stream);
            for n in 0..LINES {
                out.write_all(&flood_line(n))?;
            }
            out.flush()
        })
    };
    let started = Instant::now();
    let prefix = format!("{}: ", sender.name);
    let mut next = 0;
    let mut trickle_left = false;
    while next < LINES {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reader got only {next} of {LINES} lines in 60 s: the trickle paces the room"
        );
        let line = reader.raw_line();
        if line == format!("* {trickle_name} left").as_bytes() {
            trickle_left = true;
            continue;
        }
        let mut expected = prefix.clone().into_bytes();
        expected.extend_from_slice(&flood_line(next));
        expected.pop();
        assert!(line == expected, "line {next} is {:?}", Snippet(&line));
        next += 1;
    }
    let took = started.elapsed();
    writer.join().unwrap().expect("the sender wrote everything");
    if !trickle_left {
        sender.say("barrier");
        trickle_left = reader
            .lines_until(&format!("{}: barrier", sender.name))
            .contains(&format!("* {trickle_name} left"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (trickled, closed) = trickler.join().unwrap();
    eprintln!(
        "{LINES} lines to the full-pace reader in {took:?}; the trickle reader took {trickled} \
         bytes, closed: {closed}"
    );
    assert!(trickle_left, "the trickle reader was never dropped");
    assert!(
        took < Duration::from_secs(30),
        "the reader needed {took:?}: the trickle reader set the room's pace"
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 7. A thousand members

#[test]
fn a_thousand_members_each_receive_one_line_from_each_of_ten_senders() {
    const MEMBERS: usize = 1000;
    const SENDERS: usize = 10;
    let limit = raise_fd_limit();
    if limit < 2100 {
        eprintln!("skipped: the open-file limit is {limit}, under the 2,100 this test needs");
        return;
    }
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&[]);

    let started = Instant::now();
    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        let stream = connect(addr);
        let local = stream.local_addr().unwrap().to_string();
        // The others' `joined` notices wait in their sockets (a few dozen KiB each).
        let (member, count) = Member::greeted(stream, &mut []);
        assert_eq!(member.name, local);
        assert_eq!(count, i + 1, "{} joined as member {}", member.name, i + 1);
        members.push(member);
    }
    eprintln!("{MEMBERS} members joined in {:?}", started.elapsed());

    let expected: Vec<String> = (0..SENDERS)
        .map(|s| format!("{}: line from sender {s}", members[s].name))
        .collect();
    for (s, sender) in members.iter_mut().take(SENDERS).enumerate() {
        sender.say(&format!("line from sender {s}"));
    }

    // The last member to join has no `joined` notices before the lines: once it has them all,
    // the server has handled every sender's line, and its barrier comes after them.
    let last = MEMBERS - 1;
    let mut got: Vec<String> = (0..SENDERS).map(|_| members[last].line()).collect();
    got.sort();
    let mut all = expected.clone();
    all.sort();
    assert_eq!(got, all, "the last member's lines");
    members[last].say("barrier");
    let barrier = format!("{}: barrier", members[last].name);

    let joined_names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    for (i, member) in members.iter_mut().enumerate().take(last) {
        let before = member.lines_until(&barrier);
        // First the members that joined after it, in order; then the chat lines.
        let later = MEMBERS - 1 - i;
        assert!(
            before.len() >= later,
            "member {i} got {} lines before the barrier",
            before.len()
        );
        for (line, name) in before[..later].iter().zip(&joined_names[i + 1..]) {
            assert_eq!(*line, format!("* {name} joined"), "member {i}");
        }
        let mut lines: Vec<String> = before[later..].to_vec();
        lines.sort();
        let mut want: Vec<String> = expected
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != i)
            .map(|(_, line)| line.clone())
            .collect();
        want.sort();
        assert_eq!(
            lines, want,
            "member {i} ({}) must receive exactly one line from each other sender",
            member.name
        );
    }
    // And the last member got nothing more than its ten lines.
    members[0].say("barrier 2");
    let barrier = format!("{}: barrier 2", members[0].name);
    members[last].expect_nothing_before(&barrier, "each sender's line once");
    eprintln!("done in {:?}", started.elapsed());
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 7b. Memory: a line is stored once, however many members it waits for

/// Lines of 1 KiB sent to members that have stopped reading: the server's memory grows by about
/// the lines' size, not by members × lines (which here would be tens of MiB).
#[test]
fn lines_for_members_who_stopped_reading_are_stored_once() {
    const STALLED: usize = 300;
    const LINES: usize = 100;
    let limit = raise_fd_limit();
    if limit < 2 * STALLED as u64 + 100 {
        eprintln!("skipped: the open-file limit is {limit}, too low for {STALLED} members");
        return;
    }
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&[]);
    let mut sender = Member::join(addr, &mut []);
    let mut reader = Member::join(addr, &mut [&mut sender]);
    // Members with tiny receive buffers that read nothing after their greeting: the others'
    // join notices already fill them.
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
        let (member, _) = Member::greeted(TcpStream::from(socket), &mut []);
        stalled.push(member);
    }
    // Every join has been handled once the reader has seen the last one; a first line warms
    // up whatever the server allocates once.
    let last = stalled.last().unwrap().name.clone();
    reader.lines_until(&format!("* {last} joined"));
    sender.say("warm-up");
    reader.expect(&format!("{}: warm-up", sender.name));
    let before = server.rss_kib();

    let body = "x".repeat(1000);
    for n in 0..LINES {
        sender.say(&format!("{n:04} {body}"));
    }
    // The server writes every member's lines in the turn it reads them, so once the reader has
    // the last line, the stalled members' shares wait in the server.
    for n in 0..LINES {
        reader.expect(&format!("{}: {n:04} {body}", sender.name));
    }
    let grown_kib = server.rss_kib().saturating_sub(before);
    let lines_kib = (LINES * 1024 / 1024) as u64;
    let copies_kib = lines_kib * STALLED as u64;
    eprintln!(
        "{LINES} lines of 1 KiB for {STALLED} stalled members: the server grew by {grown_kib} KiB \
         (one copy each would be about {copies_kib} KiB)"
    );
    assert!(
        grown_kib < 4096,
        "the server grew by {grown_kib} KiB: the lines are not shared (copies: {copies_kib} KiB)"
    );
    server.assert_running();
    drop(stalled);
}

/// After a burst of joins (every member is sent every later member's `joined` notice), each
/// idle member costs under a kibibyte of server memory: nothing of the burst stays per member.
#[test]
fn idle_members_stay_small_after_a_burst_of_joins() {
    let limit = raise_fd_limit();
    let members: usize = 2000.min((limit as usize).saturating_sub(200) / 2);
    if members < 500 {
        eprintln!("skipped: the open-file limit is {limit}, too low for 500 members");
        return;
    }
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&[]);
    let before = server.rss_kib();
    let mut load = std::process::Command::new(env!("CARGO_BIN_EXE_oneloop"))
        .args(["load", &addr.to_string(), "--protocol", "chat", "--idle"])
        .args(["--connections", &members.to_string(), "--duration", "120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut established = String::new();
    io::BufRead::read_line(
        &mut io::BufReader::new(load.stdout.take().unwrap()),
        &mut established,
    )
    .unwrap();
    assert!(
        established.starts_with(&format!("established {members} of {members} connections")),
        "{established:?}"
    );
    // Every member has its greeting; let the last join notices drain before measuring.
    let deadline = Instant::now() + DEADLINE;
    let mut per_member = u64::MAX;
    while Instant::now() < deadline {
        per_member = (server.rss_kib().saturating_sub(before) * 1024) / members as u64;
        if per_member < 1024 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = load.kill();
    let _ = load.wait();
    eprintln!("{members} idle chat members: {per_member} bytes of server RSS each");
    assert!(
        per_member < 1024,
        "an idle member costs {per_member} bytes after the join burst"
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 8. Unix members

fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-chat{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn unix_member(path: &Path, others: &mut [&mut Member<UnixStream>]) -> (Member<UnixStream>, usize) {
    let stream =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    Member::greeted(stream, others)
}

#[test]
fn unix_members_are_named_unix_1_unix_2_in_order() {
    let path = socket_path("names");
    let spec = format!("chat@unix:{}", path.display());
    let mut server = Server::start(&[&spec]);
    assert_eq!(server.path("chat"), path);

    let (mut one, count) = unix_member(&path, &mut []);
    assert_eq!((one.name.as_str(), count), ("unix-1", 1));
    let (mut two, count) = unix_member(&path, &mut [&mut one]);
    assert_eq!((two.name.as_str(), count), ("unix-2", 2));

    two.say("hello over unix");
    one.expect("unix-2: hello over unix");
    one.say("hi two");
    two.expect("unix-1: hi two");
    one.say("/who");
    one.expect("* members: unix-1, unix-2");

    two.say("quit");
    one.expect("* unix-2 left");
    two.expect_end_after(b"");
    // Numbers are not reused.
    let (mut three, count) = unix_member(&path, &mut [&mut one]);
    assert_eq!((three.name.as_str(), count), ("unix-3", 2));
    three.say("third");
    one.expect("unix-3: third");
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 9. CRLF and control characters

#[test]
fn crlf_is_dropped_and_control_characters_arrive_escaped() {
    let (mut server, addr) = chat_server(&[]);
    let mut a = Member::join(addr, &mut []);
    let mut b = Member::join(addr, &mut [&mut a]);

    let cases: [(&[u8], String); 9] = [
        (b"hi\r\n", format!("{}: hi", a.name)),
        (
            b"\x1b[31mred\x1b[0m\r\n",
            format!("{}: ^[[31mred^[[0m", a.name),
        ),
        (b"del\x7fhere\n", format!("{}: del^?here", a.name)),
        (b"tab\tstays\n", format!("{}: tab\tstays", a.name)),
        (
            b"bell\x07 nul\x00 cr\rinside\n",
            format!("{}: bell^G nul^@ cr^Minside", a.name),
        ),
        // C1 controls and invalid UTF-8 (v3): CSI in UTF-8, a lone CSI byte, OSC ... ST.
        (b"\xc2\x9b2J\n", format!("{}: \\u{{9b}}2J", a.name)),
        (b"\x9b2J\n", format!("{}: \\x9b2J", a.name)),
        (
            b"\xc2\x9d0;pwned\xc2\x9c\n",
            format!("{}: \\u{{9d}}0;pwned\\u{{9c}}", a.name),
        ),
        (
            "caf\u{e9} \u{65e5}\n".as_bytes(),
            format!("{}: caf\u{e9} \u{65e5}", a.name),
        ),
    ];
    for (sent, expected) in &cases {
        a.send_raw(sent);
        let got = b.raw_line();
        assert_eq!(
            got.escape_ascii().to_string(),
            expected.as_bytes().escape_ascii().to_string(),
            "sent {:?}",
            sent.escape_ascii().to_string()
        );
    }
    // A CRLF command is a command.
    b.send_raw(b"/who\r\n");
    let mut names = [a.name.clone(), b.name.clone()];
    names.sort();
    b.expect(&format!("* members: {}", names.join(", ")));
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 10. One room per chat service

#[test]
fn two_chat_services_in_one_server_are_two_rooms() {
    let mut server = Server::start(&["chat@127.0.0.1:0", "chat@127.0.0.1:0"]);
    let addrs: Vec<SocketAddr> = server.listening().iter().map(|l| l.addr).collect();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);

    let mut a1 = Member::join(addrs[0], &mut []);
    let mut b1 = Member::join(addrs[0], &mut [&mut a1]);
    // Room two: its first member is alone, though room one has two.
    let stream = connect(addrs[1]);
    let (mut a2, count) = Member::greeted(stream, &mut []);
    assert_eq!(count, 1, "room two's first member must be alone");
    let mut b2 = Member::join(addrs[1], &mut [&mut a2]);

    a1.say("room one only");
    b1.expect(&format!("{}: room one only", a1.name));
    a2.say("room two only");
    b2.expect(&format!("{}: room two only", a2.name));

    // Barriers within each room: nothing crossed over (not the lines, not the joins).
    b2.say("barrier two");
    a2.expect_nothing_before(
        &format!("{}: barrier two", b2.name),
        "room one's line must not reach room two",
    );
    b1.say("barrier one");
    a1.expect_nothing_before(
        &format!("{}: barrier one", b1.name),
        "room two's joins and lines must not reach room one",
    );

    a2.say("/who");
    let mut names = [a2.name.clone(), b2.name.clone()];
    names.sort();
    a2.expect(&format!("* members: {}", names.join(", ")));

    // A name is per room: room two may take a name room one uses.
    a1.say("/nick same");
    a1.expect(&format!("* {} is now same", a1.name));
    b1.expect(&format!("* {} is now same", a1.name));
    a2.say("/nick same");
    a2.expect(&format!("* {} is now same", a2.name));
    b2.expect(&format!("* {} is now same", a2.name));
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 11. Graceful shutdown

#[test]
fn sigterm_tells_every_member_then_closes_it_cleanly_and_exits_zero_at_once() {
    let (mut server, addr) = chat_server(&["--shutdown-timeout", "30"]);
    let (mut a, mut b, mut c) = three(addr);
    a.say("before the end");
    b.expect(&format!("{}: before the end", a.name));
    c.expect(&format!("{}: before the end", a.name));

    let started = Instant::now();
    server.signal("TERM");
    // Everyone is leaving: nobody is told about the others; each is told the server is
    // shutting down (v3), then gets its end of stream.
    for member in [&mut a, &mut b, &mut c] {
        member.expect_end_after(b"* server shutting down\n");
    }
    let status = server.wait_for_exit();
    assert!(status.success(), "SIGTERM: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle members must not hold the shutdown to its 30 s timeout (took {:?})",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 12. --idle-timeout

/// The idle timeout counts lines written to a member as activity: a member that only listens
/// stays while lines reach it, and is dropped once nothing has moved for the timeout.
#[test]
fn a_listening_member_is_not_idle_while_lines_reach_it_and_is_dropped_once_they_stop() {
    // Not beside the heavy tests: a tick delayed past the timeout by a loaded machine would
    // rightly drop the listener.
    let _turn = heavy_turn();
    let (mut server, addr) = chat_server(&["--idle-timeout", "2"]);
    let mut listener = Member::join(addr, &mut []);
    let mut talker = Member::join(addr, &mut [&mut listener]);
    // 3 s of ticks, 250 ms apart: the listener never sends, yet stays.
    for n in 0..12 {
        thread::sleep(Duration::from_millis(250));
        talker.say(&format!("tick {n}"));
        listener.expect(&format!("{}: tick {n}", talker.name));
    }
    talker.say("/who");
    let mut names = [listener.name.clone(), talker.name.clone()];
    names.sort();
    talker.expect(&format!("* members: {}", names.join(", ")));

    // Now nothing moves: both are dropped within about two seconds. The listener may first see the
    // talker leave (whichever timeout fires first), then its own end of stream.
    let quiet = Instant::now();
    let deadline = quiet + DEADLINE;
    loop {
        match listener.fill(deadline) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "{}: expected the idle timeout's close, got {e}",
                listener.name
            ),
        }
    }
    let rest = String::from_utf8_lossy(&listener.buffer[listener.start..]).into_owned();
    assert!(
        rest.is_empty() || rest == format!("* {} left\n", talker.name),
        "before its close the idle listener received {rest:?}"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// The same tests under the threaded models (the room behind a lock, see `src/models/chat.rs`).

per_model! {
    threaded: [
        a_line_reaches_every_other_member_under_the_senders_address_and_never_the_sender,
        nick_renames_and_is_announced_and_bad_or_taken_names_are_refused_quietly,
        who_lists_every_member_sorted_to_the_asker_only,
        quit_colon_q_and_a_plain_close_are_each_announced_and_quitting_closes,
        a_reply_queued_before_quit_is_delivered_before_the_close,
        a_line_over_max_line_closes_its_sender_and_is_never_broadcast,
        a_member_that_never_reads_is_dropped_and_the_others_get_every_line_without_stalling,
        a_burst_over_unix_never_gets_the_members_who_keep_reading_dropped,
        a_burst_over_tcp_never_gets_the_members_who_keep_reading_dropped,
        a_member_reading_a_trickle_is_dropped_and_does_not_pace_the_room,
        a_flooder_does_not_starve_another_sender,
        a_thousand_members_each_receive_one_line_from_each_of_ten_senders,
        unix_members_are_named_unix_1_unix_2_in_order,
        crlf_is_dropped_and_control_characters_arrive_escaped,
        two_chat_services_in_one_server_are_two_rooms,
        sigterm_tells_every_member_then_closes_it_cleanly_and_exits_zero_at_once,
        a_listening_member_is_not_idle_while_lines_reach_it_and_is_dropped_once_they_stop,
    ]
}

// Not the thousand members: a pool serves `--threads` members at once (8 on two cores), and the
// others wait in its queue, not even greeted.
per_model! {
    pool: [
        a_line_reaches_every_other_member_under_the_senders_address_and_never_the_sender,
        nick_renames_and_is_announced_and_bad_or_taken_names_are_refused_quietly,
        who_lists_every_member_sorted_to_the_asker_only,
        quit_colon_q_and_a_plain_close_are_each_announced_and_quitting_closes,
        a_reply_queued_before_quit_is_delivered_before_the_close,
        a_line_over_max_line_closes_its_sender_and_is_never_broadcast,
        a_member_that_never_reads_is_dropped_and_the_others_get_every_line_without_stalling,
        a_burst_over_unix_never_gets_the_members_who_keep_reading_dropped,
        a_burst_over_tcp_never_gets_the_members_who_keep_reading_dropped,
        a_member_reading_a_trickle_is_dropped_and_does_not_pace_the_room,
        a_flooder_does_not_starve_another_sender,
        unix_members_are_named_unix_1_unix_2_in_order,
        crlf_is_dropped_and_control_characters_arrive_escaped,
        two_chat_services_in_one_server_are_two_rooms,
        sigterm_tells_every_member_then_closes_it_cleanly_and_exits_zero_at_once,
        a_listening_member_is_not_idle_while_lines_reach_it_and_is_dropped_once_they_stop,
    ]
}
