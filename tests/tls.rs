//! `tls:` services of the reactor, over real sockets with a real rustls client and certificates
//! made for each test: every protocol byte for byte as over TCP, TLS 1.2 and 1.3, client
//! certificates, the handshake's deadline and failures, close_notify both ways, SIGHUP reloads,
//! PROXY headers before the handshake, and clients that flood, trickle, send garbage or vanish.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{Server, DEADLINE};

/// A reactor serving `services` over TLS with `pki`'s server certificate, plus `extra` options.
fn serve(pki: &Pki, services: &[&str], extra: &[&str]) -> Server {
    pki.serve(services, extra)
}

fn connect(server: &Server, protocol: &str, pki: &Pki) -> tls::TlsStream {
    let config = tls::client_config(&pki.ca, None);
    let mut stream = tls::connect(server.addr_of(protocol, "tls"), &config);
    tls::handshake(&mut stream).expect("handshake");
    stream
}

#[test]
fn the_listening_line_says_tls_and_every_protocol_speaks_as_over_tcp() {
    let dir = tls::scratch_dir("protocols");
    let pki = Pki::new(&dir);
    let uploads = dir.join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    let server = serve(
        &pki,
        &[
            "echo@tls:127.0.0.1:0",
            "upper@tls:127.0.0.1:0",
            "timestamp@tls:127.0.0.1:0",
            "upload@tls:127.0.0.1:0",
        ],
        &["--upload-dir", uploads.to_str().unwrap()],
    );
    for protocol in ["echo", "upper", "timestamp", "upload"] {
        assert!(
            server
                .listening()
                .iter()
                .any(|l| l.protocol == protocol && l.transport == "tls"),
            "{:?}",
            server.listening()
        );
    }
    let mut echo = connect(&server, "echo", &pki);
    tls::send(&mut echo, b"hello over tls\n");
    assert_eq!(tls::read_exact(&mut echo, 15), b"hello over tls\n");

    let mut upper = connect(&server, "upper", &pki);
    tls::send(&mut upper, "straße\n".as_bytes());
    assert_eq!(tls::read_line(&mut upper), "STRASSE");

    let mut stamp = connect(&server, "timestamp", &pki);
    tls::send(&mut stamp, b"hi\n");
    let line = tls::read_line(&mut stamp);
    assert!(line.starts_with('[') && line.ends_with("] hi"), "{line:?}");

    let body = b"a file over tls";
    let mut upload = connect(&server, "upload", &pki);
    tls::send(&mut upload, format!("{} note.txt\n", body.len()).as_bytes());
    assert_eq!(tls::read_line(&mut upload), "ok");
    tls::send(&mut upload, body);
    let saved = tls::read_line(&mut upload);
    assert!(saved.starts_with("saved note.txt 15 "), "{saved:?}");
    assert_eq!(std::fs::read(uploads.join("note.txt")).unwrap(), body);
}

#[test]
fn tls_1_2_and_1_3_both_serve() {
    let dir = tls::scratch_dir("versions");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = tls::client_config_for(&pki.ca, version);
        let mut stream = tls::connect(server.addr_of("echo", "tls"), &config);
        tls::send(&mut stream, b"ping");
        assert_eq!(tls::read_exact(&mut stream, 4), b"ping");
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
    }
}

#[test]
fn chat_over_tls_names_members_by_address_and_relays_lines() {
    let dir = tls::scratch_dir("chat");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &[]);
    let mut first = connect(&server, "chat", &pki);
    assert!(tls::read_line(&mut first).starts_with("* welcome 127.0.0.1:"));
    let mut second = connect(&server, "chat", &pki);
    assert!(tls::read_line(&mut second).contains("2 members here"));
    let joined = tls::read_line(&mut first);
    assert!(joined.ends_with(" joined"), "{joined:?}");
    tls::send(&mut second, b"hello room\n");
    let line = tls::read_line(&mut first);
    assert!(
        line.starts_with("127.0.0.1:") && line.ends_with(": hello room"),
        "{line:?}"
    );
}

