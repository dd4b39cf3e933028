//! The protocols over real loopback sockets: upper, timestamp and echo as the contract describes
//! them, half-close, pipelining, IPv6, and several services in one process.

#[macro_use]
mod util;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use util::{
    assert_bytes_eq, connect, half_close, parse_ctime, parse_stamped, read_exact_within, read_once,
    read_to_end_within, read_until_within, send, stamped_payload_len, Ctime, Pseudo, Server,
    Snippet, Stamped,
};

/// How long a test pauses between two writes it wants the server to see separately.
const PAUSE: Duration = Duration::from_millis(50);

/// Upper-cases what the contract says upper-cases: valid UTF-8 by `str::to_uppercase`, invalid
/// sequences unchanged.
fn expected_upper(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in input.utf8_chunks() {
        out.extend_from_slice(chunk.valid().to_uppercase().as_bytes());
        out.extend_from_slice(chunk.invalid());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// upper

fn upper_answers_the_seed_example() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    send(&mut stream, b"Hello world 123");
    assert_eq!(
        read_exact_within(&mut stream, 15),
        b"HELLO WORLD 123",
        "the seeds' `client.py Hello world 123`"
    );
}

fn upper_replies_without_waiting_for_a_newline() {
    // The seeds' client: sendall(b"hello"), then a single recv(1024), on one connection.
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    send(&mut stream, b"hello");
    assert_eq!(read_once(&mut stream, 1024), b"HELLO");
    send(&mut stream, b"again");
    assert_eq!(read_once(&mut stream, 1024), b"AGAIN");
}

fn upper_uses_the_full_unicode_mapping() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    send(&mut stream, "straße".as_bytes());
    assert_eq!(read_exact_within(&mut stream, 7), b"STRASSE");

    // Mappings that change the length, and non-Latin scripts.
    let text = "ﬁne ǆ ſ ß ς groß ǰ ὒ émigré Ελλάδα кириллица 𐐨𐐩 ｅ";
    let expected = text.to_uppercase();
    assert_ne!(expected.len(), text.len(), "the sample must change length");
    send(&mut stream, text.as_bytes());
    let got = read_exact_within(&mut stream, expected.len());
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

fn upper_passes_invalid_utf8_through_unchanged() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    // A stray continuation byte, a truncated sequence followed by ASCII, an encoded surrogate,
    // an overlong encoding, and bytes that never occur in UTF-8.
    let input: &[u8] = b"ab\x80cd\xc3(ef\xed\xa0\x80gh\xc0\xafij\xfe\xffkl";
    let expected: &[u8] = b"AB\x80CD\xc3(EF\xed\xa0\x80GH\xc0\xafIJ\xfe\xffKL";
    assert_eq!(expected_upper(input), expected);
    send(&mut stream, input);
    let got = read_exact_within(&mut stream, expected.len());
    assert_bytes_eq(&got, expected, "invalid UTF-8 through upper");
}

fn upper_converts_a_character_split_across_writes_whole() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    // Two-, three- and four-byte characters whose upper case differs from them, cut at every
    // offset, with a pause so the server reads the halves separately.
    for c in ['ß', 'é', 'ﬁ', 'ｅ', '𐐨'] {
        let mut stream = connect(server.addr("upper"));
        let mut encoded = [0u8; 4];
        let bytes = c.encode_utf8(&mut encoded).as_bytes();
        for cut in 1..bytes.len() {
            let (head, tail) = bytes.split_at(cut);
            send(&mut stream, &[b"x", head].concat());
            // The ASCII before the cut comes back at once; the half character must be held.
            assert_eq!(
                read_exact_within(&mut stream, 1),
                b"X",
                "{c:?} cut at {cut}"
            );
            thread::sleep(PAUSE);
            send(&mut stream, &[tail, b"y"].concat());
            let expected = format!("{}Y", c.to_uppercase());
            let got = read_exact_within(&mut stream, expected.len());
            assert_eq!(
                String::from_utf8_lossy(&got),
                expected,
                "{c:?} cut after byte {cut}"
            );
        }
    }
}

