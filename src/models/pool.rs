//! `pool`: a fixed number of worker threads taking accepted connections from a queue.
//!
//! The usual fix for "a thread per client is too many threads": cap them. The cost moves
//! elsewhere — a worker is busy for a connection's whole life, so with more clients than
//! workers, the extra clients wait in the queue until a worker's client leaves.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use log::debug;

use crate::protocol::Limits;
use crate::reactor::BoundListener;

use super::{serve_blocking, Accepted, Acceptor};

/// Serves connections on `workers` threads, for ever.
pub fn run(listeners: Vec<BoundListener>, limits: Limits, workers: usize) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listeners)?;
    let (queue, receiver) = mpsc::channel::<Accepted>();
    let receiver = Arc::new(Mutex::new(receiver));
    for worker in 0..workers.max(1) {
        let receiver = Arc::clone(&receiver);
        thread::Builder::new()
            .name(format!("worker {worker}"))
            .spawn(move || loop {
                // The lock is held only while waiting for the next connection, never while
                // serving one.
                let next = receiver
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                match next {
                    Ok(accepted) => serve_blocking(accepted, limits),
                    Err(_) => return, // The acceptor is gone.
                }
            })?;
    }
    debug!("pool: {workers} workers");
    loop {
        if let Some(accepted) = acceptor.accept_next(None)? {
            queue
                .send(accepted)
                .map_err(|_| io::Error::other("every worker has stopped"))?;
        }
    }
}
