//! `cargo bench --bench models`: every model serving the same protocol, under the same load.
//!
//! For each cell — model × protocol × concurrent connections (and one pipelined cell), over TCP;
//! plus two reactor cells, 50 connections of 64-byte echo over a Unix socket and over UDP (50
//! sockets), beside the TCP cell of the same shape to show what each transport costs — the bench
//! starts the real `oneloop serve --model M` binary on a loopback port, runs `oneloop load --json`
//! against it in a separate process, and samples the server from `/proc` while the load runs:
//!
//! * requests/s and latency p50/p99, as the load generator measured them;
//! * **server CPU per request** — the server's user+system time over the load's whole run
//!   (children included, for `forking`) divided by the requests completed in that run. Server and
//!   load generator share two cores, so when the machine is saturated requests/s mostly measures
//!   the machine; CPU per request is the fair efficiency figure;
//! * peak memory, two ways: RSS (for `forking`, plus each child's PSS, which splits the pages
//!   parent and children share instead of counting them in every child), and *private* memory —
//!   anonymous pages only (`RssAnon`; `Pss_Anon` for children). Most of an idle server's RSS is
//!   libc's and the binary's file-backed pages, the same for every model (it is one binary) and
//!   shared with every other process; the private figure is what each model adds;
//! * the peak number of threads and processes.
//!
//! **Chat cells** put the reactor against `threaded` and `pool` as a chat room of 100 and 1,000
//! members, 10 of them sending 64-byte lines in a closed loop (`oneloop load --protocol chat
//! --senders 10`). There the figures are per *delivery* (one line received by one member): the
//! req/s column holds deliveries/s, latency is send-to-receipt, and CPU per delivery divides
//! the server's CPU time by every line the members received in the run (`lines_received`: the
//! joins, renames and the start barrier's hellos are fan-out work too). A pool must hold every
//! member in a worker to be a room at all, so its chat cells run with one worker per member.
//!
//! **TLS cells** put the reactor against `threaded` serving `echo@tls:` (rustls in the loop, and
//! rustls's `StreamOwned` in each connection's thread), with the ECDSA P-256 certificate of
//! `examples/tls/`: over persistent connections (CPU per request: what record encryption costs)
//! and with `oneloop load --reconnect 1` (every request on a new connection: CPU per full
//! handshake).
//!
//! Each cell runs several times and the median run (by requests/s) is reported. Results go to
//! stdout as a table and to `target/oneloop-bench/` as `results.csv`, `results.json` and an SVG
//! chart `results.svg`.
//!
//! `ONELOOP_BENCH_QUICK=1` runs each cell once, briefly, at fewer connection counts (about a
//! minute); the default run takes about five minutes on two cores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_oneloop");

/// Members of a chat cell that send lines; the rest only listen.
const CHAT_SENDERS: usize = 10;

/// Members in the chat cells: the issue's two room sizes.
const CHAT_MEMBERS: [usize; 2] = [100, 1000];

/// Worker threads for the `pool` model. A closed-loop client keeps every connection open for the
/// whole run, so a pool serves at most this many connections; cells with more are skipped.
const POOL_THREADS: usize = 64;

/// /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second for user space.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Clone, Copy, Debug)]
struct Settings {
    runs: usize,
    duration_s: f64,
    warmup_s: f64,
    connection_counts: &'static [usize],
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Cell {
    model: &'static str,
    /// `tcp`, `unix` or `udp` (the last two for the reactor only: what the transport costs).
    transport: &'static str,
    protocol: &'static str,
    connections: usize,
    pipeline: usize,
    /// `tls` cells: requests per connection before it reconnects (a new TCP connection and a
    /// full handshake: `oneloop load --reconnect`); 0 keeps every connection for the whole run.
    reconnect: usize,
}

impl Cell {
    fn label(&self) -> String {
        format!(
            "{:<8} {:<5} {:>5} conn{}",
            match self.transport {
                "tcp" => self.model.to_string(),
                other => format!("{}/{other}", self.model),
            },
            self.protocol,
            self.connections,
            if self.pipeline > 1 {
                format!(" pipeline {}", self.pipeline)
            } else if self.reconnect > 0 {
                format!(" reconnect {}", self.reconnect)
            } else {
                String::new()
            }
        )
    }