fn upper_passes_an_incomplete_character_at_end_of_stream() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    send(&mut stream, b"abc\xe2\x82"); // the first two of the three bytes of the euro sign
    half_close(&stream);
    assert_eq!(read_to_end_within(&mut stream), b"ABC\xe2\x82");
}

// ---------------------------------------------------------------------------------------------
// timestamp

/// Asserts that `time` lies between `before` and `after` (with a little slack for the second
/// boundary), the local time as python3 or, without it, `date` tells it.
fn assert_near(time: Ctime, before: Option<Ctime>, after: Option<Ctime>) {
    if let (Some(before), Some(after)) = (before, after) {
        assert!(
            before.local_seconds - 2 <= time.local_seconds
                && time.local_seconds <= after.local_seconds + 2,
            "stamp {time:?} is not the local time (between {before:?} and {after:?})"
        );
    } else {
        // `date` is in every Debian base system (coreutils): not having it is a broken host.
        panic!("neither python3 nor date told the local time, to check stamp {time:?} against");
    }
}

#[test]
fn harness_ctime_parser_is_strict() {
    // The checks below are only as good as this parser: make sure it can say no.
    assert!(parse_ctime(b"Wed Sep  9 16:42:46 2026").is_ok());
    assert!(parse_ctime(b"Thu Jan  1 00:00:00 1970").is_ok());
    assert!(parse_ctime(b"Sat Feb 29 23:59:59 2020").is_ok());
    for bad in [
        &b"Wed Sep 09 16:42:46 2026"[..], // zero-padded day
        b"Wed Sep 9 16:42:46 2026",       // unpadded day
        b"Thu Sep  9 16:42:46 2026",      // wrong weekday for the date
        b"Wed sep  9 16:42:46 2026",      // month case
        b"Wed Sep  9 16:42:46 26",        // two-digit year
        b"Wed Sep  9 6:42:46 2026 ",      // unpadded hour
        b"Wed Sep  9 24:00:00 2026",      // hour out of range
        b"Sun Feb 29 00:00:00 2026",      // no such day
        b"2026-09-09T16:42:46Z    ",      // ISO 8601
    ] {
        assert!(
            parse_ctime(bad).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(parse_stamped(b"[Wed Sep  9 16:42:46 2026] a\nb").is_err());
    assert!(parse_stamped(b"Wed Sep  9 16:42:46 2026] a").is_err());

    let stamp = "[Wed Sep  9 16:42:46 2026] ";
    let reply = format!("{stamp}a\n{stamp}b{stamp}c\n");
    assert_eq!(
        util::check_stamped_reply(reply.as_bytes(), b"a\nbc\n"),
        Ok(3)
    );
    for (reply, sent) in [
        (format!("{stamp}a\n{stamp}b"), &b"a\nbc"[..]), // payload missing
        (format!("{stamp}a\n{stamp}x"), b"a\nb"),       // payload changed
        (format!("{stamp}a\nb"), b"a\nb"),              // two lines, one stamp
        (format!("{stamp}{stamp}a"), b"a"),             // empty piece
        (format!("{stamp}a\n[Thu Sep  9 16:42:46 2026] b"), b"a\nb"), // bad ctime
    ] {
        assert!(
            util::check_stamped_reply(reply.as_bytes(), sent).is_err(),
            "accepted {reply:?}"
        );
    }
}

/// A time zone five and a half hours east of UTC, as a POSIX `TZ` string (no zone files
/// needed): a server that stamps UTC instead of local time, or ignores the minutes of an offset,
/// is caught even on a host whose zone is UTC.
const ODD_TZ: (&str, &str) = ("TZ", "XYZ-5:30");

fn timestamp_answers_the_seed_pattern_in_local_ctime_format() {
    // The seeds' client: send `hello` with no newline, recv once, send again.
    let server = Server::start_with_env(&["timestamp@127.0.0.1:0"], &[ODD_TZ]);
    let mut stream = connect(server.addr("timestamp"));
    for message in ["hello", "hello again"] {
        let before = util::local_ctime_now(&[ODD_TZ]);
        send(&mut stream, message.as_bytes());
        let reply = read_once(&mut stream, 1024);
        let after = util::local_ctime_now(&[ODD_TZ]);
        let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pieces.len(),
            1,
            "one stamp per message: {:?}",
            Snippet(&reply)
        );
        assert_eq!(pieces[0].payload, message.as_bytes(), "no newline added");
        assert_near(pieces[0].time, before, after);
    }
}

fn timestamp_replies_keep_each_line_newline() {
    let server = Server::start(&["timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    let input = b"first line\nsecond line\n";
    send(&mut stream, input);
    let mut reply = Vec::new();
    read_until_within(&mut stream, &mut reply, |r| {
        stamped_payload_len(r) >= input.len()
    });
    let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<&[u8]> = pieces.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"first line\n"[..], b"second line\n"]);
}

/// Issue 17: a huge line to timestamp gave `…aaaaerror line too long` on one line, since the
/// pause before it was answered without a newline. An `error ...` line always starts a line.
fn timestamp_error_line_starts_a_line_after_an_answered_pause() {
    let server = Server::start(&["timestamp@127.0.0.1:0", "--max-line", "10"]);
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"aaaa");
    let mut reply = Vec::new();
    read_until_within(&mut stream, &mut reply, |r| r.ends_with(b"] aaaa"));
    send(&mut stream, b"aaaaaaaaaa");
    let rest = read_to_end_within(&mut stream);
    assert_bytes_eq(
        &rest,
        b"\nerror line too long\n",
        "after the answered pause",
    );
}

