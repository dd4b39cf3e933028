//! The smallest correct mio UDP echo server we could write: the yardstick for the reactor's CPU
//! cost per datagram (`scripts/cpu-per-request.sh udp`). One socket, `recv_from` until
//! `WouldBlock`, `send_to` each datagram back, a reply that would block dropped — no size limit,
//! no reflection check, no fairness budget, no counters, no logging. The gap between it and
//! oneloop is what oneloop's rules cost.
//!
//! `cargo run --release --example tiny_udp_echo` prints `listening echo udp ADDRESS` like oneloop.

use std::io;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

fn main() -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    println!("listening echo udp {}", socket.local_addr()?);
    let mut events = Events::with_capacity(16);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        loop {
            match socket.recv_from(&mut buffer) {
                Ok((count, from)) => {
                    let _ = socket.send_to(&buffer[..count], from);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
        }
    }
}
