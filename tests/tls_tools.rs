//! `tls:` services against the real programs people point at a TLS server, not only the tests'
//! own rustls client:
//!
//! * `openssl s_client`, TLS 1.2 and 1.3 forced: upper and echo byte for byte; alice's client
//!   certificate names her in chat, none or mallory's is refused; key updates, a refused
//!   renegotiation, a saved session offered again, a HelloRetryRequest, 512-byte records;
//!   chat's `quit` and a long line end with the server's close_notify, as SIGTERM does;
//! * `socat OPENSSL:`: lines and 2 MiB both ways over both versions, its end of input (its
//!   close_notify) flushed and answered with the server's, client certificates in chat, an
//!   upload whose close_notify comes right behind the body, a reply held by `--reply-delay`;
//! * HAProxy in `mode tcp` passing TLS through with a PROXY header (`send-proxy-v2`, and v1) in
//!   front of it: members named by their real address, or by their certificate; its health
//!   checks mark the service up and never join the room;
//! * the same tools as adversaries: a session that says nothing past `--idle-timeout`, plain
//!   text where a ClientHello belongs, an `s_client` killed by its PID before or in the middle of
//!   its handshake, stuck handshakes holding `--max-connections` slots and SIGTERM not waiting
//!   for them, a member stopped by SIGSTOP during a flood.
//!
//! Certificates are made per test (`tests/util/tls.rs`). Each program runs with its standard
//! streams piped, every wait bounded by [`DEADLINE`], and is killed by its own PID when the test
//! is done. Without a program (Debian: `apt-get install openssl socat haproxy`), each test that
//! needs it skips, saying so in one line; `.ci/run` installs them and sets
//! `ONELOOP_TEST_REQUIRE_TOOLS=1`, under which they fail instead.

mod util;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{Server, Snippet, DEADLINE};

// ---------------------------------------------------------------------------------------------
// A real program, its standard streams piped.

/// A program the test runs: what it prints is collected on threads, every wait is bounded by
/// [`DEADLINE`], and it is killed (by its own PID) and reaped when dropped.
struct Tool {
    /// Its command line, for failure messages.
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<Vec<u8>>,
    /// Everything read from its standard output so far.
    out: Vec<u8>,
    /// How much of `out` [`Tool::line`] and [`Tool::expect`] have taken.
    taken: usize,
    /// Its standard error, as far as it has come.
    err: Arc<Mutex<Vec<u8>>>,
}

