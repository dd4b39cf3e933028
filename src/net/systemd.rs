//! systemd's side of running as a service: sockets passed in by socket activation, and the
//! readiness, status, stopping and watchdog notifications of `Type=notify`.
//!
//! Both protocols are small and stable (systemd documents them as interfaces other programs may
//! implement without `libsystemd`), so they are written here rather than taken from a crate: see
//! the note in `Cargo.toml`.
//!
//! # Socket activation
//!
//! systemd (or `systemd-socket-activate`, or any supervisor that speaks the protocol) binds the
//! sockets itself and starts the server with them already open as descriptors 3, 4, ...:
//!
//! * `LISTEN_PID` — the process the descriptors are meant for. Anything else is not ours: a
//!   program started *by* the service inherits the variables but not the right to the sockets.
//! * `LISTEN_FDS` — how many descriptors were passed.
//! * `LISTEN_FDNAMES` — their names, colon-separated (each socket unit's `FileDescriptorName=`,
//!   which names *every* socket of that unit); when unset, every name is `unknown`, as
//!   `sd_listen_fds_with_names` reports.
//!
//! [`take_activated_sockets`] reads the three variables, **removes them from the environment**
//! (as `sd_listen_fds(1)` does: a child process must not think the descriptors are its own, and a
//! second call must find nothing to take), checks each descriptor's family and type, makes it
//! non-blocking and close-on-exec, and returns the list. Without the variables it returns an empty
//! list and changes nothing.
//!
//! This module only hands the descriptors over, each with what it is ([`ActivatedKind`]) and
//! where it is bound; turning one into a service is the listener's job
//! ([`Bound::add_passed`](super::Bound::add_passed)), as binding one is. An activated Unix
//! socket's file belongs to systemd, which created it and will recreate it: it never gets a
//! [`SocketFile`](super::unix::SocketFile), so it is never unlinked.
//!
//! # Notifications
//!
//! With `Type=notify`, systemd passes `NOTIFY_SOCKET`, a Unix datagram socket address (a path, or
//! `@name` in the abstract namespace), and waits for `READY=1` before it counts the service as
//! started. [`Notifier`] sends those datagrams; with `WatchdogSec=` set, systemd also passes
//! `WATCHDOG_USEC`, and restarts the service unless `WATCHDOG=1` arrives within each period —
//! [`watchdog_interval`] is how often to send it. A notifier never blocks its caller: it sends
//! without waiting, and a failure is logged once and otherwise ignored (a server must not stop
//! serving because its supervisor is slow to read).

use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};
use socket2::{Domain, Socket, Type};

use crate::service::Address;

/// The socket-activation variables, removed from the environment once read.
const LISTEN_VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The name `sd_listen_fds_with_names` reports for a descriptor when `LISTEN_FDNAMES` is unset.
pub(crate) const UNKNOWN_NAME: &str = "unknown";

/// A socket systemd passed in, checked and ready to serve.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The descriptor number it was passed as (3 for the first), for messages and for
    /// `fd:NUMBER`.
    pub fd: RawFd,
    /// Its name from `LISTEN_FDNAMES` (the unit's `FileDescriptorName=`), or [`UNKNOWN_NAME`].
    /// Several sockets may share a name: it names a socket unit, not one socket.
    pub name: String,
    /// The socket itself, non-blocking and close-on-exec.
    pub socket: ActivatedKind,
    /// The address it is bound to, as the `listening` line prints it. An abstract Unix socket is
    /// shown as `@name` and an unnamed one as `(unnamed)`: neither is a file.
    pub local: Address,
}

/// The kinds of passed socket oneloop can serve.
#[derive(Debug)]
pub enum ActivatedKind {
    /// A listening TCP socket (IPv4 or IPv6), systemd's `ListenStream=PORT` or `ADDRESS:PORT`.
    Tcp(TcpListener),
    /// A listening Unix stream socket, `ListenStream=/path` or `ListenStream=@abstract`.
    Unix(UnixListener),
    /// A UDP socket, `ListenDatagram=PORT`.
    Udp(UdpSocket),
}

