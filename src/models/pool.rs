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

use crate::net::BoundListener;

use super::{serve_blocking, Accepted, Acceptor, Admission, Settings, Slot};

/// Serves connections on `workers` threads, for ever. `--max-connections` counts the queued
/// connections as well as those being served, so it also bounds the queue.
pub fn run(listeners: Vec<BoundListener>, settings: Settings, workers: usize) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listeners)?;
    let admission = Admission::new(settings.max_connections);
    let (queue, receiver) = mpsc::channel::<(Accepted, Slot)>();
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
                    Ok((accepted, _slot)) => serve_blocking(accepted, &settings),
                    Err(_) => return, // The acceptor is gone.
                }
            })?;
    }
    debug!("pool: {workers} workers");
    loop {
        let Some(mut accepted) = acceptor.accept_next(None)? else {
            continue;
        };
        if let Some(slot) = admission.admit(&mut accepted) {
            queue
                .send((accepted, slot))
                .map_err(|_| io::Error::other("every worker has stopped"))?;
        }
    }
}
