//! Tests named after the bugs they pin (the way mio's `tests/regressions.rs` does). A test for a
//! bug not yet fixed is `#[ignore]`d with the bug described; remove the `ignore` with the fix.

mod util;

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

use util::{connect, send, Server, DEADLINE};

/// The server's open-file limit in these tests: a couple of dozen connections' worth, once its
/// own descriptors (standard streams, the poller, the listener) are counted.
const SERVER_FD_LIMIT: u32 = 32;

/// Clients connected at once: more than [`SERVER_FD_LIMIT`] allows.
const CLIENTS: usize = 40;

/// How a client's request ended.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Its echo came back: it was served.
    Served,
    /// The server closed the connection (end of stream or reset, perhaps after an `error ...`
    /// line): it was refused, which the contract allows past the connection limit.
    Refused,
}

/// Sends `message` and waits (up to [`DEADLINE`]) for its echo or for the server to close.
/// Silence until the deadline is the failure: the client was left waiting in the backlog.
fn request(stream: &mut TcpStream, message: &[u8]) -> Result<Answer, String> {
    // A refused connection may already be closed: a failed write is a refusal too.
    if io::Write::write_all(stream, message).is_err() {
        return Ok(Answer::Refused);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buffer = [0; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {DEADLINE:?} (got {got:?})"));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(Answer::Refused),
            Ok(count) => {
                got.extend_from_slice(&buffer[..count]);
                if got == message {
                    return Ok(Answer::Served);
                }
                if got.starts_with(b"error") {
                    return Ok(Answer::Refused);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Ok(Answer::Refused), // reset: closed with our request unread
        }
    }
}

#[test]
fn clients_past_the_fd_limit_are_answered_not_left_in_the_backlog() {
    let mut server = Server::start_with_fd_limit(SERVER_FD_LIMIT, &["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    let mut served = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        match request(client, format!("client {i}\n").as_bytes()) {
            Ok(Answer::Served) => served += 1,
            Ok(Answer::Refused) => {}
            Err(silence) => panic!(
                "client {i} of {CLIENTS} (server fd limit {SERVER_FD_LIMIT}, {served} served): \
                 {silence}"
            ),
        }
    }
    assert!(served > 0, "nobody was served");
    server.assert_running();
}

#[test]
fn clients_in_the_backlog_are_answered_once_descriptors_free_up() {
    let mut server = Server::start_with_fd_limit(SERVER_FD_LIMIT, &["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    // More clients than descriptors: the server runs out while accepting them.
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    // Make sure the first ones were accepted and served, so the server has hit its limit.
    for (i, client) in clients.iter_mut().enumerate().take(5) {
        send(client, format!("early {i}\n").as_bytes());
        let reply = util::read_exact_within(client, format!("early {i}\n").len());
        assert_eq!(reply, format!("early {i}\n").as_bytes());
    }
    // Half leave, freeing descriptors. No new client connects, so no new readiness edge comes
    // for the listener: the server must remember that clients may still be waiting.
    clients.drain(..CLIENTS / 2);
    for (i, client) in clients.iter_mut().enumerate() {
        if let Err(silence) = request(client, format!("late {i}\n").as_bytes()) {
            panic!(
                "client {} of {CLIENTS}, after {} others left: {silence}",
                i + CLIENTS / 2,
                CLIENTS / 2
            );
        }
    }
    server.assert_running();
}

/// Issue 12, defect 4: with `--max-connections 1`, a client leaving and another arriving in the
/// same batch of events got `error too many connections`: the limit counted the leaver, which
/// had closed but was still waiting in the slab for the end of the batch.
#[test]
fn a_leaver_and_a_newcomer_in_one_batch_with_max_connections_1() {
    let mut server = Server::start(&["--max-connections", "1", "echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    for trial in 0..3 {
        let mut leaver = connect(addr);
        send(&mut leaver, b"first");
        assert_eq!(util::read_exact_within(&mut leaver, 5), b"first");
        // Stopped, the server sees both the close and the connect in its next batch, in that
        // order (epoll reports readiness in the order it arose).
        server.signal("STOP");
        drop(leaver);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut newcomer = connect(addr);
        send(&mut newcomer, b"second");
        server.signal("CONT");
        let reply = util::read_exact_within(&mut newcomer, 6);
        util::assert_bytes_eq(
            &reply,
            b"second",
            &format!("trial {trial}: the newcomer's echo"),
        );
    }
    server.assert_running();
}
