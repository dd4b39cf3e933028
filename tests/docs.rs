//! The docs cannot drift from the program: every `console` block of `docs/TUTORIAL.md`,
//! `docs/ARCHITECTURE.md` and the README is run, against real servers this test starts, and its output compared with what the
//! doc shows; every trace excerpt is checked against the real trace of the same exchange.
//!
//! # How a doc is read
//!
//! * A ```` ```console ```` block is a shell session: `$ COMMAND` lines (a trailing `\` continues
//!   one), each followed by the output it must print, stdout and stderr together. Each command
//!   runs in `bash -c` in a scratch directory holding a link to the repository's `examples/`,
//!   with the `oneloop` under test first on `PATH`, stdin empty, and must exit 0 within 60 s.
//!   `cargo run --release --` in front of a command means `oneloop` (the README says so).
//! * `oneloop serve ...` (with or without a trailing `&`) starts a server in the background, as a
//!   reader would in another terminal; its output is its `listening` lines. It is started with
//!   every port replaced by 0 and every `/tmp/` path moved into the scratch directory (tests run
//!   side by side), and the ports the doc shows are mapped to the real ones in the commands that
//!   follow. Servers are stopped with SIGTERM at the next `## ` heading, at the end of the doc,
//!   or when a later server reuses one of their ports; each must then exit 0. The reader finds
//!   the server's process id with `$(pgrep -of 'oneloop serve.*SERVICE')`; here, where other
//!   tests run servers too, that text becomes the last server's id.
//! * A block right after `<!-- check: any order -->` compares its output lines as a set (two
//!   clients run at once print in either order).
//! * A ```` ```text ```` block right after `<!-- check: trace -->` is a log excerpt: its lines
//!   must appear, in order (others may come between), in the standard error of the last server
//!   started with `RUST_LOG` set.
//! * A `console` block right after `<!-- unchecked: REASON -->` is skipped; each doc's test says
//!   how many it expects, so none is skipped silently. Blocks of other kinds (`sh` for set-up and
//!   reference commands, plain fences for diagrams) are prose, not checked.
//! * Port numbers are remapped as text: a number in a command equal to a port the doc's servers
//!   listen on is replaced by the real port, wherever it stands (a PROXY header's destination
//!   port too).
//!
//! * A doc whose commands run an outside program (`nc`, `python3`, `socat`, ... : any listed in
//!   `tests/util`'s `TOOLS`) is skipped, one line per missing program, where that program is not
//!   installed; with `ONELOOP_TEST_REQUIRE_TOOLS=1` its test fails instead.
//!
//! # What is masked
//!
//! On both sides, before comparing: `ctime` stamps (`[Sun Nov 29 10:09:05 2026]`), Python's
//! `datetime.now()` and env_logger's timestamps, the port of every IP address (`127.0.0.1:PORT`),
//! the scratch directory (shown as `/tmp/`), and in the doc, `…` stands for any text (memory
//! figures, process ids). Everything else must match exactly, whole seconds included.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use regex::Regex;

mod util;

/// How the docs find the server's process id: `$(pgrep -of 'oneloop serve...')`, on the
/// reader's machine the server (`-o`, the oldest: a forking server's children have the same
/// command line), here the last server started.
const SERVER_PID: &str = r"\$\(pgrep -of 'oneloop serve[^']*'\)";

