//! `threaded`: a thread per connection — Python's `ThreadingMixIn`.
//!
//! Every client gets its own thread, blocked in `read` while the client thinks. Simple and
//! concurrent, but each waiting client holds a stack and a kernel task, and every request costs
//! the scheduler a context switch to the thread that owns the socket.

use std::io;
use std::sync::Arc;
use std::thread;

use log::warn;
use signal_hook::consts::SIGHUP;
use signal_hook_mio::v1_0::Signals;

use crate::net::BoundListener;

use super::admission::shut_down;
use super::chat::ChatRooms;
use super::{Admission, Next, Settings};

/// Serves every connection on a new thread until SIGINT or SIGTERM.
pub(crate) fn run(
    listeners: Vec<BoundListener>,
    settings: Settings,
    signals: Signals,
) -> io::Result<()> {
    let rooms = Arc::new(ChatRooms::new(
        &listeners,
        settings.options.limits,
        settings.options.output_limit,
    ));
    let (mut acceptor, options) = settings.into_acceptor(listeners, signals)?;
    // SIGHUP reloads the TLS files (ignored without a tls: service).
    acceptor.hear_hangups();
    let admission = Admission::new(options.max_connections, acceptor.waker()?);
    // Shared by every connection's thread, rather than cloned for each.
    let options = Arc::new(options);
    loop {
        match acceptor.accept_next(None)? {
            Next::Accepted(accepted) => {
                let Some(connection) = admission.admit(accepted) else {
                    continue;
                };
                let peer = connection.peer();
                let rooms = Arc::clone(&rooms);
                let options = Arc::clone(&options);
                let spawned = thread::Builder::new()
                    .name(format!("conn {peer}"))
                    .spawn(move || connection.serve(&options, &rooms));
                if let Err(e) = spawned {
                    // Out of threads (or memory): this client is dropped, the others carry on.
                    warn!("{peer}: cannot start a thread: {e}; closing");
                }
            }
            Next::Signal(SIGHUP) => admission.reload_tls(options.tls.as_ref()),
            Next::Signal(signal) => {
                return shut_down(&mut acceptor, &admission, signal, options.shutdown_timeout);
            }
            Next::Woken | Next::TimedOut => {}
        }
    }
}
