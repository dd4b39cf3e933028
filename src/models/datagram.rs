//! UDP under the blocking models: one server per UDP service, blocked in `recvmsg`.
//!
//! A datagram service has no connections to spread over threads or processes, so every blocking
//! model serves it the same way — the way the seeds' `udp_server.py` does: one loop of
//! receive, answer, send. The rules are the reactor's (see `reactor::datagram`): an oversize
//! datagram is dropped, a source port below 1024 gets no reply, a reply leaves from the address
//! its request was sent to (`recvmsg`/`sendmsg`, see `net::datagram`), one that would not fit a
//! datagram is `error reply too large`, and a reply the socket will not take at once is dropped
//! (`MSG_DONTWAIT`), never waited for.
//!
//! The server is a thread under serial, threaded and pool. The forking model cannot have a
//! thread — it forks, and a fork with a second thread running could copy a lock that thread
//! holds — so there each UDP service is a child process of its own (the forking model's unit of
//! work), forked at start while the parent is still single-threaded.
//!
//! **Stopping.** Like the reactor's UDP sockets, these stop at the first SIGINT or SIGTERM, not
//! after the stream connections have drained: a stop flag is set and the socket's reading side is
//! shut down, which wakes a `recvmsg` blocked on it (Linux wakes the readers of an unconnected
//! UDP socket on `shutdown`). The wake-up is an empty result with no sender address — std's
//! `recv_from` panics on it — which the loop takes for what it is, not for a datagram. A thread's socket is shut down by an action added to the signals
//! (async-signal-safe: an atomic store and a system call); a UDP child does the same from its own
//! handler, on the SIGTERM its parent forwards to it, and the kernel also sends it SIGTERM when the
//! parent exits, so it never outlives the server.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, info, warn};

use crate::clock::Clock;
use crate::net::datagram::{answer, receive, DatagramStats};
use crate::net::BoundDatagram;
use crate::protocol::datagram::{reply, Reply, MAX_DATAGRAM_PAYLOAD};
use crate::sys::{self, ChildHandle, Forked};

/// The UDP services of a blocking model, already serving.
#[derive(Debug)]
pub(crate) struct DatagramServers {
    kind: Servers,
    /// The signal actions that stop them at the first signal (removed by [`Self::stop`]).
    signal_actions: Vec<signal_hook::SigId>,
}

#[derive(Debug)]
enum Servers {
    /// A thread per service, with a second handle on its socket (to shut it down) and its name.
    Threads {
        threads: Vec<(JoinHandle<()>, std::net::UdpSocket, String)>,
        stopping: Arc<AtomicBool>,
    },
    /// A child process per service (the forking model); the handles stay open for as long as
    /// the signal action that names them is registered.
    Processes { children: Vec<ChildHandle> },
}

