//! What a run found: the counters, the latency histogram, the generator's own cost — and the two
//! ways of printing them, a short human summary and one JSON object for scripts.
//!
//! JSON is written by hand rather than with serde: it is one object of numbers, a few strings
//! and one array of numbers, and the project keeps its dependency list short.

use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use log::debug;

use super::{LoadConfig, Mode};
use crate::service::Address;
use crate::service::ProtocolKind;

/// Latencies above this (in nanoseconds: one minute) are recorded as this. A run is far shorter.
const LATENCY_CEILING_NS: u64 = 60_000_000_000;

/// Significant decimal digits the histogram keeps: 0.1% relative error.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// What a thread counted; the threads' tallies, added up, are the report's [`counts`].
///
/// [`counts`]: super::LoadReport::counts
#[derive(Clone, Debug)]
pub struct Counts {
    /// Connections that were up when the load (or the hold) started.
    pub established: u64,
    /// Verified replies to requests sent after the warm-up (idle mode: the first round trips).
    pub requests: u64,
    /// Verified replies to requests sent during the warm-up.
    pub warmup_requests: u64,
    /// Connections never established after every attempt.
    pub connect_failures: u64,
    /// Replies that were not the right answer (at most one per connection, which then closes).
    pub wrong_replies: u64,
    /// Requests that never got their reply (over a stream); chat: lines a member never
    /// received from a sender.
    pub missing_replies: u64,
    /// Chat: members with no other error that saw two senders' lines interleaved otherwise
    /// than the room did (the "one order" check). Each is also one of `wrong_replies`.
    pub order_differs: u64,
    /// Chat: lines received, checked, from senders, sent after the warm-up (each line counts
    /// once per member that receives it). Zero for the other protocols.
    pub deliveries: u64,
    /// Chat: every line the members received over the whole run — greetings, notices, the
    /// barrier's hellos, the warm-up's lines and the measured ones: all the server's fan-out
    /// work, which its CPU time is spent on. Zero for the other protocols.
    pub lines_received: u64,
    /// UDP: requests whose reply did not come within the `--udp-timeout`, or was overtaken by
    /// the reply to a later request. Datagrams may be lost; each loss is still an error.
    pub lost: u64,
    /// UDP: replies that came after their request was counted `lost`, and were ignored. Not an
    /// error (the loss already is one): a server slower than the timeout, not a wrong one.
    pub late: u64,
    /// Established connections the server closed or reset while they were still needed: in load
    /// mode before the end of the load, or after it with replies outstanding; in idle mode while
    /// held. Each is an error (its outstanding requests are counted in `missing_replies` too).
    /// A server that closes a connection once the load is over and every reply is in has done
    /// nothing wrong: that is not counted.
    pub dropped: u64,
    /// How long the load ran, from its start until sending stopped: the whole duration, or less
    /// if every connection had closed before the end. Zero in idle mode. (Across threads: the
    /// longest.)
    pub load_time: Duration,
    /// Latency of each measured request, in nanoseconds.
    pub latency: Histogram<u64>,
    /// A description of the first error, for the summary.
    pub first_error: Option<String>,
    /// Connections set up over the whole run, the first ones included: TLS handshakes
    /// completed over `tls:`, connects made otherwise (more than the connections with
    /// `--reconnect`).
    pub handshakes: u64,
    /// Those of `handshakes` completed during the measured load (after the warm-up, before
    /// the stop): what `handshake_rps` is over.
    pub measured_handshakes: u64,
}

impl Counts {
    pub(super) fn new() -> Counts {
        Counts {
            established: 0,
            requests: 0,
            warmup_requests: 0,
            connect_failures: 0,
            wrong_replies: 0,
            missing_replies: 0,
            order_differs: 0,
            deliveries: 0,
            lines_received: 0,
            lost: 0,
            late: 0,
            dropped: 0,
            load_time: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, LATENCY_CEILING_NS, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            first_error: None,
            handshakes: 0,
            measured_handshakes: 0,
        }
    }

