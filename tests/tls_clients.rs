//! The clients over `tls:` (issue 20): `oneloop client`, `send` and `load` with `--tls-ca`,
//! `--tls-server-name`, `--tls-cert` and `--tls-key`.
//!
//! The client's handshake, its refusals and its close_notify are checked against a TLS server
//! that is not oneloop's: OpenSSL's `s_server -rev`, which answers each line reversed and ends a
//! connection when the client's close_notify comes (the words have no newline, so their reply
//! proves the close_notify went: s_server answers the last partial line at the end of stream).
//! Without `openssl` those tests skip with one line.
//!
//! Every certificate is made for the test ([`util::tls::Pki`]); every wait is bounded.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use util::tls::Pki;
use util::{KillOnDrop, DEADLINE};

/// A directory of its own for one test's certificates and files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oneloop-tlsc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// A running `openssl s_server -rev` on a free loopback port.
struct SServer {
    _child: KillOnDrop,
    port: u16,
}

/// Starts `openssl s_server -rev` with the test's server certificate and `extra` options; `None`
/// (after the skip line) without openssl.
fn s_server(pki: &Pki, extra: &[&str]) -> Option<SServer> {
    let openssl = util::require_tool("openssl")?;
    let mut child = KillOnDrop(
        Command::new(openssl)
            .args(["s_server", "-accept", "127.0.0.1:0", "-rev", "-cert"])
            .arg(&pki.server_cert)
            .arg("-key")
            .arg(&pki.server_key)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server"),
    );
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                // Nobody listens any more: keep draining so s_server never blocks on stdout.
                continue;
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .expect("s_server's ACCEPT line within the deadline");
        if let Some(address) = line.strip_prefix("ACCEPT ") {
            let port = address.rsplit(':').next().unwrap().parse().unwrap();
            return Some(SServer {
                _child: child,
                port,
            });
        }
    }
}

