//! `oneloop load`: the options, the progress line, and the summary. The work is in [`super::run`].
//!
//! Output policy: standard output gets the result and nothing else — the human summary, or with
//! `--json` exactly one JSON object — so a script can read it. The progress line (updated each
//! second) goes to standard error, and only when standard error is a terminal: a log file or a
//! pipe would fill with carriage returns.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::{limits, LoadConfig, Mode, Progress};
use crate::service::Address;
use crate::service::ProtocolKind;

/// `oneloop load ADDRESS... [OPTIONS]`
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// The server: HOST:PORT (or tcp:HOST:PORT), unix:PATH, udp:HOST:PORT, or tls:HOST:PORT
    /// (each connection makes a TLS handshake first: see --tls-ca). Several: the
    /// connections go to them in turn and are checked as one run (chat: one room across
    /// instances on one --chat-bus).
    #[arg(required = true, num_args = 1.., value_name = "ADDRESS")]
    pub addresses: Vec<Address>,

    /// What the server speaks: upper, timestamp, echo or chat (each connection a member of
    /// the room; see --senders).
    #[arg(long, value_name = "NAME", default_value = "echo", value_parser = parse_protocol)]
    pub protocol: ProtocolKind,

    /// Connections to open.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = count_parser(limits::MAX_CONNECTIONS))]
    pub connections: usize,

    /// Seconds of load (warm-up included); with --idle, how long to hold the connections.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,

    /// Seconds at the start whose requests are verified but not measured
    /// [default: 1, or a tenth of the duration if shorter].
    #[arg(long, value_name = "SECS", value_parser = parse_warmup)]
    pub warmup: Option<Duration>,

    /// Bytes per request (for timestamp, the line's newline included; chat: per line sent).
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = count_parser(limits::MAX_SIZE))]
    pub size: usize,

    /// Chat: how many members send numbered lines [default: all]; every member checks each
    /// other sender's lines (exactly once, in order, under its name), and all the members must
    /// see the first 64 senders' lines in one interleaving.
    #[arg(long, value_name = "K", value_parser = count_parser(limits::MAX_CONNECTIONS))]
    pub senders: Option<usize>,

    /// Requests each connection keeps outstanding (chat: lines each sender keeps sent but not
    /// yet received by the next member).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = count_parser(limits::MAX_PIPELINE))]
    pub pipeline: usize,

    /// Generator threads, each with its own event loop.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = count_parser(limits::MAX_THREADS))]
    pub threads: usize,

    /// UDP: seconds a reply may take before its request counts as lost.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    pub udp_timeout: Duration,

    /// Print one JSON object on standard output instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Open the connections, do one verified round trip on each (chat: receive the greeting),
    /// then hold them open and quiet for the duration (to measure the server's memory per idle
    /// connection).
    #[arg(long)]
    pub idle: bool,

    /// Each connection makes N requests, then closes and connects again (a new TCP connection
    /// and, over tls:, a full handshake), to measure the cost of setting one up: the summary
    /// counts handshakes and handshakes/s. Latencies stay per request (a handshake is never
    /// part of one).
    #[arg(long, value_name = "N", value_parser = count_parser(usize::MAX))]
    pub reconnect: Option<usize>,

    /// The TLS options (with tls: addresses).
    #[command(flatten)]
    pub tls: crate::net::tls_client::ClientTlsArgs,
}

impl LoadArgs {
    /// The run these options describe.
    pub(crate) fn config(&self) -> LoadConfig {
        LoadConfig {
            addresses: self.addresses.clone(),
            protocol: self.protocol,
            connections: self.connections,
            duration: self.duration,
            warmup: self.warmup,
            size: self.size,
            pipeline: self.pipeline,
            threads: self.threads,
            mode: if self.idle { Mode::Idle } else { Mode::Load },
            udp_timeout: self.udp_timeout,
            senders: self.senders,
            reconnect: self.reconnect.map(|n| n as u64),
            tls: self.tls.options(),
        }
    }
}

fn parse_protocol(text: &str) -> Result<ProtocolKind, String> {
    match text.parse::<ProtocolKind>()? {
        kind @ (ProtocolKind::Upper
        | ProtocolKind::Timestamp
        | ProtocolKind::Echo
        | ProtocolKind::Chat) => Ok(kind),
        other => Err(format!(
            "load speaks upper, timestamp, echo or chat, not {other}"
        )),
    }
}

/// A parser for a whole number from 1 to `max`.
fn count_parser(max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text| match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a whole number from 1 to {max}")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs < 1e9 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn parse_warmup(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..1e9).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a number of seconds (0 or more)")),
    }
}

