//! Talking to a `metrics` service as a scraper does: HTTP/1.1 by hand (a request out, one
//! response back, with a deadline on every read) and the text exposition format 0.0.4 parsed
//! strictly — a malformed line, a sample before its `# TYPE`, a family declared twice: each
//! panics naming the line. Shared by every test of the metrics service.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::{connect, send, Server, Snippet, DEADLINE};

/// A plain scrape, as Prometheus sends it (on a connection that stays open).
pub const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: oneloop\r\nAccept: text/plain\r\n\r\n";

/// A scrape on a connection of its own, closed after the answer.
pub const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: oneloop\r\nConnection: close\r\n\r\n";

/// The families the contract names (and the loop's two histograms), each with its type.
pub const ONELOOP_FAMILIES: &[(&str, &str)] = &[
    ("oneloop_connections_accepted_total", "counter"),
    ("oneloop_connections_open", "gauge"),
    ("oneloop_connections_refused_total", "counter"),
    ("oneloop_received_bytes_total", "counter"),
    ("oneloop_sent_bytes_total", "counter"),
    ("oneloop_datagrams_received_total", "counter"),
    ("oneloop_datagrams_dropped_total", "counter"),
    ("oneloop_chat_members", "gauge"),
    ("oneloop_chat_deliveries_total", "counter"),
    ("oneloop_chat_members_dropped_total", "counter"),
    ("oneloop_uploads_stored_total", "counter"),
    ("oneloop_upload_stored_bytes_total", "counter"),
    ("oneloop_uploads_failed_total", "counter"),
    ("oneloop_loop_turns_total", "counter"),
    ("oneloop_loop_events_total", "counter"),
    ("oneloop_loop_busy_seconds_total", "counter"),
    ("oneloop_loop_events_per_turn", "histogram"),
    ("oneloop_loop_turn_duration_seconds", "histogram"),
];

/// The standard process families the contract also names, as every Prometheus client names them.
pub const PROCESS_FAMILIES: &[(&str, &str)] = &[
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

/// Every list of families a server must declare before any traffic.
pub const REQUIRED_FAMILIES: &[&[(&str, &str)]] = &[ONELOOP_FAMILIES, PROCESS_FAMILIES];

// ---------------------------------------------------------------------------------------------
// The exposition, parsed.

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A whole exposition: its declarations and its samples, in order.
#[derive(Debug, Default)]
pub struct Exposition {
    pub helps: HashSet<String>,
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses text format 0.0.4, panicking (with the line) on anything malformed.
    pub fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(
                    exposition.helps.insert(name.clone()),
                    "HELP twice for {name}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type: {line}"
                );
                let old = exposition.types.insert(name.to_owned(), kind.to_owned());
                assert!(old.is_none(), "TYPE twice for {name}");
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let sample = parse_sample(line);
                let family = family_of(&sample.name, &exposition.types);
                assert!(
                    exposition.types.contains_key(family),
                    "sample before (or without) its TYPE: {line}"
                );
                exposition.samples.push(sample);
            }
        }
        exposition
    }

    /// The samples named `name` whose labels include every one of `labels`.
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> Vec<&'a Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(n, v)| s.label(n) == Some(*v)))
            .collect()
    }

    /// The value of the one sample named `name` with `labels` (panics unless exactly one).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.matching(name, labels)[..] {
            [one] => one.value,
            ref other => panic!(
                "{} samples of {name} with {labels:?} (want exactly 1): {other:?}",
                other.len()
            ),
        }
    }

    /// [`Exposition::value`] as an exact integer.
    pub fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.value(name, labels);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name} {labels:?} = {value}"
        );
        value as u64
    }
}

/// The family a sample belongs to (a histogram's `_bucket`, `_sum` and `_count` are its own).
pub fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

