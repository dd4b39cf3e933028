//! The command line: `oneloop serve`, `client`, `load`, `send` and `generate`.
//!
//! Exit codes follow the contract: 0 on success, 1 when the job fails (a bind failure, a client
//! that cannot connect), 2 for a bad command line (clap's own code for usage errors, which it
//! prints with a pointer to `--help`).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use log::error;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::client::ClientArgs;
use crate::models::{self, datagram::DatagramServers};
use crate::net::systemd::{ActivatedSocket, Notifier};
use crate::net::tls::{ServerTls, ServerTlsFiles};
use crate::net::{self, BoundListener, Listening};
use crate::options::{
    ServeOptions, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_OUTPUT_LIMIT, DEFAULT_SHUTDOWN_TIMEOUT_SECS,
};
use crate::protocol::bus::BusUrl;
use crate::protocol::{Limits, DEFAULT_MAX_LINE, DEFAULT_MAX_UPLOAD};
use crate::reactor::{Config, Reactor};
use crate::service::{ProtocolKind, ServiceSpec, SocketSource, DEFAULT_SERVICES};
use crate::storage::durable::UploadDir;

/// oneloop: one thread, one event loop, thousands of connections.
#[derive(Debug, Parser)]
#[command(name = "oneloop", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve protocols from one event loop.
    Serve(ServeArgs),
    /// Connect to a service: send MESSAGE words, or stdin lines, and print the replies.
    Client(ClientArgs),
    /// Closed-loop load against a server: verified replies, req/s and latency percentiles.
    Load(crate::load::LoadArgs),
    /// Upload FILE to an upload service and check the server's size and CRC-32 against its own.
    Send(crate::send::SendArgs),
    /// Print the man page or a shell's completion script, made from this command line.
    Generate(crate::generate::GenerateArgs),
}