fn timestamp_answers_pending_bytes_at_end_of_stream() {
    let server = Server::start(&["timestamp@127.0.0.1:0"]);

    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"bye");
    half_close(&stream);
    let reply = read_to_end_within(&mut stream);
    let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pieces.len(), 1, "{:?}", Snippet(&reply));
    assert_eq!(pieces[0].payload, b"bye");

    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"a line\nand a tail");
    half_close(&stream);
    let reply = read_to_end_within(&mut stream);
    let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<&[u8]> = pieces.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"a line\n"[..], b"and a tail"]);
}

fn timestamp_pipelined_burst_comes_back_whole_and_in_order() {
    let server = Server::start(&["timestamp@127.0.0.1:0"]);
    let mut stream = connect(server.addr("timestamp"));
    let input: Vec<u8> = (0..200)
        .flat_map(|i| format!("line {i:03} of a pipelined burst\n").into_bytes())
        .collect();
    let before = util::local_ctime_now(&[]);
    send(&mut stream, &input);
    let mut reply = Vec::new();
    read_until_within(&mut stream, &mut reply, |r| {
        stamped_payload_len(r) >= input.len()
    });
    let after = util::local_ctime_now(&[]);
    let pieces = parse_stamped(&reply).unwrap_or_else(|e| panic!("{e}"));
    // TCP may split the burst mid-line, and the contract lets such a line be answered in
    // stamped pieces; but the payloads, in order, must be exactly the input.
    let joined: Vec<u8> = pieces.iter().flat_map(|p| p.payload.clone()).collect();
    assert_bytes_eq(&joined, &input, "the stamped payloads joined");
    assert!(pieces.len() >= 200, "every line gets at least one stamp");
    assert!(
        pieces.iter().all(|p| !p.payload.is_empty()),
        "no empty stamped pieces"
    );
    for Stamped { time, .. } in &pieces {
        assert_near(*time, before, after);
    }

    // The connection still works after the burst.
    send(&mut stream, b"after\n");
    let reply = read_exact_within(&mut stream, util::STAMP_LEN + 6);
    assert_eq!(&reply[util::STAMP_LEN..], b"after\n");
}