impl DatagramServers {
    /// Starts serving `datagrams` on a thread each: the way serial, threaded and pool serve.
    pub(crate) fn threads(datagrams: Vec<BoundDatagram>) -> io::Result<DatagramServers> {
        let stopping = Arc::new(AtomicBool::new(false));
        // The stop action is in place before any thread serves: no signal slips in between.
        let handles = datagrams
            .iter()
            .map(|bound| bound.socket.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        let sockets = handles.iter().map(|s| s.as_raw_fd()).collect();
        let signal_actions =
            sys::shut_down_reading_on_stop_signals(sockets, Arc::clone(&stopping))?;
        let mut threads = Vec::with_capacity(datagrams.len());
        let mut servers = DatagramServers {
            kind: Servers::Threads {
                threads: Vec::new(),
                stopping: Arc::clone(&stopping),
            },
            signal_actions,
        };
        for (bound, handle) in datagrams.into_iter().zip(handles) {
            bound.socket.set_nonblocking(false)?;
            let name = format!("udp {}", bound.local);
            let flag = Arc::clone(&stopping);
            let thread = thread::Builder::new().name(name.clone()).spawn(move || {
                let local = bound.local;
                let stats = serve(bound, &flag);
                info!("udp {local}: closed; {stats}");
            })?;
            threads.push((thread, handle, name));
        }
        servers.kind = Servers::Threads { threads, stopping };
        Ok(servers)
    }

    /// Starts serving `datagrams` in a child process each: the forking model's way, which must
    /// not start a thread.
    pub(crate) fn processes(datagrams: Vec<BoundDatagram>) -> io::Result<DatagramServers> {
        let parent = std::process::id();
        let mut children = Vec::with_capacity(datagrams.len());
        // Stop signals stay blocked from the first fork until the forwarding action is in place:
        // one that comes meanwhile is delivered then, and forwarded. Each child inherits them
        // blocked, and unblocks them once its own handler is in place (until then it would run
        // the parent's, which writes to the parent's pipe).
        let blocked = sys::block_stop_signals()?;
        for bound in datagrams {
            match sys::fork_single_threaded()? {
                Forked::Child => serve_in_child(bound, parent),
                Forked::Parent { child } => {
                    debug!("udp {}: served by process {child}", bound.local);
                    match ChildHandle::open(child) {
                        Ok(handle) => children.push(handle),
                        // Before Linux 5.3, or under a seccomp profile that refuses pidfd_open:
                        // no forwarding; the child still stops when this process exits.
                        Err(e) => warn!("udp {}: cannot watch process {child}: {e}", bound.local),
                    }
                    // The parent's copy of the socket closes here; the child's serves.
                }
            }
        }
        let signal_actions = sys::forward_stop_signals(&children)?;
        drop(blocked);
        Ok(DatagramServers {
            kind: Servers::Processes { children },
            signal_actions,
        })
    }

    /// Stops the UDP servers, if a signal has not already, and waits for the threads (each
    /// finishes the datagram in hand) and logs what each did. UDP child processes end on the
    /// forwarded signal, or when this process exits.
    pub(crate) fn stop(mut self) {
        sys::forget_signal_actions(std::mem::take(&mut self.signal_actions));
        let kind = std::mem::replace(
            &mut self.kind,
            Servers::Processes {
                children: Vec::new(),
            },
        );
        let (threads, stopping) = match kind {
            Servers::Threads { threads, stopping } => (threads, stopping),
            Servers::Processes { children } => return drop(children),
        };
        stopping.store(true, Ordering::SeqCst);
        for (_, socket, _) in &threads {
            // Unconnected UDP: Linux reports ENOTCONN but wakes the reader all the same.
            let _ = socket2::SockRef::from(socket).shutdown(Shutdown::Read);
        }
        for (thread, _, name) in threads {
            if thread.join().is_err() {
                warn!("{name}: the serving thread panicked");
            }
        }
    }
}

impl Drop for DatagramServers {
    /// Without [`DatagramServers::stop`] (a panic unwinding past it), the signal actions are
    /// removed before the descriptors they name are closed and their numbers reused.
    fn drop(&mut self) {
        sys::forget_signal_actions(std::mem::take(&mut self.signal_actions));
    }
}

/// The forking model's UDP child: serves `bound` until a stop signal or its parent's exit, then
/// exits. Never returns.
fn serve_in_child(bound: BoundDatagram, parent: u32) -> ! {
    // Until its own handler is in place the child runs the parent's: if it cannot be installed,
    // leave without ever unblocking the stop signals.
    let stopping = match sys::stop_gracefully_on_signal(bound.socket.as_fd()) {
        Ok(stopping) => stopping,
        Err(e) => {
            warn!("udp {}: cannot install the stop handler: {e}", bound.local);
            sys::exit_child(1);
        }
    };
    // Nothing of the parent's stays open here: a listener held by this child would keep taking
    // connections after the parent closed its own. Best effort: serving goes on if it fails.
    if let Err(e) = sys::close_descriptors_except(&[bound.socket.as_raw_fd()]) {
        warn!(
            "udp {}: cannot close inherited descriptors: {e}",
            bound.local
        );
    }
    if let Err(e) = sys::signal_on_parent_exit(libc::SIGTERM, parent) {
        warn!("udp {}: cannot follow the parent's exit: {e}", bound.local);
    }
    if let Err(e) = sys::unblock_stop_signals() {
        warn!("udp {}: cannot unblock stop signals: {e}", bound.local);
        sys::exit_child(1);
    }
    if let Err(e) = bound.socket.set_nonblocking(false) {
        warn!("udp {}: {e}", bound.local);
        sys::exit_child(1);
    }
    let local = bound.local;
    let stats = serve(bound, stopping);
    info!("udp {local}: closed; {stats}");
    sys::exit_child(0);
}

/// One UDP service's loop: receive, answer, repeat, until `stopping`.
fn serve(bound: BoundDatagram, stopping: &AtomicBool) -> DatagramStats {
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
    let service = format_args!("{protocol} on udp {local}");
    loop {
        let received = receive(&socket, &mut input, 0);
        if stopping.load(Ordering::SeqCst) {
            return stats;
        }
        let request = match received {
            Ok(Some(request)) => request,
            // No sender: the wake-up of a shut-down reading side, before the flag is seen (the
            // flag is set first, so only a shutdown from outside gives this). No datagram.
            Ok(None) => {
                debug!("{service}: woken with no datagram (reading side shut down)");
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("{service}: receive error: {e}");
                continue;
            }
        };
        let (length, from) = (request.length, request.from);
        if !stats.admit(&service, length, from) {
            continue;
        }
        output.clear();
        match reply(protocol, &input[..length], &clock.now(), &mut output) {
            Some(Reply::Answer) => {}
            Some(Reply::TooLarge) => debug!(
                "{service}: the reply to {length} bytes from {from} would not fit one datagram; \
                 it gets `error reply too large`"
            ),
            None => continue,
        }
        // MSG_DONTWAIT: a blocking socket, but this one send must not wait for buffer space.
        let sent = answer(&socket, &output, &request, libc::MSG_DONTWAIT);
        stats.sent(&service, sent, from);
    }
}