impl ActivatedSocket {
    /// Whether `fd:NAME` selects this socket: NAME is its name, or its descriptor number.
    pub fn matches(&self, name: &str) -> bool {
        self.name == name || name.parse::<RawFd>() == Ok(self.fd)
    }
}

/// Removes and returns every socket in `sockets` that `fd:NAME` selects (see
/// [`ActivatedSocket::matches`]), in the order they were passed: one name may cover several
/// sockets (a unit listening on IPv4 and IPv6, or on TCP and UDP).
pub fn take_matching(sockets: &mut Vec<ActivatedSocket>, name: &str) -> Vec<ActivatedSocket> {
    let (matching, rest) = std::mem::take(sockets)
        .into_iter()
        .partition(|socket| socket.matches(name));
    *sockets = rest;
    matching
}

/// Why the passed sockets cannot be used.
#[derive(Debug)]
pub enum ActivationError {
    /// A socket-activation variable is malformed.
    Environment {
        /// The variable (`LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`).
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One passed descriptor is not a socket oneloop can serve.
    Descriptor {
        /// Its number.
        fd: RawFd,
        /// Its name from `LISTEN_FDNAMES`.
        name: String,
        /// What it is, and why that cannot be served.
        reason: String,
    },
}

impl fmt::Display for ActivationError {
    /// `passed socket fd 4 ("chat"): a Unix datagram socket; oneloop serves Unix stream sockets only`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::Environment {
                variable,
                value,
                reason,
            } => write!(f, "socket activation: {variable}={value:?}: {reason}"),
            ActivationError::Descriptor { fd, name, reason } => {
                write!(f, "passed socket fd {fd} ({name:?}): {reason}")
            }
        }
    }
}

impl std::error::Error for ActivationError {}

/// A descriptor the environment says was passed, before it is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Passed {
    fd: RawFd,
    name: String,
}

/// Takes the sockets systemd passed to this process (see the module documentation).
///
/// Returns an empty list when the variables are unset or name another process. The variables
/// are removed either way. Call it once, at start, while the process has one thread: changing the
/// environment while another thread reads it is a data race in the C library (`serve` binds
/// before it starts any thread).
///
/// Fails on the first descriptor that cannot be served (not open, not a socket, a connected
/// stream socket from `Accept=yes`, a Unix datagram socket, another family or type), naming its
/// number and name; the descriptors already taken are closed.
pub fn take_activated_sockets() -> Result<Vec<ActivatedSocket>, ActivationError> {
    let [pid, fds, names] = LISTEN_VARIABLES.map(env::var_os);
    for variable in LISTEN_VARIABLES {
        env::remove_var(variable);
    }
    let text = |value: &Option<std::ffi::OsString>| {
        value
            .as_deref()
            .map(|value| value.to_string_lossy().into_owned())
    };
    let Some(passed) = parse_listen_environment(
        text(&pid).as_deref(),
        text(&fds).as_deref(),
        text(&names).as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    let owned = crate::sys::take_listen_fds(passed.len());
    let mut sockets = Vec::with_capacity(passed.len());
    for (Passed { fd, name }, (_, taken)) in passed.into_iter().zip(owned) {
        let checked = taken
            .map_err(|e| describe_unusable(&e))
            .and_then(|owned| classify(Socket::from(owned)));
        match checked {
            Ok((socket, local)) => {
                info!("socket activation: fd {fd} ({name:?}) is {local}");
                sockets.push(ActivatedSocket {
                    fd,
                    name,
                    socket,
                    local,
                });
            }
            Err(reason) => return Err(ActivationError::Descriptor { fd, name, reason }),
        }
    }
    Ok(sockets)
}

/// Reads the three variables' values: `None` when this process was not socket-activated, else
/// the descriptors and their names.
/// The most descriptors accepted from `LISTEN_FDS`.
const MAX_LISTEN_FDS: usize = 65_536;

fn parse_listen_environment(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<Passed>>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let bad = |variable, value: &str, reason: &str| ActivationError::Environment {
        variable,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let listen_pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_PID", pid, "not a process id"))?;
    if listen_pid != our_pid {
        // Inherited from a parent that was activated: the descriptors (if still open) are the
        // parent's, not ours.
        debug!(
            "socket activation: LISTEN_PID={listen_pid} is not this process ({our_pid}); ignored"
        );
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "not a number of descriptors"))?;
    // No service has this many sockets; a number past it is garbage, and would otherwise cost
    // one name string and one system call per "descriptor" before failing.
    if count > MAX_LISTEN_FDS {
        return Err(bad(
            "LISTEN_FDS",
            fds,
            "more descriptors than a service is passed (at most 65,536)",
        ));
    }
    let names: Vec<String> = match names {
        None => vec![UNKNOWN_NAME.to_owned(); count],
        Some(list) => {
            let names: Vec<String> = if count == 0 && list.is_empty() {
                Vec::new()
            } else {
                list.split(':').map(str::to_owned).collect()
            };
            if names.len() != count {
                return Err(bad(
                    "LISTEN_FDNAMES",
                    list,
                    &format!("{} names for LISTEN_FDS={count} descriptors", names.len()),
                ));
            }
            names
        }
    };
    Ok(Some(
        names
            .into_iter()
            .zip(crate::sys::LISTEN_FDS_START..)
            .map(|(name, fd)| Passed { fd, name })
            .collect(),
    ))
}

/// Why a descriptor could not be taken or inspected, in words.
fn describe_unusable(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EBADF) => "not an open descriptor".to_owned(),
        Some(libc::ENOTSOCK) => {
            "not a socket (ListenFIFO=, ListenSpecial= and the like are not served)".to_owned()
        }
        _ => crate::sys::os_reason(error),
    }
}

