//! Faults of the blocking models (serial, threaded, pool, forking): running out of file
//! descriptors. The contract's rules name no exception for them, so each test here runs against
//! every model.
//!
//! Like every black-box test, these drive the real binary over loopback and bound every wait;
//! nothing asserts speed.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, Server, DEADLINE};

/// Makes one `#[test]` per model for each listed test, grouped by what they test:
/// `group::model::test_name`, each running `test_name` with `--model model`.
macro_rules! per_model {
    ($group:ident: [$($model:ident),* $(,)?] $tests:tt) => {
        mod $group {
            $( per_model!(@module $model $tests); )*
        }
    };
    (@module $model:ident [$($test:ident),* $(,)?]) => {
        mod $model {
            $(
                #[test]
                fn $test() {
                    crate::util::as_model(stringify!($model), crate::$test);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// descriptor exhaustion

/// The open-file limit the flooded server runs under: a handful of descriptors for clients.
const FLOOD_FD_LIMIT: u32 = 24;

/// Clients in the flood: well past what [`FLOOD_FD_LIMIT`] leaves for connections.
const FLOOD_CLIENTS: usize = 40;

/// Whether the model holds a descriptor per waiting client, so that the flood must run it out of
/// descriptors (serial serves one client at a time, and the forking parent closes its copy of
/// each connection once the child has it).
fn model_runs_out_of_descriptors() -> bool {
    matches!(util::model(), Some("threaded" | "pool"))
}

/// A flood past the descriptor limit: every client gets its reply or a close — nobody is left
/// waiting in the backlog — and once the flood is gone a new client is served.
fn out_of_descriptors_every_client_gets_a_reply_or_a_close() {
    let server = Server::start_with_fd_limit(
        FLOOD_FD_LIMIT,
        &[
            "--max-connections",
            "1000",
            "--threads",
            "4",
            "echo@127.0.0.1:0",
        ],
    );
    let addr = server.addr("echo");
    let clients: Vec<TcpStream> = (0..FLOOD_CLIENTS).map(|_| connect(addr)).collect();
    // One deadline for the whole flood: a hanging client fails the test, it does not stall it
    // once per client.
    let deadline = Instant::now() + DEADLINE;
    let (mut served, mut closed) = (0, 0);
    // In connect order, each client leaving once answered, so that the pool's queue moves.
    for (i, mut stream) in clients.into_iter().enumerate() {
        let message = format!("client {i}\n");
        let _ = stream.write_all(message.as_bytes()); // Fails if it was closed already.
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no time left for client {i}");
        stream.set_read_timeout(Some(left)).unwrap();
        let mut reply = vec![0; message.len()];
        match stream.read_exact(&mut reply) {
            Ok(()) => {
                assert_eq!(reply, message.as_bytes(), "client {i}");
                served += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "client {i} got neither a reply nor a close ({served} served, {closed} closed \
                 before it); stderr:\n{}",
                server.stderr()
            ),
            Err(_) => closed += 1, // End of stream or a reset: shed for lack of descriptors.
        }
    }
    eprintln!("{served} served, {closed} closed for lack of descriptors");
    assert!(served > 0, "nobody was served");
    if model_runs_out_of_descriptors() {
        assert!(
            closed > 0,
            "the flood never ran the server out of descriptors"
        );
    }
    // The flood is gone: a new client is served (descriptors come back as threads finish).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect(addr);
        let _ = stream.write_all(b"back\n");
        let mut reply = [0; 5];
        if stream.read_exact(&mut reply).is_ok() {
            assert_eq!(&reply, b"back\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume after the flood; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

per_model!(descriptors: [serial, threaded, pool, forking] [
    out_of_descriptors_every_client_gets_a_reply_or_a_close,
]);
