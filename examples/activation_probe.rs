//! Shows what systemd hands this process: the sockets passed by socket activation (checked,
//! named, non-blocking) and the `NOTIFY_SOCKET` notifier; then answers one client on each passed
//! socket with that socket's name, and exits.
//!
//! ```text
//! cargo build --example activation_probe
//! systemd-socket-activate -l 127.0.0.1:9999 -l /tmp/chat.sock --fdname=upper:chat \
//!     target/debug/examples/activation_probe
//! # in another terminal: the first connection starts the probe
//! socat - TCP:127.0.0.1:9999     # prints "upper"
//! socat - UNIX-CONNECT:/tmp/chat.sock  # prints "chat"
//! ```
//!
//! `tests/systemd.rs` runs this same code (it includes the file) under `systemd-socket-activate`.
//! Every line it prints starts with `probe `, so a test can find them among other output.

use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use oneloop::net::systemd::{
    take_activated_sockets, watchdog_interval, ActivatedKind, ActivatedSocket, Notifier,
};

/// How long the probe waits for a client on each passed socket before giving up.
const SERVE_FOR: Duration = Duration::from_secs(10);

#[allow(dead_code)] // The test that includes this file calls `run` itself.
fn main() {
    run();
}

/// Reports, notifies, serves one client per socket, and exits (status 1 if the passed sockets
/// were refused).
pub fn run() {
    let sockets = match take_activated_sockets() {
        Ok(sockets) => sockets,
        Err(e) => {
            println!("probe error: {e}");
            std::process::exit(1);
        }
    };
    println!("probe activated {}", sockets.len());
    for socket in &sockets {
        println!(
            "probe socket fd={} name={} transport={} local={} flags={}",
            socket.fd,
            socket.name,
            socket.local.transport(),
            socket.local,
            descriptor_flags(raw_fd(socket))
        );
    }
    let variable = |name| std::env::var(name).unwrap_or_else(|_| "unset".into());
    println!(
        "probe env LISTEN_PID={} LISTEN_FDS={} LISTEN_FDNAMES={}",
        variable("LISTEN_PID"),
        variable("LISTEN_FDS"),
        variable("LISTEN_FDNAMES")
    );

    let notifier = Notifier::from_env();
    let enabled = if notifier.is_enabled() {
        "enabled"
    } else {
        "disabled"
    };
    println!("probe notify {enabled}");
    println!("probe watchdog {:?}", watchdog_interval());
    notifier.status("probe status\nsecond line");
    notifier.ready();
    notifier.watchdog();
    notifier.stopping();

    serve_one_client_each(sockets);
    println!("probe done");
    let _ = std::io::stdout().flush();
}

fn raw_fd(socket: &ActivatedSocket) -> RawFd {
    match &socket.socket {
        ActivatedKind::Tcp(listener) => listener.as_raw_fd(),
        ActivatedKind::Unix(listener) => listener.as_raw_fd(),
        ActivatedKind::Udp(udp) => udp.as_raw_fd(),
    }
}

/// `nonblocking` and `cloexec` as the kernel reports them in `/proc/self/fdinfo` (octal `flags:`),
/// an outside view of what the module set.
fn descriptor_flags(fd: RawFd) -> String {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|octal| u32::from_str_radix(octal.trim(), 8).ok())
        .unwrap_or(0);
    let mut names = Vec::new();
    if flags & libc::O_NONBLOCK as u32 != 0 {
        names.push("nonblocking");
    }
    if flags & libc::O_CLOEXEC as u32 != 0 {
        names.push("cloexec");
    }
    names.join(",")
}

/// Answers the first client (or datagram) on each socket with the socket's name and a newline.
/// The sockets are non-blocking, so this polls them in turn; a real server registers them with
/// its event loop instead.
fn serve_one_client_each(mut sockets: Vec<ActivatedSocket>) {
    let deadline = Instant::now() + SERVE_FOR;
    while !sockets.is_empty() && Instant::now() < deadline {
        sockets.retain(|socket| {
            let reply = format!("{}\n", socket.name);
            let served = match &socket.socket {
                ActivatedKind::Tcp(listener) => listener
                    .accept()
                    .and_then(|(mut stream, _)| stream.write_all(reply.as_bytes())),
                ActivatedKind::Unix(listener) => listener
                    .accept()
                    .and_then(|(mut stream, _)| stream.write_all(reply.as_bytes())),
                ActivatedKind::Udp(udp) => {
                    let mut buffer = [0u8; 2048];
                    udp.recv_from(&mut buffer)
                        .and_then(|(_, from)| udp.send_to(reply.as_bytes(), from).map(drop))
                }
            };
            match served {
                Ok(()) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                Err(e) => {
                    println!("probe serve error on fd {}: {e}", socket.fd);
                    false
                }
            }
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}
