//! `oneloop client`: the seeds' `client.py`, with blocking std sockets.
//!
//! * With words (`oneloop client 127.0.0.1:9999 Hello world 123`): sends them joined by single
//!   spaces, shuts down its sending side, prints everything the server sends until it closes.
//! * Without words: interactive, like `nc`. Each stdin line is sent (with its newline) as it is
//!   typed, replies are printed as they arrive, and end of input shuts down the sending side;
//!   the client then prints what is left until the server closes.
//!
//! `--timeout SECS` bounds every wait — the connect, and each wait for the server — like
//! `nc -w`: a server silent for that long ends the client with exit code 1.
//!
//! `unix:PATH` works exactly as TCP. Over `tls:HOST:PORT` the conversation is the same, inside
//! TLS (`--tls-ca`, `--tls-server-name`, `--tls-cert`, `--tls-key`): a failed handshake or a
//! certificate that does not verify is one line naming why, exit 1; the close_notify stands for
//! the shutdown of the sending side, and the server's close_notify is its end. One thread owns
//! the session: the socket is non-blocking on a `mio::Poll`, and stdin lines come from a reader
//! thread through a channel and a waker (a second thread writing into the same rustls session
//! would need a lock held across a blocked write: a deadlock with a server that stops reading).
//! Over `udp:HOST:PORT` there is no connection to close: the
//! words are one datagram, or each stdin line (without its newline) is one; each reply is printed
//! on a line of its own (a newline is added when the reply has none, as the seeds' UDP client's
//! `print` does), and a reply that does not come within `--timeout` [5 s] is `no reply`, exit 1.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::net::tls_client::{ClientTls, ClientTlsArgs, TlsClient};
use crate::net::BlockingStream;
use crate::service::Address;

/// `oneloop client ADDRESS [MESSAGE...]`
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Where to connect: HOST:PORT or tcp:HOST:PORT, unix:PATH, udp:HOST:PORT, or
    /// tls:HOST:PORT (TLS over TCP: see --tls-ca).
    pub address: Address,

    /// Words to send, joined by single spaces; without them, stdin lines are sent.
    #[arg(value_name = "MESSAGE")]
    pub message: Vec<String>,

    /// Longest wait, in seconds, for the connection and for each reply [udp: 5].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// The TLS options (with a tls: address).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Parses a positive number of seconds (fractions allowed).
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Runs the client; returns 0 once the server has closed, 1 on any failure.
pub(crate) fn run(args: &ClientArgs) -> ExitCode {
    match talk(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oneloop: {}: {}", args.address, describe(&e, args.timeout));
            ExitCode::FAILURE
        }
    }
}

fn describe(error: &io::Error, timeout: Option<Duration>) -> String {
    match (error.kind(), timeout) {
        (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => {
            format!("no answer within {} s", t.as_secs_f64())
        }
        _ => crate::sys::os_reason(error),
    }
}

/// Connects a blocking stream to a tcp or `unix:` address, waiting at most `timeout`.
pub(crate) fn connect_stream(
    address: &Address,
    timeout: Option<Duration>,
) -> io::Result<BlockingStream> {
    match address {
        Address::Tcp(addr) | Address::Tls { addr, .. } => Ok(BlockingStream::Tcp(match timeout {
            Some(timeout) => TcpStream::connect_timeout(addr, timeout)?,
            None => TcpStream::connect(addr)?,
        })),
        Address::Unix(path) => Ok(BlockingStream::Unix(connect_unix(path, timeout)?)),
        Address::Udp(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a stream needs a tcp or unix: address",
        )),
    }
}

fn talk(args: &ClientArgs) -> io::Result<()> {
    let stream = match &args.address {
        Address::Tcp(_) | Address::Unix(_) => connect_stream(&args.address, args.timeout)?,
        Address::Tls { addr, host } => return talk_tls(args, *addr, host),
        Address::Udp(addr) => {
            return datagrams(
                *addr,
                args,
                &mut io::stdin().lock(),
                &mut io::stdout().lock(),
            )
        }
    };
    stream.set_read_timeout(args.timeout)?;
    stream.set_write_timeout(args.timeout)?;
    let mut writer = stream.try_clone()?;
    if args.message.is_empty() {
        // Stdin is read on its own thread so replies print while the user is still typing.
        std::thread::spawn(move || forward_lines(io::stdin().lock(), writer));
    } else {
        writer.write_all(args.message.join(" ").as_bytes())?;
        writer.shutdown(Shutdown::Write)?;
    }
    print_until_closed(stream)
}

/// Connects to a Unix socket, waiting at most `timeout` (a server whose backlog is full makes a
/// blocking `connect` wait).
///
/// A Unix `connect` has no asynchronous form (a full backlog is `EAGAIN`, not `EINPROGRESS`), so
/// the timeout is the socket's send timeout: Linux waits that long for room in the backlog.
fn connect_unix(path: &std::path::Path, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    let address = socket2::SockAddr::unix(path)?;
    socket.set_write_timeout(timeout)?;
    match socket.connect(&address) {
        Ok(()) => Ok(socket.into()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(io::Error::new(io::ErrorKind::TimedOut, e))
        }
        Err(e) => Err(e),
    }
}