    /// Adds the threads' tallies up (the first error of the lowest-numbered thread wins).
    pub(crate) fn merge(tallies: Vec<Counts>) -> Counts {
        let mut total = Counts::new();
        for tally in tallies {
            total.established += tally.established;
            total.requests += tally.requests;
            total.warmup_requests += tally.warmup_requests;
            total.connect_failures += tally.connect_failures;
            total.wrong_replies += tally.wrong_replies;
            total.missing_replies += tally.missing_replies;
            total.order_differs += tally.order_differs;
            total.deliveries += tally.deliveries;
            total.lines_received += tally.lines_received;
            total.lost += tally.lost;
            total.late += tally.late;
            total.dropped += tally.dropped;
            total.handshakes += tally.handshakes;
            total.measured_handshakes += tally.measured_handshakes;
            total.load_time = total.load_time.max(tally.load_time);
            total
                .latency
                .add(&tally.latency)
                .expect("histograms with the same bounds add up");
            if total.first_error.is_none() {
                total.first_error = tally.first_error;
            }
        }
        total
    }

    pub(super) fn note_error(&mut self, text: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            let text = text();
            debug!("first error: {text}");
            self.first_error = Some(text);
        }
    }
}

/// Durations measured around the run by the calling thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// From the start of the run until every connection was up.
    pub connect: Duration,
    /// From the start of the load (or hold) until every thread had finished, grace included.
    pub wall: Duration,
    /// The process's CPU time over `wall`, if it could be read.
    pub cpu: Option<Duration>,
}

/// The outcome of a load run.
///
/// Counters are public fields; figures derived from them (`rps`, percentiles, the error total)
/// are methods, so they cannot disagree with the counters.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Load or idle.
    pub mode: Mode,
    /// The protocol spoken.
    pub protocol: ProtocolKind,
    /// The servers' addresses (several: the connections went to them in turn).
    pub addresses: Vec<Address>,
    /// Connections asked for.
    pub connections: u64,
    /// Generator threads used.
    pub threads: usize,
    /// Requests outstanding per connection.
    pub pipeline: usize,
    /// Bytes per request.
    pub size: usize,
    /// The load's (or the hold's) length, warm-up included.
    pub duration: Duration,
    /// The warm-up (load mode): requests sent in it are verified but not measured.
    pub warmup: Duration,
    /// What the threads counted, added up: requests, errors of each kind, connections
    /// established and dropped, the first error, and the latency histogram.
    pub counts: Counts,
    /// Each thread's share of `counts.requests`, in thread order: how evenly the work was
    /// spread, and proof that each thread did some.
    pub thread_requests: Vec<u64>,
    /// Time from the start until every connection was up (or had failed).
    pub connect_time: Duration,
    /// Time from the start of the load (or hold) until every thread had finished.
    pub wall_time: Duration,
    /// The generator's CPU time (user + system, all threads) over `wall_time`; `None` where it
    /// cannot be read.
    pub cpu_time: Option<Duration>,
    /// Whether Ctrl-C ended the run before its duration was up: the figures are those of the
    /// time it ran.
    pub interrupted: bool,
    /// `--reconnect`: requests per connection before it closes and connects again.
    pub reconnect: Option<u64>,
}

impl LoadReport {
    pub(crate) fn new(
        config: &LoadConfig,
        tally: Counts,
        thread_requests: Vec<u64>,
        timing: Timing,
    ) -> LoadReport {
        LoadReport {
            mode: config.mode,
            protocol: config.protocol,
            addresses: config.addresses.clone(),
            connections: config.connections as u64,
            threads: config.effective_threads(),
            pipeline: config.pipeline,
            size: config.size,
            duration: config.duration,
            warmup: match config.mode {
                Mode::Load => config.warmup(),
                Mode::Idle => Duration::ZERO,
            },
            connect_time: timing.connect,
            wall_time: timing.wall,
            cpu_time: timing.cpu,
            counts: tally,
            thread_requests,
            interrupted: false,
            reconnect: config.reconnect,
        }
    }

    /// Every error: connections not made, wrong replies, missing replies, lost datagrams (UDP),
    /// and connections the server dropped while they were still needed (see [`Counts::dropped`]).
    pub fn errors(&self) -> u64 {
        self.counts.connect_failures
            + self.counts.wrong_replies
            + self.counts.missing_replies
            + self.counts.lost
            + self.counts.dropped
    }

