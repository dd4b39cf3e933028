//! The `metrics` service against the real programs that read it: Prometheus's own `promtool
//! check metrics` on an exposition taken after traffic on every protocol (so every labelled
//! family has samples, not only its declaration), and a real `prometheus` server scraping
//! oneloop every second, its view read back through its HTTP API.
//!
//! Each test skips with one line where the program is missing (Debian: `apt-get install
//! prometheus`, which brings both); under `ONELOOP_TEST_REQUIRE_TOOLS=1`, as `.ci/run` sets it,
//! that is a failure.

mod util;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::metrics::{scrape, scrape_until, service, with, Scraper, SCRAPE};
use util::tls::{self as tls, Pki};
use util::{connect, free_loopback_port, read_exact_within, run, send, KillOnDrop, Server};
use util::{LineReader, DEADLINE};

/// How long a real Prometheus may take to start, scrape and answer: it replays its (empty)
/// write-ahead log and opens its storage first, which is slow on a loaded two-core machine.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(90);

/// `promtool check metrics` on `exposition`: its exit status and everything it printed.
fn promtool_check(promtool: &Path, exposition: &[u8]) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition)
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool's output");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// One echo round trip on a connection of its own.
fn echo_once(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = connect(addr);
    send(&mut stream, bytes);
    assert_eq!(read_exact_within(&mut stream, bytes.len()), bytes);
}

/// A little of everything each protocol counts: requests on upper, timestamp, echo (TCP, UDP
/// and TLS), two chat members and a line between them, one stored and one failed upload, and a
/// TLS handshake refused.
fn traffic_on_every_protocol(server: &Server, pki: &Pki, dir: &Path) {
    let mut upper = connect(server.addr_of("upper", "tcp"));
    send(&mut upper, b"hello\n");
    assert_eq!(read_exact_within(&mut upper, 6), b"HELLO\n");
    let mut stamp = LineReader::new(connect(server.addr_of("timestamp", "tcp")));
    stamp.send(b"when\n");
    assert!(stamp.line().ends_with("] when"));
    echo_once(server.addr_of("echo", "tcp"), b"ping");

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(DEADLINE)).unwrap();
    udp.send_to(b"datagram", server.addr_of("echo", "udp"))
        .unwrap();
    let mut reply = [0; 64];
    let got = udp.recv(&mut reply).unwrap();
    assert_eq!(&reply[..got], b"datagram");

    let config = tls::client_config(&pki.ca, None);
    let mut secure = tls::connect(server.addr_of("echo", "tls"), &config);
    tls::send(&mut secure, b"sealed");
    assert_eq!(tls::read_exact(&mut secure, 6), b"sealed");
    drop(secure);
    // Not a TLS ClientHello: refused in the handshake.
    let mut garbage = connect(server.addr_of("echo", "tls"));
    let _ = garbage.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let _ = util::try_read_to_end_within(&mut garbage);

    let chat = server.addr_of("chat", "tcp");
    let mut ann = LineReader::new(connect(chat));
    ann.line(); // welcome
    let mut bob = LineReader::new(connect(chat));
    bob.line();
    ann.line(); // `* bob joined`
    bob.send(b"hi all\n");
    assert!(ann.line().ends_with(": hi all"));

    let file = dir.join("greeting.txt");
    fs::write(&file, b"stored by a real upload\n").unwrap();
    let upload = server.addr_of("upload", "tcp").to_string();
    let sent = run(&["send", &upload, file.to_str().unwrap()], b"");
    assert_eq!(sent.code(), 0, "{sent:?}");
    let mut bad = connect(server.addr_of("upload", "tcp"));
    send(&mut bad, b"not an upload header\n");
    let _ = util::try_read_to_end_within(&mut bad);
}

