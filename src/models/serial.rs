//! `serial`: one connection at a time, to completion — Python's `socketserver.TCPServer`.
//!
//! The simplest server there is, and the seeds' first one. While it serves one client, every
//! other client waits in the listen backlog: fine for one user, hopeless for fifty.

use std::io;

use crate::net::BoundListener;

use super::{serve_blocking, Acceptor, Settings};

/// Serves connections one after another, for ever. (`--max-connections` is moot: one at a time.)
pub fn run(listeners: Vec<BoundListener>, settings: Settings) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listeners)?;
    loop {
        if let Some(accepted) = acceptor.accept_next(None)? {
            serve_blocking(accepted, &settings);
        }
    }
}