    /// Whether the run passed: at least one verified reply and no error.
    pub fn succeeded(&self) -> bool {
        self.errors() == 0
            && self.counts.requests > 0
            && (self.protocol != ProtocolKind::Chat
                || self.mode == Mode::Idle
                || self.counts.deliveries > 0)
    }

    /// Chat: lines delivered (and checked) per second, over [`measured_time`]; zero for the
    /// other protocols.
    ///
    /// [`measured_time`]: LoadReport::measured_time
    pub fn delivery_rps(&self) -> f64 {
        let seconds = self.measured_time().as_secs_f64();
        if seconds > 0.0 {
            self.counts.deliveries as f64 / seconds
        } else {
            0.0
        }
    }

    /// The time `requests` were sent in: from the end of the warm-up until sending stopped —
    /// the duration less the warm-up, or less than that if every connection was lost before the
    /// end (zero in idle mode).
    pub fn measured_time(&self) -> Duration {
        match self.mode {
            Mode::Load => self.counts.load_time.saturating_sub(self.warmup),
            Mode::Idle => Duration::ZERO,
        }
    }

    /// Whether the load stopped before its duration because no connection was left.
    pub fn ended_early(&self) -> bool {
        self.mode == Mode::Load && self.counts.load_time < self.duration && !self.interrupted
    }

    /// Verified requests per second after the warm-up, over [`measured_time`] (zero in idle
    /// mode).
    ///
    /// Requests are counted by when they were *sent*: those in flight when the warm-up ended are
    /// left out, those in flight when the load stopped are counted — the same number, in a closed
    /// loop, so the rate is not biased either way.
    ///
    /// [`measured_time`]: LoadReport::measured_time
    pub fn rps(&self) -> f64 {
        let seconds = self.measured_time().as_secs_f64();
        if seconds > 0.0 {
            self.counts.requests as f64 / seconds
        } else {
            0.0
        }
    }

    /// Connections set up (TLS handshakes over `tls:`) per second during the measured load,
    /// over [`measured_time`]: with `--reconnect`, what setting up a connection costs.
    ///
    /// [`measured_time`]: LoadReport::measured_time
    pub fn handshake_rps(&self) -> f64 {
        let seconds = self.measured_time().as_secs_f64();
        if seconds > 0.0 {
            self.counts.measured_handshakes as f64 / seconds
        } else {
            0.0
        }
    }

    /// Whether the summary has a handshakes line: over `tls:`, or with `--reconnect`.
    fn shows_handshakes(&self) -> bool {
        self.reconnect.is_some() || self.addresses.iter().any(Address::is_tls)
    }

    /// The latency at `quantile` (0.5 for the median), in whole microseconds; 0 with no samples.
    pub fn latency_us(&self, quantile: f64) -> u64 {
        nanos_to_micros(self.counts.latency.value_at_quantile(quantile))
    }

    /// The highest latency, in whole microseconds.
    pub fn max_latency_us(&self) -> u64 {
        nanos_to_micros(self.counts.latency.max())
    }

    /// The mean latency, in microseconds.
    pub fn mean_latency_us(&self) -> f64 {
        self.counts.latency.mean() / 1000.0
    }

    /// The generator's CPU use over the run as a percentage of one core (above 100 with several
    /// threads busy).
    pub fn client_cpu_percent(&self) -> Option<f64> {
        let wall = self.wall_time.as_secs_f64();
        self.cpu_time
            .filter(|_| wall > 0.0)
            .map(|cpu| 100.0 * cpu.as_secs_f64() / wall)
    }