/// `oneloop client` with `args`, `stdin` as its input.
fn client(args: &[String], stdin: &[u8]) -> util::Run {
    let mut argv = vec!["client".to_string()];
    argv.extend_from_slice(args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    util::run(&argv, stdin)
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn client_words_over_tls_end_with_a_close_notify_and_read_the_answer() {
    let dir = scratch("words");
    let pki = Pki::new(&dir);
    let Some(server) = s_server(&pki, &["-naccept", "1"]) else {
        return;
    };
    let address = format!("tls:localhost:{}", server.port);
    let run = client(
        &[
            strings(&[&address, "--tls-ca"]),
            vec![text(&pki.ca)],
            strings(&["hello", "world", "--timeout", "5"]),
        ]
        .concat(),
        b"",
    );
    assert_eq!(run.code(), 0, "{run:?}");
    // No newline was sent: s_server answers the partial line only at the close_notify.
    assert_eq!(run.stdout.trim_end(), "dlrow olleh", "{run:?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn interactive_client_over_tls_sends_each_line_and_ends_at_end_of_input() {
    let dir = scratch("interactive");
    let pki = Pki::new(&dir);
    let Some(server) = s_server(&pki, &["-naccept", "1"]) else {
        return;
    };
    // A long line (s_server reverses 16 KiB at a time), and many lines, more than rustls's
    // 64 KiB of buffers in all: nothing lost, nothing reordered.
    let long: String = (0..8_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut input = format!("abc\n{long}\n");
    let mut expected = format!("cba\n{}\n", long.chars().rev().collect::<String>());
    for i in 0..10_000 {
        input.push_str(&format!("line {i}\n"));
        expected.push_str(&format!(
            "{} enil\n",
            i.to_string().chars().rev().collect::<String>()
        ));
    }
    let address = format!("tls:127.0.0.1:{}", server.port);
    let run = client(
        &[strings(&[&address, "--tls-ca"]), vec![text(&pki.ca)]].concat(),
        input.as_bytes(),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        run.stdout == expected,
        "the replies differ ({} bytes)",
        run.stdout.len()
    );
}

/// Runs the client against a fresh s_server with `options`, expecting exit 1 and one line on
/// standard error that contains `reason`.
fn refused(
    name: &str,
    server_options: impl Fn(&Pki) -> Vec<String>,
    options: impl Fn(&Pki) -> Vec<String>,
    reason: &str,
) {
    let dir = scratch(name);
    let pki = Pki::new(&dir);
    let server_options = server_options(&pki);
    let server_options: Vec<&str> = server_options.iter().map(String::as_str).collect();
    let Some(server) = s_server(&pki, &server_options) else {
        return;
    };
    let address = format!("tls:127.0.0.1:{}", server.port);
    let args = [
        strings(&[&address, "hello", "--timeout", "5"]),
        options(&pki),
    ]
    .concat();
    let run = client(&args, b"");
    assert_eq!(run.code(), 1, "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {:?}", run.stderr);
    assert!(
        run.stderr.contains(reason),
        "{:?} should name {reason:?}",
        run.stderr
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_in_one_line() {
    refused(
        "other-ca",
        |_| Vec::new(),
        |pki| vec!["--tls-ca".into(), text(&pki.other_ca)],
        "the TLS handshake failed: invalid peer certificate: UnknownIssuer",
    );
}

#[test]
fn a_server_certificate_for_another_name_is_refused_in_one_line() {
    refused(
        "name",
        |_| Vec::new(),
        |pki| {
            strings(&["--tls-server-name", "example.com", "--tls-ca"])
                .into_iter()
                .chain([text(&pki.ca)])
                .collect()
        },
        "not valid for name \"example.com\"",
    );
}

#[test]
fn the_system_roots_do_not_trust_a_test_ca() {
    refused(
        "system-roots",
        |_| Vec::new(),
        |_| Vec::new(),
        "UnknownIssuer",
    );
}

#[test]
fn a_server_that_requires_a_client_certificate_refuses_the_client_without_one() {
    refused(
        "no-client-cert",
        |pki| {
            strings(&["-Verify", "1", "-verify_return_error", "-CAfile"])
                .into_iter()
                .chain([text(&pki.ca)])
                .collect()
        },
        |pki| vec!["--tls-ca".into(), text(&pki.ca)],
        "the TLS",
    );
}

#[test]
fn the_client_presents_its_certificate() {
    let dir = scratch("client-cert");
    let pki = Pki::new(&dir);
    let ca = text(&pki.ca);
    let Some(server) = s_server(
        &pki,
        &[
            "-naccept",
            "1",
            "-Verify",
            "1",
            "-verify_return_error",
            "-CAfile",
            &ca,
        ],
    ) else {
        return;
    };
    let address = format!("tls:localhost:{}", server.port);
    let run = client(
        &[
            strings(&[
                &address,
                "hi",
                "--timeout",
                "5",
                "--tls-ca",
                &ca,
                "--tls-cert",
            ]),
            vec![
                text(&pki.client_cert),
                "--tls-key".into(),
                text(&pki.client_key),
            ],
        ]
        .concat(),
        b"",
    );
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout.trim_end(), "ih");
}

#[test]
fn bad_tls_files_and_options_are_named_before_connecting() {
    let dir = scratch("files");
    let missing = text(&dir.join("missing.pem"));
    // Nothing listens on port 1: the files are read, and refused, before any connect.
    for command in ["client", "send", "load"] {
        let mut args = vec![command, "tls:127.0.0.1:1"];
        if command == "send" {
            args.push("Cargo.toml");
        }
        args.extend(["--tls-ca", &missing]);
        let run = util::run(&args, b"");
        assert_eq!(run.code(), 1, "{command}: {run:?}");
        assert!(run.stderr.contains("missing.pem"), "{command}: {run:?}");
        assert!(run.stderr.contains("no such file"), "{command}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{command}: {run:?}");

        // A certificate needs its key: a usage error.
        let mut args = vec![command, "tls:127.0.0.1:1"];
        if command == "send" {
            args.push("Cargo.toml");
        }
        args.extend(["--tls-cert", &missing]);
        let run = util::run(&args, b"");
        assert_eq!(run.code(), 2, "{command}: {run:?}");
        assert!(run.stderr.contains("--tls-key"), "{command}: {run:?}");
    }
}

// ---- Against oneloop's own tls: services. ----

/// `oneloop serve SERVICES... --tls-cert .. --tls-key .. EXTRA...` with the test's certificates.
fn serve_tls(pki: &Pki, services: &[&str], extra: &[String]) -> util::Server {
    let mut args: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    args.extend(pki.server_args());
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    util::Server::start(&args)
}

/// `tls:localhost:PORT` of the server's `protocol` service.
fn tls_address(server: &util::Server, protocol: &str) -> String {
    format!("tls:localhost:{}", server.addr_of(protocol, "tls").port())
}

#[test]
fn client_words_over_tls_to_upper() {
    let dir = scratch("upper");
    let pki = Pki::new(&dir);
    let server = serve_tls(&pki, &["upper@tls:127.0.0.1:0"], &[]);
    let address = tls_address(&server, "upper");
    let ca = text(&pki.ca);
    let run = util::run(
        &[
            "client",
            &address,
            "Hello",
            "world",
            "123",
            "--tls-ca",
            &ca,
            "--timeout",
            "5",
        ],
        b"",
    );
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout, "HELLO WORLD 123");
    // Interactive: each line answered, end of input ends it.
    let run = util::run(
        &["client", &address, "--tls-ca", &ca, "--timeout", "5"],
        b"one\ntwo\n",
    );
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout, "ONE\nTWO\n");
}

#[test]
fn send_uploads_over_tls_and_checks_size_and_crc() {
    let dir = scratch("send");
    let pki = Pki::new(&dir);
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let extra = vec!["--upload-dir".to_string(), text(&store)];
    let server = serve_tls(&pki, &["upload@tls:127.0.0.1:0"], &extra);
    let address = tls_address(&server, "upload");
    // Larger than every buffer on the way, so the upload really streams.
    let file = dir.join("big.bin");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let run = util::run(
        &["send", &address, &text(&file), "--tls-ca", &text(&pki.ca)],
        b"",
    );
    assert_eq!(run.code(), 0, "{run:?}");
    let crc = format!("{:08x}", crc32fast::hash(&body));
    assert_eq!(
        run.stdout.trim_end(),
        format!("saved big.bin 3000000 {crc}")
    );
    assert_eq!(std::fs::read(store.join("big.bin")).unwrap(), body);
}

/// `oneloop load ARGS... --json`, parsed; the run's exit code too.
fn load_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut argv = vec!["load"];
    argv.extend_from_slice(args);
    argv.push("--json");
    let run = util::run(&argv, b"");
    let value = serde_json::from_str(run.stdout.trim_end())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {run:?}"));
    (run.code(), value, run.stderr)
}

fn number(value: &serde_json::Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .or_else(|| value[key].as_f64().map(|f| f as u64))
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

#[test]
fn load_over_tls_verifies_every_protocol() {
    let dir = scratch("load");
    let pki = Pki::new(&dir);
    let server = serve_tls(
        &pki,
        &[
            "echo@tls:127.0.0.1:0",
            "upper@tls:127.0.0.1:0",
            "timestamp@tls:127.0.0.1:0",
            "chat@tls:127.0.0.1:0",
        ],
        &[],
    );
    let ca = text(&pki.ca);
    for (protocol, extra) in [
        (
            "echo",
            &["--pipeline", "4", "--size", "20000", "--threads", "2"][..],
        ),
        ("upper", &[][..]),
        ("timestamp", &[][..]),
        ("chat", &[][..]),
    ] {
        let address = tls_address(&server, protocol);
        let mut args = vec![
            &address[..],
            "--protocol",
            protocol,
            "--tls-ca",
            &ca,
            "--connections",
            "4",
            "--duration",
            "1",
        ];
        args.extend_from_slice(extra);
        let (code, json, stderr) = load_json(&args);
        assert_eq!(code, 0, "{protocol}: {json} {stderr}");
        assert_eq!(number(&json, "errors"), 0, "{protocol}: {json}");
        assert!(number(&json, "requests") > 0, "{protocol}: {json}");
        assert_eq!(number(&json, "handshakes"), 4, "{protocol}: {json}");
    }
}

#[test]
fn load_reconnect_makes_a_handshake_per_n_requests() {
    let dir = scratch("reconnect");
    let pki = Pki::new(&dir);
    let server = serve_tls(&pki, &["echo@tls:127.0.0.1:0", "echo@127.0.0.1:0"], &[]);
    let ca = text(&pki.ca);
    let plain = server.addr_of("echo", "tcp").to_string();
    for address in [tls_address(&server, "echo"), plain] {
        let (code, json, stderr) = load_json(&[
            &address,
            "--tls-ca",
            &ca,
            "--connections",
            "3",
            "--duration",
            "1",
            "--reconnect",
            "2",
            "--warmup",
            "0",
        ]);
        assert_eq!(code, 0, "{address}: {json} {stderr}");
        assert_eq!(number(&json, "errors"), 0, "{address}: {json}");
        let requests = number(&json, "requests") + number(&json, "warmup_requests");
        let handshakes = number(&json, "handshakes");
        // The first 3, then one for every 2 requests on each connection (the last one's
        // handshake may be under way or done when the load stops).
        assert!(handshakes > 3, "{address}: {json}");
        let least = 3 + requests / 2 - 3;
        assert!(
            (least..=3 + requests / 2 + 3).contains(&handshakes),
            "{address}: {handshakes} handshakes for {requests} requests: {json}"
        );
        assert!(number(&json, "handshake_rps") > 0, "{address}: {json}");
    }
}

#[test]
fn load_presents_its_client_certificate_to_a_server_that_requires_one() {
    let dir = scratch("load-client-ca");
    let pki = Pki::new(&dir);
    let extra = vec!["--tls-client-ca".to_string(), text(&pki.ca)];
    let server = serve_tls(&pki, &["echo@tls:127.0.0.1:0"], &extra);
    let address = tls_address(&server, "echo");
    let ca = text(&pki.ca);
    let (cert, key) = (text(&pki.client_cert), text(&pki.client_key));
    let (code, json, stderr) = load_json(&[
        &address,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--connections",
        "3",
        "--duration",
        "1",
        "--reconnect",
        "5",
    ]);
    assert_eq!(code, 0, "{json} {stderr}");
    assert_eq!(number(&json, "errors"), 0, "{json}");
    assert!(number(&json, "handshakes") > 3, "{json}");
    // Without it, or with another CA's: refused, and the run fails.
    let (other_cert, other_key) = (text(&pki.other_client_cert), text(&pki.other_client_key));
    for identity in [
        vec![],
        vec!["--tls-cert", &other_cert[..], "--tls-key", &other_key[..]],
    ] {
        let mut args = vec![
            &address[..],
            "--tls-ca",
            &ca,
            "--connections",
            "1",
            "--duration",
            "1",
        ];
        args.extend(identity);
        let (code, json, _) = load_json(&args);
        assert_eq!(code, 1, "{json}");
        assert!(number(&json, "errors") > 0, "{json}");
    }
}

#[test]
fn send_and_load_name_a_refused_certificate() {
    let dir = scratch("refused-send-load");
    let pki = Pki::new(&dir);
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let extra = vec!["--upload-dir".to_string(), text(&store)];
    let server = serve_tls(
        &pki,
        &["upload@tls:127.0.0.1:0", "echo@tls:127.0.0.1:0"],
        &extra,
    );
    let other = text(&pki.other_ca);
    let file = dir.join("small.txt");
    std::fs::write(&file, b"hello").unwrap();
    let upload = tls_address(&server, "upload");
    let run = util::run(&["send", &upload, &text(&file), "--tls-ca", &other], b"");
    assert_eq!(run.code(), 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{run:?}"
    );
    assert!(std::fs::read_dir(&store).unwrap().next().is_none());

    let echo = tls_address(&server, "echo");
    let (code, json, _) = load_json(&[
        &echo,
        "--tls-ca",
        &other,
        "--connections",
        "2",
        "--duration",
        "1",
    ]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(number(&json, "connect_failures"), 2, "{json}");
    let first = json["first_error"].as_str().unwrap();
    assert!(first.contains("UnknownIssuer"), "{first}");
}
