//! The reactor's promise about uploads, checked against a really slow disk: the loop never
//! waits for file I/O, and a client faster than the disk cannot grow the server's memory.
//!
//! A slow disk is made with `strace`'s fault injection, the real server running under it:
//! `-e inject=fsync:delay_enter=…` makes every `fsync` the I/O threads make take seconds, and
//! `-e inject=write:delay_enter=…` every file `write` (the loop's socket writes are `sendto` and
//! `writev`, so only the I/O threads' file writes are slowed). `--seccomp-bpf` stops the server
//! only at the delayed call, so everything else runs at full speed. Without `strace` (Debian:
//! `apt-get install strace`), or without the right to trace, the tests say so in one line and
//! skip; `.ci/run` installs it and sets `ONELOOP_TEST_REQUIRE_TOOLS=1`, under which a missing
//! strace fails them instead.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::DEADLINE;

/// A fresh upload directory, removed with its contents on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "oneloop-upload-reactor-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Dir(path)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `oneloop serve` started under `strace`, which delays one system call of every thread by
/// `delay` (`--seccomp-bpf`: the other system calls run at full speed). The server (by its PID)
/// and strace are ended on drop.
struct SlowDiskServer {
    strace: Child,
    pid: u32,
    upload: SocketAddr,
    echo: SocketAddr,
}

impl SlowDiskServer {
    /// `None` (after one `skipped:` line) if strace is missing or this machine does not allow
    /// tracing.
    fn start(dir: &Dir, syscall: &str, delay: Duration) -> Option<SlowDiskServer> {
        SlowDiskServer::start_with(dir, syscall, delay, &[])
    }