    /// The report as one line of JSON: one object, nothing nested but one array of numbers,
    /// latencies in whole microseconds, times in seconds.
    ///
    /// Keys: `mode`, `protocol`, `address` (several: separated by spaces, as on the command
    /// line), `connections`, `interrupted` (Ctrl-C ended the run early), `established`, `threads`, `pipeline`,
    /// `size`, `duration_s`, `warmup_s`, `requests`, `thread_requests` (an array: each thread's
    /// share of `requests`), `measured_s` (the time `rps` is over, to the microsecond), `rps`, `p50_us`, `p99_us`, `p999_us`, `max_us`, `mean_us`, `errors`,
    /// `deliveries` and `delivery_rps` (chat: lines received by members, each checked; with chat
    /// `requests` is lines sent and the latencies are delivery latencies; 0 for the others),
    /// `lines_received` (chat: every line received in the whole run, greetings, notices, the
    /// barrier and the warm-up included — what the server's CPU time is spent on),
    /// `handshakes` (connections set up in the whole run, the first ones included: TLS
    /// handshakes over `tls:`, connects otherwise) and `handshake_rps` (those completed during
    /// the measured load, per second of it: with `--reconnect`, the set-up rate),
    /// `connect_failures`, `wrong_replies`, `missing_replies`, `order_differs` (chat: members that
    /// saw another interleaving than the room's, each also one of `wrong_replies`), `lost` (UDP requests whose reply never
    /// came; 0 over a stream), `late` (UDP replies that came after their request was lost, and
    /// were ignored; not an error), `dropped`, `warmup_requests`,
    /// `connect_s`, `wall_s`, `cpu_s` and `client_cpu_percent` (`null` if unknown),
    /// `first_error` (`null` if none).
    pub fn to_json(&self) -> String {
        let optional = |value: Option<f64>, digits: usize| match value {
            Some(v) => format!("{v:.digits$}"),
            None => "null".to_string(),
        };
        let mut json = String::with_capacity(640);
        json.push('{');
        let mut field = |key: &str, value: String| {
            if json.len() > 1 {
                json.push(',');
            }
            let _ = write!(json, "\"{key}\":{value}");
        };
        field("mode", json_string(self.mode_name()));
        field("protocol", json_string(self.protocol.name()));
        field(
            "address",
            json_string(&addresses_label(&self.addresses, " ")),
        );
        field("connections", self.connections.to_string());
        field("interrupted", self.interrupted.to_string());
        field("established", self.counts.established.to_string());
        field("threads", self.threads.to_string());
        field("pipeline", self.pipeline.to_string());
        field("size", self.size.to_string());
        field("duration_s", format!("{:.3}", self.duration.as_secs_f64()));
        field("warmup_s", format!("{:.3}", self.warmup.as_secs_f64()));
        field("requests", self.counts.requests.to_string());
        field("thread_requests", json_array(&self.thread_requests));
        field(
            "measured_s",
            format!("{:.6}", self.measured_time().as_secs_f64()),
        );
        field("rps", format!("{:.1}", self.rps()));
        field("p50_us", self.latency_us(0.5).to_string());
        field("p99_us", self.latency_us(0.99).to_string());
        field("p999_us", self.latency_us(0.999).to_string());
        field("max_us", self.max_latency_us().to_string());
        field("mean_us", format!("{:.1}", self.mean_latency_us()));
        field("deliveries", self.counts.deliveries.to_string());
        field("delivery_rps", format!("{:.1}", self.delivery_rps()));
        field("lines_received", self.counts.lines_received.to_string());
        field("handshakes", self.counts.handshakes.to_string());
        field("handshake_rps", format!("{:.1}", self.handshake_rps()));
        field("errors", self.errors().to_string());
        field("connect_failures", self.counts.connect_failures.to_string());
        field("wrong_replies", self.counts.wrong_replies.to_string());
        field("missing_replies", self.counts.missing_replies.to_string());
        field("order_differs", self.counts.order_differs.to_string());
        field("lost", self.counts.lost.to_string());
        field("late", self.counts.late.to_string());
        field("dropped", self.counts.dropped.to_string());
        field("warmup_requests", self.counts.warmup_requests.to_string());
        field(
            "connect_s",
            format!("{:.3}", self.connect_time.as_secs_f64()),
        );
        field("wall_s", format!("{:.3}", self.wall_time.as_secs_f64()));
        field("cpu_s", optional(self.cpu_time.map(|d| d.as_secs_f64()), 3));
        field("client_cpu_percent", optional(self.client_cpu_percent(), 1));
        field(
            "first_error",
            self.counts
                .first_error
                .as_deref()
                .map_or_else(|| "null".to_string(), json_string),
        );
        json.push('}');
        json
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Load => "load",
            Mode::Idle => "idle",
        }
    }

    fn write_errors(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errors() == 0 {
            writeln!(f, "errors      0")?;
        } else {
            let mut parts = Vec::new();
            for (count, what) in [
                (self.counts.connect_failures, "connections not made"),
                (self.counts.wrong_replies, "wrong replies"),
                (self.counts.missing_replies, "missing replies"),
                (self.counts.lost, "lost (no reply datagram)"),
                (self.counts.dropped, "connections dropped by the server"),
            ] {
                if count == 0 {
                    continue;
                }
                let differs = self.counts.order_differs;
                if what == "wrong replies" && differs > 0 {
                    let whom = if differs == 1 { "a member" } else { "members" };
                    parts.push(format!(
                        "{count} {what} (of which {differs} for {whom} that saw another \
                         interleaving of the senders' lines)"
                    ));
                } else {
                    parts.push(format!("{count} {what}"));
                }
            }
            writeln!(f, "errors      {} ({})", self.errors(), parts.join(", "))?;
            if let Some(first) = &self.counts.first_error {
                writeln!(f, "            first: {first}")?;
            }
        }
        Ok(())
    }

    /// Over `tls:` or with `--reconnect`: connections set up, and how fast during the load.
    fn write_handshakes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.shows_handshakes() {
            return Ok(());
        }
        let every = match self.reconnect {
            Some(n) => format!("; a new connection every {n} request{}", plural(n)),
            None => String::new(),
        };
        writeln!(
            f,
            "handshakes  {} ({:.1}/s during the measured load{every})",
            self.counts.handshakes,
            self.handshake_rps()
        )
    }

    fn write_cpu(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.cpu_time, self.client_cpu_percent()) {
            (Some(cpu), Some(percent)) => writeln!(
                f,
                "client CPU  {:.2} s in {:.2} s = {percent:.0}% of one core ({} thread{})",
                cpu.as_secs_f64(),
                self.wall_time.as_secs_f64(),
                self.threads,
                plural(self.threads as u64),
            ),
            _ => writeln!(f, "client CPU  unknown (no /proc/self/stat)"),
        }
    }
}