/// `oneloop serve [OPTIONS] [SERVICE...]`
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The services to serve, as `PROTOCOL@ADDRESS`; none means the seeds' three
    /// ([`DEFAULT_SERVICES`]).
    #[arg(
        value_name = "SERVICE",
        help = "Services as PROTOCOL@ADDRESS: PROTOCOL is upper, timestamp, echo, chat or \
                upload (chat and upload: tcp, tls and unix); ADDRESS is HOST:PORT or tcp:HOST:PORT (IPv6 as [::1]:PORT; port 0 \
                picks a free port), \
                udp:HOST:PORT, tls:HOST:PORT (TLS over TCP: see --tls-cert), unix:PATH, or fd:NAME (a socket systemd passed in, by its \
                FileDescriptorName= or number; with no SERVICE, each passed socket serves the \
                protocol its name names). Under the blocking models each UDP service is one \
                thread (under forking, one process) blocked in recvmsg: a datagram service has \
                no connections to spread \
                [default: upper@127.0.0.1:9999 timestamp@127.0.0.1:21567 echo@127.0.0.1:9000]"
    )]
    pub services: Vec<ServiceSpec>,

    /// How connections are served: one event loop (reactor), or one of the classic models it is
    /// compared against.
    #[arg(long, value_enum, default_value_t = Model::Reactor)]
    pub model: Model,

    /// Worker threads for `--model pool` [default: 4 per CPU core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub threads: Option<u32>,

    /// Longest line accepted by line protocols (timestamp), not counting its newline. Past it
    /// the client gets `error line too long` and is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE, value_parser = positive_size)]
    pub max_line: usize,

    /// Reply bytes queued for one connection past which the server stops reading from it until
    /// the client has read them.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_OUTPUT_LIMIT, value_parser = positive_size)]
    pub output_limit: usize,

    /// Open client connections past which new ones are accepted and closed at once (with an
    /// `error too many connections` line) [default: the open-file limit minus a reserve].
    #[arg(long, value_name = "N", value_parser = positive_size)]
    pub max_connections: Option<usize>,

    /// Seconds without a byte read or written after which a connection is closed (0: never).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub idle_timeout: u64,

    /// Seconds a graceful shutdown (SIGINT, SIGTERM) waits for busy connections to finish.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub shutdown_timeout: u64,

    /// Permission bits (octal, e.g. 600) of the Unix socket files this process creates, in
    /// force from the moment each file exists [default: from the umask].
    #[arg(long, value_name = "OCTAL", value_parser = octal_mode)]
    pub unix_mode: Option<u32>,

    /// Where upload services store files; it must exist and be writable. Temporary files a
    /// crash left there (`.oneloop-upload-*`) are removed at start.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub upload_dir: std::path::PathBuf,

    /// Largest upload accepted, in bytes; a bigger SIZE gets `error too large` before any of the
    /// body is read [default: 1 GiB].
    // The default is shown once, in the words above: clap's own `[default: 1073741824]` would
    // say it a second time, in a unit nobody reads.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_UPLOAD, hide_default_value = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload: u64,

    /// Free space, in bytes, an upload must leave on the upload directory's file system,
    /// counting what uploads in progress still need; one that would leave less gets
    /// `error no space` before `ok` (Postfix's queue_minfree). 0 turns the check off.
    #[arg(long, value_name = "BYTES", default_value_t = crate::storage::DEFAULT_MIN_FREE)]
    pub min_free: u64,

    /// Where the reactor does uploads' file work: on I/O threads (threads), or in the event loop
    /// itself (loop) — a foil, to measure what a disk wait inside the loop costs every client.
    #[arg(long, value_enum, default_value_t = UploadIo::Threads)]
    pub upload_io: UploadIo,

    /// TCP and Unix stream services expect a PROXY protocol header (v1 or v2, as HAProxy's
    /// `send-proxy` sends it) before the client's first byte, and name the client by the
    /// address it carries (logs, chat names). A connection whose header is missing, malformed
    /// or not complete within 3 s is closed. Only behind a balancer that sends one: it is never
    /// guessed from the bytes.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Share every chat room with the other oneloop processes on this Redis
    /// (`redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`): one order, unique names and /who across
    /// instances. The room is the port (tcp), the socket file's name (unix), or NAME (fd:NAME).
    /// The reactor only; HOST is resolved once, at start.
    #[arg(long, value_name = "URL", value_parser = parse_bus_url)]
    pub chat_bus: Option<String>,

    /// The certificate chain (PEM, leaf first) every tls: service presents; required when there
    /// is one. Re-read at SIGHUP, with --tls-key and --tls-client-ca: new handshakes use the new
    /// files, open connections are untouched, and a bad file keeps the old set.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); required with a tls: service.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Clients of tls: services must present a certificate signed by a CA in this PEM file; a
    /// chat member is first named by its certificate's common name.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds (fractions allowed) that upper, timestamp and echo hold each reply after its
    /// request was read: the tutorial's demonstration of concurrency (the seeds'
    /// `time.sleep(5)`). The reactor holds them on a timer and serves everyone else meanwhile;
    /// the blocking models sleep. Replies stay in order, held bytes count against
    /// --output-limit, and the idle timeout does not run while a reply is held. TCP and Unix
    /// connections only: UDP answers at once [default: 0].
    #[arg(long, value_name = "SECS", value_parser = reply_delay)]
    pub reply_delay: Option<Duration>,
}

/// `--reply-delay`: 0 (off) or a positive number of seconds, at most an hour.
fn reply_delay(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 3600"
        )),
    }
}

/// `--upload-io`: where the reactor's file work for uploads runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum UploadIo {
    /// A small pool of I/O threads; completions come back through a waker (the design).
    Threads,
    /// In the loop thread: every `write` and `fsync` stalls every client (the foil).
    Loop,
}

/// `--model`: how `serve` serves its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Model {
    /// One thread, one mio event loop, every connection (the point of oneloop).
    Reactor,
    /// One connection at a time, to completion (Python's `TCPServer`).
    Serial,
    /// A thread per connection (`ThreadingMixIn`).
    Threaded,
    /// `--threads` worker threads taking accepted connections from a queue.
    Pool,
    /// A process per connection (`ForkingMixIn`).
    Forking,
}

impl Model {
    /// The name used by `--model`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Model::Reactor => "reactor",
            Model::Serial => "serial",
            Model::Threaded => "threaded",
            Model::Pool => "pool",
            Model::Forking => "forking",
        }
    }
}

