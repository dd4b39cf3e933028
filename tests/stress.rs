//! Volume: thousands of connections open at once, and tens of megabytes through one connection
//! with sending and receiving at the same time. Every reply is checked byte for byte; nothing
//! here measures speed.

mod util;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    connect, half_close, read_exact_within, read_to_end_within, send, Pseudo, Server, DEADLINE,
};

/// Connections held open at once by [`many_concurrent_connections_are_each_answered`].
const CONNECTIONS: usize = 2000;

#[test]
fn many_concurrent_connections_are_each_answered() {
    let limit = util::raise_fd_limit();
    // Our sockets, plus the harness's pipes and files, must fit under our own limit.
    let count = CONNECTIONS.min(
        usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(64),
    );
    if count < 1000 {
        eprintln!("skipped: this process may open only {limit} files, too few for 1,000 sockets");
        return;
    }
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let idle_fds = server.open_fds();

    let mut streams: Vec<TcpStream> = (0..count).map(|_| connect(addr)).collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        send(stream, format!("hello from connection {i}\n").as_bytes());
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let expected = format!("hello from connection {i}\n");
        let got = read_exact_within(stream, expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            expected,
            "connection {i} got another's reply"
        );
    }
    // Every connection is open in the server at once (each reply proves it was accepted).
    let open_fds = server.open_fds();
    assert!(
        open_fds >= idle_fds + count,
        "the server holds {open_fds} descriptors with {count} clients connected (idle: {idle_fds})"
    );

    // A second round on the same connections, in reverse order.
    for (i, stream) in streams.iter_mut().enumerate().rev() {
        send(stream, format!("round two {i}").as_bytes());
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let expected = format!("round two {i}");
        assert_eq!(
            String::from_utf8_lossy(&read_exact_within(stream, expected.len())),
            expected
        );
    }

    // Half of them leave politely, half abruptly; the server must release every one.
    for (i, stream) in streams.drain(..).enumerate() {
        if i % 2 == 0 {
            half_close(&stream);
        }
        drop(stream);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut now_open = server.open_fds();
    while now_open > idle_fds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        now_open = server.open_fds();
    }
    assert!(
        now_open <= idle_fds,
        "the server still holds {now_open} descriptors after every client left (idle: \
         {idle_fds}): connections leak"
    );

    // And still serves.
    let mut stream = connect(addr);
    send(&mut stream, b"after the crowd");
    assert_eq!(read_exact_within(&mut stream, 15), b"after the crowd");
    server.assert_running();
}

/// Sends `total` bytes made by `make` (called with a fresh buffer for each 64 KiB write) from a
/// writer thread while this thread reads the reply and checks it against `expected(chunk)` for
/// the same chunks, byte for byte; then expects a clean end of stream after the writer's
/// half-close.
fn stream_through(
    addr: SocketAddr,
    total: usize,
    seed: u64,
    make: fn(&mut Pseudo, &mut [u8]),
    expected: fn(&[u8]) -> Vec<u8>,
) {
    const CHUNK: usize = 64 * 1024;
    let mut stream = connect(addr);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut source = Pseudo::new(seed);
            let mut chunk = vec![0; CHUNK];
            let mut sent = 0;
            while sent < total {
                let size = CHUNK.min(total - sent);
                make(&mut source, &mut chunk[..size]);
                send(&mut stream, &chunk[..size]);
                sent += size;
            }
            half_close(&stream);
        })
    };

    let mut source = Pseudo::new(seed);
    let mut chunk = vec![0; CHUNK];
    let mut checked = 0;
    while checked < total {
        let size = CHUNK.min(total - checked);
        make(&mut source, &mut chunk[..size]);
        let want = expected(&chunk[..size]);
        let got = read_exact_within(&mut stream, want.len());
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "byte {} of the reply is {:#04x}, expected {:#04x}",
                checked + at,
                got[at],
                want[at]
            );
        }
        checked += size;
    }
    writer.join().expect("the writer thread");
    let rest = read_to_end_within(&mut stream);
    assert!(
        rest.is_empty(),
        "{} bytes more than were sent came back",
        rest.len()
    );
}

#[test]
fn sixty_four_mib_through_echo_in_both_directions_at_once() {
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    stream_through(
        server.addr("echo"),
        64 << 20,
        0xec40,
        |source, chunk| source.fill(chunk),
        |chunk| chunk.to_vec(),
    );
    server.assert_running();
}

#[test]
fn sixteen_mib_through_upper_in_both_directions_at_once() {
    let mut server = Server::start(&["upper@127.0.0.1:0"]);
    stream_through(
        server.addr("upper"),
        16 << 20,
        0x0bbe,
        |source, chunk| {
            // Lowercase ASCII text with spaces and newlines.
            source.fill(chunk);
            for byte in chunk.iter_mut() {
                *byte = match *byte % 32 {
                    0..=25 => b'a' + *byte % 32,
                    26..=29 => b' ',
                    _ => b'\n',
                };
            }
        },
        |chunk| chunk.to_ascii_uppercase(),
    );
    server.assert_running();
}

