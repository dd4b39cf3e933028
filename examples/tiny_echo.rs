//! The smallest correct mio echo server we could write: the yardstick for the reactor's CPU cost
//! per request (`scripts/cpu-per-request.sh`). No protocol layer, no limits, no timers, no
//! logging — everything oneloop adds is missing, so the gap between the two is what oneloop's
//! robustness costs.
//!
//! `cargo run --release --example tiny_echo` prints `listening echo tcp ADDRESS` like oneloop.

use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

fn main() -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening echo tcp {}", listener.local_addr()?);
    let mut connections: Slab<TcpStream> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let entry = connections.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE,
                    )?;
                    entry.insert(stream);
                }
                continue;
            }
            let key = event.token().0;
            let Some(stream) = connections.get_mut(key) else {
                continue;
            };
            // Read until drained (a short read), echo each read back whole. A client of this
            // yardstick always reads its replies, so a full socket never happens here.
            let closed = loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break true,
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            break true;
                        }
                        if n < buffer.len() {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            if closed {
                connections.remove(key);
            }
        }
    }
}