impl Tool {
    /// Starts `program ARGS...`.
    fn spawn(program: &Path, args: &[String]) -> Tool {
        let what = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let receiver = util::forward_output(stdout);
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&err);
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(count @ 1..) = stderr.read(&mut buffer) {
                sink.lock().unwrap().extend_from_slice(&buffer[..count]);
            }
        });
        Tool {
            what,
            stdin: child.stdin.take(),
            child,
            stdout: receiver,
            out: Vec::new(),
            taken: 0,
            err,
        }
    }

    /// What it has written on standard error so far.
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Panics with its command line, output and standard error.
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\n--- {}\n--- its stdout: {:?}\n--- its stderr:\n{}",
            self.what,
            Snippet(&self.out),
            self.stderr()
        )
    }

    /// Writes `bytes` on its standard input.
    fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(e) = stdin.write_all(bytes).and_then(|()| stdin.flush()) {
            self.fail(&format!("writing {bytes:?} to its stdin: {e}"));
        }
    }

    /// Closes its standard input: the end of its input.
    fn close_input(&mut self) {
        drop(self.stdin.take());
    }

    /// Takes what has arrived on its standard output, waiting until `deadline` for more;
    /// `false` once its standard output is closed or the deadline has passed.
    fn pump(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(bytes) => {
                self.out.extend_from_slice(&bytes);
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Waits for exactly `expected` next on its standard output.
    fn expect(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        while self.out.len() < self.taken + expected.len() {
            if !self.pump(deadline) {
                self.fail(&format!("waited for {:?}", Snippet(expected)));
            }
        }
        let got = &self.out[self.taken..self.taken + expected.len()];
        if got != expected {
            self.fail(&format!(
                "expected {:?}, got {:?}",
                Snippet(expected),
                Snippet(got)
            ));
        }
        self.taken += expected.len();
    }

    /// The next line of its standard output, without its `\n`.
    fn line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.out[self.taken..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.out[self.taken..self.taken + end]);
                let line = line.into_owned();
                self.taken += end + 1;
                return line;
            }
            if !self.pump(deadline) {
                self.fail("waited for a whole line");
            }
        }
    }

    /// Waits until its standard output holds `needle` (anywhere); `false` if it ends without.
    fn wait_for(&mut self, needle: &[u8]) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while !self.out.windows(needle.len()).any(|w| w == needle) {
            if !self.pump(deadline) {
                return false;
            }
        }
        true
    }

    /// Waits until its standard error holds `needle` `count` times.
    fn wait_for_stderr(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.stderr().matches(needle).count() < count {
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "waited for {needle:?} {count} times on its stderr"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends it signal `name` (`STOP`, `CONT`), by its PID.
    fn signal(&self, name: &str) {
        util::signal(self.child.id(), name);
    }

    /// Waits up to `within` for it to exit; `None` if it is still running.
    fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Its stdout is closed now: collect the rest (bounded: a grandchild could hold it).
                let until = Instant::now() + Duration::from_secs(1);
                while self.pump(until) {}
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to [`DEADLINE`] for it to exit; fails the test if it does not.
    fn finish(&mut self) -> ExitStatus {
        match self.wait(DEADLINE) {
            Some(status) => status,
            None => self.fail(&format!("still running after {DEADLINE:?}")),
        }
    }

    /// Kills it with SIGKILL, by its PID, and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything after what [`Tool::line`] and [`Tool::expect`] have taken.
    fn rest(&self) -> &[u8] {
        &self.out[self.taken..]
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients, and the server.

/// A reactor serving `services` with `pki`'s server certificate, plus `extra` options.
fn serve(pki: &Pki, services: &[&str], extra: &[&str]) -> Server {
    pki.serve(services, extra)
}

/// `openssl s_client` to `addr`, checking the server's certificate against `pki`'s CA for
/// `localhost` (a failed check fails the handshake), printing only what the server sends, with
/// no command letters (a line starting with `Q` or `R` is data) and ending at the end of its
/// input with a close_notify. `extra`: `-tls1_2`, `-cert`, ...
fn s_client(openssl: &Path, addr: SocketAddr, pki: &Pki, extra: &[&str]) -> Tool {
    let quiet = ["-quiet", "-no_ign_eof", "-nocommands"];
    s_client_as(openssl, addr, pki, &[&quiet[..], extra].concat())
}

/// `openssl s_client` to `addr`, checking the server's certificate as [`s_client`] does, with
/// only `options` besides: without `-quiet` it prints the session on its standard output
/// before the data, and takes lines that start with `R`, `k` or `K` (TLS 1.2 renegotiation,
/// TLS 1.3 key updates) as commands.
fn s_client_as(openssl: &Path, addr: SocketAddr, pki: &Pki, options: &[&str]) -> Tool {
    let addr = addr.to_string();
    let checks = [
        "s_client",
        "-connect",
        &addr,
        "-CAfile",
        pki.ca.to_str().unwrap(),
        "-servername",
        "localhost",
        "-verify_hostname",
        "localhost",
        "-verify_return_error",
    ];
    let args: Vec<String> = checks
        .iter()
        .chain(options)
        .map(|s| s.to_string())
        .collect();
    Tool::spawn(openssl, &args)
}

/// `-cert` and `-key` of alice's client certificate, for `s_client`.
fn alice(pki: &Pki) -> [&str; 4] {
    [
        "-cert",
        pki.client_cert.to_str().unwrap(),
        "-key",
        pki.client_key.to_str().unwrap(),
    ]
}

/// `socat -d -d -t 10 - OPENSSL:ADDR,cafile=CA[,OPTIONS]`: standard input to the server, the
/// server to standard output, notices on standard error. At the end of its input it sends its
/// close_notify and waits up to 10 s (`-t`) for the server's end.
fn socat_tls(socat: &Path, addr: SocketAddr, pki: &Pki, options: &str) -> Tool {
    let mut address = format!("OPENSSL:{addr},cafile={}", pki.ca.display());
    if !options.is_empty() {
        address.push(',');
        address.push_str(options);
    }
    let args = ["-d", "-d", "-t", "10", "-", &address];
    Tool::spawn(socat, &args.map(String::from))
}

/// Where `program` is; call after [`util::require_tools`] has said it is here.
fn program(program: &str) -> PathBuf {
    util::find_program(program).unwrap_or_else(|| panic!("{program} vanished"))
}

/// Waits (up to [`DEADLINE`]) until the server has `count` descriptors open: a connection
/// accepted, or closed.
fn wait_for_fds(server: &Server, count: usize, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let now = server.open_fds();
        if now == count {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: the server has {now} descriptors open, not {count}, after {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A new `s_client` session on `echo` that gets `probe` back, then ends with its close_notify:
/// the server is still serving.
fn echo_round_trip(openssl: &Path, addr: SocketAddr, pki: &Pki, probe: &[u8]) {
    let mut client = s_client(openssl, addr, pki, &[]);
    client.type_in(probe);
    client.expect(probe);
    client.close_input();
    let status = client.finish();
    if !status.success() {
        client.fail(&format!("exited with {status}"));
    }
}

// ---------------------------------------------------------------------------------------------
// openssl s_client

#[test]
fn s_client_over_tls_1_2_and_1_3_gets_upper_and_echo_byte_for_byte() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("s-client");
    let pki = Pki::new(&dir);
    let mut server = serve(
        &pki,
        &["upper@tls:127.0.0.1:0", "echo@tls:127.0.0.1:0"],
        &[],
    );
    let (upper, echo) = (
        server.addr_of("upper", "tls"),
        server.addr_of("echo", "tls"),
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let mut client = s_client(&openssl, upper, &pki, &[version]);
        client.type_in("straße über alles\n".as_bytes());
        client.expect("STRASSE ÜBER ALLES\n".as_bytes());
        // Lines s_client would take as commands without -nocommands: data here.
        client.type_in(b"Q\nR\nk\n");
        client.expect(b"Q\nR\nK\n");
        client.close_input();
        let status = client.finish();
        if !status.success() || !client.rest().is_empty() {
            client.fail(&format!(
                "{version}: exited with {status} after the replies"
            ));
        }

        let mut client = s_client(&openssl, echo, &pki, &[version]);
        // Bytes that are not UTF-8, a NUL, CRLF: echoed as they are.
        let bytes = b"caf\xc3\xa9 \xff\xfe \x00 line\r\n";
        client.type_in(bytes);
        client.expect(bytes);
        let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        client.type_in(&big);
        client.expect(&big);
        client.close_input();
        let status = client.finish();
        if !status.success() || !client.rest().is_empty() {
            client.fail(&format!("{version}: exited with {status} after the echo"));
        }
    }
    server.assert_running();
}

/// Two handshake corner cases a real client brings: a HelloRetryRequest (s_client offers a key
/// share only for P-521, which the server does not take, so it asks for X25519 and a second
/// ClientHello follows), and records of 512 bytes (`-max_send_frag`), which split alice's
/// certificate message and the text's two-byte characters across records.
#[test]
fn s_client_after_a_hello_retry_and_in_512_byte_records_is_served() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("hrr");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let mut server = serve(&pki, &["upper@tls:127.0.0.1:0"], &["--tls-client-ca", ca]);
    let addr = server.addr_of("upper", "tls");
    let identity = alice(&pki);

    // -msg: every handshake message s_client sends and gets, on its standard output.
    let options = [
        &identity[..],
        &["-tls1_3", "-groups", "P-521:X25519", "-msg"],
    ]
    .concat();
    let mut client = s_client(&openssl, addr, &pki, &options);
    client.type_in(b"retried\n");
    if !client.wait_for(b"RETRIED\n") {
        client.fail("no reply after a HelloRetryRequest");
    }
    let hellos = client
        .out
        .windows(11)
        .filter(|w| w == b"ClientHello")
        .count();
    if hellos != 2 {
        client.fail(&format!(
            "{hellos} ClientHellos, not 2: no HelloRetryRequest"
        ));
    }
    client.close_input();
    client.finish();

    for version in ["-tls1_2", "-tls1_3"] {
        let options = [&identity[..], &[version, "-max_send_frag", "512"]].concat();
        let mut client = s_client(&openssl, addr, &pki, &options);
        let text = format!("x{}\n", "ß".repeat(5000));
        client.type_in(text.as_bytes());
        client.expect(text.to_uppercase().as_bytes());
        client.close_input();
        let status = client.finish();
        if !status.success() {
            client.fail(&format!(
                "{version}: 512-byte records: exited with {status}"
            ));
        }
    }
    server.assert_running();
}

#[test]
fn s_client_with_alices_certificate_joins_chat_as_alice_and_others_are_refused() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("s-client-ca");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let mut server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--tls-client-ca", ca]);
    let addr = server.addr_of("chat", "tls");
    for version in ["-tls1_2", "-tls1_3"] {
        let mut member = s_client(
            &openssl,
            addr,
            &pki,
            &[&alice(&pki)[..], &[version]].concat(),
        );
        let welcome = member.line();
        if !welcome.starts_with("* welcome alice; 1 member here") {
            member.fail(&format!("{version}: alice was greeted {welcome:?}"));
        }

        // No certificate, or mallory's from another CA: refused in the handshake (TLS 1.3:
        // by an alert just after it, once the client has sent its flight), never a member.
        let mallory = [
            "-cert",
            pki.other_client_cert.to_str().unwrap(),
            "-key",
            pki.other_client_key.to_str().unwrap(),
        ];
        for (who, identity) in [("no certificate", &[][..]), ("mallory", &mallory[..])] {
            let mut stranger = s_client(&openssl, addr, &pki, &[identity, &[version]].concat());
            let Some(status) = stranger.wait(DEADLINE) else {
                stranger.fail(&format!("{version}, {who}: still connected"));
            };
            if status.success() && !stranger.stderr().contains("alert") {
                stranger.fail(&format!("{version}, {who}: no alert, exit {status}"));
            }
            if !stranger.out.is_empty() {
                stranger.fail(&format!("{version}, {who}: the server spoke to it"));
            }
        }

        // alice saw nobody join, and is alone.
        member.type_in(b"/who\n");
        let who = member.line();
        if who != "* members: alice" {
            member.fail(&format!("{version}: /who says {who:?}"));
        }
        member.close_input();
        let status = member.finish();
        if !status.success() {
            member.fail(&format!("{version}: alice's s_client exited with {status}"));
        }
    }
    server.assert_running();
}

#[test]
fn s_client_key_updates_are_served_and_a_renegotiation_is_refused() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("key-update");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();

    // TLS 1.3: `K` updates s_client's keys and asks the server to update its own, `k` updates
    // s_client's only; the session goes on under the new keys, many times over.
    let mut client = s_client_as(&openssl, addr, &pki, &["-tls1_3", "-quiet", "-no_ign_eof"]);
    for round in 0..20 {
        let command = if round % 2 == 0 { "K" } else { "k" };
        client.type_in(format!("{command}\n").as_bytes());
        // s_client takes the rest of a read that starts with a command letter as part of the
        // command: the data goes once the update is done.
        client.wait_for_stderr("KEYUPDATE", round + 1);
        let line = format!("after key update {round}\n");
        client.type_in(line.as_bytes());
        client.expect(line.as_bytes());
    }
    client.close_input();
    let status = client.finish();
    if !status.success() || client.stderr().matches("KEYUPDATE").count() != 20 {
        client.fail(&format!("20 key updates: exited with {status}"));
    }

    // TLS 1.2: `R` asks for a renegotiation, which rustls refuses (a no_renegotiation alert);
    // s_client gives that connection up, and the server closes it and serves on.
    let mut client = s_client_as(&openssl, addr, &pki, &["-tls1_2", "-quiet", "-no_ign_eof"]);
    client.type_in(b"before\n");
    client.expect(b"before\n");
    client.type_in(b"R\n");
    if client.wait(DEADLINE).is_none() {
        client.fail("still connected after asking for a renegotiation");
    }
    if !client.rest().is_empty() {
        client.fail("the server answered a renegotiation with data");
    }
    wait_for_fds(&server, baseline, "after the refused renegotiation");
    echo_round_trip(&openssl, addr, &pki, b"served\n");
    server.assert_running();
}

/// A session saved by one `s_client` (`-sess_out`) and offered by the next (`-sess_in`): the
/// second is served, resumed or not (the contract does not promise resumption; the test says
/// which it was).
#[test]
fn s_client_offering_a_saved_session_is_served() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("resume");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let session = dir.join(format!("session{version}.pem"));
        let session = session.to_str().unwrap();
        let mut first = s_client(&openssl, addr, &pki, &[version, "-sess_out", session]);
        first.type_in(b"first\n");
        first.expect(b"first\n");
        first.close_input();
        let status = first.finish();
        if !status.success() || fs::metadata(session).map_or(true, |m| m.len() == 0) {
            first.fail(&format!(
                "{version}: exited with {status}, no session saved"
            ));
        }
        // Without -quiet: the session (`New, ...` or `Reused, ...`) comes before the data.
        let options = [version, "-sess_in", session, "-no_ign_eof", "-nocommands"];
        let mut second = s_client_as(&openssl, addr, &pki, &options);
        second.type_in(b"second\n");
        if !second.wait_for(b"\nsecond\n") {
            second.fail(&format!("{version}: no echo on the second session"));
        }
        second.close_input();
        let status = second.finish();
        if !status.success() {
            second.fail(&format!(
                "{version}: the second session exited with {status}"
            ));
        }
        let resumed = second.wait_for(format!("Reused, {name}").as_bytes());
        util::say(&format!(
            "{version}: the saved session was resumed: {resumed}"
        ));
    }
    server.assert_running();
}

