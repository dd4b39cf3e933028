//! The limits that protect the server from its clients: `--max-line` (an over-long line gets an
//! error and a clean, lingering close) and `--output-limit` (a client that never reads cannot
//! make the server buffer without bound, nor stall the others).

mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    assert_bytes_eq, connect, half_close, parse_stamped, read_exact_within, read_to_end_within,
    send, Pseudo, Server, Snippet, DEADLINE, STAMP_LEN,
};

const LINE_TOO_LONG: &[u8] = b"error line too long\n";

/// What came before the error line at the end of `reply`, checking that the error line starts a
/// line (contract v3): after stamped pieces of the line, a `\n` is sent first.
fn answered_before_the_error(reply: &[u8]) -> &[u8] {
    let before = &reply[..reply.len() - LINE_TOO_LONG.len()];
    if before.is_empty() {
        return before;
    }
    before
        .strip_suffix(b"\n")
        .unwrap_or_else(|| panic!("the error line does not start a line: {:?}", Snippet(reply)))
}

#[test]
fn over_long_line_gets_an_error_then_a_clean_close() {
    let mut server = Server::start(&["--max-line", "1024", "timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, &[b'a'; 5000]);
    // Keep sending after the limit is passed, as a client that does not read replies would: the
    // server must read and discard this (a lingering close). If it closed with these bytes
    // unread, its kernel would send a reset, and a reset destroys the error line before we
    // read it. Write errors are not what this test checks, so they are ignored.
    for _ in 0..5 {
        let _ = stream.write(&[b'b'; 1000]);
        thread::sleep(Duration::from_millis(20));
    }
    // A reset here fails the test inside `read_to_end_within`.
    let reply = read_to_end_within(&mut stream);
    assert!(
        reply.ends_with(LINE_TOO_LONG),
        "the reply must end with the error line: {:?}",
        Snippet(&reply)
    );
    // Before the error there may be stamped pieces of the line (if the 5000 bytes arrived in
    // several reads), but never more than the limit.
    let answered =
        parse_stamped(answered_before_the_error(&reply)).unwrap_or_else(|e| panic!("{e}"));
    let answered: Vec<u8> = answered.into_iter().flat_map(|p| p.payload).collect();
    assert!(
        answered.len() <= 1024 && answered.iter().all(|&b| b == b'a'),
        "answered before refusing: {:?}",
        Snippet(&answered)
    );
    drop(stream);

    // The server goes on serving.
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"still here\n");
    let reply = read_exact_within(&mut stream, STAMP_LEN + 11);
    assert_eq!(&reply[STAMP_LEN..], b"still here\n");
    server.assert_running();
}

#[test]
fn a_flood_past_the_line_limit_still_gets_the_error_line_before_the_close() {
    // The same, with the input far ahead of the server: a megabyte with no newline, in one
    // go. When the server decides to close, most of it is still unread in its receive queue;
    // closing then would send a reset instead of the error line and a FIN. Only a lingering
    // close (shut down writes, read and discard, then close) delivers the reply.
    let mut server = Server::start(&["--max-line", "1024", "timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    let flood = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            // Errors are not what this test checks: the reader below reports a reset.
            let _ = stream.write_all(&vec![b'z'; 1 << 20]);
        })
    };
    let reply = read_to_end_within(&mut stream);
    assert!(
        reply.ends_with(LINE_TOO_LONG),
        "the reply must end with the error line: {:?}",
        Snippet(&reply)
    );
    drop(stream);
    flood.join().expect("the flooding thread");
    server.assert_running();
}

#[test]
fn a_lingering_connection_is_closed_even_if_the_client_never_closes() {
    // After the error line the server lingers, reading and discarding, but not forever: a client
    // that neither sends nor closes must not keep its descriptor in the server.
    let server = Server::start(&["--max-line", "16", "timestamp@127.0.0.1:0"]);
    let idle_fds = server.open_fds();
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, &[b'w'; 17]);
    assert_eq!(read_to_end_within(&mut stream), LINE_TOO_LONG);
    // `stream` stays open: we neither send nor close.
    let deadline = Instant::now() + DEADLINE;
    let mut open = server.open_fds();
    while open > idle_fds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        open = server.open_fds();
    }
    assert!(
        open <= idle_fds,
        "the server still holds the lingering connection after {DEADLINE:?} ({open} descriptors, \
         {idle_fds} when idle)"
    );
    drop(stream);
}