// ---------------------------------------------------------------------------------------------
// echo

fn echo_returns_arbitrary_binary_bytes() {
    let server = Server::start(&["echo@127.0.0.1:0"]);
    let mut stream = connect(server.addr("echo"));
    let mut input: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut noise = vec![0; 100_000];
    Pseudo::new(7).fill(&mut noise);
    input.extend_from_slice(&noise);
    input.extend_from_slice(b"\r\n\0\n\n");
    // Written from a thread: 100 KB may not fit in the socket buffers while we are not reading.
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let input = input.clone();
        thread::spawn(move || send(&mut stream, &input))
    };
    let got = read_exact_within(&mut stream, input.len());
    writer.join().expect("writer");
    assert_bytes_eq(&got, &input, "echo");
}

fn echo_over_ipv6_loopback() {
    if !util::ipv6_loopback_available() {
        eprintln!("skipped: this host cannot bind [::1]");
        return;
    }
    let server = Server::start(&["echo@[::1]:0"]);
    let listening = &server.listening()[0];
    assert_eq!(listening.transport, "tcp");
    assert!(listening.addr.is_ipv6() && listening.addr.ip().is_loopback());
    assert_ne!(listening.addr.port(), 0, "the real port, not 0");
    let mut stream = connect(listening.addr);
    send(&mut stream, b"over IPv6\n");
    assert_eq!(read_exact_within(&mut stream, 10), b"over IPv6\n");
}

// ---------------------------------------------------------------------------------------------
// half-close and pipelining

fn half_close_gets_every_reply_then_a_clean_end_of_stream() {
    let server = Server::start(&[
        "upper@127.0.0.1:0",
        "timestamp@127.0.0.1:0",
        "echo@127.0.0.1:0",
    ]);

    // upper: many small requests, then our end of stream.
    let mut stream = connect(server.addr("upper"));
    let input: Vec<u8> = (0..1000)
        .flat_map(|i| format!("request {i} straße\n").into_bytes())
        .collect();
    send(&mut stream, &input);
    half_close(&stream);
    let got = read_to_end_within(&mut stream);
    assert_bytes_eq(&got, &expected_upper(&input), "upper after half-close");

    // timestamp: lines and an unterminated tail.
    let mut stream = connect(server.addr("timestamp"));
    send(&mut stream, b"one\ntwo\nthree");
    half_close(&stream);
    let got = read_to_end_within(&mut stream);
    let pieces = parse_stamped(&got).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<&[u8]> = pieces.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"one\n"[..], b"two\n", b"three"]);

    // echo: more than the socket buffers hold, so the end of stream arrives while replies are
    // still queued in the server.
    let mut stream = connect(server.addr("echo"));
    let mut input = vec![0; 4 << 20];
    Pseudo::new(42).fill(&mut input);
    let got = util::send_all_then_half_close_reading_replies(&mut stream, &input);
    assert_bytes_eq(&got, &input, "echo after half-close");
}

fn a_client_that_sends_nothing_gets_nothing_and_a_clean_close() {
    let server = Server::start(&[
        "upper@127.0.0.1:0",
        "timestamp@127.0.0.1:0",
        "echo@127.0.0.1:0",
    ]);
    for protocol in ["upper", "timestamp", "echo"] {
        let mut stream = connect(server.addr(protocol));
        half_close(&stream);
        assert_eq!(
            read_to_end_within(&mut stream),
            b"",
            "{protocol}: no request, no reply"
        );
    }
}