/// `quit` and a line over `--max-line` end a chat member's connection from the server's side:
/// after the last line, the server's close_notify (s_client exits 0, no `unexpected eof`).
#[test]
fn chat_ends_an_s_client_session_with_close_notify_after_quit_and_a_long_line() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("chat-ends");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--max-line", "100"]);
    let addr = server.addr_of("chat", "tls");
    let long = format!("{}\n", "x".repeat(300));
    for (input, last) in [
        ("quit\n", None),
        (long.as_str(), Some("error line too long")),
    ] {
        let mut member = s_client(&openssl, addr, &pki, &[]);
        let welcome = member.line();
        if !welcome.starts_with("* welcome 127.0.0.1:") {
            member.fail(&format!("greeted {welcome:?}"));
        }
        member.type_in(input.as_bytes());
        if let Some(last) = last {
            let line = member.line();
            if line != last {
                member.fail(&format!("got {line:?}, not {last:?}"));
            }
        }
        // Its input still open: the end is the server's.
        let status = member.finish();
        if !status.success() || member.stderr().contains("unexpected eof") {
            member.fail(&format!(
                "ended without the server's close_notify: exit {status}"
            ));
        }
        if !member.rest().is_empty() {
            member.fail("more after the last line");
        }
    }
    server.assert_running();
}