#[test]
fn a_client_certificate_names_the_chat_member_and_one_without_is_refused() {
    let dir = tls::scratch_dir("client-ca");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--tls-client-ca", ca]);
    let addr = server.addr_of("chat", "tls");

    let alice = tls::client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let mut member = tls::connect(addr, &alice);
    assert!(
        tls::read_line(&mut member).starts_with("* welcome alice; 1 member here"),
        "the certificate's CN is the first name"
    );

    // No certificate, or one from another CA: refused in the handshake, never a member.
    let anonymous = tls::client_config(&pki.ca, None);
    let mallory = tls::client_config(
        &pki.ca,
        Some((&pki.other_client_cert, &pki.other_client_key)),
    );
    for config in [anonymous, mallory] {
        let mut stranger = tls::connect(addr, &config);
        let refused =
            tls::handshake(&mut stranger).and_then(|()| stranger.read(&mut [0; 64]).map(drop));
        assert!(refused.is_err(), "a client without alice's CA got in");
    }
    // alice saw nobody join.
    tls::send(&mut member, b"/who\n");
    assert_eq!(tls::read_line(&mut member), "* members: alice");
}

#[test]
fn a_certificate_name_that_is_no_valid_chat_name_leaves_the_address() {
    let dir = tls::scratch_dir("bad-cn");
    let pki = Pki::new(&dir);
    // "* root" starts with '*' and has a space: no member may be called that.
    let (cert, key) = pki.reissue_client(&dir, "* root", "star");
    let ca = pki.ca.to_str().unwrap();
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--tls-client-ca", ca]);
    let config = tls::client_config(&pki.ca, Some((&cert, &key)));
    let mut member = tls::connect(server.addr_of("chat", "tls"), &config);
    let welcome = tls::read_line(&mut member);
    assert!(welcome.starts_with("* welcome 127.0.0.1:"), "{welcome:?}");
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_quietly_and_harms_nobody() {
    let dir = tls::scratch_dir("garbage");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let mut good = connect(&server, "echo", &pki);

    let mut plain = util::connect(addr);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (reply, _) = util::try_read_to_end_within(&mut plain);
    // At most a TLS alert record (content type 21), never an echo of the bytes.
    assert!(reply.is_empty() || reply[0] == 21, "garbage got {reply:?}");

    tls::send(&mut good, b"still here");
    assert_eq!(tls::read_exact(&mut good, 10), b"still here");
}

#[test]
fn a_handshake_that_never_finishes_is_closed_by_its_deadline() {
    let dir = tls::scratch_dir("slow");
    let pki = Pki::new(&dir);
    // The handshake deadline is 10 s, or --idle-timeout if shorter.
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--idle-timeout", "1"]);
    let addr = server.addr_of("echo", "tls");
    let started = Instant::now();
    let mut silent = util::connect(addr);
    // Half a ClientHello's record header, then nothing.
    silent.write_all(&[22, 3, 1]).unwrap();
    let (reply, _) = util::try_read_to_end_within(&mut silent);
    assert!(reply.is_empty(), "{reply:?}");
    assert!(
        started.elapsed() < DEADLINE,
        "closed by the deadline, not by the test's"
    );
    let mut good = connect(&server, "echo", &pki);
    tls::send(&mut good, b"ok");
    assert_eq!(tls::read_exact(&mut good, 2), b"ok");
}

#[test]
fn the_peers_close_notify_is_its_end_of_stream_and_ours_follows() {
    let dir = tls::scratch_dir("close-notify");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["upper@tls:127.0.0.1:0"], &[]);
    let mut stream = connect(&server, "upper", &pki);
    tls::send(&mut stream, b"last words");
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let (got, end) = tls::read_to_close_notify(&mut stream);
    assert_eq!(got, b"LAST WORDS");
    end.expect("the server ends with its own close_notify");
}

#[test]
fn a_close_without_close_notify_is_an_abrupt_end_that_harms_nobody() {
    let dir = tls::scratch_dir("abrupt");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let mut vanishing = connect(&server, "echo", &pki);
    tls::send(&mut vanishing, b"half");
    assert_eq!(tls::read_exact(&mut vanishing, 4), b"half");
    vanishing.sock.shutdown(Shutdown::Both).unwrap();
    drop(vanishing);
    let mut good = connect(&server, "echo", &pki);
    tls::send(&mut good, b"fine");
    assert_eq!(tls::read_exact(&mut good, 4), b"fine");
}

