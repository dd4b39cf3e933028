//! UDP under the blocking models: one thread per UDP service, blocked in `recv_from`.
//!
//! A datagram service has no connections to spread over threads or processes, so every blocking
//! model serves it the same way — the way the seeds' `udp_server.py` does: one loop of
//! `recv_from`, answer, `send_to`. The rules are the reactor's (see `reactor::datagram`): an
//! oversize datagram is dropped, a source port below 1024 gets no reply, and a reply the socket
//! will not take at once is dropped (`MSG_DONTWAIT`), never waited for.
//!
//! To stop, the thread is woken the classic way: a flag is set and an empty datagram is sent to
//! the socket, so the blocked `recv_from` returns and the thread sees the flag.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, info};

use crate::clock::Clock;
use crate::net::datagram::DatagramStats;
use crate::net::BoundDatagram;
use crate::protocol::datagram::{reply, MAX_DATAGRAM_PAYLOAD};

/// The threads serving the UDP services, and how to stop them.
#[derive(Debug, Default)]
pub struct DatagramThreads {
    threads: Vec<(JoinHandle<DatagramStats>, SocketAddr)>,
    stop: Arc<AtomicBool>,
}

impl DatagramThreads {
    /// Starts one thread per UDP service.
    pub fn start(datagrams: Vec<BoundDatagram>) -> io::Result<DatagramThreads> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(datagrams.len());
        for bound in datagrams {
            bound.socket.set_nonblocking(false)?;
            let stop = Arc::clone(&stop);
            let local = bound.local;
            let handle = thread::Builder::new()
                .name(format!("udp {local}"))
                .spawn(move || serve(bound, &stop))?;
            threads.push((handle, local));
        }
        Ok(DatagramThreads { threads, stop })
    }

    /// Stops every thread (each finishes the datagram in hand) and logs what each did.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, local) in &self.threads {
            wake(*local);
        }
        for (handle, local) in self.threads {
            if let Ok(stats) = handle.join() {
                info!("udp {local}: closed; {stats}");
            }
        }
    }
}

/// Sends an empty datagram to `local` so that a thread blocked in `recv_from` there wakes up.
fn wake(local: SocketAddr) {
    let target = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    };
    let from: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Err(e) = UdpSocket::bind(from).and_then(|s| s.send_to(&[], target)) {
        debug!("udp {local}: cannot wake its thread: {e}");
    }
}

/// One UDP service's loop: receive, answer, repeat, until `stop`.
fn serve(bound: BoundDatagram, stop: &AtomicBool) -> DatagramStats {
    let BoundDatagram {
        socket,
        protocol,
        local,
    } = bound;
    let mut stats = DatagramStats::default();
    let mut clock = Clock::default();
    // One byte more than the largest answered datagram, so an oversize one shows as oversize.
    let mut input = vec![0u8; MAX_DATAGRAM_PAYLOAD + 1];
    let mut output = Vec::with_capacity(MAX_DATAGRAM_PAYLOAD + 64);
    loop {
        let received = socket.recv_from(&mut input);
        if stop.load(Ordering::SeqCst) {
            return stats;
        }
        let (length, from) = match received {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("udp {local}: receive error: {e}");
                continue;
            }
        };
        if !stats.admit(length, from) {
            continue;
        }
        output.clear();
        if reply(protocol, &input[..length], &clock.now(), &mut output).is_none() {
            continue;
        }
        // MSG_DONTWAIT: a blocking socket, but this one send must not wait for buffer space.
        let sent = socket2::SockRef::from(&socket).send_to_with_flags(
            &output,
            &from.into(),
            libc::MSG_DONTWAIT,
        );
        stats.sent(sent, from);
    }
}