fn end_of_stream_with_replies_still_queued_delivers_them_all() {
    // The client sends 4 MiB and its end of stream without reading anything. The output limit is
    // high enough for the server to take it all, so when the server reads the end of stream,
    // megabytes of replies are still queued in it (more than the socket buffers hold): it must
    // write them all before closing.
    let server = Server::start(&["--output-limit", "16777216", "echo@127.0.0.1:0"]);
    let mut stream = connect(server.addr("echo"));
    let mut input = vec![0; 4 << 20];
    Pseudo::new(99).fill(&mut input);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let input = input.clone();
        thread::spawn(move || {
            send(&mut stream, &input);
            half_close(&stream);
        })
    };
    // Let the server read our end of stream before we read a byte. (A shorter pause only
    // weakens the test; it cannot make a correct server fail it.)
    thread::sleep(Duration::from_millis(300));
    let got = read_to_end_within(&mut stream);
    writer.join().expect("writer");
    assert_bytes_eq(
        &got,
        &input,
        "echo of a client that read only after its end of stream",
    );
}

fn upper_pipelined_requests_come_back_in_order() {
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let mut stream = connect(server.addr("upper"));
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("request number {i}: groß\n").into_bytes())
        .collect();
    let expected = expected_upper(&input);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let input = input.clone();
        thread::spawn(move || send(&mut stream, &input))
    };
    let got = read_exact_within(&mut stream, expected.len());
    writer.join().expect("writer");
    assert_bytes_eq(&got, &expected, "pipelined upper");
}

fn echo_pipelined_small_writes_come_back_in_order() {
    let server = Server::start(&["echo@127.0.0.1:0"]);
    let mut stream = connect(server.addr("echo"));
    let mut expected = Vec::new();
    // Separate small writes, none read until all are sent (a few dozen KB: fits the buffers).
    for i in 0..2000 {
        let request = format!("message {i}\n");
        send(&mut stream, request.as_bytes());
        expected.extend_from_slice(request.as_bytes());
    }
    let got = read_exact_within(&mut stream, expected.len());
    assert_bytes_eq(&got, &expected, "pipelined echo");
}

// ---------------------------------------------------------------------------------------------
// several services in one process

fn several_services_answer_at_once() {
    let mut server = Server::start(&[
        "upper@127.0.0.1:0",
        "timestamp@tcp:127.0.0.1:0",
        "echo@127.0.0.1:0",
    ]);
    let listening = server.listening().to_vec();
    let protocols: Vec<&str> = listening.iter().map(|l| l.protocol.as_str()).collect();
    assert_eq!(
        protocols,
        ["upper", "timestamp", "echo"],
        "in the order given"
    );
    for l in &listening {
        assert_eq!(l.transport, "tcp");
        assert_eq!(l.addr.ip().to_string(), "127.0.0.1");
        assert_ne!(l.addr.port(), 0, "{l:?} must show the real port");
    }
    let mut ports: Vec<u16> = listening.iter().map(|l| l.addr.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three distinct ports");

    // All three connected and sent to before any reply is read.
    let mut upper = connect(server.addr("upper"));
    let mut timestamp = connect(server.addr("timestamp"));
    let mut echo = connect(server.addr("echo"));
    send(&mut upper, b"to upper\n");
    send(&mut timestamp, b"to timestamp\n");
    send(&mut echo, b"to echo\n");
    assert_eq!(read_exact_within(&mut echo, 8), b"to echo\n");
    let stamped = read_exact_within(&mut timestamp, util::STAMP_LEN + 13);
    let pieces = parse_stamped(&stamped).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pieces[0].payload, b"to timestamp\n");
    assert_eq!(read_exact_within(&mut upper, 9), b"TO UPPER\n");

    assert_eq!(
        server.extra_stdout(),
        Vec::<String>::new(),
        "stdout holds the listening lines and nothing else"
    );
    server.assert_running();
}

