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

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::service::Address;

/// `oneloop client ADDRESS [MESSAGE...]`
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Where to connect: HOST:PORT or tcp:HOST:PORT.
    pub address: Address,

    /// Words to send, joined by single spaces; without them, stdin lines are sent.
    #[arg(value_name = "MESSAGE")]
    pub message: Vec<String>,

    /// Longest wait, in seconds, for the connection and for each reply.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Runs the client; returns 0 once the server has closed, 1 on any failure.
pub fn run(args: &ClientArgs) -> ExitCode {
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

fn talk(args: &ClientArgs) -> io::Result<()> {
    let Address::Tcp(addr) = args.address else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} addresses are not supported yet",
                args.address.transport()
            ),
        ));
    };
    let stream = match args.timeout {
        Some(timeout) => TcpStream::connect_timeout(&addr, timeout)?,
        None => TcpStream::connect(addr)?,
    };
    stream.set_read_timeout(args.timeout)?;
    stream.set_write_timeout(args.timeout)?;
    if args.message.is_empty() {
        let writer = stream.try_clone()?;
        // Stdin is read on its own thread so replies print while the user is still typing.
        std::thread::spawn(move || forward_lines(io::stdin().lock(), writer));
    } else {
        (&stream).write_all(args.message.join(" ").as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
    }
    print_until_closed(&stream)
}

/// Sends each input line as it comes (exactly as typed, newline included), then shuts down the
/// sending side at end of input.
fn forward_lines(mut input: impl BufRead, mut socket: TcpStream) {
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
fn print_until_closed(mut stream: &TcpStream) -> io::Result<()> {
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