/// An `s_client` member stopped (SIGSTOP) while another floods the room: its output, counted
/// with what waits to be encrypted, passes `--output-limit`, and it is dropped; the talker is
/// never held to its pace for long, and stays.
#[test]
fn a_stopped_s_client_member_is_dropped_and_the_room_goes_on() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("stopped");
    let pki = Pki::new(&dir);
    let server = serve(
        &pki,
        &["chat@tls:127.0.0.1:0"],
        &["--output-limit", "65536"],
    );
    let addr = server.addr_of("chat", "tls");
    let baseline = server.open_fds();
    let mut stopped = s_client(&openssl, addr, &pki, &[]);
    let welcome = stopped.line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split_once("; "))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| stopped.fail(&format!("greeted {welcome:?}")));
    let config = tls::client_config(&pki.ca, None);
    let mut talker = tls::connect(addr, &config);
    let greeting = tls::read_line(&mut talker);
    assert!(greeting.contains("; 2 members here"), "{greeting:?}");
    stopped.line(); // `* TALKER joined`
    stopped.signal("STOP");

    // The talker writes (on a thread: its writes may wait while the room is slowed) until
    // the server has closed the stopped member's connection, at most 64 MiB.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let line = format!("{}\n", "f".repeat(99));
            let chunk = line.repeat(1000);
            let mut sent = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && sent < 64 << 20 {
                tls::send(&mut talker, chunk.as_bytes());
                sent += chunk.len();
            }
            (talker, sent)
        })
    };
    let dropped = Instant::now();
    let waited = wait_for_fds(&server, baseline + 1, "the stopped member dropped");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut talker, sent) = writer.join().expect("the talker");
    assert!(
        sent < 64 << 20,
        "{sent} bytes sent, the stopped member still there"
    );
    util::say(&format!(
        "the stopped member was dropped {:?} after the flood began ({waited:?} waited), \
         {} MiB sent",
        dropped.elapsed(),
        sent >> 20
    ));
    assert_eq!(tls::read_line(&mut talker), format!("* {name} left"));
    tls::send(&mut talker, b"/who\n");
    let who = tls::read_line(&mut talker);
    assert!(
        who.starts_with("* members: ") && !who.contains(&name),
        "{who:?}"
    );
    // Continued, s_client reads what had reached it, then the end of its connection.
    stopped.signal("CONT");
    if stopped.wait(DEADLINE).is_none() {
        stopped.fail("continued, it never saw its connection end");
    }
}

// ---------------------------------------------------------------------------------------------
// socat OPENSSL:

/// One `socat OPENSSL:` session with `options` (a TLS version): `first` and its reply, then
/// `rest` and the end of socat's input at once — its close_notify follows the last byte. The
/// server answers everything first, then ends with its own close_notify, and socat exits at
/// that end, long before its 10 s wait (`-t`) for it would run out. Then the server holds no
/// connection open.
fn socat_session(socat: &Path, server: &Server, protocol: &str, pki: &Pki, options: &str) {
    let transform = |bytes: &[u8]| match protocol {
        "upper" => String::from_utf8(bytes.to_vec()).unwrap().to_uppercase(),
        _ => String::from_utf8(bytes.to_vec()).unwrap(),
    };
    let baseline = server.open_fds();
    let mut client = socat_tls(socat, server.addr_of(protocol, "tls"), pki, options);
    let first = "hello, straße\n".as_bytes();
    client.type_in(first);
    client.expect(transform(first).as_bytes());
    let mut rest = b"first line\nsecond line\n".to_vec();
    // 2 MiB more, so that most of the reply is still to be written when the close_notify comes.
    rest.extend((0..2u32 << 20).map(|i| {
        if i % 64 == 63 {
            b'\n'
        } else {
            b'a' + (i % 26) as u8
        }
    }));
    client.type_in(&rest);
    client.close_input();
    let ended = Instant::now();
    let status = client.finish();
    let took = ended.elapsed();
    let what = format!("{protocol} {options}");
    if !status.success() {
        client.fail(&format!("{what}: exited with {status}"));
    }
    util::assert_bytes_eq(client.rest(), transform(&rest).as_bytes(), &what);
    if client.stderr().contains("] E ") {
        client.fail(&format!("{what}: socat logged an error"));
    }
    let version = if options.contains("TLS1.2") {
        "TLSv1.2"
    } else {
        "TLSv1.3"
    };
    if !client
        .stderr()
        .contains(&format!("SSL proto version used: {version}\n"))
    {
        client.fail(&format!("{what}: not over {version}"));
    }
    if took >= Duration::from_secs(5) {
        client.fail(&format!(
            "{what}: socat exited {took:?} after its input ended: the server did not end the \
             connection, socat's -t did"
        ));
    }
    wait_for_fds(server, baseline, &format!("{what}: after socat's end"));
}

#[test]
fn socat_exchanges_lines_with_echo_and_upper_and_its_end_of_input_ends_cleanly() {
    if !util::require_tools(&["socat"]) {
        return;
    }
    let socat = program("socat");
    let dir = tls::scratch_dir("socat");
    let pki = Pki::new(&dir);
    let mut server = serve(
        &pki,
        &["upper@tls:127.0.0.1:0", "echo@tls:127.0.0.1:0"],
        &[],
    );
    for protocol in ["echo", "upper"] {
        for version in [
            "openssl-max-proto-version=TLS1.2",
            "openssl-min-proto-version=TLS1.3",
        ] {
            socat_session(&socat, &server, protocol, &pki, version);
        }
    }
    server.assert_running();
}