#[test]
fn a_reset_in_the_middle_of_a_transfer_harms_no_one_else() {
    // A client that vanishes with replies still queued for it must cost only itself.
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let mut bystander = connect(addr);
    for round in 0..20 {
        let mut doomed = connect(addr);
        let mut bulk = vec![0; 1 << 20];
        Pseudo::new(round).fill(&mut bulk);
        // Write without reading, then close: unread data makes our kernel send a reset.
        doomed
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = io::Write::write(&mut doomed, &bulk);
        drop(doomed);
        let message = format!("bystander round {round}\n");
        send(&mut bystander, message.as_bytes());
        assert_eq!(
            read_exact_within(&mut bystander, message.len()),
            message.as_bytes()
        );
    }
    let mut sink = [0; 1];
    bystander
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        matches!(bystander.read(&mut sink), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the bystander got bytes it did not send"
    );
    server.assert_running();
}

/// Writes `input` from a thread in `piece`-byte writes and returns the whole reply, read on
/// this thread until the server closes after the writer's half-close.
fn round_trip(addr: SocketAddr, input: Vec<u8>, piece: usize) -> Vec<u8> {
    let mut stream = connect(addr);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            for chunk in input.chunks(piece) {
                send(&mut stream, chunk);
            }
            half_close(&stream);
        })
    };
    let reply = read_to_end_within(&mut stream);
    writer.join().expect("the writer thread");
    reply
}

#[test]
fn megabytes_of_multibyte_text_through_upper_keep_every_character_whole() {
    // Writes of an odd size (a prime) cut two-, three- and four-byte characters at every kind of
    // offset, and the server's reads cut them again wherever TCP splits the stream.
    let mut server = Server::start(&["upper@127.0.0.1:0"]);
    let sample = "straße ǆ 𐐨𐐩 émigré ﬁne Ελλάδα ｅ ";
    let text = sample.repeat((4 << 20) / sample.len());
    let expected = text.to_uppercase();
    let reply = round_trip(server.addr("upper"), text.into_bytes(), 65_521);
    util::assert_bytes_eq(&reply, expected.as_bytes(), "4 MiB of multibyte text");
    server.assert_running();
}

#[test]
fn megabytes_of_lines_through_timestamp_are_each_stamped() {
    let mut server = Server::start(&["timestamp@127.0.0.1:0"]);
    let mut source = Pseudo::new(0x7157);
    let mut input = Vec::with_capacity(4 << 20);
    let mut number = [0u8; 8];
    while input.len() < 4 << 20 {
        source.fill(&mut number);
        // Lines of 0 to 999 bytes: empty lines too.
        let len = usize::from(u16::from_le_bytes([number[0], number[1]]) % 1000);
        input.resize(input.len() + len, b'a' + number[2] % 26);
        input.push(b'\n');
    }
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    let reply = round_trip(server.addr("timestamp"), input.clone(), 65_521);
    let pieces = util::check_stamped_reply(&reply, &input).unwrap_or_else(|e| panic!("{e}"));
    assert!(pieces >= lines, "{pieces} stamps for {lines} lines");
    server.assert_running();
}

/// A connection that streams through echo, both ways, until told to stop: one thread writes,
/// another reads and counts. Endless on purpose, so that whatever happens while it runs happens
/// *during* a bulk transfer, not after it.
struct EndlessBulk {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicUsize>,
    writer: thread::JoinHandle<()>,
    reader: thread::JoinHandle<()>,
}

impl EndlessBulk {
    fn start(addr: SocketAddr) -> EndlessBulk {
        let stream = connect(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (mut stream, stop) = (stream.try_clone().unwrap(), Arc::clone(&stop));
            thread::spawn(move || {
                let chunk = vec![b'b'; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if io::Write::write_all(&mut stream, &chunk).is_err() {
                        break;
                    }
                }
                half_close(&stream);
            })
        };
        let reader = {
            let (mut stream, echoed) = (stream, Arc::clone(&echoed));
            thread::spawn(move || {
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(count @ 1..) = stream.read(&mut buffer) {
                    echoed.fetch_add(count, Ordering::Relaxed);
                }
            })
        };
        EndlessBulk {
            stop,
            echoed,
            writer,
            reader,
        }
    }

    fn echoed(&self) -> usize {
        self.echoed.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.writer.join().expect("bulk writer");
        self.reader.join().expect("bulk reader");
    }
}

#[test]
fn a_bulk_transfer_does_not_starve_other_clients() {
    // One connection streams through echo without end while another does request-and-reply
    // round trips on the same service: the round trips must be answered while the bulk keeps
    // flowing. A server that served one client until it paused (the serial model, or a loop
    // without a read budget) would leave the round trips waiting until the deadline.
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    let bulk = EndlessBulk::start(addr);
    let deadline = Instant::now() + DEADLINE;
    while bulk.echoed() < 4 << 20 {
        assert!(
            Instant::now() < deadline,
            "the bulk transfer never got going"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let mut small = connect(addr);
    let before = bulk.echoed();
    for round_trip in 0..50 {
        let message = format!("round trip {round_trip}\n");
        send(&mut small, message.as_bytes());
        assert_eq!(
            read_exact_within(&mut small, message.len()),
            message.as_bytes()
        );
    }
    let during = bulk.echoed() - before;
    eprintln!("50 round trips answered while {during} bulk bytes were echoed");
    assert!(
        during > 0,
        "the bulk transfer stalled during the round trips"
    );
    bulk.stop();
    server.assert_running();
}