    /// Why a model cannot sensibly run this cell, if it cannot.
    fn skip_reason(&self) -> Option<String> {
        if self.protocol == "chat" {
            return None; // only the models that can hold a room get chat cells
        }
        match self.model {
            "serial" if self.connections > 1 => Some(
                "serial serves one connection at a time: in a closed loop the others would never \
                 be answered"
                    .into(),
            ),
            "pool" if self.connections > POOL_THREADS => Some(format!(
                "a pool of {POOL_THREADS} workers serves {POOL_THREADS} connections at once: the \
                 rest would wait for a worker for the whole run"
            )),
            "forking" if self.connections > 1000 => {
                Some("5,000 processes would measure the process table, not the server".into())
            }
            _ => None,
        }
    }
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
struct Sample {
    requests: f64,
    errors: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_request: f64,
    peak_memory_kib: f64,
    peak_private_kib: f64,
    peak_threads: f64,
    peak_processes: f64,
    load_cpu_percent: f64,
    /// Handshakes the load made (every connection it opened, over TLS).
    handshakes: f64,
    /// Server CPU per handshake, in a reconnecting cell (its CPU over its handshakes).
    cpu_us_per_handshake: f64,
    /// The lowest and highest req/s of the cell's runs (on the median's sample): a difference
    /// between two cells inside this spread is not one the bench can tell.
    rps_low: f64,
    rps_high: f64,
}

/// Connection counts of the TLS cells.
const TLS_CONNECTIONS: [usize; 2] = [50, 1000];

/// The certificates the TLS cells use (examples/tls: ECDSA P-256, a CA and `localhost`).
const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tls");

/// Runs of a one-connection cell: one request in flight makes its req/s the round-trip time,
/// which a scheduler's choice of core moves by a factor of four from one run to the next (threaded
/// 68,799 vs reactor 16,399 req/s in one run, equal in the next). Five runs cost 12 s a cell and
/// show the spread, which the comparison below then respects.
const ONE_CONNECTION_RUNS: usize = 5;

/// `a` vs `b` in req/s: the ratio, or "indistinguishable" when the two cells' run ranges
/// overlap (their spread is wider than their difference).
fn rps_comparison(a: &Sample, b: &Sample) -> String {
    if a.rps_low <= b.rps_high && b.rps_low <= a.rps_high {
        format!(
            "indistinguishable in req/s (the runs' ranges overlap: {:.0}-{:.0} vs {:.0}-{:.0})",
            a.rps_low, a.rps_high, b.rps_low, b.rps_high
        )
    } else {
        format!("{:.2}x the req/s", a.rps / b.rps)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter on the cell label.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = std::env::var_os("ONELOOP_BENCH_QUICK").is_some();
    let settings = if quick {
        Settings {
            runs: 1,
            duration_s: 1.0,
            warmup_s: 0.3,
            connection_counts: &[1, 50, 1000],
        }
    } else {
        Settings {
            runs: 3,
            duration_s: 2.0,
            warmup_s: 0.5,
            connection_counts: &[1, 50, 1000, 5000],
        }
    };
    if let Err(e) = oneloop::sys::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }

    let mut cells = Vec::new();
    for model in ["reactor", "threaded", "pool", "forking", "serial"] {
        for protocol in ["echo", "upper"] {
            for &connections in settings.connection_counts {
                cells.push(Cell {
                    model,
                    transport: "tcp",
                    protocol,
                    connections,
                    pipeline: 1,
                    reconnect: 0,
                });
            }
            cells.push(Cell {
                model,
                transport: "tcp",
                protocol,
                connections: 1000,
                pipeline: 16,
                reconnect: 0,
            });
        }
    }
    // What each transport costs the reactor: the tcp cell of the same shape is above.
    for transport in ["unix", "udp"] {
        cells.push(Cell {
            model: "reactor",
            transport,
            protocol: "echo",
            connections: 50,
            pipeline: 1,
            reconnect: 0,
        });
    }
    // TLS: the reactor against a thread per connection, each running rustls, over persistent
    // connections (record crypto) and connections that reconnect after every request (a full
    // handshake per request).
    for model in ["reactor", "threaded"] {
        for reconnect in [0, 1] {
            for connections in TLS_CONNECTIONS {
                cells.push(Cell {
                    model,
                    transport: "tls",
                    protocol: "echo",
                    connections,
                    pipeline: 1,
                    reconnect,
                });
            }
        }
    }
    for model in ["reactor", "threaded", "pool"] {
        for connections in CHAT_MEMBERS {
            cells.push(Cell {
                model,
                transport: "tcp",
                protocol: "chat",
                connections,
                pipeline: 1,
                reconnect: 0,
            });
        }
    }
    cells.retain(|cell| filter.iter().all(|f| cell.label().contains(f.as_str())));

    println!(
        "oneloop models bench: {} run(s) of {} s per cell (+{} s warm-up), 64-byte requests{}",
        settings.runs,
        settings.duration_s,
        settings.warmup_s,
        if quick { " [quick]" } else { "" }
    );
    println!(
        "{:<40} {:>10} {:>7} {:>9} {:>9} {:>10} {:>10} {:>11} {:>8} {:>6} {:>7}",
        "cell",
        "req/s",
        "spread",
        "p50 µs",
        "p99 µs",
        "cpu µs/req",
        "peak KiB",
        "private KiB",
        "threads",
        "procs",
        "errors"
    );
    let started = Instant::now();
    let mut results: Vec<(Cell, Option<Sample>, Option<String>)> = Vec::new();
    for cell in cells {
        if let Some(reason) = cell.skip_reason() {
            println!("{:<40} skipped: {reason}", cell.label());
            results.push((cell, None, Some(reason)));
            continue;
        }
        let runs = if cell.connections == 1 && settings.runs > 1 {
            settings.runs.max(ONE_CONNECTION_RUNS)
        } else {
            settings.runs
        };
        let mut samples: Vec<Sample> = (0..runs)
            .filter_map(|_| match run_cell(&cell, &settings) {
                Ok(sample) => Some(sample),
                Err(e) => {
                    eprintln!("{}: run failed: {e}", cell.label());
                    None
                }
            })
            .collect();
        if samples.is_empty() {
            results.push((cell, None, Some("every run failed".into())));
            continue;
        }
        samples.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let mut median = samples[samples.len() / 2].clone();
        median.rps_low = samples[0].rps;
        median.rps_high = samples[samples.len() - 1].rps;
        println!(
            "{:<40} {:>10.0} {:>7} {:>9.0} {:>9.0} {:>10.2} {:>10.0} {:>11.0} {:>8.0} {:>6.0} {:>7.0}",
            cell.label(),
            median.rps,
            spread(&median),
            median.p50_us,
            median.p99_us,
            median.cpu_us_per_request,
            median.peak_memory_kib,
            median.peak_private_kib,
            median.peak_threads,
            median.peak_processes,
            median.errors
        );
        results.push((cell, Some(median), None));
    }
    println!(
        "(took {:.0} s; chat cells: deliveries/s, delivery latency, CPU per delivery)",
        started.elapsed().as_secs_f64()
    );
    print_ratios(&results);
    if let Err(e) = write_outputs(&results, &settings) {
        eprintln!("cannot write results: {e}");
        std::process::exit(1);
    }
}

/// Starts the server, runs the load against it while sampling the server, stops the server.
fn run_cell(cell: &Cell, settings: &Settings) -> Result<Sample, String> {
    let mut server = Server::start(cell)?;
    let pid = server.child.id();
    let cpu_before = cpu_ticks_with_children(pid);

    let peaks = Arc::new(Peaks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peaks, stop) = (Arc::clone(&peaks), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peaks.sample(pid);
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let chat = cell.protocol == "chat";
    let output = Command::new(BINARY)
        .args([
            "load",
            &server.address,
            "--protocol",
            cell.protocol,
            "--connections",
            &cell.connections.to_string(),
            "--pipeline",
            &cell.pipeline.to_string(),
            "--size",
            "64",
            "--duration",
            &settings.duration_s.to_string(),
            "--warmup",
            &settings.warmup_s.to_string(),
            "--json",
        ])
        .args(if chat {
            vec!["--senders".to_string(), CHAT_SENDERS.to_string()]
        } else {
            Vec::new()
        })
        .args(match cell.transport {
            "tls" => vec!["--tls-ca".to_string(), format!("{TLS_DIR}/ca.pem")],
            _ => Vec::new(),
        })
        .args(match cell.reconnect {
            0 => Vec::new(),
            n => vec!["--reconnect".to_string(), n.to_string()],
        })
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the load generator: {e}"))?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    // Let the server finish closing the connections (and, for forking, reap its children), so
    // their CPU time is counted.
    thread::sleep(Duration::from_millis(700));
    let cpu_after = cpu_ticks_with_children(pid);
    server.stop();

    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "load printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let number = |key: &str| report.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
    // CPU is measured over the whole load run, warm-up included, so divide by every request
    // completed in it; for chat, by every line a member received (see the module doc).
    let all_requests = if chat {
        number("lines_received")
    } else {
        number("requests") + number("warmup_requests")
    };
    let cpu_seconds = (cpu_after.saturating_sub(cpu_before)) as f64 / TICKS_PER_SECOND;
    Ok(Sample {
        requests: number(if chat { "deliveries" } else { "requests" }),
        errors: number("errors"),
        rps: number(if chat { "delivery_rps" } else { "rps" }),
        p50_us: number("p50_us"),
        p99_us: number("p99_us"),
        cpu_us_per_request: if all_requests > 0.0 {
            cpu_seconds * 1e6 / all_requests
        } else {
            f64::NAN
        },
        peak_memory_kib: peaks.memory_kib.load(Ordering::Relaxed) as f64,
        peak_private_kib: peaks.private_kib.load(Ordering::Relaxed) as f64,
        peak_threads: peaks.threads.load(Ordering::Relaxed) as f64,
        peak_processes: peaks.processes.load(Ordering::Relaxed) as f64,
        load_cpu_percent: number("client_cpu_percent"),
        handshakes: number("handshakes") + number("warmup_handshakes"),
        cpu_us_per_handshake: match number("handshakes") + number("warmup_handshakes") {
            n if cell.reconnect > 0 && n > 0.0 => cpu_seconds * 1e6 / n,
            _ => f64::NAN,
        },
        // One run: its own range.
        rps_low: number(if chat { "delivery_rps" } else { "rps" }),
        rps_high: number(if chat { "delivery_rps" } else { "rps" }),
    })
}

/// A server process, stopped (by its PID) on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(cell: &Cell) -> Result<Server, String> {
        let mut child = Command::new(BINARY)
            .args([
                "serve",
                "--model",
                cell.model,
                "--threads",
                // A room needs every member in a worker at once.
                &if cell.protocol == "chat" {
                    POOL_THREADS.max(cell.connections).to_string()
                } else {
                    POOL_THREADS.to_string()
                },
                &match cell.transport {
                    "unix" => format!("{}@unix:{}", cell.protocol, unix_path().display()),
                    "udp" => format!("{}@udp:127.0.0.1:0", cell.protocol),
                    "tls" => format!("{}@tls:127.0.0.1:0", cell.protocol),
                    _ => format!("{}@127.0.0.1:0", cell.protocol),
                },
            ])
            .args(match cell.transport {
                "tls" => vec![
                    "--tls-cert".to_string(),
                    format!("{TLS_DIR}/localhost.pem"),
                    "--tls-key".to_string(),
                    format!("{TLS_DIR}/localhost.key"),
                ],
                _ => Vec::new(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("server printed nothing: {e}"))?;
        // `listening PROTOCOL TRANSPORT ADDRESS`; load takes `unix:PATH` and `udp:HOST:PORT`.
        let address = line
            .split_whitespace()
            .nth(3)
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        let address = match cell.transport {
            "tcp" => address.to_string(),
            other => format!("{other}:{address}"),
        };
        Ok(Server { child, address })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh Unix socket path for a unix cell's server (which removes the file when it stops).
fn unix_path() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("oneloop-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The largest figures seen while sampling a server.
#[derive(Default)]
struct Peaks {
    memory_kib: std::sync::atomic::AtomicU64,
    private_kib: std::sync::atomic::AtomicU64,
    threads: std::sync::atomic::AtomicU64,
    processes: std::sync::atomic::AtomicU64,
}

impl Peaks {
    fn sample(&self, pid: u32) {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mut memory = status_field(&status, "VmRSS:");
        let mut private = status_field(&status, "RssAnon:");
        let threads = status_field(&status, "Threads:");
        let children = children_of(pid);
        for child in &children {
            let rollup =
                fs::read_to_string(format!("/proc/{child}/smaps_rollup")).unwrap_or_default();
            memory += status_field(&rollup, "Pss:");
            private += status_field(&rollup, "Pss_Anon:");
        }
        self.memory_kib.fetch_max(memory, Ordering::Relaxed);
        self.private_kib.fetch_max(private, Ordering::Relaxed);
        self.threads.fetch_max(threads, Ordering::Relaxed);
        self.processes
            .fetch_max(1 + children.len() as u64, Ordering::Relaxed);
    }
}

fn status_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// utime + stime of the process and of its children: those already reaped (cutime + cstime) and
/// those still running.
fn cpu_ticks_with_children(pid: u32) -> u64 {
    let own = stat_ticks(pid, true);
    own + children_of(pid)
        .into_iter()
        .map(|child| stat_ticks(child, false))
        .sum::<u64>()
}

fn stat_ticks(pid: u32, with_reaped_children: bool) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After ')': state is index 0, so utime (field 14) is index 11, stime 12, cutime 13, cstime 14.
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    get(11)
        + get(12)
        + if with_reaped_children {
            get(13) + get(14)
        } else {
            0
        }
}

fn find<'a>(
    results: &'a [(Cell, Option<Sample>, Option<String>)],
    model: &str,
    protocol: &str,
    connections: usize,
) -> Option<&'a Sample> {
    results.iter().find_map(|(cell, sample, _)| {
        (cell.model == model
            && cell.transport == "tcp"
            && cell.protocol == protocol
            && cell.connections == connections
            && cell.pipeline == 1)
            .then_some(sample.as_ref())
            .flatten()
    })
}

/// The issue's targets, as ratios the reader can check at a glance.
fn print_ratios(results: &[(Cell, Option<Sample>, Option<String>)]) {
    println!();
    for protocol in ["echo", "upper"] {
        for connections in [50, 1000] {
            let (Some(reactor), Some(threaded)) = (
                find(results, "reactor", protocol, connections),
                find(results, "threaded", protocol, connections),
            ) else {
                continue;
            };
            println!(
                "reactor vs threaded, {protocol}, {connections} connections: {}, \
                 {:.2}x the CPU per request, {:.3}x the peak RSS, {:.3}x the peak private memory",
                rps_comparison(reactor, threaded),
                reactor.cpu_us_per_request / threaded.cpu_us_per_request,
                reactor.peak_memory_kib / threaded.peak_memory_kib,
                reactor.peak_private_kib / threaded.peak_private_kib
            );
        }
    }
    for members in CHAT_MEMBERS {
        let Some(reactor) = find(results, "reactor", "chat", members) else {
            continue;
        };
        for other in ["threaded", "pool"] {
            if let Some(sample) = find(results, other, "chat", members) {
                println!(
                    "reactor vs {other}, chat, {members} members: {:.2}x the deliveries/s, \
                     {:.2}x the CPU per delivery, {:.3}x the peak RSS, {:.3}x the peak private \
                     memory",
                    reactor.rps / sample.rps,
                    reactor.cpu_us_per_request / sample.cpu_us_per_request,
                    reactor.peak_memory_kib / sample.peak_memory_kib,
                    reactor.peak_private_kib / sample.peak_private_kib
                );
            }
        }
    }
    for (cell, reactor) in results
        .iter()
        .filter(|(cell, _, _)| cell.transport == "tls" && cell.model == "reactor")
        .filter_map(|(cell, sample, _)| Some((cell, sample.as_ref()?)))
    {
        let threaded = results.iter().find_map(|(other, sample, _)| {
            (other.model == "threaded"
                && Cell {
                    model: "reactor",
                    ..*other
                } == *cell)
                .then_some(sample.as_ref())
                .flatten()
        });
        let Some(threaded) = threaded else { continue };
        let (what, ours, theirs) = match cell.reconnect {
            0 => (
                "request",
                reactor.cpu_us_per_request,
                threaded.cpu_us_per_request,
            ),
            _ => (
                "handshake",
                reactor.cpu_us_per_handshake,
                threaded.cpu_us_per_handshake,
            ),
        };
        println!(
            "reactor vs threaded, tls echo, {} connections{}: {}, {ours:.1} vs {theirs:.1} µs \
             of server CPU per {what} ({:.2}x), {:.3}x the peak private memory",
            cell.connections,
            if cell.reconnect > 0 {
                ", reconnecting"
            } else {
                ""
            },
            rps_comparison(reactor, threaded),
            ours / theirs,
            reactor.peak_private_kib / threaded.peak_private_kib
        );
    }
    for protocol in ["echo", "upper"] {
        let Some(reactor) = find(results, "reactor", protocol, 1) else {
            continue;
        };
        for other in ["serial", "threaded"] {
            if let Some(sample) = find(results, other, protocol, 1) {
                println!(
                    "reactor vs {other}, {protocol}, 1 connection: {}",
                    rps_comparison(reactor, sample)
                );
            }
        }
    }
}

/// The runs' spread around the median, as the table's `spread` column: `±12%` (half the range,
/// over the median), `-` for a single run.
fn spread(sample: &Sample) -> String {
    if sample.rps_high <= sample.rps_low || sample.rps <= 0.0 {
        return "-".into();
    }
    format!(
        "±{:.0}%",
        (sample.rps_high - sample.rps_low) / 2.0 / sample.rps * 100.0
    )
}

fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the results belong next to it.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(&tmp).join("oneloop-bench")
}

fn write_outputs(
    results: &[(Cell, Option<Sample>, Option<String>)],
    settings: &Settings,
) -> std::io::Result<()> {
    let dir = output_dir();
    fs::create_dir_all(&dir)?;
    let mut csv = String::from(
        "model,protocol,connections,pipeline,requests,errors,rps,p50_us,p99_us,\
         cpu_us_per_request,peak_memory_kib,peak_private_kib,peak_threads,peak_processes,\
         load_cpu_percent,skipped,transport,reconnect,handshakes,cpu_us_per_handshake\n",
    );
    let mut rows = Vec::new();
    for (cell, sample, skipped) in results {
        let s = sample.clone().unwrap_or_default();
        let skipped = skipped.clone().unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.0},{:.0},{:.0},{:.2},{:.0},{:.0},{:.0},{:.0},{:.0},\"{}\",{},{},{},{:.2}",
            cell.model,
            cell.protocol,
            cell.connections,
            cell.pipeline,
            s.requests,
            s.errors,
            s.rps,
            s.p50_us,
            s.p99_us,
            s.cpu_us_per_request,
            s.peak_memory_kib,
            s.peak_private_kib,
            s.peak_threads,
            s.peak_processes,
            s.load_cpu_percent,
            skipped.replace('"', "'"),
            cell.transport,
            cell.reconnect,
            s.handshakes,
            s.cpu_us_per_handshake
        );
        rows.push(serde_json::json!({
            "model": cell.model, "transport": cell.transport, "protocol": cell.protocol,
            "connections": cell.connections,
            "pipeline": cell.pipeline,
            "skipped": if skipped.is_empty() { serde_json::Value::Null } else { skipped.into() },
            "requests": s.requests, "errors": s.errors, "rps": s.rps,
            "rps_low": s.rps_low, "rps_high": s.rps_high,
            "p50_us": s.p50_us, "p99_us": s.p99_us,
            "cpu_us_per_request": if s.cpu_us_per_request.is_finite() { s.cpu_us_per_request } else { 0.0 },
            "peak_memory_kib": s.peak_memory_kib, "peak_private_kib": s.peak_private_kib,
            "peak_threads": s.peak_threads,
            "peak_processes": s.peak_processes, "load_cpu_percent": s.load_cpu_percent,
            "reconnect": cell.reconnect, "handshakes": s.handshakes,
            "cpu_us_per_handshake": if s.cpu_us_per_handshake.is_finite() { s.cpu_us_per_handshake } else { 0.0 },
        }));
    }
    fs::write(dir.join("results.csv"), csv)?;
    let json = serde_json::json!({
        "settings": {
            "runs_per_cell": settings.runs, "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s, "request_bytes": 64, "pool_threads": POOL_THREADS,
            "cores": thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "results": rows,
    });
    fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json).expect("plain values serialise"),
    )?;
    fs::write(dir.join("results.svg"), chart(results))?;
    println!(
        "\nwrote {}/results.csv, results.json, results.svg",
        dir.display()
    );
    Ok(())
}