#[test]
fn socat_with_a_client_certificate_chats_as_alice() {
    if !util::require_tools(&["socat"]) {
        return;
    }
    let socat = program("socat");
    let dir = tls::scratch_dir("socat-chat");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--tls-client-ca", ca]);
    let addr = server.addr_of("chat", "tls");

    // A rustls member with a certificate of its own, "bob".
    let (bob_cert, bob_key) = pki.reissue_client(&dir, "bob", "bob");
    let config = tls::client_config(&pki.ca, Some((&bob_cert, &bob_key)));
    let mut bob = tls::connect(addr, &config);
    assert!(tls::read_line(&mut bob).starts_with("* welcome bob; 1 member here"));

    let identity = format!(
        "cert={},key={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut alice = socat_tls(&socat, addr, &pki, &identity);
    let welcome = alice.line();
    if !welcome.starts_with("* welcome alice; 2 members here") {
        alice.fail(&format!("alice was greeted {welcome:?}"));
    }
    assert_eq!(tls::read_line(&mut bob), "* alice joined");
    alice.type_in(b"hello bob\n");
    assert_eq!(tls::read_line(&mut bob), "alice: hello bob");
    tls::send(&mut bob, b"hello alice\n");
    let line = alice.line();
    if line != "bob: hello alice" {
        alice.fail(&format!("alice got {line:?}"));
    }
    // socat's end of input is alice's end of stream: she leaves, and socat exits cleanly.
    alice.close_input();
    let status = alice.finish();
    if !status.success() || !alice.rest().is_empty() || alice.stderr().contains("] E ") {
        alice.fail(&format!("exited with {status} after leaving"));
    }
    assert_eq!(tls::read_line(&mut bob), "* alice left");

    // Without a certificate socat is refused (TLS 1.3: by an alert just after the handshake,
    // which socat 1.7 logs as the connection's end), and never joins.
    let mut stranger = socat_tls(&socat, addr, &pki, "");
    stranger.type_in(b"let me in\n");
    stranger.close_input();
    let status = stranger.finish();
    if !stranger.out.is_empty() {
        stranger.fail(&format!(
            "without a certificate: got an answer; exited {status}"
        ));
    }
    tls::send(&mut bob, b"/who\n");
    assert_eq!(tls::read_line(&mut bob), "* members: bob");
}

/// A reply held by `--reply-delay` when socat's close_notify arrives: the server still sends
/// it when it is due, then its own close_notify (a half-close over TLS, as over TCP).
#[test]
fn socat_gets_a_held_timestamp_reply_after_its_close_notify() {
    if !util::require_tools(&["socat"]) {
        return;
    }
    let socat = program("socat");
    let dir = tls::scratch_dir("socat-delay");
    let pki = Pki::new(&dir);
    let options = ["--reply-delay", "1"];
    let mut server = serve(&pki, &["timestamp@tls:127.0.0.1:0"], &options);
    let mut client = socat_tls(&socat, server.addr_of("timestamp", "tls"), &pki, "");
    let sent = Instant::now();
    client.type_in(b"first\nsecond\n");
    client.close_input();
    let status = client.finish();
    let took = sent.elapsed();
    let reply = client.rest().to_vec();
    if !status.success() || util::check_stamped_reply(&reply, b"first\nsecond\n") != Ok(2) {
        client.fail(&format!("exited with {status}, not two stamped lines"));
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the held replies and the end came {took:?} after the requests"
    );
    server.assert_running();
}

/// The IEEE CRC-32 (`zlib.crc32`) of `bytes`, bit by bit: the upload protocol's checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `socat` sends a header and 1 MiB at once, then the end of its input: its close_notify
/// comes right behind the body, long before the file is stored. The server still stores it
/// and answers `saved ...`, then ends with its own close_notify.
#[test]
fn socat_uploads_a_file_and_its_close_notify_behind_the_body_still_gets_saved() {
    if !util::require_tools(&["socat"]) {
        return;
    }
    let socat = program("socat");
    let dir = tls::scratch_dir("socat-upload");
    let pki = Pki::new(&dir);
    let uploads = dir.join("uploads");
    fs::create_dir(&uploads).unwrap();
    let options = ["--upload-dir", uploads.to_str().unwrap(), "--min-free", "0"];
    let mut server = serve(&pki, &["upload@tls:127.0.0.1:0"], &options);
    let mut body = vec![0; 1 << 20];
    util::Pseudo::new(20).fill(&mut body);
    let mut client = socat_tls(&socat, server.addr_of("upload", "tls"), &pki, "");
    client.type_in(format!("{} note.bin\n", body.len()).as_bytes());
    client.type_in(&body);
    client.close_input();
    let status = client.finish();
    let expected = format!("ok\nsaved note.bin {} {:08x}\n", body.len(), crc32(&body));
    if !status.success() || client.rest() != expected.as_bytes() {
        client.fail(&format!("exited with {status}; wanted {expected:?}"));
    }
    assert!(
        fs::read(uploads.join("note.bin")).unwrap() == body,
        "the stored file differs"
    );
    let left: Vec<_> = fs::read_dir(&uploads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// HAProxy in front: mode tcp, send-proxy-v2, TLS passed through

/// A running `haproxy -db -f DIR/haproxy.cfg` passing TLS through to one backend with a PROXY
/// v2 header first, as `tests/haproxy.rs` runs it (foreground, one process, a stats socket to
/// know it is up, its log on stderr); killed by its PID and its directory removed when dropped.
struct Passthrough {
    child: Child,
    dir: PathBuf,
    /// Where clients connect: HAProxy's frontend.
    addr: SocketAddr,
}

impl Passthrough {
    /// `mode tcp`, no `ssl` anywhere: HAProxy never sees the plaintext. `server_options`:
    /// `send-proxy-v2`, and health checks if wanted.
    fn config(
        frontend: SocketAddr,
        backend: SocketAddr,
        stats: &Path,
        server_options: &str,
    ) -> String {
        format!(
            "\
global
    nbthread 1
    stats socket {stats} mode 600 level user
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s

listen tls_passthrough
    bind {frontend}
    server oneloop {backend} {server_options}
",
            stats = stats.display()
        )
    }

    /// Starts HAProxy in front of `backend` and waits until its stats socket answers (it binds
    /// every listener before it serves any); a frontend port taken meanwhile is replaced.
    fn start(binary: &Path, backend: SocketAddr, server_options: &str) -> Passthrough {
        let dir = tls::scratch_dir("haproxy");
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], util::free_loopback_port()));
            let cfg = dir.join("haproxy.cfg");
            let stats = dir.join("stats.sock");
            fs::write(
                &cfg,
                Passthrough::config(addr, backend, &stats, server_options),
            )
            .unwrap();
            let stderr = fs::File::create(dir.join("stderr")).unwrap();
            let child = Command::new(binary)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
            let mut proxy = Passthrough {
                child,
                dir: dir.clone(),
                addr,
            };
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = proxy.child.try_wait().unwrap() {
                    if proxy.stderr().contains("cannot bind") {
                        break; // Taken meanwhile: another port.
                    }
                    panic!("haproxy exited with {status}; stderr:\n{}", proxy.stderr());
                }
                if UnixStream::connect(&stats).is_ok() {
                    return proxy;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not come up within {DEADLINE:?}; stderr:\n{}",
                    proxy.stderr()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("haproxy could not bind any of 5 free loopback ports");
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The `status` of the backend server in `show stat` (`UP`, `DOWN`, `no check`, ...).
    fn status(&self) -> String {
        let mut socket = UnixStream::connect(self.dir.join("stats.sock")).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        let mut stats = String::new();
        socket.read_to_string(&mut stats).unwrap();
        let header: Vec<&str> = stats.lines().next().unwrap_or("").split(',').collect();
        let column = header
            .iter()
            .position(|&h| h == "status")
            .expect("a status column");
        stats
            .lines()
            .find(|line| line.starts_with("tls_passthrough,oneloop,"))
            .and_then(|line| line.split(',').nth(column).map(str::to_string))
            .unwrap_or_else(|| panic!("no tls_passthrough/oneloop in show stat:\n{stats}"))
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn behind_haproxy_send_proxy_v2_a_tls_member_is_named_by_its_real_address() {
    let Some(haproxy) = util::require_tool("haproxy") else {
        return;
    };
    // The v2 header (binary) as the contract's deployment has it, and v1 (text) as well.
    for header in ["send-proxy-v2", "send-proxy"] {
        members_named_by_their_real_address(&haproxy, header);
    }
}

/// Two rustls members through HAProxy (`server ... HEADER`) in front of a chat service: each
/// named by its own address, lines and notices between them, close_notify both ways.
fn members_named_by_their_real_address(haproxy: &Path, header: &str) {
    let dir = tls::scratch_dir("passthrough");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--proxy-protocol"]);
    let proxy = Passthrough::start(haproxy, server.addr_of("chat", "tls"), header);
    let config = tls::client_config(&pki.ca, None);
    let join = || {
        let mut member = tls::connect(proxy.addr, &config);
        let local = member.sock.local_addr().unwrap().to_string();
        let welcome = tls::read_line(&mut member);
        let name = welcome
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.split_once("; "))
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| panic!("not a greeting: {welcome:?}"));
        (member, local, name)
    };
    let (mut first, first_local, first_name) = join();
    let (mut second, second_local, second_name) = join();
    for (local, name) in [(&first_local, &first_name), (&second_local, &second_name)] {
        assert_eq!(
            name,
            local,
            "{header}: a member connected from {local} through haproxy (at {}) was named \
             {name}: the server must name it by the PROXY header's address, not by haproxy's; \
             haproxy:\n{}",
            proxy.addr,
            proxy.stderr()
        );
    }
    assert_eq!(
        tls::read_line(&mut first),
        format!("* {second_local} joined")
    );
    tls::send(&mut second, b"through haproxy\n");
    assert_eq!(
        tls::read_line(&mut first),
        format!("{second_local}: through haproxy")
    );
    tls::send(&mut first, b"/who\n");
    let who = tls::read_line(&mut first);
    assert_eq!(who, format!("* members: {first_local}, {second_local}"));
    // The end of the session passes through as well: close_notify both ways.
    second.conn.send_close_notify();
    second.flush().unwrap();
    let (rest, end) = tls::read_to_close_notify(&mut second);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("the server's close_notify, through haproxy");
    assert_eq!(tls::read_line(&mut first), format!("* {second_local} left"));
}

/// Through HAProxy with `--tls-client-ca`: alice's certificate still names her (the
/// certificate before the PROXY header's address), and a client without one is refused in the
/// handshake that HAProxy passes through.
#[test]
fn behind_haproxy_a_client_certificate_still_names_the_member() {
    let Some(haproxy) = util::require_tool("haproxy") else {
        return;
    };
    let dir = tls::scratch_dir("passthrough-ca");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let options = ["--proxy-protocol", "--tls-client-ca", ca];
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &options);
    let proxy = Passthrough::start(&haproxy, server.addr_of("chat", "tls"), "send-proxy-v2");
    let alice = tls::client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let mut member = tls::connect(proxy.addr, &alice);
    let welcome = tls::read_line(&mut member);
    assert!(
        welcome.starts_with("* welcome alice; 1 member here"),
        "{welcome:?}"
    );
    let anonymous = tls::client_config(&pki.ca, None);
    let mut stranger = tls::connect(proxy.addr, &anonymous);
    let refused = tls::handshake(&mut stranger).and_then(|()| stranger.read(&mut [0; 64]));
    assert!(
        !matches!(refused, Ok(n) if n > 0),
        "a client without a certificate got {refused:?} through haproxy"
    );
    tls::send(&mut member, b"/who\n");
    assert_eq!(tls::read_line(&mut member), "* members: alice");
}

/// HAProxy's health checks as `docs/DEPLOY.md` has them (`check check-send-proxy`: a
/// connection with a PROXY v2 LOCAL header, then closed) on a TLS service: the server is marked
/// up, a check is a handshake that never comes (no chat member ever sees one join), and the
/// server logs nothing about them at its default level.
#[test]
fn haproxy_health_checks_on_a_tls_service_mark_it_up_and_never_join_the_room() {
    let Some(haproxy) = util::require_tool("haproxy") else {
        return;
    };
    let dir = tls::scratch_dir("checks");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--proxy-protocol"]);
    let options = "send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 1";
    let proxy = Passthrough::start(&haproxy, server.addr_of("chat", "tls"), options);
    let start = Instant::now();
    while proxy.status() != "UP" {
        assert!(
            start.elapsed() < DEADLINE,
            "haproxy has the TLS service {} after {DEADLINE:?}; haproxy:\n{}",
            proxy.status(),
            proxy.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let config = tls::client_config(&pki.ca, None);
    let mut member = tls::connect(proxy.addr, &config);
    let local = member.sock.local_addr().unwrap().to_string();
    let welcome = tls::read_line(&mut member);
    assert!(
        welcome.starts_with(&format!("* welcome {local}; 1 member here")),
        "{welcome:?}"
    );
    // Ten checks' time, then the room as the member sees it: nobody else joined.
    thread::sleep(Duration::from_millis(1000));
    tls::send(&mut member, b"/who\n");
    assert_eq!(tls::read_line(&mut member), format!("* members: {local}"));
    assert_eq!(proxy.status(), "UP", "haproxy:\n{}", proxy.stderr());
    assert_eq!(server.stderr(), "", "the server's log at its default level");
}

// ---------------------------------------------------------------------------------------------
// Adversaries

/// An `s_client` session on echo that sends nothing, its input kept open: closed by the
/// server once it has been idle for `--idle-timeout` (1 s). Returns it, exited, and how it
/// exited; fails the test if it was closed before the timeout.
fn silent_session(openssl: &Path, server: &Server, pki: &Pki) -> (Tool, ExitStatus) {
    let baseline = server.open_fds();
    let started = Instant::now();
    let mut silent = s_client(openssl, server.addr_of("echo", "tls"), pki, &[]);
    wait_for_fds(server, baseline + 1, "s_client connected");
    let Some(status) = silent.wait(DEADLINE) else {
        silent.fail("a silent session was never closed (--idle-timeout 1)");
    };
    let lasted = started.elapsed();
    if !silent.out.is_empty() {
        silent.fail(&format!(
            "the server sent a silent session bytes; exit {status}"
        ));
    }
    if !silent.stderr().contains("verify return:1") {
        silent.fail("the handshake never completed");
    }
    if lasted < Duration::from_millis(900) {
        silent.fail(&format!("closed after {lasted:?}, before the idle timeout"));
    }
    wait_for_fds(server, baseline, "after the idle timeout");
    (silent, status)
}

#[test]
fn an_s_client_that_says_nothing_is_closed_by_the_idle_timeout() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("idle");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--idle-timeout", "1"]);
    silent_session(&openssl, &server, &pki);
    // A session that talks is served meanwhile and after.
    echo_round_trip(
        &openssl,
        server.addr_of("echo", "tls"),
        &pki,
        b"still served\n",
    );
    server.assert_running();
}

/// Over TCP an idle connection ends with a FIN, a clean end of stream; over TLS that is the
/// server's close_notify (the contract: a close without it is an abrupt end, as a reset).
#[test]
fn the_idle_timeout_ends_a_tls_session_with_its_close_notify() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("idle-close-notify");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--idle-timeout", "1"]);
    let (silent, status) = silent_session(&openssl, &server, &pki);
    if silent.stderr().contains("unexpected eof") || !status.success() {
        silent.fail("the idle timeout closed the session without a close_notify");
    }
}

/// The check above, where the contract says so explicitly: SIGTERM ends an idle TLS session
/// with its close_notify, which `s_client` takes as a clean end (exit 0, no `unexpected eof`).
#[test]
fn sigterm_ends_an_s_client_session_with_its_close_notify() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("sigterm-close-notify");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let mut client = s_client(&openssl, server.addr_of("echo", "tls"), &pki, &[]);
    client.type_in(b"ping\n");
    client.expect(b"ping\n");
    server.signal("TERM");
    let status = client.finish();
    if !status.success() || client.stderr().contains("unexpected eof") {
        client.fail(&format!("after SIGTERM: exited with {status}"));
    }
    assert!(server.wait_for_exit().success(), "{}", server.stderr());
}

