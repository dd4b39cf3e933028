//! UDP under the blocking models: one thread per UDP service, blocked in `recv_from`.
//!
//! A datagram service has no connections to spread over threads or processes, so every blocking
//! model serves it the same way — the way the seeds' `udp_server.py` does: one loop of
//! `recv_from`, answer, `send_to`. The rules are the reactor's (see `reactor::datagram`): an
//! oversize datagram is dropped, a source port below 1024 gets no reply, and a reply the socket
//! will not take at once is dropped (`MSG_DONTWAIT`), never waited for.
//!
//! To stop, the thread is woken the classic way: a flag is set and an empty datagram is sent to
//! the socket, so the blocked `recv_from` returns and the thread sees the flag.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, info};

use std::os::fd::AsFd;

use log::warn;

use super::Model;
use crate::clock::Clock;
use crate::net::datagram::DatagramStats;
use crate::net::BoundDatagram;
use crate::protocol::datagram::{reply, MAX_DATAGRAM_PAYLOAD};
use crate::sys::{self, Forked};

/// The UDP services of a blocking model, and how they end.
///
/// Threads for serial, threaded and pool. The forking model cannot have a thread — it forks, and
/// a fork with a second thread running could copy a lock that thread holds — so there each UDP
/// service is a child process of its own (the forking model's unit of work), started now, while
/// the parent is still single-threaded. The child stops like the model's other children: SIGINT
/// or SIGTERM runs its own small handler (the stop flag, and `shutdown(SHUT_RD)` on its socket,
/// which wakes the blocked `recv_from`); and the kernel sends it SIGTERM when the parent exits,
/// so it never outlives the server.
#[derive(Debug)]
pub enum DatagramServers {
    /// One thread per UDP service.
    Threads(DatagramThreads),
    /// One child process per UDP service (the forking model); they end with the parent.
    Processes,
}

impl DatagramServers {
    /// Starts serving `datagrams` the way `model` serves.
    pub fn start(datagrams: Vec<BoundDatagram>, model: Model) -> io::Result<DatagramServers> {
        if model != Model::Forking {
            return DatagramThreads::start(datagrams).map(DatagramServers::Threads);
        }
        let parent = std::process::id();
        for bound in datagrams {
            let blocked = sys::block_stop_signals()?;
            match sys::fork_single_threaded()? {
                Forked::Child => {
                    // Until `stop_gracefully_on_signal`, a stop signal would run the parent's
                    // handler: they stay blocked until then.
                    let serve_here = || -> io::Result<DatagramStats> {
                        let stop = sys::stop_gracefully_on_signal(bound.socket.as_fd())?;
                        sys::signal_on_parent_exit(libc::SIGTERM, parent)?;
                        drop(blocked);
                        bound.socket.set_nonblocking(false)?;
                        Ok(serve(bound, stop))
                    };
                    match serve_here() {
                        Ok(stats) => info!("udp: closed; {stats}"),
                        Err(e) => warn!("udp: the serving process failed: {e}"),
                    }
                    sys::exit_child(0);
                }
                Forked::Parent { child } => {
                    debug!("udp {}: served by process {child}", bound.local);
                    // The parent's copy of the socket closes here; the child's serves.
                }
            }
        }
        Ok(DatagramServers::Processes)
    }

    /// Stops the threads (each finishes the datagram in hand) and logs what each did. UDP child
    /// processes stop on their own (see the type's documentation).
    pub fn stop(self) {
        if let DatagramServers::Threads(threads) = self {
            threads.stop();
        }
    }
}

/// The threads serving the UDP services, and how to stop them.
#[derive(Debug, Default)]
pub struct DatagramThreads {
    threads: Vec<(JoinHandle<DatagramStats>, SocketAddr)>,
    stop: Arc<AtomicBool>,
}

impl DatagramThreads {
    /// Starts one thread per UDP service.
    pub fn start(datagrams: Vec<BoundDatagram>) -> io::Result<DatagramThreads> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(datagrams.len());
        for bound in datagrams {
            bound.socket.set_nonblocking(false)?;
            let stop = Arc::clone(&stop);
            let local = bound.local;
            let handle = thread::Builder::new()
                .name(format!("udp {local}"))
                .spawn(move || serve(bound, &stop))?;
            threads.push((handle, local));
        }
        Ok(DatagramThreads { threads, stop })
    }

    /// Stops every thread (each finishes the datagram in hand) and logs what each did.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, local) in &self.threads {
            wake(*local);
        }
        for (handle, local) in self.threads {
            if let Ok(stats) = handle.join() {
                info!("udp {local}: closed; {stats}");
            }
        }
    }
}

/// Sends an empty datagram to `local` so that a thread blocked in `recv_from` there wakes up.
fn wake(local: SocketAddr) {
    let target = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    };
    let from: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Err(e) = UdpSocket::bind(from).and_then(|s| s.send_to(&[], target)) {
        debug!("udp {local}: cannot wake its thread: {e}");
    }
}

/// One UDP service's loop: receive, answer, repeat, until `stop`.
fn serve(bound: BoundDatagram, stop: &AtomicBool) -> DatagramStats {
    let BoundDatagram {
        socket,
        protocol,
        local,
    } = bound;
    let mut stats = DatagramStats::default();
    let mut clock = Clock::default();
    // One byte more than the largest answered datagram, so an oversize one shows as oversize.
    let mut input = vec![0u8; MAX_DATAGRAM_PAYLOAD + 1];
    let mut output = Vec::with_capacity(MAX_DATAGRAM_PAYLOAD + 64);
    loop {
        let received = socket.recv_from(&mut input);
        if stop.load(Ordering::SeqCst) {
            return stats;
        }
        let (length, from) = match received {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("udp {local}: receive error: {e}");
                continue;
            }
        };
        if !stats.admit(length, from) {
            continue;
        }
        output.clear();
        if reply(protocol, &input[..length], &clock.now(), &mut output).is_none() {
            continue;
        }
        // MSG_DONTWAIT: a blocking socket, but this one send must not wait for buffer space.
        let sent = socket2::SockRef::from(&socket).send_to_with_flags(
            &output,
            &from.into(),
            libc::MSG_DONTWAIT,
        );
        stats.sent(sent, from);
    }
}