#[test]
fn tiny_limits_still_work() {
    // --max-line 1: one byte and its newline is a line; two bytes are too many.
    let server = Server::start(&[
        "--max-line",
        "1",
        "--output-limit",
        "1",
        "timestamp@127.0.0.1:0",
        "echo@127.0.0.1:0",
    ]);
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"a\n");
    let reply = read_exact_within(&mut stream, STAMP_LEN + 2);
    assert_eq!(&reply[STAMP_LEN..], b"a\n");
    send(&mut stream, b"\n");
    let reply = read_exact_within(&mut stream, STAMP_LEN + 1);
    assert_eq!(&reply[STAMP_LEN..], b"\n", "an empty line is a message too");
    send(&mut stream, b"ab\n");
    assert_eq!(read_to_end_within(&mut stream), LINE_TOO_LONG);

    // --output-limit 1: every reply is over the limit, yet a megabyte still goes through.
    let mut stream = connect(server.addr("echo"));
    let mut input = vec![0; 1 << 20];
    Pseudo::new(3).fill(&mut input);
    let got = util::send_all_then_half_close_reading_replies(&mut stream, &input);
    assert_bytes_eq(&got, &input, "echo with --output-limit 1");
}

#[test]
fn max_line_is_the_longest_line_accepted() {
    let server = Server::start(&["--max-line", "1024", "timestamp@127.0.0.1:0"]);

    // Exactly the limit, plus its newline: accepted.
    let mut stream = connect(server.addr("timestamp"));
    let line = [&[b'x'; 1024][..], b"\n"].concat();
    send(&mut stream, &line);
    let reply = read_exact_within(&mut stream, STAMP_LEN + line.len());
    assert_bytes_eq(
        &reply[STAMP_LEN..],
        &line,
        "a line of exactly --max-line bytes",
    );

    // One byte more: refused, on the same connection.
    send(&mut stream, &[&[b'y'; 1025][..], b"\n"].concat());
    assert_eq!(read_to_end_within(&mut stream), LINE_TOO_LONG);
}

#[test]
fn default_max_line_holds_across_the_read_buffer_boundary() {
    // The default limit is 64 KiB, the size of a read: a line of exactly the limit cannot
    // arrive in one read with its newline. It is accepted (perhaps in stamped pieces); one byte
    // more is not.
    let server = Server::start(&["timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    let line = [&vec![b'q'; 65536][..], b"\n"].concat();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let line = line.clone();
        thread::spawn(move || send(&mut stream, &line))
    };
    let mut reply = Vec::new();
    util::read_until_within(&mut stream, &mut reply, |r| {
        util::stamped_payload_len(r) >= line.len()
    });
    writer.join().expect("writer");
    let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
    let joined: Vec<u8> = pieces.into_iter().flat_map(|p| p.payload).collect();
    assert_bytes_eq(&joined, &line, "a line of exactly the default --max-line");

    let mut stream = connect(server.addr("timestamp"));
    let too_long = [&vec![b'r'; 65537][..], b"\n"].concat();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let _ = stream.write_all(&too_long);
        })
    };
    let reply = read_to_end_within(&mut stream);
    writer.join().expect("writer");
    assert!(
        reply.ends_with(LINE_TOO_LONG),
        "65,537 bytes is one more than the default limit: {:?}",
        Snippet(&reply)
    );
    let answered =
        parse_stamped(answered_before_the_error(&reply)).unwrap_or_else(|e| panic!("{e}"));
    let answered: usize = answered.iter().map(|p| p.payload.len()).sum();
    assert!(
        answered <= 65536,
        "answered {answered} bytes of an over-long line"
    );
}

