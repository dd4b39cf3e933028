//! `forking`: a process per connection — Python's `ForkingMixIn`.
//!
//! After `accept`, the server forks; the child serves the one client and exits, the parent goes
//! back to `accept`. Clients are isolated from one another (a crash takes down one process), at
//! the price of a `fork` per connection and a whole process per waiting client.
//!
//! The parent never starts a thread ([`fork_single_threaded`] checks), and collects exited
//! children at least every [`REAP_INTERVAL`] — after each accept and whenever the wait for one
//! times out — so no child lingers as a zombie, as `ForkingMixIn` does with `collect_children`.

use std::io;
use std::time::Duration;

use log::{trace, warn};

use crate::net::BoundListener;
use crate::sys::{exit_child, fork_single_threaded, reap_exited_children, Forked};

use super::{refuse, serve_blocking, Acceptor, Settings};

/// Longest time an exited child waits to be collected (`ForkingMixIn` polls every 0.5 s too).
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Serves every connection in a child process, for ever. `--max-connections` counts the live
/// children.
pub fn run(listeners: Vec<BoundListener>, settings: Settings) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listeners)?;
    let mut children = 0usize;
    loop {
        children = children.saturating_sub(reap_exited_children().len());
        let Some(mut accepted) = acceptor.accept_next(Some(REAP_INTERVAL))? else {
            continue;
        };
        if children >= settings.max_connections {
            children = children.saturating_sub(reap_exited_children().len());
            if children >= settings.max_connections {
                refuse(&mut accepted);
                continue;
            }
        }
        match fork_single_threaded() {
            Ok(Forked::Child) => {
                // The child serves one client; the listeners are the parent's business.
                drop(acceptor);
                serve_blocking(accepted, &settings);
                exit_child(0);
            }
            Ok(Forked::Parent { child }) => {
                children += 1;
                trace!("{}: served by process {child}", accepted.peer);
                // Dropping `accepted` closes the parent's copy; the child keeps its own.
            }
            Err(e) => warn!("{}: cannot fork: {e}; closing", accepted.peer),
        }
    }
}