/// Handshakes count against `--max-connections`: two `s_client`s that connect and send
/// nothing (`-starttls smtp` waits for a banner first) hold both slots, a third is accepted and
/// closed at once, and the handshake deadline (`--idle-timeout 3`, shorter than 10 s) frees
/// the slots.
#[test]
fn stuck_handshakes_hold_their_slots_until_the_handshake_deadline() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("slots");
    let pki = Pki::new(&dir);
    let options = ["--max-connections", "2", "--idle-timeout", "3"];
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &options);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    let connected = Instant::now();
    let mut stuck: Vec<Tool> = (0..2)
        .map(|_| s_client(&openssl, addr, &pki, &["-starttls", "smtp"]))
        .collect();
    wait_for_fds(&server, baseline + 2, "two stuck handshakes");
    let mut third = s_client(&openssl, addr, &pki, &[]);
    third.type_in(b"let me in\n");
    let Some(status) = third.wait(DEADLINE) else {
        third.fail("a connection over --max-connections was kept");
    };
    if status.success() || third.out.windows(9).any(|w| w == b"let me in") {
        third.fail(&format!("over --max-connections, served: exit {status}"));
    }
    let refused = connected.elapsed();
    assert!(
        refused < Duration::from_millis(2500),
        "the third was closed only {refused:?} after the others connected"
    );
    // The stuck ones: closed at their deadline, and s_client sees its connection end.
    wait_for_fds(&server, baseline, "after the handshake deadline");
    let freed = connected.elapsed();
    assert!(
        freed >= Duration::from_millis(2800) && freed < Duration::from_secs(8),
        "the stuck handshakes were closed {freed:?} after they connected, not at 3 s"
    );
    for client in &mut stuck {
        client.finish();
    }
    echo_round_trip(&openssl, addr, &pki, b"a free slot\n");
    server.assert_running();
}