/// Checks that a passed descriptor is a socket oneloop can serve, and makes it one: non-blocking
/// (systemd passes sockets blocking, and one blocking `accept` would stall the whole loop) and
/// close-on-exec (already set by `sys::take_listen_fds`; set again here so the promise does not
/// depend on the caller).
fn classify(socket: Socket) -> Result<(ActivatedKind, Address), String> {
    let reason = |e: io::Error| describe_unusable(&e);
    // SO_TYPE first: on a descriptor that is not a socket it fails with ENOTSOCK.
    let kind = socket.r#type().map_err(reason)?;
    let domain = socket.domain().map_err(reason)?;
    let ip = domain == Domain::IPV4 || domain == Domain::IPV6;
    let listening = || socket.is_listener().map_err(reason);
    let not_listening = "a connected stream socket, not a listening one (a unit with Accept=yes \
                         passes one connection per process; oneloop accepts connections itself, \
                         so its socket units need Accept=no)";
    match (ip, domain, kind) {
        (true, _, Type::STREAM) if !listening()? => Err(not_listening.to_owned()),
        (_, Domain::UNIX, Type::STREAM) if !listening()? => Err(not_listening.to_owned()),
        (true, _, Type::DGRAM) if socket.peer_addr().is_ok() => Err(
            "a connected UDP socket: it can only talk to one peer, and oneloop answers every \
             sender"
                .to_owned(),
        ),
        (_, Domain::UNIX, Type::DGRAM) => Err(
            "a Unix datagram socket; oneloop serves Unix stream sockets only (ListenStream=, not \
             ListenDatagram=, for a path)"
                .to_owned(),
        ),
        (true, _, Type::STREAM) => {
            prepare(&socket).map_err(reason)?;
            let listener: TcpListener = socket.into();
            let local = listener.local_addr().map_err(reason)?;
            Ok((ActivatedKind::Tcp(listener), Address::Tcp(local)))
        }
        (true, _, Type::DGRAM) => {
            prepare(&socket).map_err(reason)?;
            let udp: UdpSocket = socket.into();
            // A socket systemd bound to a wildcard address answers from each request's
            // destination, as one oneloop binds itself does.
            super::datagram::answer_from_destination(&udp).map_err(reason)?;
            let local = udp.local_addr().map_err(reason)?;
            Ok((ActivatedKind::Udp(udp), Address::Udp(local)))
        }
        (_, Domain::UNIX, Type::STREAM) => {
            prepare(&socket).map_err(reason)?;
            let listener: UnixListener = socket.into();
            let local = listener.local_addr().map_err(reason)?;
            Ok((
                ActivatedKind::Unix(listener),
                Address::Unix(unix_path(&local)),
            ))
        }
        (_, domain, kind) => Err(format!(
            "a {kind:?} socket of family {domain:?}; oneloop serves TCP, UDP and Unix stream \
             sockets"
        )),
    }
}