/// Parses `--unix-mode`: permission bits in octal, 0 to 777.
fn octal_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal permission mode from 0 to 777 (e.g. 600 or 660)"
        )),
    }
}

/// The longest timeout accepted (a year): far beyond any use, and far from the overflow of
/// `Instant + Duration` that a value like `u64::MAX` would cause.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// `--max-connections`' default: the open-file limit less the descriptors that are not clients
/// (stdio, the poller, the signal pipe, listeners, the EMFILE reserve, log files) — an eighth of
/// the limit, at least 8 and at most 64, so a small limit still leaves most of it for clients.
pub(crate) fn default_max_connections(fd_limit: u64) -> usize {
    let reserved = (fd_limit / 8).clamp(8, 64);
    fd_limit.saturating_sub(reserved).max(1) as usize
}

/// Parses a byte count of at least 1.
fn positive_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of bytes")),
    }
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(args) => crate::client::run(&args),
        Command::Load(args) => match args.config().validate() {
            Err(message) => usage_error("load", message),
            Ok(()) => crate::load::main(&args),
        },
        Command::Send(args) => crate::send::run(&args),
        Command::Generate(args) => generate(&args),
    }
}

/// `oneloop generate`: what it prints is made from [`Cli`]'s own definition; a failed write
/// (stdout closed, a full disk) is one line and exit 1.
fn generate(args: &crate::generate::GenerateArgs) -> ExitCode {
    match crate::generate::write(args.what, Cli::command(), &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oneloop: cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` picks what (`oneloop=trace` narrates every event). By default
/// only warnings and errors are shown, so stdout and stderr stay quiet in normal service.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
}

/// Prints a usage error in clap's style, with the usage of `subcommand` (the one that was
/// misused, not the top level's), and returns clap's usage exit code (2).
fn usage_error(subcommand: &str, message: impl std::fmt::Display) -> ExitCode {
    let mut command = Cli::command();
    // Building names the subcommand `oneloop SUBCOMMAND` in its usage line.
    command.build();
    let error = command
        .find_subcommand_mut(subcommand)
        .expect("a subcommand of the CLI")
        .error(clap::error::ErrorKind::ValueValidation, message);
    let _ = error.print();
    ExitCode::from(2)
}

/// `--chat-bus`'s value, checked as a URL (a bad one is a usage error).
fn parse_bus_url(text: &str) -> Result<String, String> {
    text.parse::<BusUrl>().map(|_| text.to_owned())
}

/// The chat bus's URL and its address, looked up once, now: the loop never resolves a name.
/// A host that does not resolve is a failure to start (exit 1), as a bind failure is; a Redis
/// that does not answer is not (the loop keeps trying).
fn resolve_bus(text: &str) -> Result<(BusUrl, std::net::SocketAddr), ServeError> {
    use std::net::ToSocketAddrs;
    let url: BusUrl = text.parse().map_err(ServeError::refused)?;
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| {
            ServeError::failed(format!(
                "--chat-bus {url}: cannot resolve {}: {e}",
                url.host
            ))
        })?
        .next()
        .ok_or_else(|| {
            ServeError::failed(format!("--chat-bus {url}: {} has no address", url.host))
        })?;
    Ok((url, addr))
}

/// With `--chat-bus`, each room name (a port, a socket file's name) is one room on the bus: two
/// chat services of one process with the same name (`chat@127.0.0.1:7002 chat@[::1]:7002`, two
/// `room.sock` in two directories) would be one room in Redis but two in the loop. Refused
/// (exit 2), rather than guessed.
fn one_service_per_room(listeners: &[BoundListener]) -> Result<(), ServeError> {
    let mut seen = std::collections::HashMap::new();
    for listener in listeners
        .iter()
        .filter(|l| l.protocol == ProtocolKind::Chat)
    {
        let name = listener.room_name();
        if let Some(first) = seen.insert(name.clone(), &listener.local) {
            return Err(ServeError::refused(format!(
                "--chat-bus: chat services on {first} and {} would share the room {name:?} on the \
                 bus: give each chat service its own port or socket file name",
                listener.local
            )));
        }
    }
    Ok(())
}

/// Which services this build can serve; the others are refused before anything is bound.
fn check_supported(service: &ServiceSpec, model: Model) -> Result<(), String> {
    let is_tls = matches!(&service.source, SocketSource::Bind(address) if address.is_tls());
    // Threaded and pool serve a connection on a thread of its own, handshake included; serial
    // would let one slow handshake hold the whole server, and a forked child would hold a copy
    // of the private key in every process.
    if is_tls && !matches!(model, Model::Reactor | Model::Threaded | Model::Pool) {
        return Err(format!(
            "{service}: --model {} does not serve tls: (reactor, threaded and pool do)",
            model.name()
        ));
    }
    match service.protocol {
        ProtocolKind::Upper | ProtocolKind::Timestamp | ProtocolKind::Echo => Ok(()),
        ProtocolKind::Chat => match model {
            Model::Reactor | Model::Threaded | Model::Pool => Ok(()),
            Model::Serial | Model::Forking => Err(format!(
                "{service}: --model {} cannot serve chat: a room is shared by all its members, \
                 and {}",
                model.name(),
                if model == Model::Serial {
                    "a serial server talks to one member at a time"
                } else {
                    "each forked process would hold a room of its own"
                }
            )),
        },
        // Every model: the blocking ones store each upload in the thread or process serving it.
        ProtocolKind::Upload => Ok(()),
        // The counters are the loop's own plain integers; the blocking models keep none that a
        // scrape could read across their threads and processes.
        ProtocolKind::Metrics => match model {
            Model::Reactor => Ok(()),
            _ => Err(format!(
                "{service}: --model {} does not serve metrics (the reactor does)",
                model.name()
            )),
        },
    }
}

/// Why `serve` stopped before serving, or failed while serving: the one line it prints (after
/// `oneloop: `) and the exit code that goes with it.
#[derive(Debug)]
struct ServeError {
    message: String,
    code: u8,
}

impl ServeError {
    /// The job failed (exit 1): a socket that cannot be bound or set up, an upload directory
    /// that cannot be used, a model that fails while serving.
    fn failed(message: impl std::fmt::Display) -> ServeError {
        ServeError {
            message: message.to_string(),
            code: 1,
        }
    }

    /// A model that cannot serve a service (exit 2): the command line asked for something this
    /// model does not do; nothing is bound.
    fn refused(message: impl std::fmt::Display) -> ServeError {
        ServeError {
            message: message.to_string(),
            code: 2,
        }
    }
}

/// `oneloop serve`: serves until a signal ends it (exit 0); anything that stops it is one
/// `oneloop: ...` line on stderr and its exit code.
fn serve(args: ServeArgs) -> ExitCode {
    match try_serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError { message, code }) => {
            eprintln!("oneloop: {message}");
            ExitCode::from(code)
        }
    }
}

/// `serve` step by step: what to serve, with which options, bound, then served by `--model`.
fn try_serve(mut args: ServeArgs) -> Result<(), ServeError> {
    // First, while the process has one thread: it removes the LISTEN_* variables from the
    // environment. Without them (not socket-activated) the list is empty and nothing changes.
    let passed = net::systemd::take_activated_sockets().map_err(ServeError::failed)?;
    let services = services_to_serve(std::mem::take(&mut args.services), &passed)?;
    if let Some(message) = services
        .iter()
        .find_map(|s| check_supported(s, args.model).err())
    {
        return Err(ServeError::refused(message));
    }
    if args.chat_bus.is_some() && args.model != Model::Reactor {
        return Err(ServeError::refused(format!(
            "--chat-bus: --model {} cannot share chat rooms through Redis; only the reactor \
             does (its loop speaks to Redis without ever waiting for it)",
            args.model.name()
        )));
    }
    let options = serve_options(&args, &services)?;
    // Held until `serve` returns: dropping them removes the Unix socket files (if still ours).
    let net::Bound {
        listeners,
        datagrams,
        socket_files: _socket_files,
        lines,
    } = bind(&services, args.unix_mode, passed)?;
    // The contract: signal handling is in place before the listening lines are printed. Every
    // model shuts down gracefully on SIGINT and SIGTERM: the handler only writes to a pipe that
    // the model's poll watches.
    // SIGHUP too: it reloads the TLS files, and is ignored without a tls: service (it must not
    // end the process, as its default action would).
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| ServeError::failed(format!("cannot install signal handlers: {e}")))?;
    // systemd (Type=notify); without NOTIFY_SOCKET every notification is a no-op.
    let notifier = Arc::new(Notifier::from_env());
    let watchdog_every = net::systemd::watchdog_interval();
    let serving = Serving::start(&args, listeners, datagrams, options, signals)?;
    if let Err(e) = announce(&lines) {
        // Whoever started us stopped listening; serving can still be useful.
        log::warn!("cannot print the listening lines: {e}");
    }
    // systemd learns the services are up once every one listens.
    notifier.ready();
    serving.run(notifier, watchdog_every).map_err(|e| {
        let message = format!("{} model failed: {e}", args.model.name());
        error!("{message}");
        ServeError::failed(message)
    })
}

/// The services named on the command line; with none, those systemd passed in (by their
/// names), or else the seeds' three ([`DEFAULT_SERVICES`]).
fn services_to_serve(
    named: Vec<ServiceSpec>,
    passed: &[ActivatedSocket],
) -> Result<Vec<ServiceSpec>, ServeError> {
    if !named.is_empty() {
        Ok(named)
    } else if passed.is_empty() {
        Ok(DEFAULT_SERVICES
            .iter()
            .map(|text| text.parse().expect("default services parse"))
            .collect())
    } else {
        services_named_by(passed).map_err(ServeError::failed)
    }
}

/// The options every model shares, from the command line and the process's open-file limit
/// (raised here to its hard limit). The upload directory, when an upload service needs one, is
/// opened and checked here, before anything is bound: a server that cannot store uploads must
/// not start.
fn serve_options(args: &ServeArgs, services: &[ServiceSpec]) -> Result<ServeOptions, ServeError> {
    let fd_limit = crate::sys::raise_fd_limit();
    net::log_fd_limit(&fd_limit);
    let max_connections = args.max_connections.unwrap_or_else(|| {
        default_max_connections(fd_limit.as_ref().map_or(1024, |limit| limit.now))
    });
    let upload_dir = if services.iter().any(|s| s.protocol == ProtocolKind::Upload) {
        let dir = open_upload_dir(&args.upload_dir, args.min_free)
            .map_err(|e| ServeError::failed(format!("--upload-dir {e}")))?;
        Some(dir)
    } else {
        None
    };
    Ok(ServeOptions {
        limits: Limits {
            max_line: args.max_line,
            max_upload: args.max_upload,
        },
        output_limit: args.output_limit,
        max_connections,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        upload_dir,
        proxy_protocol: args.proxy_protocol,
        reply_delay: args.reply_delay.filter(|delay| !delay.is_zero()),
        tls: server_tls(args, services)?,
    })
}

/// `--tls-cert`, `--tls-key` and `--tls-client-ca`, read, when a `tls:` service is served: both
/// of the first two are required then (exit 2), and a file that cannot be used is a failure to
/// start naming it (exit 1). Without a `tls:` service the files are not read.
fn server_tls(args: &ServeArgs, services: &[ServiceSpec]) -> Result<Option<ServerTls>, ServeError> {
    let Some(first) = services
        .iter()
        .find(|s| matches!(&s.source, SocketSource::Bind(address) if address.is_tls()))
    else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Err(ServeError::refused(format!(
            "{first}: a tls: service needs --tls-cert PEM and --tls-key PEM"
        )));
    };
    let files = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.tls_client_ca.clone(),
    };
    ServerTls::load(files)
        .map(Some)
        .map_err(|e| ServeError::failed(format!("cannot use TLS file {e}")))
}

/// Binds (or takes from `passed`) every service's socket. A passed socket no service names is
/// closed with a warning: systemd keeps its own copy, so closing ours loses nothing; serving it
/// under a guessed protocol would.
fn bind(
    services: &[ServiceSpec],
    unix_mode: Option<u32>,
    mut passed: Vec<ActivatedSocket>,
) -> Result<net::Bound, ServeError> {
    let bound = net::bind_services(services, unix_mode, &mut passed).map_err(ServeError::failed)?;
    for unused in passed {
        log::warn!(
            "passed socket fd {} ({:?}, {}) is not named by any service; not served",
            unused.fd,
            unused.name,
            unused.local
        );
    }
    Ok(bound)
}

/// With no `SERVICE` and sockets passed by systemd: one `PROTOCOL@fd:NAME` service per distinct
/// socket name, in the order passed, where each name must be a protocol's (the socket unit's
/// `FileDescriptorName=upper`, for example). A name that is not is an error: serving a socket
/// under a guessed protocol would answer its clients in the wrong language.
fn services_named_by(passed: &[ActivatedSocket]) -> Result<Vec<ServiceSpec>, String> {
    let mut services: Vec<ServiceSpec> = Vec::new();
    for socket in passed {
        let protocol: ProtocolKind = socket.name.parse().map_err(|_| {
            format!(
                "passed socket fd {} ({:?}, {}) names no protocol: give its .socket unit \
                 FileDescriptorName=upper, timestamp, echo, chat or upload, or name the service \
                 on the command line, e.g. `oneloop serve echo@fd:{}`",
                socket.fd, socket.name, socket.local, socket.fd
            )
        })?;
        let source = SocketSource::Passed(socket.name.clone());
        if !services.iter().any(|service| service.source == source) {
            services.push(ServiceSpec { protocol, source });
        }
    }
    Ok(services)
}

/// Opens `--upload-dir` (it must exist and be writable) and removes the temporary files a crash
/// left in it; the error names the directory.
fn open_upload_dir(path: &std::path::Path, min_free: u64) -> std::io::Result<Arc<UploadDir>> {
    let dir = UploadDir::open(path)?.with_min_free(min_free);
    let leftovers = dir.leftovers();
    if leftovers.removed > 0 {
        log::info!(
            "{}: removed {} temporary files left by an earlier run",
            path.display(),
            leftovers.removed
        );
    }
    Ok(Arc::new(dir))
}

/// What `serve` runs once the listening lines are out.
// One value per process, moved twice: the variants' difference in size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Serving {
    /// The event loop, built and ready.
    Reactor(Box<Reactor>),
    /// A blocking model, the listeners it will serve, its options, the stop signals it watches,
    /// and its UDP servers (already running).
    Blocking {
        model: Blocking,
        listeners: Vec<BoundListener>,
        options: ServeOptions,
        signals: Signals,
        udp: DatagramServers,
    },
}

/// The blocking models, each with what only it needs: `--model` less the reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocking {
    /// `--model serial`.
    Serial,
    /// `--model threaded`.
    Threaded,
    /// `--model pool`, with its `--threads`.
    Pool { workers: usize },
    /// `--model forking`, whose UDP services are child processes too.
    Forking,
}

impl Serving {
    /// Gets `args.model` ready to serve. The reactor is built (poller, reserve descriptor, signal
    /// pipe) before the listening lines are printed: whoever waits for those lines may rely on
    /// the server being ready. A blocking model's UDP servers start serving at once.
    fn start(
        args: &ServeArgs,
        listeners: Vec<BoundListener>,
        datagrams: Vec<net::BoundDatagram>,
        options: ServeOptions,
        signals: Signals,
    ) -> Result<Serving, ServeError> {
        let model = match args.model {
            Model::Reactor => {
                let chat_bus = args.chat_bus.as_deref().map(resolve_bus).transpose()?;
                if chat_bus.is_some() {
                    one_service_per_room(&listeners)?;
                }
                let config = Config {
                    options,
                    upload_io_in_loop: args.upload_io == UploadIo::Loop,
                    chat_bus,
                };
                let reactor = Reactor::new(listeners, datagrams, config, Some(signals))
                    .map_err(|e| ServeError::failed(format!("cannot start the event loop: {e}")))?;
                return Ok(Serving::Reactor(Box::new(reactor)));
            }
            Model::Serial => Blocking::Serial,
            Model::Threaded => Blocking::Threaded,
            Model::Pool => Blocking::Pool {
                workers: pool_size(args.threads),
            },
            Model::Forking => Blocking::Forking,
        };
        let udp = if model == Blocking::Forking {
            DatagramServers::processes(datagrams)
        } else {
            DatagramServers::threads(datagrams)
        }
        .map_err(|e| ServeError::failed(format!("cannot start the UDP servers: {e}")))?;
        Ok(Serving::Blocking {
            model,
            listeners,
            options,
            signals,
            udp,
        })
    }

    /// Serves until a graceful shutdown has ended (`Ok`) or the model fails.
    fn run(self, notifier: Arc<Notifier>, watchdog_every: Option<Duration>) -> io::Result<()> {
        match self {
            Serving::Reactor(mut reactor) => {
                reactor.notify_systemd(notifier, watchdog_every);
                reactor.run()
            }
            Serving::Blocking {
                model,
                listeners,
                options,
                signals,
                udp,
            } => {
                let settings = models::Settings {
                    options,
                    notifier,
                    watchdog_every,
                };
                let served = match model {
                    Blocking::Serial => models::serial::run(listeners, settings, signals),
                    Blocking::Threaded => models::threaded::run(listeners, settings, signals),
                    Blocking::Pool { workers } => {
                        models::pool::run(listeners, settings, workers, signals)
                    }
                    Blocking::Forking => models::forking::run(listeners, settings, signals),
                };
                udp.stop();
                served
            }
        }
    }
}

/// `--threads`, or 4 workers per CPU core: enough that a few slow clients do not idle the pool.
fn pool_size(threads: Option<u32>) -> usize {
    threads.map_or_else(
        || std::thread::available_parallelism().map_or(4, |cores| cores.get() * 4),
        |n| n as usize,
    )
}

/// Prints one `listening PROTOCOL TRANSPORT ADDRESS` line per service and flushes: scripts and
/// tests wait for these lines to learn the real ports.
fn announce(lines: &[Listening]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["oneloop", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(args.services.is_empty());
        assert_eq!(args.max_line, 65536);
        assert_eq!(args.output_limit, 1048576);
        assert_eq!(args.model, Model::Reactor);
    }

    #[test]
    fn max_connections_default_leaves_room_for_the_server() {
        assert_eq!(default_max_connections(32), 24);
        assert_eq!(default_max_connections(1024), 960);
        assert_eq!(default_max_connections(20000), 19936);
        assert_eq!(default_max_connections(4), 1);
    }

    #[test]
    fn models_parse() {
        for name in ["reactor", "serial", "threaded", "pool", "forking"] {
            let cli = Cli::try_parse_from(["oneloop", "serve", "--model", name]).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("not serve")
            };
            assert_eq!(args.model.name(), name);
        }
        let err = Cli::try_parse_from(["oneloop", "serve", "--model", "fibers"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["oneloop", "serve", "--threads", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["oneloop", "serve", "bogus"][..],
            &["oneloop", "serve", "--max-line", "0"],
            &["oneloop", "serve", "--output-limit", "lots"],
            &["oneloop", "frobnicate"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn unsupported_services_are_named() {
        let chat: ServiceSpec = "chat@127.0.0.1:0".parse().unwrap();
        assert!(check_supported(&chat, Model::Serial)
            .unwrap_err()
            .contains("chat"));
        for model in [Model::Reactor, Model::Threaded, Model::Pool] {
            assert!(check_supported(&chat, model).is_ok(), "{model:?}");
        }
        assert!(check_supported(&chat, Model::Forking).is_err());
        for served in [
            "echo@127.0.0.1:0",
            "upper@udp:[::1]:0",
            "timestamp@unix:/tmp/t.sock",
        ] {
            let spec: ServiceSpec = served.parse().unwrap();
            assert!(check_supported(&spec, Model::Reactor).is_ok(), "{served}");
        }
        let upload: ServiceSpec = "upload@127.0.0.1:0".parse().unwrap();
        for model in [
            Model::Reactor,
            Model::Serial,
            Model::Threaded,
            Model::Pool,
            Model::Forking,
        ] {
            assert!(check_supported(&upload, model).is_ok(), "{model:?}");
        }
    }
}
