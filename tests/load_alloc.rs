//! `oneloop load` allocates nothing per request once the load is under way: it is the instrument
//! the benchmarks measure the server with, and an allocator call per request would be a cost (and
//! a source of jitter) charged to every figure.
//!
//! This test binary counts every heap allocation of its process with a wrapping global
//! allocator, runs the load generator in process (the library's [`oneloop::load::run_with`])
//! against a fake echo server of std threads that allocates nothing once a connection is up,
//! and compares the allocations between two progress reports, a second apart, with the requests
//! verified in between. It is a file of its own because a global allocator is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use oneloop::load::{self, LoadConfig, Progress};
use oneloop::service::Address;
use oneloop::service::ProtocolKind;

/// The system allocator, counting the allocations (and reallocations) made through it.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed unchanged to the system allocator; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A server of `protocol` on 127.0.0.1 port 0, a thread per connection, each with a buffer on
/// its stack: after the accept, nothing on the heap. Upper upper-cases ASCII (all the load
/// generator sends); timestamp stamps each line, or each piece of one, as it is read.
fn start_server(protocol: ProtocolKind) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // A stamp and its line are two writes: Nagle would hold the second back.
            stream.set_nodelay(true).unwrap();
            thread::spawn(move || {
                let mut buffer = [0; 16 * 1024];
                while let Ok(count @ 1..) = stream.read(&mut buffer) {
                    let input = &mut buffer[..count];
                    let answered = match protocol {
                        ProtocolKind::Upper => {
                            input.make_ascii_uppercase();
                            stream.write_all(input)
                        }
                        ProtocolKind::Timestamp => input
                            .split_inclusive(|&b| b == b'\n')
                            .try_for_each(|piece| {
                                stream.write_all(b"[Wed Sep  9 16:42:46 2026] ")?;
                                stream.write_all(piece)
                            }),
                        _ => stream.write_all(input),
                    };
                    if answered.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A UDP echo server on 127.0.0.1 port 0, one thread, one buffer on its stack.
fn start_udp_server() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buffer = [0; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(&buffer[..len], from);
        }
    });
    addr
}

#[test]
fn the_load_generator_allocates_nothing_per_request() {
    // Small requests; several per connection; and requests larger than a socket buffer, whose
    // unsent bytes must be kept between writes.
    // And over UDP: a datagram per request, several in flight per socket.
    for (protocol, size, pipeline, udp) in [
        (ProtocolKind::Upper, 64, 1, false),
        (ProtocolKind::Timestamp, 1000, 8, false),
        (ProtocolKind::Echo, 256 * 1024, 2, false),
        (ProtocolKind::Echo, 64, 4, true),
    ] {
        let mut config = if udp {
            LoadConfig::new(Address::Udp(start_udp_server()))
        } else {
            LoadConfig::new(start_server(protocol))
        };
        config.protocol = protocol;
        config.connections = 8;
        config.threads = 2;
        config.size = size;
        config.pipeline = pipeline;
        config.duration = Duration::from_millis(2500);
        // (allocations, requests) at each progress report of the load; a fixed array, so that
        // recording allocates nothing either.
        let mut samples = [(0u64, 0u64); 8];
        let mut taken = 0;
        let report = load::run_with(&config, |progress| {
            if let Progress::Running { requests, .. } = *progress {
                if taken < samples.len() {
                    samples[taken] = (ALLOCATIONS.load(Ordering::Relaxed), requests);
                    taken += 1;
                }
            }
        })
        .expect("the run starts");
        assert!(report.succeeded(), "{}", report);
        assert!(taken >= 2, "only {taken} progress reports");
        // From the first report (the load under way for a second) to the last.
        let (first, last) = (samples[0], samples[taken - 1]);
        let (allocations, requests) = (last.0 - first.0, last.1 - first.1);
        eprintln!("{size}-byte requests, pipeline {pipeline}: {allocations} allocations in {requests} requests");
        // A few allocations by the runtime are tolerated; one per request, or per fiftieth, not.
        assert!(requests >= 100, "{requests} requests");
        assert!(
            allocations * 50 < requests,
            "{allocations} allocations in {requests} requests ({size}-byte requests, pipeline {pipeline})"
        );
    }
}