#[test]
fn sigterm_ends_tls_connections_with_close_notify() {
    let dir = tls::scratch_dir("sigterm");
    let pki = Pki::new(&dir);
    let mut server = serve(&pki, &["echo@tls:127.0.0.1:0", "chat@tls:127.0.0.1:0"], &[]);
    let mut idle = connect(&server, "echo", &pki);
    let mut member = connect(&server, "chat", &pki);
    tls::read_line(&mut member); // welcome
    tls::send(&mut idle, b"x");
    assert_eq!(tls::read_exact(&mut idle, 1), b"x");
    server.signal("TERM");
    let (rest, end) = tls::read_to_close_notify(&mut idle);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("close_notify before the end");
    let (said, end) = tls::read_to_close_notify(&mut member);
    assert_eq!(said, b"* server shutting down\n");
    end.expect("close_notify after the notice");
    assert!(server.wait_for_exit().success());
}

#[test]
fn bulk_bytes_arrive_whole_and_a_client_that_stops_reading_is_held_back() {
    let dir = tls::scratch_dir("bulk");
    let pki = Pki::new(&dir);
    let server = serve(
        &pki,
        &["echo@tls:127.0.0.1:0"],
        &["--output-limit", "65536"],
    );
    // 4 MiB through echo, written and read by two threads: every byte back, in order.
    let mut stream = connect(&server, "echo", &pki);
    let mut body = vec![0u8; 4 << 20];
    util::Pseudo::new(7).fill(&mut body);
    let expected = body.clone();
    let mut got = Vec::with_capacity(body.len());
    let mut buffer = vec![0; 64 * 1024];
    let mut written = 0;
    // One thread: rustls's stream is not shared; write a piece, read what came back.
    while got.len() < expected.len() {
        if written < body.len() {
            let end = (written + 256 * 1024).min(body.len());
            stream.write_all(&body[written..end]).unwrap();
            stream.flush().unwrap();
            written = end;
        }
        while got.len() < written {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "echo ended early at {}", got.len());
            got.extend_from_slice(&buffer[..n]);
        }
    }
    assert!(got == expected, "4 MiB came back changed");
    body.clear();

    // A client that sends and never reads: the server stops reading it (its output is over
    // the limit), and another client is served meanwhile.
    let mut flooder = connect(&server, "echo", &pki);
    flooder
        .sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![b'f'; 64 * 1024];
    let mut sent = 0usize;
    for _ in 0..256 {
        match flooder.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
        if flooder.conn.complete_io(&mut flooder.sock).is_err() {
            break;
        }
    }
    assert!(
        sent < 16 << 20,
        "the server kept reading a client that never reads ({sent} bytes)"
    );
    let mut good = connect(&server, "echo", &pki);
    tls::send(&mut good, b"served");
    assert_eq!(tls::read_exact(&mut good, 6), b"served");
}