#[test]
fn promtool_accepts_the_exposition_after_traffic_on_every_protocol() {
    let Some(promtool) = util::require_tool("promtool") else {
        return;
    };
    // A control first: this promtool does find fault (a counter without `_total`, no HELP).
    let (clean, said) = promtool_check(&promtool, b"# TYPE requests counter\nrequests 1\n");
    assert!(
        !clean || !said.is_empty(),
        "promtool found nothing wrong with a bad exposition"
    );

    let dir = tls::scratch_dir("promtool");
    let pki = Pki::new(&dir);
    let socket = dir.join("metrics.sock");
    let services = [
        "upper@127.0.0.1:0",
        "timestamp@127.0.0.1:0",
        "echo@127.0.0.1:0",
        "echo@udp:127.0.0.1:0",
        "echo@tls:127.0.0.1:0",
        "chat@127.0.0.1:0",
        "upload@127.0.0.1:0",
        "metrics@127.0.0.1:0",
        &format!("metrics@unix:{}", socket.display()),
    ];
    let upload_dir = dir.join("uploads");
    fs::create_dir(&upload_dir).unwrap();
    let extra = ["--upload-dir", upload_dir.to_str().unwrap()];
    let server = pki.serve(&services, &extra);
    traffic_on_every_protocol(&server, &pki, &dir);

    let metrics = server.addr_of("metrics", "tcp");
    let upload = service(&server, "upload", "tcp");
    let tls_echo = service(&server, "echo", "tls");
    let exposition = scrape_until(metrics, "every protocol counted", |e| {
        e.int("oneloop_uploads_stored_total", &with(&upload, &[])) == 1
            && e.matching("oneloop_uploads_failed_total", &with(&upload, &[]))
                .iter()
                .map(|sample| sample.value)
                .sum::<f64>()
                == 1.0
            && e.int(
                "oneloop_connections_refused_total",
                &with(&tls_echo, &[("reason", "tls_handshake")]),
            ) == 1
    });
    // The members have gone (leaving the gauge at 0), their lines counted.
    let chat = service(&server, "chat", "tcp");
    assert!(exposition.int("oneloop_chat_deliveries_total", &with(&chat, &[])) >= 3);
    let mut scraper = Scraper::connect(metrics);
    let text = scraper.request(SCRAPE).body;
    let (clean, said) = promtool_check(&promtool, &text);
    assert!(
        clean && said.is_empty(),
        "promtool check metrics: {said}\non:\n{}",
        String::from_utf8_lossy(&text)
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}

/// The body of a GET of `path_and_query` from the HTTP server at `addr`, if it answered 200
/// (`None` while it is not up, or not ready: Prometheus answers 503 until it is).
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // HTTP/1.0: the answer ends at the close, with no chunked encoding to undo.
    let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

/// `text` percent-encoded for a URL's query (every byte but the unreserved ones).
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value Prometheus at `web` has now for the instant query `query`, if it has exactly
/// one series for it.
fn prometheus_value(web: SocketAddr, query: &str) -> Option<String> {
    let body = http_get(
        web,
        &format!("/api/v1/query?query={}", percent_encoded(query)),
    )?;
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(answer["status"], "success", "{query}: {body}");
    match answer["data"]["result"].as_array()?.as_slice() {
        [one] => one["value"][1].as_str().map(str::to_owned),
        _ => None,
    }
}

#[test]
fn a_real_prometheus_scraping_every_second_reads_up_and_an_exact_counter() {
    let Some(prometheus) = util::require_tool("prometheus") else {
        return;
    };
    let server = Server::start(&["echo@127.0.0.1:0", "metrics@127.0.0.1:0"]);
    let (echo, metrics) = (server.addr("echo"), server.addr("metrics"));
    let connections = 7;
    for _ in 0..connections {
        echo_once(echo, b"counted");
    }
    let echo_labels = service(&server, "echo", "tcp");
    scrape_until(metrics, "the echo clients gone", |e| {
        e.int("oneloop_connections_open", &with(&echo_labels, &[])) == 0
    });

    let dir = tls::scratch_dir("prometheus");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: oneloop\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = ([127, 0, 0, 1], free_loopback_port()).into();
    let log = File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let _prometheus = KillOnDrop(child);

    let accepted = r#"oneloop_connections_accepted_total{job="oneloop",protocol="echo"}"#;
    let deadline = Instant::now() + PROMETHEUS_DEADLINE;
    let (up, count) = loop {
        let up = prometheus_value(web, "up{job=\"oneloop\"}");
        let count = prometheus_value(web, accepted);
        if up.as_deref() == Some("1") && count.is_some() {
            break (up, count);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus at {web} has up={up:?}, {accepted}={count:?} after \
             {PROMETHEUS_DEADLINE:?}; its log:\n{}",
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(up.as_deref(), Some("1"));
    assert_eq!(count, Some(connections.to_string()), "{accepted}");
    // Prometheus parsed the whole exposition, not just reached the port: it took every sample
    // oneloop declared (our own scrapes would not make this true).
    let samples = prometheus_value(web, "scrape_samples_scraped{job=\"oneloop\"}");
    let served = scrape(metrics).samples.len();
    let taken: usize = samples
        .as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("scrape_samples_scraped = {samples:?}"));
    assert!(
        taken > 50 && taken.abs_diff(served) <= 2,
        "Prometheus took {taken} samples of a scrape; one scrape has {served}"
    );
    drop(_prometheus);
    let _ = fs::remove_dir_all(&dir);
}