pub fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name: {line}"
    );
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let consumed;
        loop {
            let (start, c) = chars
                .next()
                .unwrap_or_else(|| panic!("open labels: {line}"));
            if c == '}' {
                consumed = start + 1;
                break;
            }
            if c == ',' {
                continue;
            }
            let mut label = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label: {line}");
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some(c) => value.push(c),
                    None => panic!("open label value: {line}"),
                }
            }
            labels.push((label, value));
        }
        rest = &after[consumed..];
    }
    let value_text = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"));
    let value_text = value_text.split(' ').next().unwrap(); // a timestamp may follow
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text
            .parse()
            .unwrap_or_else(|e| panic!("bad value {text:?} ({e}): {line}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP, by hand.

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn exposition(&self) -> Exposition {
        assert_eq!(self.status, 200, "{self:?}");
        Exposition::parse(std::str::from_utf8(&self.body).expect("the exposition is UTF-8"))
    }
}

/// Reads from `stream` into `pending` until `done` says what it holds is enough.
pub fn fill_until<S: Read>(stream: &mut S, pending: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = [0; 16 * 1024];
    while !done(pending) {
        assert!(
            Instant::now() < deadline,
            "no complete response within {DEADLINE:?}: {:?}",
            Snippet(pending)
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!("end of stream mid-response: {:?}", Snippet(pending)),
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read failed ({e}) mid-response: {:?}", Snippet(pending)),
        }
    }
}

pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Reads one response (head, then exactly Content-Length bytes of body), leaving any bytes
/// after it in `pending`. `has_body: false` for the answer to a HEAD request.
pub fn read_response<S: Read>(stream: &mut S, pending: &mut Vec<u8>, has_body: bool) -> Response {
    fill_until(stream, pending, |p| head_end(p).is_some());
    let end = head_end(pending).unwrap();
    let head = String::from_utf8(pending[..end - 4].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("a numeric Content-Length"))
        .expect("every answer has a Content-Length");
    pending.drain(..end);
    let length = if has_body { length } else { 0 };
    fill_until(stream, pending, |p| p.len() >= length);
    let body = pending.drain(..length).collect();
    Response {
        status,
        headers,
        body,
    }
}

/// A scraper that keeps its connection (keep-alive), as Prometheus does.
pub struct Scraper {
    pub stream: TcpStream,
    pub pending: Vec<u8>,
}

impl Scraper {
    pub fn connect(addr: SocketAddr) -> Scraper {
        Scraper {
            stream: connect(addr),
            pending: Vec::new(),
        }
    }

    pub fn request(&mut self, request: &[u8]) -> Response {
        send(&mut self.stream, request);
        read_response(&mut self.stream, &mut self.pending, true)
    }

    pub fn scrape(&mut self) -> Exposition {
        self.request(GET).exposition()
    }
}

/// One scrape on a connection of its own, closed after it.
pub fn scrape(addr: SocketAddr) -> Exposition {
    let mut stream = connect(addr);
    send(&mut stream, SCRAPE);
    let mut pending = Vec::new();
    let response = read_response(&mut stream, &mut pending, true);
    response.exposition()
}

/// Scrapes (each on a new connection) until `ready` holds; panics after [`DEADLINE`], showing
/// the last one.
pub fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let exposition = scrape(addr);
        if ready(&exposition) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {DEADLINE:?}: {exposition:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The labels of one service, as its listening line gives them.
pub fn service(server: &Server, protocol: &str, transport: &str) -> Vec<(&'static str, String)> {
    let listening = server
        .listening()
        .iter()
        .find(|l| l.protocol == protocol && l.transport == transport)
        .unwrap_or_else(|| panic!("no {protocol} {transport} in {:?}", server.listening()));
    let address = match &listening.path {
        Some(path) => path.display().to_string(),
        None => listening.addr.to_string(),
    };
    vec![
        ("protocol", protocol.to_owned()),
        ("transport", transport.to_owned()),
        ("address", address),
    ]
}

/// `labels` borrowed, plus `more`.
pub fn with<'a>(
    labels: &'a [(&'static str, String)],
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    labels
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(more.iter().copied())
        .collect()
}
