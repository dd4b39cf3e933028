//! UDP under every model, through real sockets: a reply leaves from the address its request was
//! sent to (also on a wildcard address), a graceful stop ends the UDP servers cleanly with their
//! statistics, and a reply too large for one datagram is `error reply too large` (contract v3,
//! "Over UDP"). The rest of UDP's contract is in `transports.rs`.

#[macro_use]
mod util;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use util::{Server, DEADLINE};

per_model! {
    [reactor, serial, threaded, pool, forking]: [
        a_reply_on_a_wildcard_address_leaves_from_the_request_s_destination,
        a_dual_stack_wildcard_address_answers_from_each_family_s_destination,
        a_reply_too_large_for_one_datagram_is_the_error_datagram,
        a_graceful_stop_after_datagrams_exits_0_with_the_statistics,
    ]
}

/// A UDP socket on `local` port 0 whose every wait is bounded.
fn socket_on(local: &str) -> UdpSocket {
    let socket = UdpSocket::bind(local).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket
}

/// Sends `payload` to `to` and returns the reply and the address it came from.
fn send_and_receive(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    socket.send_to(payload, to).unwrap();
    let mut reply = vec![0; 70_000];
    let (count, from) = socket
        .recv_from(&mut reply)
        .unwrap_or_else(|e| panic!("no reply from {to}: {e}"));
    reply.truncate(count);
    (reply, from)
}

/// A connected client, as `oneloop client udp:...` and socat are: the kernel hands it only
/// datagrams from `server`, so a reply from any other address is never seen.
fn connected_exchange(server: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = socket_on(local);
    socket.connect(server).unwrap();
    socket.send(payload).unwrap();
    let mut reply = vec![0; 70_000];
    let count = socket
        .recv(&mut reply)
        .unwrap_or_else(|e| panic!("a connected client of {server} got no reply: {e}"));
    reply.truncate(count);
    reply
}

fn a_reply_on_a_wildcard_address_leaves_from_the_request_s_destination() {
    let mut server = Server::start(&["echo@udp:0.0.0.0:0", "upper@udp:0.0.0.0:0"]);
    let echo = server.addr_of("echo", "udp").port();
    let upper = server.addr_of("upper", "udp").port();
    // 127.0.0.0/8 is all loopback: three destinations of one wildcard socket, each answered
    // from itself, whatever routing would pick (127.0.0.1).
    let client = socket_on("127.0.0.1:0");
    for host in [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]] {
        let to = SocketAddr::from((Ipv4Addr::from(host), echo));
        let (reply, from) = send_and_receive(&client, to, b"where from?");
        assert_eq!(reply, b"where from?");
        assert_eq!(from, to, "the reply leaves from the request's destination");
    }
    let to = SocketAddr::from(([127, 0, 0, 2], upper));
    assert_eq!(connected_exchange(to, b"connected"), b"CONNECTED");
    // A zero-length datagram is a datagram (not the stop's empty wake-up): answered, from its
    // destination.
    let to = SocketAddr::from(([127, 0, 0, 2], echo));
    assert_eq!(connected_exchange(to, b""), b"");
    server.assert_running();
}

fn a_dual_stack_wildcard_address_answers_from_each_family_s_destination() {
    if !util::ipv6_loopback_available() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let mut server = Server::start(&["echo@udp:[::]:0"]);
    let port = server.addr_of("echo", "udp").port();
    let to: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(connected_exchange(to, b"over ipv6"), b"over ipv6");
    // An IPv4 client of the dual-stack socket (Linux's default, net.ipv6.bindv6only = 0): its
    // request arrives v4-mapped, and its reply must leave from the IPv4 address it was sent to.
    let dual_stack = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")
        .is_ok_and(|value| value.trim() == "0");
    if !dual_stack {
        eprintln!("skipped the IPv4 half: [::] is IPv6-only here (net.ipv6.bindv6only = 1)");
        return;
    }
    let to = SocketAddr::from(([127, 0, 0, 2], port));
    let (reply, from) = send_and_receive(&socket_on("127.0.0.1:0"), to, b"over ipv4");
    assert_eq!((reply.as_slice(), from), (&b"over ipv4"[..], to));
    assert_eq!(connected_exchange(to, b"connected v4"), b"connected v4");
    server.assert_running();
}