#[test]
fn a_trickled_handshake_and_request_are_served() {
    let dir = tls::scratch_dir("trickle");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["upper@tls:127.0.0.1:0"], &[]);
    // A real client's records, delivered to the server a few bytes at a time.
    let config = tls::client_config(&pki.ca, None);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = util::connect(server.addr_of("upper", "tls"));
    client.writer().write_all(b"trickle\n").unwrap();
    let mut plaintext = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !plaintext.ends_with(b"TRICKLE\n") {
        assert!(Instant::now() < deadline, "no reply to a trickled request");
        let mut records = Vec::new();
        client.write_tls(&mut records).unwrap();
        for piece in records.chunks(7) {
            sock.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if client.read_tls(&mut sock).is_ok() {
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut plaintext);
        }
    }
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let dir = tls::scratch_dir("reload");
    let pki = Pki::new(&dir);
    let cert = dir.join("live.pem");
    let key = dir.join("live.key");
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let server = Server::start(&[
        "echo@tls:127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let addr = server.addr_of("echo", "tls");
    let config = tls::client_config(&pki.ca, None);
    let mut before = tls::connect(addr, &config);
    tls::handshake(&mut before).unwrap();
    assert_eq!(tls::server_common_name(&before), "localhost");

    // certbot's renewal: new files in place, then SIGHUP.
    let (new_cert, new_key) = pki.reissue(&dir, "renewed", "renewed");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    server.signal("HUP");
    let renewed = wait_for_common_name(addr, &config, "renewed");
    assert!(renewed, "new handshakes never got the renewed certificate");
    // The connection opened before the reload is untouched.
    tls::send(&mut before, b"old");
    assert_eq!(tls::read_exact(&mut before, 3), b"old");

    // A broken key: one error line, and the renewed set stays in use.
    std::fs::write(&key, "not a key").unwrap();
    server.signal("HUP");
    wait_for_stderr(&server, "TLS reload failed");
    let mut after = tls::connect(addr, &config);
    tls::handshake(&mut after).unwrap();
    assert_eq!(tls::server_common_name(&after), "renewed");
    let errors = server
        .stderr()
        .lines()
        .filter(|l| l.contains("TLS reload failed"))
        .count();
    assert_eq!(errors, 1, "{}", server.stderr());
    assert!(
        server.stderr().contains(key.to_str().unwrap()),
        "the error names the file"
    );
}

fn wait_for_common_name(
    addr: std::net::SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let mut stream = tls::connect(addr, config);
        if tls::handshake(&mut stream).is_ok() && tls::server_common_name(&stream) == name {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_for_stderr(server: &Server, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !server.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_without_a_tls_service_is_ignored() {
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    server.signal("HUP");
    let mut client = util::connect(server.addr("echo"));
    util::send(&mut client, b"alive");
    assert_eq!(util::read_exact_within(&mut client, 5), b"alive");
    server.assert_running();
}

#[test]
fn a_proxy_header_comes_first_then_the_handshake() {
    let dir = tls::scratch_dir("proxy");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["chat@tls:127.0.0.1:0"], &["--proxy-protocol"]);
    let config = tls::client_config(&pki.ca, None);
    let mut sock = TcpStream::connect(server.addr_of("chat", "tls")).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    // The header and the ClientHello in one write, as HAProxy's send-proxy may send them.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut session = rustls::ClientConnection::new(config, name).unwrap();
    let mut first = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n".to_vec();
    session.write_tls(&mut first).unwrap();
    sock.write_all(&first).unwrap();
    let mut stream = rustls::StreamOwned::new(session, sock);
    assert!(tls::read_line(&mut stream).starts_with("* welcome 203.0.113.7:56324;"));
}

#[test]
fn missing_or_bad_tls_files_are_refused_at_start() {
    let dir = tls::scratch_dir("files");
    let pki = Pki::new(&dir);
    let run = util::run(&["serve", "echo@tls:127.0.0.1:0"], b"");
    assert_eq!(run.code(), 2, "a tls: service without --tls-cert: {run:?}");
    let missing = dir.join("missing.pem");
    for (cert, key, named) in [
        (
            missing.as_path(),
            pki.server_key.as_path(),
            missing.as_path(),
        ),
        (
            pki.server_cert.as_path(),
            pki.ca.as_path(),
            pki.ca.as_path(),
        ),
        (
            pki.server_cert.as_path(),
            pki.client_key.as_path(),
            pki.client_key.as_path(),
        ),
    ] {
        let run = util::run(
            &[
                "serve",
                "echo@tls:127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            b"",
        );
        assert_eq!(run.code(), 1, "{run:?}");
        assert!(
            run.stderr.contains(named.to_str().unwrap()) && run.stderr.lines().count() == 1,
            "one line naming {}: {:?}",
            named.display(),
            run.stderr
        );
    }
    let bad_ca = util::run(
        &[
            "serve",
            "echo@tls:127.0.0.1:0",
            "--tls-cert",
            pki.server_cert.to_str().unwrap(),
            "--tls-key",
            pki.server_key.to_str().unwrap(),
            "--tls-client-ca",
            pki.server_key.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(bad_ca.code(), 1, "{bad_ca:?}");
}

#[test]
fn many_handshakes_at_once_are_all_served() {
    let dir = tls::scratch_dir("many");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &[]);
    let addr = server.addr_of("echo", "tls");
    let config = tls::client_config(&pki.ca, None);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let mut stream = tls::connect(addr, &config);
                    let message = format!("{t}-{i}");
                    tls::send(&mut stream, message.as_bytes());
                    assert_eq!(
                        tls::read_exact(&mut stream, message.len()),
                        message.as_bytes()
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn a_handshake_past_max_connections_is_closed_and_the_others_are_served() {
    let dir = tls::scratch_dir("max-connections");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--max-connections", "1"]);
    let mut first = connect(&server, "echo", &pki);
    let config = tls::client_config(&pki.ca, None);
    let mut second = tls::connect(server.addr_of("echo", "tls"), &config);
    // Closed at once, without a plaintext line a TLS client would take for a broken record.
    let refused = tls::handshake(&mut second).expect_err("a second connection got in");
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{refused:?}"
    );
    tls::send(&mut first, b"one");
    assert_eq!(tls::read_exact(&mut first, 3), b"one");
}

#[test]
fn the_idle_timeout_ends_a_tls_session_with_close_notify() {
    let dir = tls::scratch_dir("idle");
    let pki = Pki::new(&dir);
    let server = serve(&pki, &["echo@tls:127.0.0.1:0"], &["--idle-timeout", "1"]);
    let mut idle = connect(&server, "echo", &pki);
    tls::send(&mut idle, b"once");
    assert_eq!(tls::read_exact(&mut idle, 4), b"once");
    let (rest, end) = tls::read_to_close_notify(&mut idle);
    assert!(rest.is_empty(), "{rest:?}");
    end.expect("the idle timeout's close is a close_notify, not a truncation");
}

/// An upload over TLS whose bytes reach the server while it is stopped, then SIGTERM and
/// SIGCONT: the shutdown reads what had arrived (counted in records, not plaintext).
fn upload_at_shutdown(body_len: usize, sent: usize, record: usize) -> (String, Duration) {
    let dir = tls::scratch_dir("upload-shutdown");
    let pki = Pki::new(&dir);
    let uploads = dir.join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    let server = serve(
        &pki,
        &["upload@tls:127.0.0.1:0"],
        &[
            "--upload-dir",
            uploads.to_str().unwrap(),
            "--shutdown-timeout",
            "8",
        ],
    );
    let mut client = connect(&server, "upload", &pki);
    tls::send(&mut client, format!("{body_len} part.bin\n").as_bytes());
    assert_eq!(tls::read_line(&mut client), "ok");
    server.signal("STOP");
    let mut body = vec![0u8; sent];
    util::Pseudo::new(3).fill(&mut body);
    for piece in body.chunks(record) {
        client.write_all(piece).unwrap(); // one record each
    }
    client.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.signal("CONT");
    let answer = tls::read_line(&mut client);
    (answer, started.elapsed())
}

#[test]
fn sigterm_stores_a_tls_upload_whose_body_had_all_arrived() {
    let (answer, _) = upload_at_shutdown(150_000, 150_000, 16 * 1024);
    assert!(answer.starts_with("saved part.bin 150000 "), "{answer:?}");
}

#[test]
fn sigterm_cuts_a_partial_tls_upload_short_at_once() {
    let (answer, waited) = upload_at_shutdown(10_000_000, 150_000, 1000);
    assert_eq!(answer, "error shutting down");
    assert!(
        waited < Duration::from_secs(4),
        "answered after {waited:?}, not at once"
    );
}

#[test]
fn the_idle_timeout_closes_a_tls_chat_member_that_stopped_reading_while_the_room_talks() {
    let dir = tls::scratch_dir("idle-member");
    let pki = Pki::new(&dir);
    let server = serve(
        &pki,
        &["chat@tls:127.0.0.1:0"],
        &["--idle-timeout", "2", "--output-limit", "8000000"],
    );
    let mut silent = connect(&server, "chat", &pki);
    tls::read_line(&mut silent); // welcome
    let mut talker = connect(&server, "chat", &pki);
    tls::read_line(&mut talker);
    let line = [b'z'; 1023];
    for _ in 0..6000 {
        talker.write_all(&line).unwrap();
        talker.write_all(b"\n").unwrap();
    }
    talker.flush().unwrap();
    // The room goes on talking: its lines for the silent member only fill its socket.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        tls::send(&mut talker, b"tick\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, end) = tls::read_to_close_notify(&mut silent);
    if let Err(e) = end {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the silent member was never closed: {e}"
        );
    }
}
