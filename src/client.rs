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
//! `unix:PATH` works exactly as TCP. Over `udp:HOST:PORT` there is no connection to close: the
//! words are one datagram, or each stdin line (without its newline) is one; each reply is printed
//! on a line of its own (a newline is added when the reply has none, as the seeds' UDP client's
//! `print` does), and a reply that does not come within `--timeout` [5 s] is `no reply`, exit 1.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::net::BlockingStream;
use crate::service::Address;

/// `oneloop client ADDRESS [MESSAGE...]`
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Where to connect: HOST:PORT or tcp:HOST:PORT, unix:PATH, or udp:HOST:PORT.
    pub address: Address,

    /// Words to send, joined by single spaces; without them, stdin lines are sent.
    #[arg(value_name = "MESSAGE")]
    pub message: Vec<String>,

    /// Longest wait, in seconds, for the connection and for each reply [udp: 5].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
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
        Address::Tls { .. } => {
            return Err(io::Error::other("tls: is not served by the client yet"));
        }
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
