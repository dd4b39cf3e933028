//! Running out of file descriptors without leaving clients in the backlog.
//!
//! When `accept` fails with EMFILE (this process) or ENFILE (the whole system), the client stays
//! queued in the kernel. A level-triggered loop then spins at 100% CPU on the listener, and an
//! edge-triggered one (or a blocking acceptor waiting for the next edge) never hears of it again:
//! the client hangs until it gives up. The classic cure (libev, nginx, Redis) is a descriptor
//! held in reserve: close it, accept the waiting client with the freed slot, close that client at
//! once (it sees a close, not a hang), and take the reserve back.
//!
//! Linux's `accept` claims a descriptor *before* it looks at the backlog, so EMFILE says nothing
//! about whether anyone is waiting; only the accept made with the freed descriptor can tell
//! (`WouldBlock`: nobody), and that is where shedding stops.

use std::fs::File;
use std::io;
use std::time::Duration;

use log::{info, warn};

use crate::sys::FdLimit;

/// Logs what raising the open-file limit at start came to, the way an operator wants to read it.
///
/// Here, beside the reserve descriptor, because the limit is the other half of the same story
/// (how many descriptors a server has before `accept` fails with EMFILE), and because every
/// model logs it, not only the reactor.
pub(crate) fn log_fd_limit(result: &io::Result<FdLimit>) {
    match result {
        Ok(limit) if limit.now > limit.before => info!(
            "open-file limit raised from {} to {} (the hard limit)",
            limit.before, limit.now
        ),
        Ok(limit) => info!("open-file limit is {}", limit.now),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

/// How long a listener rests when the process is out of file descriptors and has no reserve
/// descriptor to spend (or the kernel is out of memory): long enough not to spin, short enough
/// that service resumes promptly. Clients wait in the backlog meanwhile, and the listener is tried
/// again when the time is up — not when the next client arrives, which may be never.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A descriptor kept open so that one can be freed when the process runs out.
#[derive(Debug)]
pub(crate) struct ReserveFd {
    file: Option<File>,
}

/// What spending the reserve descriptor achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// A waiting client was accepted and closed; there may be more.
    ClosedOne,
    /// Nobody was waiting: stop until the next readiness edge.
    BacklogEmpty,
    /// No reserve descriptor (or it could not be reopened): rest a moment, then try again.
    NoReserve,
}

impl ReserveFd {
    /// Opens the reserve (`/dev/null`). If even that fails, shedding reports
    /// [`Shed::NoReserve`] until a later attempt to reopen it succeeds.
    pub(crate) fn new() -> ReserveFd {
        ReserveFd { file: open() }
    }

    /// Out of descriptors: frees the reserve, lets `accept` take one waiting client, closes that
    /// client at once, and takes the reserve back. `error` is the EMFILE/ENFILE being answered,
    /// for the log line.
    pub(crate) fn shed_one<S, A: std::fmt::Display>(
        &mut self,
        error: &io::Error,
        accept: impl FnOnce() -> io::Result<(S, A)>,
    ) -> Shed {
        if self.file.is_none() {
            self.file = open(); // Lost earlier; a slot may have freed since.
        }
        let Some(reserve) = self.file.take() else {
            return Shed::NoReserve;
        };
        drop(reserve);
        let outcome = match accept() {
            Ok((stream, peer)) => {
                warn!("out of file descriptors ({error}): closing new connection from {peer}");
                drop(stream); // Before reopening the reserve: that needs this very slot.
                Shed::ClosedOne
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Shed::BacklogEmpty,
            // That client is gone already; the slot is free for the next.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Shed::ClosedOne,
            Err(_) => Shed::NoReserve,
        };
        self.file = open();
        if self.file.is_none() {
            return Shed::NoReserve;
        }
        outcome
    }
}

impl Default for ReserveFd {
    fn default() -> Self {
        ReserveFd::new()
    }
}

/// EMFILE (this process) or ENFILE (the whole system): no descriptor for a new connection.
pub(crate) fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// ENOBUFS or ENOMEM: the kernel has no memory for the new socket just now.
pub(crate) fn is_out_of_memory(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM))
}

fn open() -> Option<File> {
    File::open("/dev/null").ok()
}