#[test]
fn bytes_already_answered_count_toward_the_line_limit() {
    // A client that sends a long line in pauses gets each piece stamped, but the pieces still
    // make one line, and the limit bounds the whole of it.
    let server = Server::start(&["--max-line", "1024", "timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, &[b'a'; 600]);
    let reply = read_exact_within(&mut stream, STAMP_LEN + 600);
    assert_bytes_eq(&reply[STAMP_LEN..], &[b'a'; 600], "the first piece");
    send(&mut stream, &[b'b'; 600]);
    assert_eq!(
        read_to_end_within(&mut stream),
        [b"\n", LINE_TOO_LONG].concat(),
        "1200 bytes since the last newline is over --max-line 1024; the error line starts a \
         line of its own"
    );
}

/// What the never-reading client's writer thread managed to send before the server stopped
/// taking its bytes.
struct Stalled {
    stream: TcpStream,
    written: usize,
}

/// Fills a buffer with the next bytes a slow client sends.
type Make = fn(&mut Pseudo, &mut [u8]);

/// The bytes a slow client sends: `make` applied to consecutive 64 KiB chunks from `seed`.
fn slow_client_bytes(make: Make, seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len.div_ceil(64 * 1024) * 64 * 1024];
    let mut source = Pseudo::new(seed);
    for chunk in bytes.chunks_mut(64 * 1024) {
        make(&mut source, chunk);
    }
    bytes.truncate(len);
    bytes
}

/// Writes up to `cap` bytes made by `make` until a write times out; returns the stream and how
/// much was written. Never reads.
fn write_until_stalled(mut stream: TcpStream, cap: usize, seed: u64, make: Make) -> Stalled {
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut source = Pseudo::new(seed);
    let mut chunk = vec![0; 64 * 1024];
    let mut written = 0;
    'outer: while written < cap {
        make(&mut source, &mut chunk);
        let mut offset = 0;
        while offset < chunk.len() {
            match stream.write(&chunk[offset..]) {
                Ok(count) => offset += count,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    written += offset;
                    break 'outer;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the slow client's write failed after {written} bytes: {e}"),
            }
        }
        written += offset;
    }
    Stalled { stream, written }
}

/// A client of `protocol` on `server` writes up to `cap` bytes from `make` and never reads.
/// Meanwhile the server's RSS must stay within 16 MiB of where it started, and other clients
/// must keep being served (`probe` checks one exchange with a fresh connection). Asserts that the
/// writer stalled before `cap` (the server stopped reading it) and returns it, stalled.
fn hold_a_client_that_never_reads(
    server: &mut Server,
    protocol: &str,
    cap: usize,
    seed: u64,
    make: Make,
    probe: fn(SocketAddr, usize),
) -> Stalled {
    let addr = server.addr(protocol);
    let baseline_kib = server.rss_kib();
    let allowed_kib = baseline_kib + 16 * 1024;
    let slow = connect(addr);
    let (done_tx, done_rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let stalled = write_until_stalled(slow, cap, seed, make);
        let _ = done_tx.send(());
        stalled
    });

    let mut peak_kib = baseline_kib;
    let mut served = 0;
    let deadline = Instant::now() + 3 * DEADLINE;
    loop {
        // Checked at every sample, so a server that buffers without bound is stopped (killed
        // with the test) long before it eats the machine's memory.
        peak_kib = peak_kib.max(server.rss_kib());
        assert!(
            peak_kib <= allowed_kib,
            "{protocol}: server RSS grew from {baseline_kib} KiB to {peak_kib} KiB while a \
             client wrote and read nothing (allowed: {allowed_kib} KiB)"
        );
        probe(addr, served);
        served += 1;
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: the slow client's writes never stalled"
        );
    }
    let stalled = writer.join().expect("the slow client's writer");
    peak_kib = peak_kib.max(server.rss_kib());
    eprintln!(
        "{protocol}: slow client wrote {} bytes before stalling; {served} other clients served \
         meanwhile; server RSS {baseline_kib} KiB at start, {peak_kib} KiB at most",
        stalled.written
    );
    assert!(
        peak_kib <= allowed_kib,
        "{protocol}: server RSS grew from {baseline_kib} KiB to {peak_kib} KiB (allowed: \
         {allowed_kib} KiB)"
    );
    assert!(
        stalled.written < cap,
        "{protocol}: the server took all {cap} bytes from a client that reads nothing: no \
         back-pressure"
    );
    // Still served now that the slow client is stuck for good.
    probe(addr, served);
    stalled
}

