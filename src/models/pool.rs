//! `pool`: a fixed number of worker threads taking accepted connections from a queue.
//!
//! The usual fix for "a thread per client is too many threads": cap them. The cost moves
//! elsewhere — a worker is busy for a connection's whole life, so with more clients than
//! workers, the extra clients wait in the queue until a worker's client leaves. A chat member
//! holds its worker for as long as it stays in the room (see [`super::chat`]): a room has at
//! most `--threads` members talking, the others queued, not even greeted.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use log::debug;
use signal_hook::consts::SIGHUP;
use signal_hook_mio::v1_0::Signals;

use crate::net::BoundListener;

use super::admission::shut_down;
use super::chat::ChatRooms;
use super::{Admission, Admitted, Next, Settings};

/// Serves connections on `workers` threads until SIGINT or SIGTERM. `--max-connections` counts
/// the queued connections as well as those being served, so it also bounds the queue.
pub(crate) fn run(
    listeners: Vec<BoundListener>,
    settings: Settings,
    workers: usize,
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
    let queue = Arc::new(Queue::default());
    for worker in 0..workers.max(1) {
        let queue = Arc::clone(&queue);
        let rooms = Arc::clone(&rooms);
        let options = options.clone();
        thread::Builder::new()
            .name(format!("worker {worker}"))
            .spawn(move || {
                while let Some(connection) = queue.pop() {
                    connection.serve(&options, &rooms);
                }
            })?;
    }
    debug!("pool: {workers} workers");
    loop {
        match acceptor.accept_next(None)? {
            Next::Accepted(accepted) => {
                if let Some(connection) = admission.admit(accepted) {
                    queue.push(connection);
                }
            }
            Next::Signal(SIGHUP) => admission.reload_tls(options.tls.as_ref()),
            Next::Signal(signal) => {
                // Queued connections have not been read: nothing is owed to them, and no worker
                // may be free to close them before the timeout. Close them now.
                for connection in queue.close() {
                    connection.close_unserved();
                }
                return shut_down(&mut acceptor, &admission, signal, options.shutdown_timeout);
            }
            Next::Woken | Next::TimedOut => {}
        }
    }
}

/// The connections waiting for a worker. A queue the acceptor can also empty at shutdown: with
/// `mpsc`, a worker waiting for the next connection holds the receiver, so nobody else could.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<Waiting>,
    /// Signalled when a connection is queued or the queue is closed.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Waiting {
    connections: VecDeque<Admitted>,
    /// No more connections will come: workers stop once it is empty.
    closed: bool,
}

impl Queue {
    /// Queues a connection for the next free worker.
    fn push(&self, connection: Admitted) {
        self.lock().connections.push_back(connection);
        self.changed.notify_one();
    }

    /// The next connection, waiting for one; `None` once the queue is closed.
    fn pop(&self) -> Option<Admitted> {
        let mut waiting = self.lock();
        loop {
            if let Some(connection) = waiting.connections.pop_front() {
                return Some(connection);
            }
            if waiting.closed {
                return None;
            }
            waiting = self
                .changed
                .wait(waiting)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Closes the queue and returns what was still in it.
    fn close(&self) -> Vec<Admitted> {
        let mut waiting = self.lock();
        waiting.closed = true;
        let left = waiting.connections.drain(..).collect();
        drop(waiting);
        self.changed.notify_all();
        left
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A push or pop cannot leave the queue half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