    /// [`SlowDiskServer::start`] with more `serve` options.
    fn start_with(
        dir: &Dir,
        syscall: &str,
        delay: Duration,
        extra: &[&str],
    ) -> Option<SlowDiskServer> {
        let strace = util::require_tool("strace")?;
        let child = Command::new(strace)
            .args(["-f", "--seccomp-bpf", "-qq", "-o", "/dev/null"])
            .args(["-e", &format!("trace={syscall}")])
            .args([
                "-e",
                &format!("inject={syscall}:delay_enter={}", delay.as_micros()),
            ])
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_oneloop"))
            .args(["serve", "upload@127.0.0.1:0", "echo@127.0.0.1:0"])
            .args(["--upload-dir", dir.0.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut strace = child.unwrap_or_else(|e| panic!("cannot run strace: {e}"));
        let mut lines = BufReader::new(strace.stdout.take().unwrap()).lines();
        let mut address = |protocol: &str| -> Option<SocketAddr> {
            let line = lines.next()?.ok()?;
            assert!(
                line.starts_with(&format!("listening {protocol} tcp ")),
                "{line}"
            );
            line.rsplit(' ').next()?.parse().ok()
        };
        let (Some(upload), Some(echo)) = (address("upload"), address("echo")) else {
            let _ = strace.wait();
            let mut why = String::new();
            let _ = strace.stderr.take().map(|mut e| e.read_to_string(&mut why));
            // Only a refusal to trace (a container without ptrace) skips.
            assert!(
                why.contains("Operation not permitted"),
                "the server did not start under strace: {why}"
            );
            util::say(&format!(
                "skipped: needs the right to trace (ptrace), which strace lacks here: {}",
                why.trim()
            ));
            return None;
        };
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
        let pid = children.split_whitespace().next().unwrap().parse().unwrap();
        Some(SlowDiskServer {
            strace,
            pid,
            upload,
            echo,
        })
    }

    fn rss_kib(&self) -> u64 {
        util::rss_kib(self.pid)
    }

    fn assert_running(&self) {
        assert!(util::process_exists(self.pid), "the server died");
    }
}

impl Drop for SlowDiskServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.strace.wait();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

#[test]
fn the_loop_answers_others_while_an_upload_waits_for_a_slow_fsync() {
    let dir = Dir::new("slow-fsync");
    let Some(server) = SlowDiskServer::start(&dir, "fsync", Duration::from_secs(2)) else {
        return;
    };
    let upload = connect(server.upload);
    let mut upload_reader = BufReader::new(upload.try_clone().unwrap());
    let body = vec![b'x'; 300_000];
    (&upload)
        .write_all(format!("{} slow.bin\n", body.len()).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut upload_reader), "ok\n");
    (&upload).write_all(&body).unwrap();
    let body_sent = Instant::now();

    // The body is all sent; its fsync takes two seconds. Meanwhile, another client is served,
    // many times over, before the upload's answer comes.
    let mut echo = connect(server.echo);
    let mut round_trips = 0;
    let mut reply = [0u8; 5];
    while body_sent.elapsed() < Duration::from_millis(1500) {
        echo.write_all(b"ping\n").unwrap();
        echo.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping\n");
        round_trips += 1;
    }
    let saved = read_line(&mut upload_reader);
    let waited = body_sent.elapsed();
    assert!(saved.starts_with("saved slow.bin 300000 "), "{saved:?}");
    assert!(
        waited >= Duration::from_secs(2),
        "saved came after {waited:?}: the fsync was not the slow part, so this proves nothing"
    );
    assert!(
        round_trips >= 10,
        "only {round_trips} echo round trips while the upload's fsync was slow"
    );
    eprintln!("{round_trips} echo round trips while the fsync took 2 s; saved after {waited:?}");
    assert_eq!(dir.names(), ["slow.bin"]);
}

#[test]
fn a_client_faster_than_the_disk_does_not_grow_the_server() {
    let dir = Dir::new("slow-write");
    let Some(server) = SlowDiskServer::start(&dir, "write", Duration::from_millis(50)) else {
        return;
    };
    let before = server.rss_kib();
    // 256 MiB announced and pushed as fast as the socket takes it; the disk takes 64 KiB per
    // 50 ms. Without back-pressure the server would hold whatever the client managed to send.
    let upload = connect(server.upload);
    let mut upload_reader = BufReader::new(upload.try_clone().unwrap());
    const SIZE: usize = 256 << 20;
    (&upload)
        .write_all(format!("{SIZE} big.bin\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut upload_reader), "ok\n");
    upload
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![b'y'; 1 << 20];
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) {
        match (&upload).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("sending the body: {e}"),
        }
    }
    let grown_kib = server.rss_kib().saturating_sub(before);
    eprintln!("sent {sent} bytes in 3 s to a slow disk; the server grew by {grown_kib} KiB");
    assert!(
        sent > 4 << 20,
        "only {sent} bytes went: the kernel buffers alone should take a few MiB"
    );
    assert!(
        grown_kib < 8 * 1024,
        "the server grew by {grown_kib} KiB holding a body the disk could not take"
    );
    // Cut short: the temporary file goes, the server goes on.
    drop(upload);
    drop(upload_reader);
    let deadline = Instant::now() + DEADLINE;
    while !dir.names().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(dir.names().is_empty(), "left behind: {:?}", dir.names());
    server.assert_running();
}

#[test]
fn an_upload_whose_last_bytes_arrive_while_the_disk_is_busy_is_still_stored() {
    // The body's last bytes are read while the connection's chunks fill the slow disk's queue:
    // the end of the body is then a step the session has with no input left, and the loop must
    // still take it when the disk catches up (it once waited for bytes that would never come).
    let dir = Dir::new("busy-end");
    let Some(server) = SlowDiskServer::start(&dir, "write", Duration::from_millis(20)) else {
        return;
    };
    for (n, size) in [(1, 3 << 20), (2, (1 << 20) + 13), (3, 200_000)] {
        let upload = connect(server.upload);
        let mut reader = BufReader::new(upload.try_clone().unwrap());
        let name = format!("end{n}.bin");
        let mut request = format!("{size} {name}\n").into_bytes();
        request.resize(request.len() + size, b'z');
        (&upload).write_all(&request).unwrap();
        assert_eq!(read_line(&mut reader), "ok\n");
        let saved = read_line(&mut reader);
        assert!(
            saved.starts_with(&format!("saved {name} {size} ")),
            "{name}: {saved:?}"
        );
    }
    assert_eq!(dir.names(), ["end1.bin", "end2.bin", "end3.bin"]);
    server.assert_running();
}

#[test]
fn uploads_queued_behind_a_slow_disk_are_all_stored_and_leave_nothing_behind() {
    // Sixteen clients send their whole body at once; the disk takes 64 KiB per 30 ms, so most
    // wait in the pool's queue — refused for room, retried as others finish. Every upload must
    // end stored, with no temporary file left. (With `--idle-timeout 1` too; the exemption of
    // a disk wait from the idle timeout has its own test below, with a wait longer than it.)
    let dir = Dir::new("queue");
    let Some(server) = SlowDiskServer::start_with(
        &dir,
        "write",
        Duration::from_millis(30),
        &["--idle-timeout", "1"],
    ) else {
        return;
    };
    let clients: Vec<_> = (0..16)
        .map(|n| {
            let addr = server.upload;
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let size = 512 << 10;
                let mut request = format!("{size} q{n}.bin\n").into_bytes();
                request.resize(request.len() + size, b'q');
                (&stream).write_all(&request).unwrap();
                let mut answers = String::new();
                for _ in 0..2 {
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    answers.push_str(&line);
                }
                answers
            })
        })
        .collect();
    for (n, client) in clients.into_iter().enumerate() {
        let answers = client.join().unwrap();
        assert!(
            answers.starts_with("ok\n") && answers.contains(&format!("saved q{n}.bin 524288 ")),
            "client {n}: {answers:?}"
        );
    }
    let names = dir.names();
    assert_eq!(names.len(), 16, "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with(".oneloop")),
        "{names:?}"
    );
    server.assert_running();
}

#[test]
fn a_client_waiting_for_a_slow_fsync_is_not_idle() {
    // The whole body is in; its fsync takes 2 s, longer than the idle timeout (1 s). The quiet
    // is the server's, so the client still gets its answer.
    let dir = Dir::new("slow-commit");
    let Some(server) = SlowDiskServer::start_with(
        &dir,
        "fsync",
        Duration::from_secs(2),
        &["--idle-timeout", "1"],
    ) else {
        return;
    };
    let upload = connect(server.upload);
    let mut reader = BufReader::new(upload.try_clone().unwrap());
    (&upload).write_all(b"5 patient.txt\nhello").unwrap();
    assert_eq!(read_line(&mut reader), "ok\n");
    let saved = read_line(&mut reader);
    assert_eq!(saved, "saved patient.txt 5 3610a686\n");
    server.assert_running();
}