/// How long a UDP client waits for each reply when `--timeout` is not given: a datagram or its
/// reply may be lost, and nothing else would ever end the wait.
pub(crate) const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The client over UDP: one datagram per message (the words, or each input line without its
/// newline), each reply printed on a line of its own as it comes, like the seeds' UDP client.
/// A reply that does not come within the timeout is an error: `no reply`.
fn datagrams(
    server: SocketAddr,
    args: &ClientArgs,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> io::Result<()> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    // Connected: only the server's datagrams are received, and an ICMP "port unreachable" comes
    // back as ECONNREFUSED instead of a silent wait.
    socket.connect(server)?;
    let timeout = args.timeout.unwrap_or(UDP_REPLY_TIMEOUT);
    socket.set_read_timeout(Some(timeout))?;
    let mut reply = vec![0u8; 64 * 1024];
    let mut exchange = |message: &[u8]| -> io::Result<()> {
        socket.send(message)?;
        let count = loop {
            match socket.recv(&mut reply) {
                Ok(count) => break count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(no_reply(e, timeout)),
            }
        };
        output.write_all(&reply[..count])?;
        if !reply[..count].ends_with(b"\n") {
            output.write_all(b"\n")?;
        }
        output.flush()
    };
    if !args.message.is_empty() {
        return exchange(args.message.join(" ").as_bytes());
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        exchange(&line)?;
    }
}

/// The error a missing UDP reply becomes: `no reply`, and why when the OS knows.
fn no_reply(error: io::Error, timeout: Duration) -> io::Error {
    let why = match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("within {} s", timeout.as_secs_f64())
        }
        _ => format!("({})", crate::sys::os_reason(&error)),
    };
    io::Error::other(format!("no reply {why}"))
}

/// Sends each input line as it comes (exactly as typed, newline included), then shuts down the
/// sending side at end of input.
fn forward_lines(mut input: impl BufRead, mut socket: BlockingStream) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if socket.write_all(&line).is_err() {
                    return; // The server is gone; the reading side reports why.
                }
            }
        }
    }
    let _ = socket.shutdown(Shutdown::Write);
}

/// Copies everything the server sends to stdout, flushing as it arrives, until it closes.
fn print_until_closed(mut stream: BlockingStream) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => {
                stdout.write_all(&buffer[..count])?;
                stdout.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The poll token of the TLS client's socket.
const SOCKET: mio::Token = mio::Token(0);

/// The poll token of the waker the stdin thread wakes the TLS client with.
const STDIN: mio::Token = mio::Token(1);

/// Where the TLS client's plaintext comes from.
enum Input {
    /// Stdin lines, from the reader thread (disconnected at end of input).
    Lines(std::sync::mpsc::Receiver<Vec<u8>>),
    /// Everything has been handed over: the close_notify goes once the handshake is done.
    Ended,
}

/// The client over `tls:`: connect, then one loop drives the session (see the module doc).
fn talk_tls(args: &ClientArgs, addr: SocketAddr, host: &str) -> io::Result<()> {
    let tls = ClientTls::new(&args.tls.options()).map_err(io::Error::other)?;
    let mut session = tls.session(host)?;
    let tcp = match args.timeout {
        Some(timeout) => TcpStream::connect_timeout(&addr, timeout)?,
        None => TcpStream::connect(addr)?,
    };
    tcp.set_nodelay(true)?;
    tcp.set_nonblocking(true)?;
    let mut socket = mio::net::TcpStream::from_std(tcp);
    let mut poll = mio::Poll::new()?;
    let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
    poll.registry().register(&mut socket, SOCKET, interest)?;
    let mut pending = Vec::new();
    let mut input = if args.message.is_empty() {
        let waker = mio::Waker::new(poll.registry(), STDIN)?;
        let (lines, received) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || read_lines(io::stdin().lock(), lines, &waker));
        Input::Lines(received)
    } else {
        pending.extend_from_slice(args.message.join(" ").as_bytes());
        Input::Ended
    };
    let mut events = mio::Events::with_capacity(8);
    let mut close_notify_sent = false;
    let mut stdout = io::stdout().lock();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        session.flush(&mut socket)?;
        loop {
            match session.read(&mut socket, &mut buffer) {
                Ok(0) => return Ok(()), // the server's close_notify: its end
                Ok(count) => {
                    stdout.write_all(&buffer[..count])?;
                    stdout.flush()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        send_input(&mut session, &mut socket, &mut pending, &mut input)?;
        if matches!(input, Input::Ended)
            && pending.is_empty()
            && !session.is_handshaking()
            && !close_notify_sent
        {
            session.close_notify(&mut socket)?;
            close_notify_sent = true;
        }
        match poll.poll(&mut events, args.timeout) {
            Ok(()) if events.is_empty() => return Err(io::ErrorKind::TimedOut.into()),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Hands `pending` and then each stdin line that has come to the session, as far as the socket
/// takes them: a new line is taken only once everything before it is out, so a server that
/// stops reading stops the stdin thread (the channel holds one line) instead of filling memory.
fn send_input(
    session: &mut TlsClient,
    socket: &mut mio::net::TcpStream,
    pending: &mut Vec<u8>,
    input: &mut Input,
) -> io::Result<()> {
    loop {
        while !pending.is_empty() {
            match session.write(socket, pending) {
                Ok(count) => drop(pending.drain(..count)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if session.wants_write() {
            return Ok(());
        }
        let Input::Lines(lines) = input else {
            return Ok(());
        };
        match lines.try_recv() {
            Ok(line) => *pending = line,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => *input = Input::Ended,
        }
    }
}

/// The TLS client's stdin thread: each line (newline included) to the channel, with a wake-up;
/// at the end of input the channel is dropped (disconnected), with a last wake-up.
fn read_lines(
    mut input: impl BufRead,
    lines: std::sync::mpsc::SyncSender<Vec<u8>>,
    waker: &mio::Waker,
) {
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if lines.send(line).is_err() {
                    return; // the client is done
                }
                let _ = waker.wake();
            }
        }
    }
    drop(lines);
    let _ = waker.wake();
}