fn probe_echo(addr: SocketAddr, i: usize) {
    let mut other = connect(addr);
    let message = format!("other client {i}\n");
    send(&mut other, message.as_bytes());
    assert_eq!(
        read_exact_within(&mut other, message.len()),
        message.as_bytes(),
        "another client must be served while one never reads"
    );
}

fn probe_timestamp(addr: SocketAddr, i: usize) {
    let mut other = connect(addr);
    let message = format!("other client {i}\n");
    send(&mut other, message.as_bytes());
    let reply = read_exact_within(&mut other, STAMP_LEN + message.len());
    assert_eq!(
        &reply[STAMP_LEN..],
        message.as_bytes(),
        "another client must be served while one never reads"
    );
}

#[test]
fn a_client_that_never_reads_is_held_to_the_output_limit() {
    const SEED: u64 = 0x5eed;
    let make: Make = |source, chunk| source.fill(chunk);
    let mut server = Server::start(&["--output-limit", "65536", "echo@127.0.0.1:0"]);
    let Stalled {
        stream: mut slow,
        written,
    } = hold_a_client_that_never_reads(&mut server, "echo", 64 << 20, SEED, make, probe_echo);

    // Back-pressure must not lose anything: once the slow client reads, it gets every byte it
    // sent, in order.
    half_close(&slow);
    let got = read_to_end_within(&mut slow);
    let expected = slow_client_bytes(make, SEED, written);
    assert_bytes_eq(&got, &expected, "the stalled client's echo once it reads");
    server.assert_running();
}

#[test]
fn a_timestamp_client_that_never_reads_cannot_amplify_its_way_past_the_limit() {
    // Two bytes in (`a\n`), 29 bytes out: replies grow fourteen times faster than requests, so
    // the output limit, not the input, is what bounds the server.
    let make: Make = |_, chunk| {
        for pair in chunk.chunks_mut(2) {
            pair.copy_from_slice(&b"a\n"[..pair.len()]);
        }
    };
    let mut server = Server::start(&["--output-limit", "65536", "timestamp@127.0.0.1:0"]);
    let Stalled {
        stream: mut slow,
        written,
    } = hold_a_client_that_never_reads(
        &mut server,
        "timestamp",
        32 << 20,
        0,
        make,
        probe_timestamp,
    );

    // Every line sent is answered, once the client reads.
    half_close(&slow);
    let reply = read_to_end_within(&mut slow);
    let sent = slow_client_bytes(make, 0, written);
    let pieces = util::check_stamped_reply(&reply, &sent).unwrap_or_else(|e| panic!("{e}"));
    assert!(pieces >= written / 2, "one stamp per line at least");
    server.assert_running();
}

#[test]
fn dropping_a_stalled_client_leaves_the_server_serving() {
    let mut server = Server::start(&["--output-limit", "65536", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let stalled = write_until_stalled(connect(addr), 64 << 20, 1, |source, chunk| {
        source.fill(chunk)
    });
    assert!(stalled.written > 0);
    // Closing with unread data makes our kernel send a reset: the server must shrug it off.
    drop(stalled);
    let mut other = connect(addr);
    send(&mut other, b"next\n");
    assert_eq!(read_exact_within(&mut other, 5), b"next\n");
    let mut sink = [0; 1];
    other
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        matches!(other.read(&mut sink), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "nothing more than the echo arrives"
    );
    server.assert_running();
}