/// Runs `oneloop load`: 0 if every reply was verified and there was at least one, 1 if not (or
/// if the run could not start), 2 for options that contradict each other.
pub(crate) fn main(args: &LoadArgs) -> ExitCode {
    let config = args.config();
    if let Err(message) = config.validate() {
        // The command line checks this first (as a usage error, exit 2); a caller that did not
        // gets the same message and code.
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    if let Err(e) = super::stop_early_on_sigint() {
        log::warn!("Ctrl-C will not print a summary: {e}");
    }
    let mut display = ProgressLine::new(args.json, config.mode);
    let result = super::run_with(&config, |progress| display.show(progress));
    display.clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let addresses: Vec<String> = config.addresses.iter().map(|a| a.to_string()).collect();
            eprintln!(
                "oneloop: load {}: {}",
                addresses.join(" "),
                crate::sys::os_reason(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    let printed = if args.json {
        writeln!(stdout, "{}", report.to_json())
    } else {
        write!(stdout, "{report}")
    };
    if let Err(e) = printed.and_then(|()| stdout.flush()) {
        log::warn!("cannot print the report: {e}");
    }
    if args.json {
        if let Some(first) = &report.counts.first_error {
            eprintln!("oneloop: load: {} errors; first: {first}", report.errors());
        }
    }
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The progress line on standard error, and the idle mode's "established" notice.
struct ProgressLine {
    /// Whether to draw the progress line (standard error is a terminal).
    live: bool,
    /// Whether the line currently shows something that must be erased before other output.
    drawn: bool,
    json: bool,
    mode: Mode,
}

impl ProgressLine {
    fn new(json: bool, mode: Mode) -> ProgressLine {
        ProgressLine {
            live: io::stderr().is_terminal(),
            drawn: false,
            json,
            mode,
        }
    }

    fn show(&mut self, progress: &Progress) {
        match *progress {
            Progress::Connecting { established, total } => {
                self.draw(format_args!("connecting: {established} of {total} up"));
            }
            Progress::Established {
                established,
                total,
                took,
            } => {
                self.clear();
                if self.mode == Mode::Idle {
                    // Scripts wait for this line before measuring the server's memory, so it is
                    // printed whether or not anyone is watching: on stdout, unless stdout is
                    // reserved for the JSON object.
                    let line = format!(
                        "established {established} of {total} connections in {:.3} s; holding \
                         them open",
                        took.as_secs_f64()
                    );
                    if self.json {
                        eprintln!("{line}");
                    } else {
                        let mut stdout = io::stdout().lock();
                        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
                    }
                }
            }
            Progress::Running {
                elapsed,
                requests,
                rps,
                open,
            } => match self.mode {
                Mode::Load => self.draw(format_args!(
                    "{:>4.0} s  {requests} requests  {rps:.0} req/s  {open} connections",
                    elapsed.as_secs_f64()
                )),
                Mode::Idle => self.draw(format_args!(
                    "{:>4.0} s  holding {open} connections",
                    elapsed.as_secs_f64()
                )),
            },
        }
    }

    /// Replaces the progress line.
    fn draw(&mut self, line: fmt::Arguments<'_>) {
        if self.live {
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K{line}").and_then(|()| stderr.flush());
            self.drawn = true;
        }
    }

    /// Erases the progress line, if one is shown.
    fn clear(&mut self) {
        if self.drawn {
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K").and_then(|()| stderr.flush());
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<LoadArgs, clap::Error> {
        let mut full = vec!["oneloop", "load"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|cli| match cli.command {
            Command::Load(args) => args,
            other => panic!("not load: {other:?}"),
        })
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = parse(&["127.0.0.1:9000"]).unwrap().config();
        let expected = LoadConfig::new("127.0.0.1:9000".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(config, expected);
    }

    #[test]
    fn every_option_is_read() {
        let args = parse(&[
            "tcp:127.0.0.1:9",
            "--protocol",
            "timestamp",
            "--connections",
            "7",
            "--duration",
            "2.5",
            "--warmup",
            "0",
            "--size",
            "100",
            "--pipeline",
            "4",
            "--threads",
            "2",
            "--json",
            "--idle",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.protocol, ProtocolKind::Timestamp);
        assert_eq!(
            (
                config.connections,
                config.size,
                config.pipeline,
                config.threads
            ),
            (7, 100, 4, 2)
        );
        assert_eq!(config.duration, Duration::from_millis(2500));
        assert_eq!(config.warmup, Some(Duration::ZERO));
        assert_eq!(config.mode, Mode::Idle);
        assert!(args.json);
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for argv in [
            &["127.0.0.1:9", "--protocol", "upload"][..],
            &["127.0.0.1:9", "--connections", "0"],
            &["127.0.0.1:9", "--pipeline", "lots"],
            &["127.0.0.1:9", "--duration", "0"],
            &["127.0.0.1:9", "--warmup", "-1"],
            &[],
        ] {
            let err = parse(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}
