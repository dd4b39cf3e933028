//! `tls:` services under the blocking models that serve them (`--model threaded`, and `pool`,
//! which shares its code path): every protocol byte for byte as over TCP, close_notify as the
//! end of stream both ways, client certificates and chat names, a bad or slow handshake that
//! harms nobody else, close_notify at a graceful shutdown and at the idle timeout, SIGHUP's
//! reload — and `serial` and `forking`, which refuse `tls:` at start. Each test runs once per
//! model (`per_model!` at the end); adding `reactor` to its list checks the reactor with the
//! same tests.
//!
//! Real sockets, port 0, the real rustls client of tests/util/tls.rs, certificates made for each
//! test ([`Pki`]); every read is bounded by [`DEADLINE`].

#[macro_use]
mod util;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use util::tls::{
    client_config, connect, handshake, read_exact, read_line, read_to_close_notify, send, Pki,
    TlsStream,
};
use util::{run, Server, DEADLINE};

/// A fresh directory for one test's certificates (and uploads), removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "oneloop-tls-threaded-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `oneloop serve` (under the test's `--model`, see `per_model!`) with the test certificates,
/// `extra` options and `services`.
fn serve(pki: &Pki, extra: &[&str], services: &[&str]) -> Server {
    let mut args: Vec<String> = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(services.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A client trusting the test CA, without a certificate of its own.
fn anonymous(pki: &Pki) -> Arc<rustls::ClientConfig> {
    client_config(&pki.ca, None)
}

/// Sends close_notify: the client's end of stream.
fn close_notify(stream: &mut TlsStream) {
    stream.conn.send_close_notify();
    stream.flush().unwrap();
}

/// Reads whatever arrives until the server closes the raw connection (or resets it), within
/// [`DEADLINE`]; how long that took.
fn closed_within(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let took = start.elapsed();
    assert!(
        took < DEADLINE,
        "the connection was not closed within {DEADLINE:?}"
    );
    took
}

fn stream_protocols_are_byte_for_byte_those_over_tcp() {
    let dir = Dir::new("stream");
    let pki = Pki::new(&dir.0);
    let server = serve(
        &pki,
        &[],
        &[
            "echo@tls:127.0.0.1:0",
            "upper@tls:127.0.0.1:0",
            "timestamp@tls:127.0.0.1:0",
        ],
    );
    let config = anonymous(&pki);

    let mut echo = connect(server.addr_of("echo", "tls"), &config);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    // Larger than a record, and than the server's read buffer: several reads, in order.
    send(&mut echo, &bytes);
    assert_eq!(read_exact(&mut echo, bytes.len()), bytes);
    close_notify(&mut echo);
    let (rest, end) = read_to_close_notify(&mut echo);
    assert!(rest.is_empty(), "nothing after the echo: {rest:?}");
    end.expect("the server answers our close_notify with its own");

    let mut upper = connect(server.addr_of("upper", "tls"), &config);
    send(&mut upper, "straße\n".as_bytes());
    assert_eq!(read_exact(&mut upper, 8), b"STRASSE\n");
    // An incomplete UTF-8 sequence at the end of stream (close_notify) passes through.
    send(&mut upper, b"ab\xc3");
    assert_eq!(read_exact(&mut upper, 2), b"AB");
    close_notify(&mut upper);
    let (rest, end) = read_to_close_notify(&mut upper);
    assert_eq!(rest, b"\xc3", "the held byte is answered at close_notify");
    end.expect("close_notify from the server");

    let mut timestamp = connect(server.addr_of("timestamp", "tls"), &config);
    send(&mut timestamp, b"hello\n");
    let line = read_line(&mut timestamp);
    assert!(
        line.starts_with('[') && line.ends_with("] hello") && line.len() == 27 + 5,
        "a ctime stamp: {line:?}"
    );
    // No newline and a pause: answered as it stands, without a newline.
    send(&mut timestamp, b"pause");
    let reply = read_exact(&mut timestamp, 27 + 5);
    assert!(
        reply.ends_with(b"] pause"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

fn an_abrupt_end_without_close_notify_is_like_a_reset() {
    let dir = Dir::new("abrupt");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &[], &["upper@tls:127.0.0.1:0"]);
    let config = anonymous(&pki);
    let mut upper = connect(server.addr_of("upper", "tls"), &config);
    send(&mut upper, b"x\xc3");
    assert_eq!(read_exact(&mut upper, 1), b"X");
    // A FIN without close_notify: the held byte is not answered, the connection just ends.
    upper.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let (rest, _) = read_to_close_notify(&mut upper);
    assert!(
        rest.is_empty(),
        "nothing answered after an abrupt end: {rest:?}"
    );
    // The server is still fine.
    let mut again = connect(server.addr_of("upper", "tls"), &config);
    send(&mut again, b"ok\n");
    assert_eq!(read_exact(&mut again, 3), b"OK\n");
}

/// The `* welcome NAME; ...` line's NAME.
fn welcome_name(line: &str) -> &str {
    let rest = line.strip_prefix("* welcome ").expect("a welcome line");
    &rest[..rest.find(';').expect("a ;")]
}

fn chat_over_tls() {
    let dir = Dir::new("chat");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &[], &["chat@tls:127.0.0.1:0"]);
    let config = anonymous(&pki);
    let addr = server.addr_of("chat", "tls");
    let mut first = connect(addr, &config);
    let first_name = welcome_name(&read_line(&mut first)).to_string();
    assert_eq!(first_name, first.sock.local_addr().unwrap().to_string());
    let mut second = connect(addr, &config);
    let second_name = welcome_name(&read_line(&mut second)).to_string();
    assert_eq!(read_line(&mut first), format!("* {second_name} joined"));
    send(&mut second, b"hello over tls\r\n");
    assert_eq!(
        read_line(&mut first),
        format!("{second_name}: hello over tls")
    );
    send(&mut first, b"/nick carol\n");
    assert_eq!(
        read_line(&mut second),
        format!("* {first_name} is now carol")
    );
    // The renamed member hears of it too.
    assert!(read_line(&mut first).contains("carol"));
    // close_notify is the member's end of stream: it leaves, and gets close_notify back.
    close_notify(&mut second);
    let (_, end) = read_to_close_notify(&mut second);
    end.expect("close_notify from the server");
    assert_eq!(read_line(&mut first), format!("* {second_name} left"));
    send(&mut first, b"quit\n");
    let (_, end) = read_to_close_notify(&mut first);
    end.expect("quit ends with close_notify");
}

fn under_a_client_ca_the_certificate_names_the_chat_member_and_no_certificate_is_refused() {
    let dir = Dir::new("client-ca");
    let pki = Pki::new(&dir.0);
    let ca = pki.ca.display().to_string();
    let server = serve(
        &pki,
        &["--tls-client-ca", &ca],
        &["chat@tls:127.0.0.1:0", "echo@tls:127.0.0.1:0"],
    );
    let addr = server.addr_of("chat", "tls");
    let alice = client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let mut first = connect(addr, &alice);
    assert_eq!(welcome_name(&read_line(&mut first)), "alice");
    // The same certificate twice: the second gets the taken name's suffix.
    let mut second = connect(addr, &alice);
    assert_eq!(welcome_name(&read_line(&mut second)), "alice-2");
    assert_eq!(read_line(&mut first), "* alice-2 joined");

    for (what, config) in [
        ("no certificate", anonymous(&pki)),
        (
            "a certificate of another CA",
            client_config(
                &pki.ca,
                Some((&pki.other_client_cert, &pki.other_client_key)),
            ),
        ),
    ] {
        let mut refused = connect(server.addr_of("echo", "tls"), &config);
        // TLS 1.3: the client's handshake ends before the server has judged its certificate;
        // the refusal is the alert that then arrives instead of any data.
        let outcome = handshake(&mut refused).and_then(|()| {
            refused.write_all(b"x")?;
            refused.flush()?;
            let mut byte = [0; 1];
            refused.read(&mut byte)
        });
        assert!(outcome.is_err(), "{what}: refused, got {outcome:?}");
    }
    // The members are unharmed.
    send(&mut second, b"still here\n");
    assert_eq!(read_line(&mut first), "alice-2: still here");
}

fn upload_over_tls() {
    let dir = Dir::new("upload");
    let pki = Pki::new(&dir.0);
    let uploads = dir.0.join("uploads");
    fs::create_dir(&uploads).unwrap();
    let upload_dir = uploads.display().to_string();
    let server = serve(
        &pki,
        &["--upload-dir", &upload_dir],
        &["upload@tls:127.0.0.1:0"],
    );
    let config = anonymous(&pki);
    let mut client = connect(server.addr_of("upload", "tls"), &config);
    send(&mut client, b"9 check.txt\n");
    assert_eq!(read_line(&mut client), "ok");
    send(&mut client, b"123456789");
    // zlib.crc32(b"123456789") is the CRC-32 check value.
    assert_eq!(read_line(&mut client), "saved check.txt 9 cbf43926");
    assert_eq!(fs::read(uploads.join("check.txt")).unwrap(), b"123456789");
    // A second file on the same connection, header and body in one write.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut request = format!("{} big.bin\n", body.len()).into_bytes();
    request.extend_from_slice(&body);
    send(&mut client, &request);
    assert_eq!(read_line(&mut client), "ok");
    let saved = read_line(&mut client);
    assert!(saved.starts_with("saved big.bin 200000 "), "{saved}");
    assert_eq!(fs::read(uploads.join("big.bin")).unwrap(), body);
    // A bad header: the error line, then close_notify.
    send(&mut client, b"many bytes\n");
    let (rest, end) = read_to_close_notify(&mut client);
    assert_eq!(rest, b"error bad header\n");
    end.expect("close_notify after the error line");
}

fn garbage_or_silence_instead_of_a_client_hello_closes_only_that_connection() {
    let dir = Dir::new("garbage");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &["--idle-timeout", "1"], &["echo@tls:127.0.0.1:0"]);
    let addr = server.addr_of("echo", "tls");
    let config = anonymous(&pki);
    let mut before = connect(addr, &config);
    send(&mut before, b"one\n");
    assert_eq!(read_exact(&mut before, 4), b"one\n");

    // Silence: closed after --idle-timeout (1 s, shorter than the handshake's 10 s).
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let took = closed_within(&mut garbage);
    assert!(
        took < Duration::from_secs(1),
        "garbage closed at once: {took:?}"
    );

    // Meanwhile the other client is served, and a new one too.
    send(&mut before, b"two\n");
    assert_eq!(read_exact(&mut before, 4), b"two\n");
    let mut after = connect(addr, &config);
    send(&mut after, b"three\n");
    assert_eq!(read_exact(&mut after, 6), b"three\n");

    let took = closed_within(&mut silent);
    assert!(
        took < Duration::from_secs(5),
        "a silent handshake is closed at the idle timeout: {took:?}"
    );
    // (`before` has been idle for the idle timeout meanwhile: a new client.)
    let mut last = connect(addr, &config);
    send(&mut last, b"four\n");
    assert_eq!(read_exact(&mut last, 5), b"four\n");
}

fn the_proxy_header_comes_first_then_the_handshake() {
    let dir = Dir::new("proxy");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &["--proxy-protocol"], &["chat@tls:127.0.0.1:0"]);
    let mut tcp = TcpStream::connect(server.addr_of("chat", "tls")).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.set_write_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n")
        .unwrap();
    let session =
        rustls::ClientConnection::new(anonymous(&pki), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut member = rustls::StreamOwned::new(session, tcp);
    assert_eq!(welcome_name(&read_line(&mut member)), "203.0.113.7:56324");
}

fn sigterm_ends_each_tls_connection_with_close_notify() {
    let dir = Dir::new("shutdown");
    let pki = Pki::new(&dir.0);
    let mut server = serve(&pki, &[], &["echo@tls:127.0.0.1:0", "chat@tls:127.0.0.1:0"]);
    let config = anonymous(&pki);
    let mut echo = connect(server.addr_of("echo", "tls"), &config);
    send(&mut echo, b"hi\n");
    assert_eq!(read_exact(&mut echo, 3), b"hi\n");
    let mut member = connect(server.addr_of("chat", "tls"), &config);
    read_line(&mut member);
    // A handshake that never completes does not hold the shutdown up.
    let _silent = TcpStream::connect(server.addr_of("echo", "tls")).unwrap();
    thread::sleep(Duration::from_millis(100));
    server.signal("TERM");
    let (rest, end) = read_to_close_notify(&mut echo);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("the echo connection ends with close_notify");
    let (rest, end) = read_to_close_notify(&mut member);
    assert_eq!(rest, b"* server shutting down\n");
    end.expect("the chat member's connection ends with close_notify");
    let status = server.wait_for_exit();
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn serial_and_forking_refuse_tls_services_with_exit_2() {
    let dir = Dir::new("refused");
    let pki = Pki::new(&dir.0);
    for model in ["serial", "forking"] {
        let mut args = vec!["serve".to_string(), "--model".into(), model.into()];
        args.extend(pki.server_args());
        args.push("echo@tls:127.0.0.1:0".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = run(&args, b"");
        assert_eq!(outcome.code(), 2, "{model}: {}", outcome.stderr);
        let stderr = outcome.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "{model}: one line: {stderr}");
        assert!(
            stderr.contains("tls:") && stderr.contains(model),
            "{model}: says why: {stderr}"
        );
        assert!(outcome.stdout.is_empty(), "{model}: nothing listening");
    }
}

fn a_common_name_that_is_no_valid_chat_name_leaves_the_address() {
    let dir = Dir::new("bad-cn");
    let pki = Pki::new(&dir.0);
    let ca = pki.ca.display().to_string();
    let server = serve(&pki, &["--tls-client-ca", &ca], &["chat@tls:127.0.0.1:0"]);
    // Signed by the client CA, so accepted; its CN has a space and a leading `*`.
    let (cert, key) = pki.reissue(&dir.0, "*not a name", "odd");
    let config = client_config(&pki.ca, Some((&cert, &key)));
    let mut member = connect(server.addr_of("chat", "tls"), &config);
    let line = read_line(&mut member);
    assert_eq!(
        welcome_name(&line),
        member.sock.local_addr().unwrap().to_string()
    );
}

fn an_upload_cut_short_by_the_shutdown_is_told_so_then_close_notify() {
    let dir = Dir::new("upload-shutdown");
    let pki = Pki::new(&dir.0);
    let uploads = dir.0.join("uploads");
    fs::create_dir(&uploads).unwrap();
    let upload_dir = uploads.display().to_string();
    let mut server = serve(
        &pki,
        &["--upload-dir", &upload_dir],
        &["upload@tls:127.0.0.1:0"],
    );
    let config = anonymous(&pki);
    let addr = server.addr_of("upload", "tls");
    // One whose body has all arrived is stored; one cut short is removed.
    let mut whole = connect(addr, &config);
    send(&mut whole, b"5 whole.txt\n");
    assert_eq!(read_line(&mut whole), "ok");
    let mut cut = connect(addr, &config);
    send(&mut cut, b"1000 cut.txt\n");
    assert_eq!(read_line(&mut cut), "ok");
    send(&mut cut, &[b'x'; 400]);
    send(&mut whole, b"hello");
    assert_eq!(read_line(&mut whole), "saved whole.txt 5 3610a686");
    thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    let (rest, end) = read_to_close_notify(&mut cut);
    assert_eq!(rest, b"error shutting down\n");
    end.expect("close_notify after the error");
    let (rest, end) = read_to_close_notify(&mut whole);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("close_notify for the idle upload connection");
    assert_eq!(server.wait_for_exit().code(), Some(0));
    let mut names: Vec<String> = fs::read_dir(&uploads)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["whole.txt"], "the cut-short upload left nothing");
}

fn a_burst_over_tls_reaches_a_member_that_keeps_reading_whole_and_in_order() {
    let dir = Dir::new("chat-burst");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &[], &["chat@tls:127.0.0.1:0"]);
    let config = anonymous(&pki);
    let addr = server.addr_of("chat", "tls");
    let mut reader = connect(addr, &config);
    read_line(&mut reader);
    let mut sender = connect(addr, &config);
    let name = welcome_name(&read_line(&mut sender)).to_string();
    assert_eq!(read_line(&mut reader), format!("* {name} joined"));
    const LINES: usize = 20_000;
    let burst: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    // Its own thread: the room reads the sender more slowly while the reader catches up.
    let writer = thread::spawn(move || {
        send(&mut sender, burst.as_bytes());
        sender
    });
    for i in 0..LINES {
        assert_eq!(read_line(&mut reader), format!("{name}: line {i}"));
    }
    let mut sender = writer.join().unwrap();
    send(&mut sender, b"done\n");
    assert_eq!(read_line(&mut reader), format!("{name}: done"));
}

/// The CN of the certificate a new handshake with `addr` gets.
fn presented_name(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>) -> String {
    let mut stream = connect(addr, config);
    handshake(&mut stream).unwrap();
    util::tls::server_common_name(&stream)
}

fn sighup_reloads_the_certificate_for_new_handshakes_and_a_bad_file_keeps_the_old_set() {
    let dir = Dir::new("sighup");
    let pki = Pki::new(&dir.0);
    let mut server = serve(&pki, &[], &["echo@tls:127.0.0.1:0"]);
    let addr = server.addr_of("echo", "tls");
    let config = anonymous(&pki);
    assert_eq!(presented_name(addr, &config), "localhost");
    let mut open = connect(addr, &config);
    send(&mut open, b"before\n");
    assert_eq!(read_exact(&mut open, 7), b"before\n");
    // New files at the same paths, then SIGHUP.
    pki.reissue(&dir.0, "reloaded", "server");
    server.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    while presented_name(addr, &config) != "reloaded" {
        assert!(
            Instant::now() < deadline,
            "not reloaded within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The open connection is untouched.
    send(&mut open, b"after\n");
    assert_eq!(read_exact(&mut open, 6), b"after\n");
    // A bad key: one error line, and the whole previous set stays.
    pki.reissue(&dir.0, "never", "server");
    fs::write(&pki.server_key, b"not a key\n").unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    while !server.stderr().contains("server.key") {
        assert!(
            Instant::now() < deadline,
            "no error line within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    server.assert_running();
    assert_eq!(presented_name(addr, &config), "reloaded");
    let errors = server.stderr();
    assert_eq!(errors.lines().count(), 1, "one line: {errors}");
    assert!(errors.contains("server.key"), "names the file: {errors}");
}

fn sighup_without_tls_services_is_ignored() {
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    server.signal("HUP");
    thread::sleep(Duration::from_millis(200));
    server.assert_running();
    let mut client = util::connect(server.addr("echo"));
    util::send(&mut client, b"still\n");
    assert_eq!(util::read_exact_within(&mut client, 6), b"still\n");
}

fn tls_1_2_clients_are_served_too() {
    use rustls::pki_types::pem::PemObject;
    let dir = Dir::new("tls12");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &[], &["upper@tls:127.0.0.1:0"]);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut client = connect(server.addr_of("upper", "tls"), &Arc::new(config));
    send(&mut client, b"twelve\n");
    assert_eq!(read_exact(&mut client, 7), b"TWELVE\n");
    assert_eq!(
        client.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    close_notify(&mut client);
    let (rest, end) = read_to_close_notify(&mut client);
    assert!(rest.is_empty());
    end.expect("close_notify from the server");
}

fn a_tls_member_that_stops_reading_is_dropped_and_the_room_goes_on() {
    let dir = Dir::new("chat-stalled");
    let pki = Pki::new(&dir.0);
    let server = serve(
        &pki,
        &["--output-limit", "65536"],
        &["chat@tls:127.0.0.1:0"],
    );
    let config = anonymous(&pki);
    let addr = server.addr_of("chat", "tls");
    let mut reader = connect(addr, &config);
    read_line(&mut reader);
    let mut stalled = connect(addr, &config);
    let stalled_name = welcome_name(&read_line(&mut stalled)).to_string();
    assert_eq!(read_line(&mut reader), format!("* {stalled_name} joined"));
    let mut sender = connect(addr, &config);
    let sender_name = welcome_name(&read_line(&mut sender)).to_string();
    assert_eq!(read_line(&mut reader), format!("* {sender_name} joined"));
    // Far more than the stalled member's socket buffers and its 64 KiB queue can hold.
    let line = format!("{}\n", "y".repeat(1000));
    let burst = line.repeat(20_000);
    let writer = thread::spawn(move || {
        send(&mut sender, burst.as_bytes());
        sender
    });
    let expected = format!("{sender_name}: {}", &line[..line.len() - 1]);
    let mut left = false;
    for _ in 0..20_000 {
        let got = read_line(&mut reader);
        if got == format!("* {stalled_name} left") {
            assert!(!left, "left once");
            left = true;
        } else {
            assert_eq!(got, expected);
        }
    }
    if !left {
        assert_eq!(read_line(&mut reader), format!("* {stalled_name} left"));
    }
    writer.join().unwrap();
}

fn a_tls_connection_over_max_connections_is_closed_without_a_plaintext_line() {
    let dir = Dir::new("max-connections");
    let pki = Pki::new(&dir.0);
    let server = serve(&pki, &["--max-connections", "1"], &["echo@tls:127.0.0.1:0"]);
    let addr = server.addr_of("echo", "tls");
    let config = anonymous(&pki);
    let mut first = connect(addr, &config);
    send(&mut first, b"in\n");
    assert_eq!(read_exact(&mut first, 3), b"in\n");
    let mut over = TcpStream::connect(addr).unwrap();
    over.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let _ = over.read_to_end(&mut got);
    assert!(got.is_empty(), "no plaintext on a TLS service: {got:?}");
    send(&mut first, b"still\n");
    assert_eq!(read_exact(&mut first, 6), b"still\n");
}

fn the_idle_timeout_ends_a_tls_connection_with_close_notify() {
    let dir = Dir::new("idle");
    let pki = Pki::new(&dir.0);
    let server = serve(
        &pki,
        &["--idle-timeout", "1"],
        &["echo@tls:127.0.0.1:0", "chat@tls:127.0.0.1:0"],
    );
    let config = anonymous(&pki);
    let mut echo = connect(server.addr_of("echo", "tls"), &config);
    send(&mut echo, b"once\n");
    assert_eq!(read_exact(&mut echo, 5), b"once\n");
    let mut member = connect(server.addr_of("chat", "tls"), &config);
    read_line(&mut member);
    let start = Instant::now();
    let (rest, end) = read_to_close_notify(&mut echo);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("close_notify at the idle timeout");
    let (rest, end) = read_to_close_notify(&mut member);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("a chat member's close_notify at the idle timeout");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

// Each test under every model that serves tls: (the reactor's own TLS tests are tests/tls.rs).
per_model! { [threaded, pool]: [
    records_of_mixed_sizes_reach_the_protocol_whole,
    stream_protocols_are_byte_for_byte_those_over_tcp,
    sigterm_ends_each_tls_connection_with_close_notify,
    an_abrupt_end_without_close_notify_is_like_a_reset,
    chat_over_tls,
    under_a_client_ca_the_certificate_names_the_chat_member_and_no_certificate_is_refused,
    upload_over_tls,
    garbage_or_silence_instead_of_a_client_hello_closes_only_that_connection,
    the_proxy_header_comes_first_then_the_handshake,
    a_common_name_that_is_no_valid_chat_name_leaves_the_address,
    an_upload_cut_short_by_the_shutdown_is_told_so_then_close_notify,
    a_burst_over_tls_reaches_a_member_that_keeps_reading_whole_and_in_order,
    sighup_reloads_the_certificate_for_new_handshakes_and_a_bad_file_keeps_the_old_set,
    tls_1_2_clients_are_served_too,
    a_tls_member_that_stops_reading_is_dropped_and_the_room_goes_on,
    a_tls_connection_over_max_connections_is_closed_without_a_plaintext_line,
    the_idle_timeout_ends_a_tls_connection_with_close_notify,
] }

// SIGHUP must never end a blocking model, whether or not it serves tls:.
per_model! { hangup: [threaded, pool, serial, forking]: [sighup_without_tls_services_is_ignored] }

/// Records of mixed sizes, as a client that writes in odd-sized pieces sends them: one read of
/// ciphertext then completes a held record and a small one after it, more plaintext than
/// rustls buffers at once. The server must take it in as it reads it out, never fail it.
fn records_of_mixed_sizes_reach_the_protocol_whole() {
    let dir = Dir::new("mixed-records");
    let pki = Pki::new(&dir.0);
    let uploads = dir.0.join("uploads");
    fs::create_dir(&uploads).unwrap();
    let upload_dir = uploads.display().to_string();
    let server = serve(
        &pki,
        &["--upload-dir", &upload_dir],
        &["upload@tls:127.0.0.1:0"],
    );
    let mut client = connect(server.addr_of("upload", "tls"), &anonymous(&pki));
    let body: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    send(
        &mut client,
        format!("{} mixed.bin\n", body.len()).as_bytes(),
    );
    assert_eq!(read_line(&mut client), "ok");
    let mut rest = &body[..];
    for size in [16_384, 1_000, 16_000, 3_000, 16_384, 700].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        // One write, one record (or two: rustls seals at most 16 KiB per record).
        client.write_all(piece).unwrap();
        client.flush().unwrap();
        rest = after;
    }
    let saved = read_line(&mut client);
    assert!(saved.starts_with("saved mixed.bin 8000000 "), "{saved}");
    assert_eq!(fs::read(uploads.join("mixed.bin")).unwrap(), body);
}