/// An address as `oneloop load` takes it: `127.0.0.1:9000`, `unix:/tmp/x.sock`,
/// `udp:127.0.0.1:9000`.
fn addresses_label(addresses: &[Address], between: &str) -> String {
    let labels: Vec<String> = addresses.iter().map(address_label).collect();
    labels.join(between)
}

/// One address as `oneloop load` takes it.
fn address_label(address: &Address) -> String {
    match address {
        Address::Tcp(addr) => addr.to_string(),
        other => format!("{}:{other}", other.transport()),
    }
}

impl fmt::Display for LoadReport {
    /// The human summary, a few labelled lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let latency = format!(
            "p50 {} us, p99 {} us, p999 {} us, max {} us",
            self.latency_us(0.5),
            self.latency_us(0.99),
            self.latency_us(0.999),
            self.max_latency_us()
        );
        if self.interrupted {
            writeln!(
                f,
                "interrupted (Ctrl-C) before the {:.0} s were up: what follows is what was \
                 measured until then",
                self.duration.as_secs_f64()
            )?;
        }
        match self.mode {
            Mode::Load => {
                writeln!(
                    f,
                    "{} load on {}: {} connection{} ({} up in {:.3} s), pipeline {}, {}-byte \
                     requests, {} thread{}",
                    self.protocol,
                    addresses_label(&self.addresses, ", "),
                    self.connections,
                    plural(self.connections),
                    self.counts.established,
                    self.connect_time.as_secs_f64(),
                    self.pipeline,
                    self.size,
                    self.threads,
                    plural(self.threads as u64),
                )?;
                write!(
                    f,
                    "requests    {} in {:.3} s, after a {:.2} s warm-up",
                    self.counts.requests,
                    self.measured_time().as_secs_f64(),
                    self.warmup.as_secs_f64()
                )?;
                if self.ended_early() {
                    write!(
                        f,
                        " (the load ended after {:.3} s of {:.2} s: no connection was left)",
                        self.counts.load_time.as_secs_f64(),
                        self.duration.as_secs_f64()
                    )?;
                }
                writeln!(f)?;
                writeln!(f, "req/s       {:.1}", self.rps())?;
                self.write_handshakes(f)?;
                if self.protocol == ProtocolKind::Chat {
                    writeln!(
                        f,
                        "deliveries  {} ({:.1}/s; requests are lines sent, latency is send to \
                         delivery)",
                        self.counts.deliveries,
                        self.delivery_rps()
                    )?;
                }
                if let Some(Address::Udp(_)) = self.addresses.first() {
                    writeln!(
                        f,
                        "lost        {} (requests whose reply never came in time; {} came late, \
                         ignored)",
                        self.counts.lost, self.counts.late
                    )?;
                }
                if self.thread_requests.len() > 1 {
                    let shares: Vec<String> =
                        self.thread_requests.iter().map(u64::to_string).collect();
                    writeln!(f, "per thread  {} requests", shares.join(" + "))?;
                }
                writeln!(f, "latency     {latency}")?;
            }
            Mode::Idle => {
                // A chat member's round trip is its greeting: it joins, and `* welcome` comes.
                let (check, label) = match self.protocol {
                    ProtocolKind::Chat => ("its greeting received", "greeting  "),
                    _ => ("a verified round trip", "round trip"),
                };
                writeln!(
                    f,
                    "idle {} connections on {}: {} of {} established, each with {check}, in \
                     {:.3} s; held {:.2} s",
                    self.protocol,
                    addresses_label(&self.addresses, ", "),
                    self.counts.established,
                    self.connections,
                    self.connect_time.as_secs_f64(),
                    self.duration.as_secs_f64()
                )?;
                writeln!(f, "{label}  {latency}")?;
            }
        }
        self.write_errors(f)?;
        self.write_cpu(f)
    }
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// Nanoseconds to whole microseconds, rounded to nearest.
fn nanos_to_micros(nanos: u64) -> u64 {
    nanos.saturating_add(500) / 1000
}