/// The longest any one command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A fenced block of a doc, and how it is to be checked.
#[derive(Debug)]
struct Block {
    /// `docs/TUTORIAL.md:123`, for messages.
    place: String,
    kind: BlockKind,
    /// The block's lines, its common indentation removed.
    lines: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum BlockKind {
    /// A shell session; `any_order` when its output is compared as a set.
    Console { any_order: bool },
    /// A log excerpt to find in the last traced server's stderr.
    Trace,
    /// A `## ` heading: the servers of the chapter before it stop.
    Chapter,
    /// Not checked, and why.
    Unchecked(String),
}

/// Reads the blocks this test checks out of a markdown file.
fn blocks(path: &Path, name: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut blocks = Vec::new();
    let mut marker: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim_start();
        if line.starts_with("## ") {
            blocks.push(Block {
                place: format!("{name}:{}", index + 1),
                kind: BlockKind::Chapter,
                lines: Vec::new(),
            });
            marker = None;
            continue;
        }
        if let Some(comment) = trimmed
            .strip_prefix("<!-- ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        {
            marker = Some(comment.to_owned());
            continue;
        }
        let Some(info) = trimmed.strip_prefix("```") else {
            if !trimmed.is_empty() {
                marker = None;
            }
            continue;
        };
        let indent = line.len() - trimmed.len();
        let mut body = Vec::new();
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            body.push(inner.get(indent..).unwrap_or(inner.trim_start()).to_owned());
        }
        let kind = match (info, marker.take()) {
            ("console", Some(m)) if m.starts_with("unchecked: ") => {
                BlockKind::Unchecked(m["unchecked: ".len()..].to_owned())
            }
            ("console", Some(m)) if m == "check: any order" => {
                BlockKind::Console { any_order: true }
            }
            ("console", Some(m)) => panic!("{name}:{}: unknown marker {m:?}", index + 1),
            ("console", None) => BlockKind::Console { any_order: false },
            ("text", Some(m)) if m == "check: trace" => BlockKind::Trace,
            (_, Some(m)) if m.starts_with("check") => {
                panic!("{name}:{}: {m:?} before a {info:?} block", index + 1)
            }
            _ => continue,
        };
        blocks.push(Block {
            place: format!("{name}:{}", index + 1),
            kind,
            lines: body,
        });
    }
    blocks
}

/// One command of a console block and the output the doc shows for it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continuing = false;
    for line in &block.lines {
        if continuing {
            let step = steps.last_mut().unwrap();
            step.command.push('\n');
            step.command.push_str(line);
            continuing = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_owned(),
                expected: Vec::new(),
            });
            continuing = command.ends_with('\\');
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("{}: output before any command", block.place));
            step.expected.push(line.clone());
        }
    }
    steps
}

/// A server a doc started, and what it has logged so far.
struct Server {
    child: Child,
    /// What it printed on stdout after its listening lines: must stay empty.
    extra_stdout: Arc<Mutex<String>>,
    /// The ports the doc shows, and the real ones.
    ports: HashMap<u16, u16>,
    /// Every line of its standard error, as it arrives.
    stderr: Arc<Mutex<Vec<String>>>,
    traced: bool,
    started_at: String,
}