/// Makes a passed socket non-blocking and close-on-exec.
fn prepare(socket: &Socket) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)
}

/// A Unix socket's address as a path for [`Address::Unix`]: the file's path, `@name` for the
/// abstract namespace (systemd's own spelling), `(unnamed)` for a socket bound to nothing.
fn unix_path(address: &UnixSocketAddr) -> PathBuf {
    if let Some(path) = address.as_pathname() {
        return path.to_path_buf();
    }
    match address.as_abstract_name() {
        Some(name) => {
            let mut text = std::ffi::OsString::from("@");
            text.push(OsStr::from_bytes(name));
            PathBuf::from(text)
        }
        None => PathBuf::from("(unnamed)"),
    }
}

/// Sends systemd's `sd_notify` messages to `NOTIFY_SOCKET`, or does nothing when there is none.
///
/// ```
/// use oneloop::net::systemd::Notifier;
///
/// // Outside systemd there is no NOTIFY_SOCKET: every call is a no-op.
/// let notifier = Notifier::disabled();
/// notifier.ready();
/// notifier.status("3 connections");
/// assert!(!notifier.is_enabled());
/// ```
#[derive(Debug)]
pub struct Notifier {
    /// Where messages go, and the socket they leave from; `None` outside `Type=notify`.
    target: Option<Target>,
    /// Whether a failed send has been logged: the first failure is worth a warning, repeating it
    /// at every watchdog tick would flood the journal.
    failure_logged: AtomicBool,
}

/// An enabled [`Notifier`]'s socket and destination.
#[derive(Debug)]
struct Target {
    /// An unbound, non-blocking Unix datagram socket.
    socket: UnixDatagram,
    /// `NOTIFY_SOCKET`'s address.
    address: UnixSocketAddr,
    /// `NOTIFY_SOCKET` as given, for messages.
    shown: String,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; a no-op notifier when it is unset, or when it is
    /// unusable (that is logged as a warning: systemd would then wait for `READY=1` in vain and
    /// time the start out, and the log line says why).
    ///
    /// The variable is left in the environment: changing the environment is unsafe once threads
    /// run, and a program this process starts cannot pose as it anyway, since a `Type=notify`
    /// unit accepts messages from its main process only (`NotifyAccess=main`).
    pub fn from_env() -> Notifier {
        match env::var_os("NOTIFY_SOCKET") {
            None => Notifier::disabled(),
            Some(value) => Notifier::to(&value).unwrap_or_else(|e| {
                warn!("NOTIFY_SOCKET={value:?} cannot be used ({e}); systemd will not be notified");
                Notifier::disabled()
            }),
        }
    }

