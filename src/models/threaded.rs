//! `threaded`: a thread per connection — Python's `ThreadingMixIn`.
//!
//! Every client gets its own thread, blocked in `read` while the client thinks. Simple and
//! concurrent, but each waiting client holds a stack and a kernel task, and every request costs
//! the scheduler a context switch to the thread that owns the socket.

use std::io;
use std::thread;

use log::warn;

use crate::net::BoundListener;

use super::{serve_blocking, Acceptor, Admission, Settings};

/// Serves every connection on a new thread, for ever.
pub fn run(listeners: Vec<BoundListener>, settings: Settings) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listeners)?;
    let admission = Admission::new(settings.max_connections);
    loop {
        let Some(mut accepted) = acceptor.accept_next(None)? else {
            continue;
        };
        let Some(slot) = admission.admit(&mut accepted) else {
            continue;
        };
        let peer = accepted.peer;
        let spawned = thread::Builder::new()
            .name(format!("conn {peer}"))
            .spawn(move || {
                serve_blocking(accepted, &settings);
                drop(slot);
            });
        if let Err(e) = spawned {
            // Out of threads (or memory): this client is dropped, the others carry on.
            warn!("{peer}: cannot start a thread: {e}; closing");
        }
    }
}
