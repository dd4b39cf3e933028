//! `serial`: one connection at a time, to completion — Python's `socketserver.TCPServer`.
//!
//! The simplest server there is, and the seeds' first one. While it serves one client, every
//! other client waits in the listen backlog: fine for one user, hopeless for fifty.
//!
//! The client is served on a thread of its own, and the main thread does not accept again until
//! that client is done: still one at a time, but the main thread stays free to notice SIGINT and
//! SIGTERM and to wake the connection being served (see the graceful shutdown in [`super`]).

use std::io;
use std::sync::mpsc;
use std::thread;

use signal_hook_mio::v1_0::Signals;

use crate::net::BoundListener;

use super::admission::shut_down;
use super::chat::ChatRooms;
use super::{Admission, Admitted, Next, Settings};

/// Serves connections one after another until SIGINT or SIGTERM. (`--max-connections` is moot:
/// one at a time.)
pub(crate) fn run(
    listeners: Vec<BoundListener>,
    settings: Settings,
    signals: Signals,
) -> io::Result<()> {
    let (mut acceptor, options) = settings.into_acceptor(listeners, signals)?;
    // Rings when the client being served is done: the moment to accept the next.
    let admission = Admission::new(1, acceptor.waker()?);
    let (server, connections) = mpsc::channel::<Admitted>();
    let shutdown_timeout = options.shutdown_timeout;
    thread::Builder::new()
        .name("serial".into())
        .spawn(move || {
            for connection in connections {
                // Chat is refused before serial starts (one member at a time is no room).
                connection.serve(&options, &ChatRooms::default());
            }
        })?;
    loop {
        // One at a time: accept only while nobody is being served.
        let next = if admission.open() == 0 {
            acceptor.accept_next(None)?
        } else {
            acceptor.wait(None)?
        };
        match next {
            Next::Accepted(accepted) => {
                if let Some(connection) = admission.admit(accepted) {
                    server
                        .send(connection)
                        .map_err(|_| io::Error::other("the serving thread has stopped"))?;
                }
            }
            Next::Signal(signal) => {
                return shut_down(&mut acceptor, &admission, signal, shutdown_timeout);
            }
            Next::Woken | Next::TimedOut => {}
        }
    }
}