    /// A notifier that sends to `address`: an absolute path, or `@name` for the Linux abstract
    /// namespace (as `NOTIFY_SOCKET` spells them).
    pub fn to(address: &OsStr) -> io::Result<Notifier> {
        let bytes = address.as_bytes();
        let target = match bytes.first() {
            Some(b'@') => UnixSocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => UnixSocketAddr::from_pathname(address)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path or an @abstract name",
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        // Never wait for systemd: a full queue on its side means a dropped message, not a stuck
        // loop.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                address: target,
                shown: address.to_string_lossy().into_owned(),
            }),
            failure_logged: AtomicBool::new(false),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            failure_logged: AtomicBool::new(false),
        }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: every service is listening; systemd counts the unit as started.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STOPPING=1`: a graceful shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`: the loop is still turning. Send it every [`watchdog_interval`].
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STATUS=TEXT`: one line for `systemctl status`. Line breaks in `text` become spaces,
    /// since each line of a message is a separate `VARIABLE=value` assignment.
    pub fn status(&self, text: &str) {
        if self.is_enabled() {
            self.send(&format!("STATUS={}", text.replace(['\n', '\r'], " ")));
        }
    }

    /// Sends one message (newline-separated `VARIABLE=value` assignments) as one datagram,
    /// without waiting. A failure is logged once, at warn, and later ones at debug.
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = target
            .socket
            .send_to_addr(message.as_bytes(), &target.address)
        {
            if self.failure_logged.swap(true, Ordering::Relaxed) {
                debug!("NOTIFY_SOCKET={}: {message:?} not sent: {e}", target.shown);
            } else {
                warn!(
                    "NOTIFY_SOCKET={}: {message:?} not sent: {e} (later failures are logged at \
                     debug level)",
                    target.shown
                );
            }
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, so that one late turn does not miss
/// the period. `None` when the watchdog is off: `WATCHDOG_USEC` unset, zero or malformed, or
/// `WATCHDOG_PID` set and naming another process (a child that inherited the variables).
pub fn watchdog_interval() -> Option<Duration> {
    let read = |variable| env::var(variable).ok();
    parse_watchdog(
        read("WATCHDOG_USEC").as_deref(),
        read("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the variables' values.
fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(list: &[(RawFd, &str)]) -> Option<Vec<Passed>> {
        Some(
            list.iter()
                .map(|&(fd, name)| Passed {
                    fd,
                    name: name.to_owned(),
                })
                .collect(),
        )
    }

    #[test]
    fn listen_environment_names_descriptors_from_three() {
        let parsed = parse_listen_environment(Some("42"), Some("3"), Some("upper:chat:echo"), 42);
        assert_eq!(
            parsed.unwrap(),
            passed(&[(3, "upper"), (4, "chat"), (5, "echo")])
        );
        let unnamed = parse_listen_environment(Some("42"), Some("2"), None, 42).unwrap();
        assert_eq!(unnamed, passed(&[(3, UNKNOWN_NAME), (4, UNKNOWN_NAME)]));
        let none = parse_listen_environment(Some("42"), Some("0"), Some(""), 42).unwrap();
        assert_eq!(none, passed(&[]));
    }

    #[test]
    fn listen_environment_for_another_process_or_absent_is_ignored() {
        assert_eq!(
            parse_listen_environment(Some("41"), Some("1"), Some("x"), 42).unwrap(),
            None
        );
        assert_eq!(
            parse_listen_environment(None, Some("1"), None, 42).unwrap(),
            None
        );
        assert_eq!(
            parse_listen_environment(Some("42"), None, None, 42).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_listen_environment_is_refused_naming_the_variable() {
        for (pid, fds, names, needle) in [
            ("x", "1", None, "LISTEN_PID"),
            ("42", "one", None, "LISTEN_FDS"),
            ("42", "-1", None, "LISTEN_FDS"),
            ("42", "99999999999", None, "LISTEN_FDS"),
            ("42", "2", Some("upper"), "1 names for LISTEN_FDS=2"),
            ("42", "1", Some("a:b"), "2 names"),
        ] {
            let error = parse_listen_environment(Some(pid), Some(fds), names, 42).unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_period_for_this_process_only() {
        let half = Some(Duration::from_millis(1500));
        assert_eq!(parse_watchdog(Some("3000000"), None, 7), half);
        assert_eq!(parse_watchdog(Some("3000000"), Some("7"), 7), half);
        assert_eq!(parse_watchdog(Some("3000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("3000000"), Some("x"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
    }

    #[test]
    fn a_relative_notify_socket_is_refused() {
        assert!(Notifier::to(OsStr::new("run/notify")).is_err());
        assert!(Notifier::to(OsStr::new("")).is_err());
    }
}