fn a_reply_too_large_for_one_datagram_is_the_error_datagram() {
    let mut server = Server::start(&[
        "timestamp@udp:127.0.0.1:0",
        "upper@udp:127.0.0.1:0",
        "echo@udp:0.0.0.0:0",
    ]);
    let timestamp = server.addr_of("timestamp", "udp");
    let upper = server.addr_of("upper", "udp");
    let client = socket_on("127.0.0.1:0");
    // `[ctime] ` is 27 bytes: a 65,480-byte request's reply is exactly the largest datagram.
    let (reply, _) = send_and_receive(&client, timestamp, &vec![b't'; 65_480]);
    assert_eq!(reply.len(), 65_507);
    assert!(reply.starts_with(b"[") && reply[25..].starts_with(b"] tttt"));
    let (reply, from) = send_and_receive(&client, timestamp, &vec![b't'; 65_481]);
    assert_eq!(String::from_utf8_lossy(&reply), "error reply too large");
    assert_eq!(from, timestamp);
    let (reply, _) = send_and_receive(&client, timestamp, &vec![b't'; 65_500]);
    assert_eq!(reply, b"error reply too large");

    // `ŉ` (2 bytes) becomes `ʼN` (3): 20,000 of them and 5,507 more bytes fill one datagram.
    let grows = |ascii: usize| ["ŉ".repeat(20_000), "a".repeat(ascii)].concat();
    let (reply, _) = send_and_receive(&client, upper, grows(5_507).as_bytes());
    assert_eq!(reply.len(), 65_507);
    assert!(reply.starts_with("ʼNʼN".as_bytes()) && reply.ends_with(b"AAA"));
    let (reply, _) = send_and_receive(&client, upper, grows(5_508).as_bytes());
    assert_eq!(reply, b"error reply too large");
    // 40,000 bytes of `ΐ` grow threefold: 120,000.
    let (reply, _) = send_and_receive(&client, upper, "ΐ".repeat(20_000).as_bytes());
    assert_eq!(reply, b"error reply too large");
    // Served after an error as before, and on a wildcard address the error leaves from the
    // request's destination too.
    let (reply, _) = send_and_receive(&client, upper, "straße".as_bytes());
    assert_eq!(reply, b"STRASSE");
    let to = SocketAddr::from(([127, 0, 0, 2], server.addr_of("echo", "udp").port()));
    assert_eq!(connected_exchange(to, &vec![b'e'; 65_507]).len(), 65_507);
    server.assert_running();
}

fn a_graceful_stop_after_datagrams_exits_0_with_the_statistics() {
    let mut server =
        Server::start_with_env(&["echo@udp:127.0.0.1:0"], &[("RUST_LOG", "oneloop=info")]);
    let echo = server.addr_of("echo", "udp");
    let client = socket_on("127.0.0.1:0");
    // Two datagrams or more: the stop's empty wake-up used to reach std's `recv_from` with the
    // previous sender's address family and a zero length, and panic.
    for payload in [&b"one"[..], b"two", b"three"] {
        assert_eq!(
            send_and_receive(&client, echo, payload),
            (payload.to_vec(), echo)
        );
    }
    server.signal("TERM");
    assert_eq!(server.wait_for_exit().code(), Some(0));
    // Under forking the UDP server is a child process, which logs its line and exits 0 (a
    // panic would print its message and exit 101) on the signal its parent forwards: wait for
    // its line, which may come just after the parent's exit.
    let closed = format!("udp {echo}: closed; 3 datagrams received, 3 answered");
    let deadline = Instant::now() + DEADLINE;
    let stderr = loop {
        let stderr = server.stderr();
        if stderr.contains(&closed) || Instant::now() > deadline {
            break stderr;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    assert!(stderr.contains(&closed), "no `{closed}`: {stderr}");
}