/// SIGTERM closes idle connections at once: handshakes that have not begun or are waiting
/// for the client count as idle, so they neither delay the exit to `--shutdown-timeout` nor
/// keep it from exiting 0.
#[test]
fn sigterm_does_not_wait_for_stuck_handshakes() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("sigterm-stuck");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    // One before its ClientHello, one in the middle of its handshake (the server's flight held
    // back by the relay), one session that is served.
    let mut early = s_client(&openssl, addr, &pki, &["-starttls", "smtp"]);
    let mut relay = HoldingRelay::new();
    let mut middle = s_client(&openssl, relay.addr, &pki, &[]);
    let _upstream = relay.pass_client_hello(addr, &middle);
    let mut served = s_client(&openssl, addr, &pki, &[]);
    served.type_in(b"ping\n");
    served.expect(b"ping\n");
    wait_for_fds(&server, baseline + 3, "three connections");
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server.wait_for_exit();
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        server.stderr()
    );
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} with two stuck handshakes (--shutdown-timeout is 10 s)"
    );
    let status = served.finish();
    if !status.success() || served.stderr().contains("unexpected eof") {
        served.fail(&format!("the served session ended with exit {status}"));
    }
    early.finish();
    middle.kill();
}

/// A connection over `--max-connections` on a TLS service: closed at once, as over TCP, but
/// a plaintext `error ...` line there is not TLS — s_client reports `wrong version number` —
/// so what may precede the close is no bytes or a TLS alert (the TLS section: a failed
/// handshake closes the connection with no reply).
#[test]
fn a_connection_over_max_connections_on_a_tls_service_gets_no_plaintext() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("over-limit");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--max-connections", "1"]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    let _holder = util::connect(addr);
    wait_for_fds(&server, baseline + 1, "the slot taken");
    let mut raw = util::connect(addr);
    let (bytes, _) = util::try_read_to_end_within(&mut raw);
    assert!(
        bytes.is_empty() || bytes[0] == 21,
        "over the limit, a TLS client got {:?}",
        Snippet(&bytes)
    );
    let mut refused = s_client(&openssl, addr, &pki, &[]);
    refused.finish();
    if refused.stderr().contains("wrong version number") {
        refused.fail("the server wrote plaintext on a TLS connection");
    }
}