/// What one chart panel plots.
struct Panel {
    title: &'static str,
    protocol: &'static str,
    value: fn(&Sample) -> f64,
    /// A logarithmic y axis (memory spans three orders of magnitude across models).
    log_y: bool,
    /// Which cells it plots: their transport, and (for `tls`) whether they reconnect.
    transport: &'static str,
    reconnect: usize,
}

const MODEL_COLOURS: [(&str, &str); 5] = [
    ("reactor", "#d62728"),
    ("threaded", "#1f77b4"),
    ("pool", "#2ca02c"),
    ("forking", "#9467bd"),
    ("serial", "#7f7f7f"),
];

/// Eight panels against concurrent connections (log scale), one line per model: requests/s for
/// echo and upper, server CPU per request and private memory for echo, the chat room's
/// deliveries/s and CPU per delivery against its members, then TLS: CPU per request over
/// persistent connections and CPU per full handshake.
fn chart(results: &[(Cell, Option<Sample>, Option<String>)]) -> String {
    const PANEL_W: f64 = 460.0;
    const PANEL_H: f64 = 260.0;
    const LEFT: f64 = 80.0;
    const TOP: f64 = 60.0;
    const GAP_X: f64 = 100.0;
    const GAP_Y: f64 = 100.0;
    let panels = [
        Panel {
            title: "echo: requests/s",
            protocol: "echo",
            value: |s| s.rps,
            log_y: false,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "upper: requests/s",
            protocol: "upper",
            value: |s| s.rps,
            log_y: false,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "echo: server CPU µs per request (lower is better)",
            protocol: "echo",
            value: |s| s.cpu_us_per_request,
            log_y: false,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "echo: peak private memory, KiB (log scale, lower is better)",
            protocol: "echo",
            value: |s| s.peak_private_kib,
            log_y: true,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "chat, 10 senders: deliveries/s",
            protocol: "chat",
            value: |s| s.rps,
            log_y: false,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "chat: server CPU µs per delivery (lower is better)",
            protocol: "chat",
            value: |s| s.cpu_us_per_request,
            log_y: false,
            transport: "tcp",
            reconnect: 0,
        },
        Panel {
            title: "tls echo, persistent: server CPU µs per request (lower is better)",
            protocol: "echo",
            value: |s| s.cpu_us_per_request,
            log_y: false,
            transport: "tls",
            reconnect: 0,
        },
        Panel {
            title: "tls, a handshake per request: server CPU µs per handshake",
            protocol: "echo",
            value: |s| s.cpu_us_per_handshake,
            log_y: false,
            transport: "tls",
            reconnect: 1,
        },
    ];
    // A filtered run (`cargo bench --bench models -- tls`) charts only the panels it has data for.
    let panels: Vec<&Panel> = panels
        .iter()
        .filter(|panel| {
            results.iter().any(|(cell, sample, _)| {
                sample.is_some()
                    && cell.pipeline == 1
                    && cell.protocol == panel.protocol
                    && cell.transport == panel.transport
                    && cell.reconnect == panel.reconnect
            })
        })
        .collect();
    let width = LEFT + 2.0 * PANEL_W + GAP_X + 140.0;
    let rows = panels.len().max(1).div_ceil(2) as f64;
    let height = TOP + rows * PANEL_H + (rows - 1.0) * GAP_Y + 60.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">oneloop models: 64-byte ping-pong on loopback, 2 cores, against concurrent connections (log scale)</text>
"#
    );
    for (index, panel) in panels.iter().enumerate() {
        let ox = LEFT + (index % 2) as f64 * (PANEL_W + GAP_X);
        let oy = TOP + (index / 2) as f64 * (PANEL_H + GAP_Y);
        draw_panel(&mut svg, panel, results, ox, oy, PANEL_W, PANEL_H);
    }
    let legend_x = LEFT + 2.0 * PANEL_W + GAP_X + 20.0;
    for (i, (model, colour)) in MODEL_COLOURS.iter().enumerate() {
        let y = TOP + 20.0 + i as f64 * 22.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" x2="{}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{model}</text>"#,
            legend_x + 24.0,
            legend_x + 30.0,
            y + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(
    svg: &mut String,
    panel: &Panel,
    results: &[(Cell, Option<Sample>, Option<String>)],
    ox: f64,
    oy: f64,
    w: f64,
    h: f64,
) {
    let mut series: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
    for (cell, sample, _) in results {
        let plotted = cell.transport == panel.transport && cell.reconnect == panel.reconnect;
        if let (Some(sample), 1, true) = (sample, cell.pipeline, plotted) {
            let value = (panel.value)(sample);
            if cell.protocol == panel.protocol && value.is_finite() && value > 0.0 {
                series
                    .entry(cell.model)
                    .or_default()
                    .push((cell.connections, value));
            }
        }
    }
    let values = || series.values().flatten().map(|&(_, v)| v);
    let max_value = values().fold(1.0, f64::max);
    let max_conn = series
        .values()
        .flatten()
        .map(|&(c, _)| c)
        .max()
        .unwrap_or(1000)
        .max(2) as f64;
    let x_of = |connections: usize| (connections as f64).ln() / max_conn.ln() * w;
    // Linear axes start at zero; log axes span whole decades around the data.
    let (y_low, y_high) = if panel.log_y {
        let low = 10f64.powf(values().fold(max_value, f64::min).log10().floor());
        (low, 10f64.powf(max_value.log10().ceil()))
    } else {
        (0.0, nice_ceiling(max_value))
    };
    let y_of = |v: f64| {
        let fraction = if panel.log_y {
            (v.ln() - y_low.ln()) / (y_high.ln() - y_low.ln())
        } else {
            (v - y_low) / (y_high - y_low)
        };
        h - fraction * h
    };
    let _ = writeln!(
        svg,
        r##"<g transform="translate({ox},{oy})"><text x="{}" y="-10" text-anchor="middle" font-weight="bold">{}</text><rect width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
        w / 2.0,
        panel.title
    );
    let ticks: Vec<f64> = if panel.log_y {
        let decades = (y_high / y_low).log10().round() as i32;
        (0..=decades).map(|d| y_low * 10f64.powi(d)).collect()
    } else {
        (0..=4).map(|step| y_high * step as f64 / 4.0).collect()
    };
    for tick in ticks {
        let y = y_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="0" x2="{w}" y1="{y}" y2="{y}" stroke="#eee"/><text x="-6" y="{}" text-anchor="end">{}</text>"##,
            y + 4.0,
            human(tick)
        );
    }
    let mut connection_ticks: Vec<usize> = series.values().flatten().map(|&(c, _)| c).collect();
    connection_ticks.sort_unstable();
    connection_ticks.dedup();
    for connections in connection_ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{connections}</text>"#,
            x_of(connections),
            h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">concurrent connections</text>"#,
        w / 2.0,
        h + 34.0
    );
    for (model, colour) in MODEL_COLOURS {
        let Some(points) = series.get(model) else {
            continue;
        };
        let path: Vec<String> = points
            .iter()
            .map(|&(c, v)| format!("{:.1},{:.1}", x_of(c), y_of(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2.5"/>"#,
            path.join(" ")
        );
        for &(c, v) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{model}, {c} connections: {v:.1}</title></circle>"#,
                x_of(c),
                y_of(v)
            );
        }
    }
    svg.push_str("</g>\n");
}

/// The smallest 1/2/2.5/5 × 10^k at or above `value`, so the axis has round labels.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&v| v >= value)
        .unwrap_or(10.0 * magnitude)
}

fn human(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", value / 1_000_000.0)
    } else if value >= 1000.0 {
        format!("{}k", value / 1000.0)
    } else if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