#[test]
fn default_services_are_the_seeds_ports() {
    let defaults = [("upper", 9999), ("timestamp", 21567), ("echo", 9000)];
    for (_, port) in defaults {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("skipped: 127.0.0.1:{port} is in use by something else");
            return;
        }
    }
    let server = match Server::try_start(&[]) {
        Ok(server) => server,
        // Taken between our check and the server's bind (another test run, say).
        Err(failure) if failure.stderr.contains("address already in use") => {
            eprintln!(
                "skipped: a default port was taken meanwhile: {}",
                failure.stderr
            );
            return;
        }
        Err(failure) => panic!("serve with no services failed: {failure:?}"),
    };
    let listening: Vec<(String, String)> = server
        .listening()
        .iter()
        .map(|l| (l.protocol.clone(), l.addr.to_string()))
        .collect();
    let expected: Vec<(String, String)> = defaults
        .iter()
        .map(|(p, port)| (p.to_string(), format!("127.0.0.1:{port}")))
        .collect();
    assert_eq!(listening, expected);

    let mut upper = connect(server.addr("upper"));
    send(&mut upper, b"Hello world 123");
    assert_eq!(read_exact_within(&mut upper, 15), b"HELLO WORLD 123");
    let mut timestamp = connect(server.addr("timestamp"));
    send(&mut timestamp, b"hello");
    let pieces = parse_stamped(&read_once(&mut timestamp, 1024)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pieces[0].payload, b"hello");
    let mut echo = connect(server.addr("echo"));
    send(&mut echo, b"ping");
    assert_eq!(read_exact_within(&mut echo, 4), b"ping");
}

fn timestamp_answers_a_message_that_exactly_fills_a_read() {
    // The seeds' client sends a message with no newline and waits. If the message exactly fills
    // the server's read buffer (8 KiB in the blocking models, 64 KiB in the reactor), the read
    // alone cannot tell that nothing more is coming: the server must find out without blocking.
    let server = Server::start(&["timestamp@127.0.0.1:0"]);
    for size in [8 * 1024, 64 * 1024] {
        let mut stream = connect(server.addr("timestamp"));
        let message = vec![b'z'; size];
        send(&mut stream, &message);
        // Every read has a deadline: a server waiting for more input fails here.
        let mut reply = Vec::new();
        while util::stamped_payload_len(&reply) < size {
            reply.extend(read_once(&mut stream, 128 * 1024));
        }
        assert_eq!(
            util::stamped_payload_len(&reply),
            size,
            "{size}-byte message"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Every test above runs against the reactor and against each comparison model: they all drive the
// same protocol sessions, so they must all pass the same black-box tests.

per_model! {
    [reactor, threaded, pool, forking, serial]: [
        timestamp_answers_a_message_that_exactly_fills_a_read,
        upper_answers_the_seed_example,
        upper_replies_without_waiting_for_a_newline,
        upper_uses_the_full_unicode_mapping,
        upper_passes_invalid_utf8_through_unchanged,
        upper_converts_a_character_split_across_writes_whole,
        upper_passes_an_incomplete_character_at_end_of_stream,
        timestamp_answers_the_seed_pattern_in_local_ctime_format,
        timestamp_replies_keep_each_line_newline,
        timestamp_answers_pending_bytes_at_end_of_stream,
        timestamp_error_line_starts_a_line_after_an_answered_pause,
        timestamp_pipelined_burst_comes_back_whole_and_in_order,
        echo_returns_arbitrary_binary_bytes,
        echo_over_ipv6_loopback,
        half_close_gets_every_reply_then_a_clean_end_of_stream,
        a_client_that_sends_nothing_gets_nothing_and_a_clean_close,
        end_of_stream_with_replies_still_queued_delivers_them_all,
        upper_pipelined_requests_come_back_in_order,
        echo_pipelined_small_writes_come_back_in_order,
    ]
}

// Not serial: these hold several connections open at once, and a server that serves one
// connection at a time would make them wait for ever.
per_model! {
    concurrent: [reactor, threaded, pool, forking]: [
        several_services_answer_at_once,
    ]
}