#[test]
fn plain_text_is_closed_while_an_s_client_session_goes_on() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("plain-text");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    let mut session = s_client(&openssl, addr, &pki, &[]);
    session.type_in(b"before\n");
    session.expect(b"before\n");

    // Plain text where a ClientHello belongs (an HTTP request, a line for a plain echo, a
    // record header that promises a handshake and holds text): closed by the server, which
    // answers at most with a TLS alert record (content type 21), never an echo of the text.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"hello, is this thing on?\n",
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let mut plain = util::connect(addr);
        util::send(&mut plain, garbage);
        let (reply, _) = util::try_read_to_end_within(&mut plain);
        assert!(
            reply.is_empty() || reply[0] == 21,
            "{:?} got {:?}",
            Snippet(garbage),
            Snippet(&reply)
        );
    }
    // Only the s_client session is left open.
    wait_for_fds(&server, baseline + 1, "after the plain-text clients");

    // The session on the other connection goes on as if nothing happened.
    session.type_in(b"after\n");
    session.expect(b"after\n");
    session.close_input();
    let status = session.finish();
    if !status.success() {
        session.fail(&format!("exited with {status}"));
    }
    server.assert_running();
}

#[test]
fn an_s_client_killed_before_its_client_hello_leaves_the_server_serving() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("killed-early");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    // `-starttls smtp` connects, then waits for an SMTP banner that never comes: connected,
    // not one TLS byte sent.
    let mut client = s_client(&openssl, addr, &pki, &["-starttls", "smtp"]);
    wait_for_fds(&server, baseline + 1, "s_client connected");
    client.kill();
    // Its end of stream, with no handshake begun, closes the connection at once: not at the
    // handshake's 10 s deadline.
    let took = wait_for_fds(&server, baseline, "after s_client was killed");
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    echo_round_trip(&openssl, addr, &pki, b"served\n");
    server.assert_running();
}

#[test]
fn an_s_client_killed_mid_handshake_leaves_the_server_serving() {
    if !util::require_tools(&["openssl"]) {
        return;
    }
    let openssl = program("openssl");
    let dir = tls::scratch_dir("killed-mid");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let baseline = server.open_fds();
    for version in ["-tls1_2", "-tls1_3"] {
        let mut relay = HoldingRelay::new();
        let mut client = s_client(&openssl, relay.addr, &pki, &[version]);
        let mut upstream = relay.pass_client_hello(addr, &client);
        // The server has sent its flight (ServerHello ... ServerHelloDone or Finished) and
        // waits for the client's; s_client, which never got it, is killed meanwhile.
        wait_for_fds(&server, baseline + 1, "mid-handshake");
        client.kill();
        let killed = Instant::now();
        relay.pass_end(&mut upstream);
        let (rest, _) = util::try_read_to_end_within(&mut upstream);
        assert!(
            rest.is_empty(),
            "{version}: after the client's end: {rest:?}"
        );
        wait_for_fds(&server, baseline, "after s_client was killed");
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{version}: closed {took:?} after the kill: at the handshake's deadline, not at the \
             client's end"
        );
        echo_round_trip(&openssl, addr, &pki, b"served\n");
    }
    server.assert_running();
}

/// A one-connection relay between `s_client` and the server that passes the client's
/// ClientHello on and holds the server's answer back: the server is then in the middle of its
/// handshake, waiting for the client's next flight, which never comes.
struct HoldingRelay {
    listener: TcpListener,
    addr: SocketAddr,
    /// The accepted connection from `s_client`.
    downstream: Option<TcpStream>,
}

impl HoldingRelay {
    fn new() -> HoldingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        HoldingRelay {
            listener,
            addr,
            downstream: None,
        }
    }

    /// Accepts `client`'s connection, reads its first TLS record (the ClientHello) whole and
    /// sends it to the server at `server`, then waits for the server's first answer (kept from
    /// the client). Returns the connection to the server.
    fn pass_client_hello(&mut self, server: SocketAddr, client: &Tool) -> TcpStream {
        self.listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let mut downstream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        client.fail("s_client never connected to the relay");
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept s_client: {e}"),
            }
        };
        downstream.set_nonblocking(false).unwrap();
        downstream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut hello = Vec::new();
        util::read_until_within(&mut downstream, &mut hello, |got| {
            got.len() >= 5 && got.len() >= 5 + usize::from(u16::from_be_bytes([got[3], got[4]]))
        });
        assert_eq!(
            hello[0],
            22,
            "not a handshake record: {:?}",
            Snippet(&hello)
        );
        let mut upstream = util::connect(server);
        util::send(&mut upstream, &hello);
        let answer = util::read_once(&mut upstream, 64 * 1024);
        assert_eq!(answer[0], 22, "the server's answer: {:?}", Snippet(&answer));
        self.downstream = Some(downstream);
        upstream
    }

    /// Waits for the client's end (its process gone, the kernel closes its socket) and passes
    /// it on: our end of the connection to the server, as the client's own FIN would be.
    fn pass_end(&mut self, upstream: &mut TcpStream) {
        let mut downstream = self.downstream.take().expect("a client");
        let (more, _) = util::try_read_to_end_within(&mut downstream);
        assert!(more.is_empty(), "s_client sent more: {:?}", Snippet(&more));
        util::half_close(upstream);
    }
}