impl Server {
    fn stop(mut self) {
        let extra = self.extra_stdout.lock().unwrap().clone();
        assert!(
            extra.is_empty(),
            "{}: the server printed more than the doc's listening lines: {extra:?}",
            self.started_at
        );
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{}: the server exited with {status} at SIGTERM:\n{}",
                    self.started_at,
                    self.stderr.lock().unwrap().join("\n")
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{}: the server did not stop at SIGTERM", self.started_at);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What every comparison sees: the parts that differ from run to run replaced by fixed words.
struct Masks {
    rules: Vec<(Regex, &'static str)>,
}

impl Masks {
    fn new() -> Masks {
        let rule = |pattern: &str, replacement| (Regex::new(pattern).unwrap(), replacement);
        Masks {
            rules: vec![
                // time.ctime(), as the timestamp service stamps.
                rule(
                    r"\[(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]",
                    "[CTIME]",
                ),
                // env_logger's timestamps.
                rule(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "TIMESTAMP"),
                // Python's datetime.now().
                rule(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", "DATETIME"),
                // Every port of an address: the servers' are remapped, the clients' ephemeral.
                rule(
                    r"((?:\d{1,3}\.){3}\d{1,3}|\[[0-9a-fA-F:.]*\]):\d{1,5}",
                    "${1}:PORT",
                ),
            ],
        }
    }

    fn apply(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (pattern, replacement) in &self.rules {
            text = pattern.replace_all(&text, *replacement).into_owned();
        }
        text
    }
}

/// Whether an actual line matches an expected one (both masked): equal, or equal where the
/// expected line's `…` stand for any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    if !expected.contains('…') {
        return expected == actual;
    }
    let pattern: Vec<String> = expected.split('…').map(regex::escape).collect();
    Regex::new(&format!("^{}$", pattern.join(".*?")))
        .unwrap()
        .is_match(actual)
}

/// Runs the docs' blocks in order, keeping the servers they start.
struct Runner {
    oneloop: PathBuf,
    scratch: PathBuf,
    masks: Masks,
    servers: Vec<Server>,
    /// Blocks skipped, with their reasons, to report.
    unchecked: Vec<String>,
    checked: usize,
}

impl Runner {
    fn new(name: &str) -> Runner {
        let scratch =
            std::env::temp_dir().join(format!("oneloop-docs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
            scratch.join("examples"),
        )
        .unwrap();
        Runner {
            oneloop: PathBuf::from(env!("CARGO_BIN_EXE_oneloop")),
            scratch,
            masks: Masks::new(),
            servers: Vec::new(),
            unchecked: Vec::new(),
            checked: 0,
        }
    }

    fn scratch_prefix(&self) -> String {
        format!("{}/", self.scratch.display())
    }

    /// The command as the reader wrote it, made to run here: `oneloop` for `cargo run
    /// --release --`, `/tmp/` in the scratch directory, the doc's ports replaced by the live
    /// servers' real ones, `$(pgrep -of 'oneloop serve...')` by the last server's pid.
    fn localize(&self, command: &str) -> String {
        let mut command = command
            .replace("cargo run --release --", "oneloop")
            .replace("/tmp/", &self.scratch_prefix());
        if let Some(server) = self.servers.last() {
            command = Regex::new(SERVER_PID)
                .unwrap()
                .replace_all(&command, server.child.id().to_string())
                .into_owned();
        }
        let ports: HashMap<u16, u16> = self
            .servers
            .iter()
            .flat_map(|server| server.ports.clone())
            .collect();
        if ports.is_empty() {
            return command;
        }
        let number = Regex::new(r"\b\d{2,5}\b").unwrap();
        number
            .replace_all(&command, |found: &regex::Captures| {
                let text = &found[0];
                text.parse::<u16>()
                    .ok()
                    .and_then(|port| ports.get(&port))
                    .map_or_else(|| text.to_owned(), |real| real.to_string())
            })
            .into_owned()
    }

    /// What a command printed, made comparable: the scratch directory shown as `/tmp/`, masked.
    fn comparable(&self, text: &str) -> String {
        self.masks
            .apply(&text.replace(&self.scratch_prefix(), "/tmp/"))
    }

    fn run_file(&mut self, blocks: &[Block]) {
        for block in blocks {
            match &block.kind {
                BlockKind::Chapter => self.stop_servers(),
                BlockKind::Unchecked(reason) => {
                    self.unchecked.push(format!("{}: {reason}", block.place))
                }
                BlockKind::Console { any_order } => {
                    for step in steps(block) {
                        self.run_step(block, &step, *any_order);
                    }
                    self.checked += 1;
                }
                BlockKind::Trace => {
                    self.check_trace(block);
                    self.checked += 1;
                }
            }
        }
        self.stop_servers();
    }

    fn stop_servers(&mut self) {
        for server in self.servers.drain(..) {
            server.stop();
        }
    }

    fn run_step(&mut self, block: &Block, step: &Step, any_order: bool) {
        let words: Vec<&str> = step
            .command
            .split_whitespace()
            .skip_while(|word| word.contains('=') && !word.starts_with('-'))
            .collect();
        let is_server = matches!(words.as_slice(), ["oneloop", "serve", ..])
            || matches!(
                words.as_slice(),
                ["cargo", "run", "--release", "--", "serve", ..]
            );
        if is_server {
            self.start_server(block, step);
        } else {
            self.run_command(block, step, any_order);
        }
    }

    fn start_server(&mut self, block: &Block, step: &Step) {
        let command = step.command.trim_end().trim_end_matches('&').trim_end();
        let mut command = command
            .replace("cargo run --release --", "oneloop")
            .replace("/tmp/", &self.scratch_prefix());
        // Every service on an ephemeral port: the doc's fixed ports may be taken here.
        let service_port =
            Regex::new(r"(@(?:tcp:|udp:|tls:)?(?:\[[^\]]*\]|[^\s:@\[]+)):(\d+)").unwrap();
        let has_services = service_port.is_match(&command) || command.contains("@unix:");
        command = service_port.replace_all(&command, "${1}:0").into_owned();
        if !has_services {
            command.push_str(" upper@127.0.0.1:0 timestamp@127.0.0.1:0 echo@127.0.0.1:0");
        }
        assert!(
            !step.expected.is_empty(),
            "{}: `{}` starts a server, but the doc shows none of its listening lines (they are \
             how the reader, and this test, learn its addresses)",
            block.place,
            step.command
        );
        let doc_ports: Vec<Option<u16>> = step.expected.iter().map(|l| port_of(l)).collect();
        // A port the doc reuses belongs to the new server from now on.
        let reused = |server: &Server| {
            doc_ports
                .iter()
                .flatten()
                .any(|p| server.ports.contains_key(p))
        };
        let (stale, live): (Vec<Server>, Vec<Server>) =
            self.servers.drain(..).partition(|s| reused(s));
        self.servers = live;
        for server in stale {
            server.stop();
        }
        let traced = command.contains("RUST_LOG=");
        let mut child = self.shell(&format!("exec env {command}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        // Its stdout, line by line, through a channel: the listening lines are awaited with a
        // deadline, and whatever follows them is kept to be checked when it stops.
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        let pipe = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ports = HashMap::new();
        for (expected, doc_port) in step.expected.iter().zip(&doc_ports) {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: `{}` printed no listening line {expected:?} within 10 s (stderr: \
                         {:?})",
                        block.place,
                        step.command,
                        stderr.lock().unwrap()
                    )
                });
            assert!(
                line_matches(&self.comparable(expected), &self.comparable(&line)),
                "{}: `{}` printed\n  {line:?}\nwhere the doc shows\n  {expected:?}\n(stderr: {:?})",
                block.place,
                step.command,
                stderr.lock().unwrap()
            );
            if let (Some(doc), Some(real)) = (doc_port, port_of(&line)) {
                ports.insert(*doc, real);
            }
        }
        // Nothing else on stdout: a server says only its listening lines. The rest is collected
        // in the background and checked when it stops.
        let extra_stdout = Arc::new(Mutex::new(String::new()));
        let extra = Arc::clone(&extra_stdout);
        thread::spawn(move || {
            for line in lines_rx {
                let mut extra = extra.lock().unwrap();
                extra.push_str(&line);
                extra.push('\n');
            }
        });
        self.servers.push(Server {
            child,
            extra_stdout,
            ports,
            stderr,
            traced,
            started_at: block.place.clone(),
        });
    }

    /// Starts `bash -c script` as the reader's shell would run it: in the scratch directory, the
    /// `oneloop` under test first on `PATH`, no `RUST_LOG` but the script's own, stdin empty,
    /// stdout and stderr piped.
    fn shell(&self, script: &str) -> Child {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.scratch)
            .env("PATH", self.path_variable())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run bash: {e}"))
    }

    fn path_variable(&self) -> String {
        let bin = self.oneloop.parent().unwrap();
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn run_command(&mut self, block: &Block, step: &Step, any_order: bool) {
        let command = self.localize(&step.command);
        let mut child = self.shell(&command);
        // Both pipes drained at once (a full stderr pipe would block the command), into one
        // transcript per stream.
        let mut err_pipe = child.stderr.take().unwrap();
        let err_thread = thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            text
        });
        let mut out_pipe = child.stdout.take().unwrap();
        let out_thread = thread::spawn(move || {
            let mut text = String::new();
            let _ = out_pipe.read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                panic!(
                    "{}: `{}` ran over {COMMAND_LIMIT:?}",
                    block.place, step.command
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = out_thread.join().unwrap();
        let stderr = err_thread.join().unwrap();
        let output = format!("{stdout}{stderr}");
        // A missing program is the cause to name first: not a timing diff with the shell's
        // complaint somewhere in the middle (a backgrounded command's does not even fail it).
        if let Some(cause) = missing_program(status.code(), &output, &step.expected) {
            panic!(
                "{}: `{}`: {cause}\n(run as `{command}`, which ended with {status}, printing:)\n{output}",
                block.place, step.command
            );
        }
        assert!(
            status.success(),
            "{}: `{}` (run as `{command}`) failed with {status}:\n{output}",
            block.place,
            step.command
        );
        let mut actual: Vec<String> = self
            .comparable(&output)
            .lines()
            .map(str::to_owned)
            .collect();
        let mut expected: Vec<String> = step.expected.iter().map(|l| self.comparable(l)).collect();
        if any_order {
            actual.sort();
            expected.sort();
        }
        let same = actual.len() == expected.len()
            && expected
                .iter()
                .zip(&actual)
                .all(|(expected, actual)| line_matches(expected, actual));
        assert!(
            same,
            "{}: `{}` printed (masked)\n{}\nwhere the doc shows (masked)\n{}",
            block.place,
            step.command,
            actual.join("\n"),
            expected.join("\n")
        );
    }

    /// Finds the excerpt's lines, in order, in the last traced server's stderr; waits up to 5 s
    /// for them to arrive.
    fn check_trace(&self, block: &Block) {
        let server = self
            .servers
            .iter()
            .rev()
            .find(|server| server.traced)
            .unwrap_or_else(|| panic!("{}: a trace excerpt, but no traced server", block.place));
        let expected: Vec<String> = block.lines.iter().map(|l| self.comparable(l)).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logged: Vec<String> = server
                .stderr
                .lock()
                .unwrap()
                .iter()
                .map(|l| self.comparable(l))
                .collect();
            let mut next = 0;
            for line in &logged {
                if next < expected.len() && line_matches(&expected[next], line) {
                    next += 1;
                }
            }
            if next == expected.len() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: the trace excerpt's line\n  {}\nis not in the server's log (after the \
                     lines before it); the log, masked:\n{}",
                    block.place,
                    expected[next],
                    logged.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Why a command's run says a program is missing, if it does: bash's `command not found` line
/// (unless the doc shows it), or exit status 127 (bash's code for a command it cannot find).
fn missing_program(code: Option<i32>, output: &str, expected: &[String]) -> Option<String> {
    let complaint = output.lines().find(|line| {
        line.contains("command not found") && !expected.iter().any(|e| e.contains(line.trim()))
    });
    match (complaint, code) {
        (Some(line), _) => Some(format!("a program it runs is not installed: {line}")),
        (None, Some(127)) => Some("exit 127: a program it runs is not installed".to_owned()),
        _ => None,
    }
}

/// The outside programs (of [`util::TOOLS`]) the commands of `blocks` run, each once: a word of
/// a command that is a program's name, at the start or after a space, `|`, `;`, `&` or `(`.
fn programs_run(blocks: &[Block]) -> Vec<&'static str> {
    let commands: Vec<String> = blocks
        .iter()
        .filter(|block| matches!(block.kind, BlockKind::Console { .. }))
        .flat_map(|block| steps(block).into_iter().map(|step| step.command))
        .collect();
    util::TOOLS
        .iter()
        .map(|(program, _)| *program)
        .filter(|program| {
            let word =
                Regex::new(&format!(r"(^|[\s|;&(]){}(\s|$)", regex::escape(program))).unwrap();
            commands.iter().any(|command| word.is_match(command))
        })
        .collect()
}

/// The port of a `listening PROTOCOL TRANSPORT HOST:PORT` line.
fn port_of(line: &str) -> Option<u16> {
    let address = line.strip_prefix("listening ")?.rsplit(' ').next()?;
    address.rsplit_once(':')?.1.parse().ok()
}

/// One doc at a time: the docs' timings (chapter 2's five and ten seconds) are what they
/// teach, and two docs' servers and clients competing for two cores would blur them.
static ONE_DOC_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs every checked block of `relative`; `unchecked` is how many blocks it marks
/// `<!-- unchecked: ... -->`, so that skipping one more is a decision made here, in the open.
fn check_doc(relative: &str, unchecked: usize) {
    let _turn = ONE_DOC_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let blocks = blocks(&path, relative);
    if !util::require_tools(&programs_run(&blocks)) {
        return;
    }
    let name = relative.replace(['/', '.'], "-");
    let mut runner = Runner::new(&name);
    runner.run_file(&blocks);
    assert!(runner.checked > 0, "{relative}: no block checked");
    assert_eq!(
        runner.unchecked.len(),
        unchecked,
        "{relative}: the blocks not checked are now {:#?}",
        runner.unchecked
    );
}

#[test]
fn the_readme_examples_run_as_shown() {
    // The two-person chat session.
    check_doc("README.md", 1);
}

#[test]
fn the_tutorial_runs_as_shown() {
    check_doc("docs/TUTORIAL.md", 0);
}

#[test]
fn the_architecture_traces_are_real() {
    check_doc("docs/ARCHITECTURE.md", 0);
}

#[test]
fn masks_hide_only_what_varies() {
    let masks = Masks::new();
    assert_eq!(
        masks.apply("[Sun Nov  29 10:09:05 2026] hi"),
        "[Sun Nov  29 10:09:05 2026] hi",
        "not a ctime stamp"
    );
    assert_eq!(masks.apply("[Sun Nov  9 10:09:05 2026] hi"), "[CTIME] hi");
    assert_eq!(
        masks.apply("client 2026-11-29 10:09:05.746823 sent hi"),
        "client DATETIME sent hi"
    );
    assert_eq!(
        masks.apply("from 127.0.0.1:40112 and [::1]:7000, 3 of 127"),
        "from 127.0.0.1:PORT and [::1]:PORT, 3 of 127"
    );
    assert!(line_matches("rss … KiB", "rss 1234 KiB"));
    assert!(!line_matches("rss … KiB", "rss 1234 MiB"));
    assert!(!line_matches("after 5 s", "after 10 s"));
}

/// The outside programs, and the packages that install them, as the README's table names them
/// and as `.ci/run` installs them, are exactly `tests/util`'s `TOOLS`, which the tests check
/// for: a program added to one place and not the others is caught here.
#[test]
fn the_readme_table_and_ci_name_the_programs_the_tests_need() {
    use std::collections::BTreeSet;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let harness: BTreeSet<(String, String)> = util::TOOLS
        .iter()
        .map(|(program, package)| (program.to_string(), package.to_string()))
        .collect();

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let header = "| Debian package | program | tests that skip without it |";
    let table = readme
        .split_once(header)
        .unwrap_or_else(|| panic!("README.md: no table headed {header:?}"))
        .1;
    let backticked = Regex::new("`([^`]+)`").unwrap();
    let mut in_readme = BTreeSet::new();
    for row in table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let package = cells[1].trim_matches('`');
        for program in backticked.captures_iter(cells[2]) {
            if !program[1].starts_with('-') {
                in_readme.insert((program[1].to_owned(), package.to_owned()));
            }
        }
    }
    assert_eq!(
        in_readme, harness,
        "README.md's table (left) and tests/util's TOOLS (right)"
    );

    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let list = ci
        .split_once("\ntools=(")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .expect(".ci/run: no `tools=( ... )` list")
        .0;
    let in_ci: BTreeSet<(String, String)> = list
        .split_whitespace()
        .map(|pair| {
            let (program, package) = pair.split_once(':').expect("PROGRAM:PACKAGE");
            (program.to_owned(), package.to_owned())
        })
        .collect();
    assert_eq!(
        in_ci, harness,
        ".ci/run's tools (left) and tests/util's TOOLS (right)"
    );
    assert!(
        ci.contains("\nONELOOP_TEST_REQUIRE_TOOLS=1 cargo test\n"),
        ".ci/run runs `cargo test` with ONELOOP_TEST_REQUIRE_TOOLS=1"
    );
}