/// `numbers` as a JSON array.
fn json_array(numbers: &[u64]) -> String {
    let mut out = String::from("[");
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{n}");
    }
    out.push(']');
    out
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mode: Mode) -> LoadReport {
        let mut config = LoadConfig::new("127.0.0.1:9000".parse::<std::net::SocketAddr>().unwrap());
        config.mode = mode;
        config.duration = Duration::from_secs(2);
        let mut tally = Counts::merge(Vec::new());
        tally.established = 50;
        tally.requests = 1800;
        if mode == Mode::Load {
            tally.load_time = config.duration;
        }
        for micros in [10, 20, 30, 40, 1000] {
            tally.latency.record(micros * 1000).unwrap();
        }
        LoadReport::new(
            &config,
            tally,
            vec![1000, 800],
            Timing {
                connect: Duration::from_millis(12),
                wall: Duration::from_secs(2),
                cpu: Some(Duration::from_millis(500)),
            },
        )
    }

    #[test]
    fn rate_is_over_the_time_after_the_warmup() {
        let report = report(Mode::Load);
        assert_eq!(report.warmup, Duration::from_millis(200));
        assert!((report.rps() - 1000.0).abs() < 1e-9);
        assert_eq!(report.client_cpu_percent(), Some(25.0));
        assert!(report.succeeded());
    }

    #[test]
    fn a_load_that_ended_early_is_rated_over_the_time_it_ran() {
        let mut report = report(Mode::Load);
        report.counts.load_time = Duration::from_millis(1100); // 0.9 s after the warm-up
        report.counts.dropped = 50;
        assert_eq!(report.measured_time(), Duration::from_millis(900));
        assert!((report.rps() - 2000.0).abs() < 1e-9);
        assert!(report.ended_early());
        assert_eq!(report.errors(), 50);
        assert!(!report.succeeded());
        let json = report.to_json();
        for key in [
            "\"measured_s\":0.900000,",
            "\"rps\":2000.0,",
            "\"dropped\":50,",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
        let text = report.to_string();
        for part in [
            "requests    1800 in 0.900 s",
            "ended after 1.100 s of 2.00 s",
            "errors      50 (50 connections dropped by the server)",
        ] {
            assert!(text.contains(part), "{part} missing from\n{text}");
        }
    }

    #[test]
    fn a_load_that_was_never_under_way_has_no_rate() {
        // No connection up: the load ended as it started.
        let mut report = report(Mode::Load);
        report.counts.load_time = Duration::ZERO;
        assert_eq!(report.measured_time(), Duration::ZERO);
        assert_eq!(report.rps(), 0.0);
    }

    #[test]
    fn json_is_one_flat_object_with_the_contract_keys() {
        let json = report(Mode::Load).to_json();
        assert!(json.starts_with('{') && json.ends_with('}') && !json.contains('\n'));
        for key in [
            "\"requests\":1800,",
            "\"errors\":0,",
            "\"rps\":1000.0,",
            "\"p50_us\":30,",
            "\"p99_us\":",
            "\"p999_us\":",
            "\"max_us\":1000,", // within the histogram's 0.1%, rounded to whole µs
            "\"connections\":50,",
            "\"thread_requests\":[1000,800],",
            "\"first_error\":null",
            "\"mode\":\"load\"",
            "\"client_cpu_percent\":25.0",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
    }

    #[test]
    fn errors_add_up_and_fail_the_run() {
        let mut report = report(Mode::Load);
        report.counts.wrong_replies = 1;
        report.counts.missing_replies = 3;
        report.counts.connect_failures = 2;
        report.counts.first_error = Some("connection 7: said \"no\"".into());
        assert_eq!(report.errors(), 6);
        assert!(!report.succeeded());
        let json = report.to_json();
        assert!(json.contains("\"errors\":6,"), "{json}");
        assert!(
            json.contains(r#""first_error":"connection 7: said \"no\"""#),
            "{json}"
        );
        let text = report.to_string();
        assert!(
            text.contains("errors      6 (2 connections not made, 1 wrong replies, 3 missing"),
            "{text}"
        );
    }

    #[test]
    fn members_that_saw_another_order_are_wrong_replies_said_apart() {
        let mut report = report(Mode::Load);
        report.counts.wrong_replies = 3;
        report.counts.order_differs = 2;
        assert_eq!(report.errors(), 3);
        assert!(!report.succeeded());
        let json = report.to_json();
        assert!(json.contains("\"wrong_replies\":3,"), "{json}");
        assert!(json.contains("\"order_differs\":2,"), "{json}");
        let text = report.to_string();
        assert!(
            text.contains(
                "errors      3 (3 wrong replies (of which 2 for members that saw another \
                 interleaving of the senders' lines))"
            ),
            "{text}"
        );
    }

    #[test]
    fn summary_labels_every_figure() {
        let text = report(Mode::Load).to_string();
        for label in [
            "req/s",
            "p50 30 us",
            "p99 ",
            "p999 ",
            "max ",
            "errors",
            "client CPU",
            "per thread  1000 + 800 requests",
        ] {
            assert!(text.contains(label), "{label} missing from\n{text}");
        }
        let idle = report(Mode::Idle).to_string();
        assert!(idle.contains("50 of 50 established"), "{idle}");
        assert_eq!(report(Mode::Idle).rps(), 0.0);
    }

    #[test]
    fn handshakes_are_counted_and_rated_over_the_measured_time() {
        let mut report = report(Mode::Load);
        report.counts.handshakes = 950;
        report.counts.measured_handshakes = 900;
        let json = report.to_json();
        assert!(json.contains("\"handshakes\":950,"), "{json}");
        assert!(json.contains("\"handshake_rps\":500.0,"), "{json}");
        assert!(
            !report.to_string().contains("handshakes"),
            "plain, no --reconnect"
        );
        report.reconnect = Some(2);
        let text = report.to_string();
        assert!(
            text.contains("handshakes  950 (500.0/s during the measured load; a new connection every 2 requests)"),
            "{text}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn tallies_add_up() {
        let mut a = Counts::new();
        a.requests = 3;
        a.latency.record(1000).unwrap();
        let mut b = Counts::new();
        b.requests = 4;
        b.wrong_replies = 1;
        b.order_differs = 1;
        b.first_error = Some("boom".into());
        b.latency.record(3000).unwrap();
        let total = Counts::merge(vec![a, b]);
        assert_eq!(total.requests, 7);
        assert_eq!(total.wrong_replies, 1);
        assert_eq!(total.order_differs, 1);
        assert_eq!(total.latency.len(), 2);
        assert_eq!(total.first_error.as_deref(), Some("boom"));
    }
}
