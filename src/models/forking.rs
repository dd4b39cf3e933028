//! `forking`: a process per connection — Python's `ForkingMixIn`.
//!
//! After `accept`, the server forks; the child serves the one client and exits, the parent goes
//! back to `accept`. Clients are isolated from one another (a crash takes down one process), at
//! the price of a `fork` per connection and a whole process per waiting client.
//!
//! A child stores its connection's uploads itself, through the upload directory's descriptor it
//! inherited with the [`ServeOptions`] (the `UploadDir`, opened by the parent at start): the child
//! closes none of what it inherits but the listeners and the signal pipe, so that descriptor stays
//! open, and a file the child is writing when it dies is a leftover the next start removes.
//!
//! The parent never starts a thread ([`fork_single_threaded`] checks). It watches SIGCHLD through
//! the same signal pipe as SIGINT and SIGTERM, and collects each exited child when told, so none
//! lingers as a zombie (`ForkingMixIn`'s `collect_children`, without the polling).
//!
//! ## Shutdown
//!
//! A child is a process of its own: the parent's signal pipe and memory are not its business.
//! Right after the fork it drops what it inherited of the parent's signal handling and installs
//! a handler of its own ([`stop_gracefully_on_signal`]) that stops reading its connection, as
//! [`super::Admission::stop`] does for a thread; stop signals are blocked across the fork so that
//! none can reach the child in between. At SIGINT or SIGTERM the parent closes its listeners and
//! sends SIGTERM to every child (a terminal's Ctrl-C reaches the children too, which changes
//! nothing: the child's handler only sets a flag and shuts down a socket's reading side, twice
//! as well as once). Then it collects children as they finish, and when the last one is gone, or
//! at `--shutdown-timeout`, or at a second signal, it kills those left (SIGKILL) and returns.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use signal_hook::consts::{SIGCHLD, SIGKILL, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::net::BoundListener;
use crate::options::ServeOptions;
use crate::sys::{
    block_stop_signals, exit_child, fork_single_threaded, reap_exited_children, send_signal,
    stop_gracefully_on_signal, Forked,
};

use super::{refuse, serve_blocking, Accepted, Acceptor, Next, Settings};

/// How long the parent waits, at the end of a shutdown, for the children it has just killed.
pub(crate) const KILLED_CHILDREN_WAIT: Duration = Duration::from_secs(1);

/// Serves every connection in a child process until SIGINT or SIGTERM. `--max-connections`
/// counts the live children.
pub(crate) fn run(
    listeners: Vec<BoundListener>,
    settings: Settings,
    signals: Signals,
) -> io::Result<()> {
    signals.add_signal(SIGCHLD)?;
    let (mut acceptor, options) = settings.into_acceptor(listeners, signals)?;
    let mut children = Children::default();
    loop {
        match acceptor.accept_next(None)? {
            Next::Accepted(mut accepted) => {
                if children.count() >= options.max_connections {
                    children.reap(); // A child may have exited since the last SIGCHLD.
                    if children.count() >= options.max_connections {
                        refuse(&mut accepted);
                        continue;
                    }
                }
                // Stop signals wait until the child has its own handler (see the module doc).
                let blocked = match block_stop_signals() {
                    Ok(blocked) => blocked,
                    Err(e) => {
                        warn!(
                            "{}: cannot block signals to fork: {e}; closing",
                            accepted.peer
                        );
                        continue;
                    }
                };
                match fork_single_threaded() {
                    Ok(Forked::Child) => {
                        // The listeners and the signal pipe are the parent's business.
                        drop(acceptor);
                        serve_child(accepted, &options, blocked);
                    }
                    Ok(Forked::Parent { child }) => {
                        drop(blocked);
                        children.add(child);
                        trace!("{}: served by process {child}", accepted.peer);
                        // Dropping `accepted` closes the parent's copy; the child keeps its own.
                    }
                    Err(e) => warn!("{}: cannot fork: {e}; closing", accepted.peer),
                }
            }
            Next::Signal(SIGCHLD) => children.reap(),
            Next::Signal(signal) => {
                return shut_down(acceptor, children, signal, options.shutdown_timeout);
            }
            Next::Woken | Next::TimedOut => {}
        }
    }
}

/// The child's whole life: its own stop-signal handler, then the one connection, then `_exit`.
fn serve_child(
    accepted: Accepted,
    options: &ServeOptions,
    blocked: crate::sys::StopSignalsBlocked,
) -> ! {
    let stopping = match stop_gracefully_on_signal(accepted.stream.as_fd()) {
        Ok(stopping) => stopping,
        Err(e) => {
            warn!(
                "{}: cannot install a signal handler: {e}; closing",
                accepted.peer
            );
            exit_child(1);
        }
    };
    // A stop signal sent since the fork is delivered now, to the handler just installed.
    drop(blocked);
    serve_blocking(
        &accepted.stream,
        accepted.protocol,
        accepted.peer,
        options,
        stopping,
    );
    exit_child(0)
}

/// The graceful shutdown of the parent after the first `signal`: stop accepting, ask every child
/// to stop (SIGTERM), collect them as they finish, and kill those still running at the timeout or
/// at a second signal. `Ok` in every case: the process exits 0.
fn shut_down(
    mut acceptor: Acceptor,
    mut children: Children,
    signal: i32,
    timeout: Duration,
) -> io::Result<()> {
    info!(
        "signal {signal}: shutting down (at most {} s)",
        timeout.as_secs_f64()
    );
    acceptor.stop_accepting();
    children.reap();
    children.signal_all(SIGTERM);
    let deadline = Instant::now().checked_add(timeout);
    while children.count() > 0 {
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            warn!(
                "shutdown timeout: killing {} children still busy",
                children.count()
            );
            break;
        }
        match acceptor.wait(left)? {
            Next::Signal(SIGCHLD) => children.reap(),
            Next::Signal(signal) => {
                info!("second signal ({signal}): exiting at once");
                break;
            }
            Next::Accepted(_) | Next::Woken | Next::TimedOut => {}
        }
    }
    children.signal_all(SIGKILL);
    // SIGKILL cannot be caught: they die at once. Collect them, so that none outlives the
    // parent; a child stuck in the kernel is left to init after `KILLED_CHILDREN_WAIT`.
    let deadline = Instant::now() + KILLED_CHILDREN_WAIT;
    loop {
        children.reap();
        let left = deadline.saturating_duration_since(Instant::now());
        if children.count() == 0 || left.is_zero() {
            break;
        }
        acceptor.wait(Some(left))?; // SIGCHLD (or another signal: then look again).
    }
    match children.count() {
        0 => info!("shutdown complete"),
        left => warn!("{left} killed children not collected; leaving them to init"),
    }
    Ok(())
}

/// The child processes serving connections, by process id.
#[derive(Debug, Default)]
struct Children {
    live: HashSet<i32>,
}

impl Children {
    fn add(&mut self, pid: i32) {
        self.live.insert(pid);
    }

    fn count(&self) -> usize {
        self.live.len()
    }

    /// Collects every child that has exited.
    fn reap(&mut self) {
        for pid in reap_exited_children() {
            self.live.remove(&pid);
        }
    }

    /// Sends `signal` to every child not yet collected (whose process id is therefore still
    /// its own).
    fn signal_all(&self, signal: i32) {
        for &pid in &self.live {
            if let Err(e) = send_signal(pid, signal) {
                debug!("cannot signal process {pid}: {e}");
            }
        }
    }
}
