//! `oneloop send ADDRESS FILE [--name NAME]`: the seeds' upload client, made trustworthy.
//!
//! Seed 001's client sends the file's size, waits for the server's answer, then sends the bytes.
//! This one follows the same conversation (the upload protocol in `../shared/CONTRACT.md`):
//!
//! 1. `SIZE NAME\n`, then wait for `ok` — or print the server's `error ...` line and exit 1.
//! 2. Stream the file in 64 KiB pieces (it is never read whole, so any size fits in a few dozen
//!    KiB of memory), computing its CRC-32 on the way, with a progress bar on standard error when
//!    standard error is a terminal.
//! 3. Wait for `saved NAME SIZE CRC32HEX` — the server's word that the file is durably stored —
//!    and check SIZE and CRC32HEX against what was sent: a mismatch is exit 1, whatever the server
//!    says. The `saved` line is printed (NAME is the name the server stored it under, which may
//!    carry a suffix), exit 0.
//!
//! If the server refuses mid-body (`error storage failed: ...`, then it closes), sending fails;
//! the client then reads what the server said and prints that line rather than a bare "broken
//! pipe". Every wait is bounded by `--timeout`.
//!
//! Over `tls:HOST:PORT` the upload is the same conversation inside TLS (the `--tls-*` options as
//! for `client`): the handshake is completed first (a refusal is one line naming why, exit 1),
//! and the session ends with a close_notify once the `saved` line is in.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::net::tls_client::{BlockingTls, ClientTls, ClientTlsArgs};
use crate::net::BlockingStream;
use crate::service::Address;

/// `oneloop send ADDRESS FILE [--name NAME]`
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The upload service: HOST:PORT, tcp:HOST:PORT, unix:PATH or tls:HOST:PORT.
    pub address: Address,

    /// The file to upload.
    pub file: PathBuf,

    /// Store it under this name instead of the file's own (the server still removes any path
    /// parts, and adds a suffix if the name is taken).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Longest wait, in seconds, for the connection and for each answer (the last one comes
    /// after the server has written and fsync'd the whole file).
    #[arg(long, value_name = "SECS", value_parser = crate::client::parse_seconds, default_value = "60")]
    pub timeout: Duration,

    /// The TLS options (with a tls: address).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Bytes read from the file and written to the socket at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// Longest answer line accepted from the server (a `saved` line with a 255-byte name is ~290).
const MAX_ANSWER_BYTES: usize = 4096;

/// Runs `oneloop send`: 0 once the server has stored the file and its size and CRC-32 match,
/// 1 on any failure or refusal, 2 for a name that cannot be sent.
pub(crate) fn run(args: &SendArgs) -> ExitCode {
    if let Address::Udp(_) = args.address {
        eprintln!("oneloop: send: uploads need a stream: a tcp, unix: or tls: address, not udp:");
        return ExitCode::from(2);
    }
    let name = match header_name(args) {
        Ok(name) => name,
        Err(why) => {
            eprintln!("oneloop: send: {why}");
            return ExitCode::from(2);
        }
    };
    match send(args, &name) {
        Ok(Outcome::Saved(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(line)) => {
            println!("{line}");
            ExitCode::FAILURE
        }
        Ok(Outcome::Mismatch(why)) => {
            eprintln!("oneloop: send: {why}");
            ExitCode::FAILURE
        }
        Ok(Outcome::NotUpload(line)) => {
            eprintln!(
                "oneloop: {} does not look like an upload service (it answered: {line})",
                args.address
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            let reason = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no answer within {} s", args.timeout.as_secs_f64())
                }
                _ => crate::sys::os_reason(&e),
            };
            eprintln!("oneloop: send: {}: {reason}", args.address);
            ExitCode::FAILURE
        }
    }
}

/// How an upload ended.
#[derive(Debug)]
enum Outcome {
    /// `saved NAME SIZE CRC32HEX`, matching what was sent.
    Saved(String),
    /// The server's `error ...` line (or another answer than expected).
    Refused(String),
    /// The server's `saved` line does not match what was sent.
    Mismatch(String),
    /// The first answer to the header was neither `ok` nor an `error ...` line: another
    /// service (echo sends the header back, timestamp stamps it, chat greets).
    NotUpload(String),
}

/// The name for the header: `--name`, or the file's own name. It must fit on the header line.
fn header_name(args: &SendArgs) -> Result<String, String> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "{}: no file name to store it under that is UTF-8 (give one with --name)",
                    args.file.display()
                )
            })?,
    };
    if name.is_empty() || name.contains(['\n', '\r']) {
        return Err(format!(
            "{name:?}: a name must be non-empty and fit on one line"
        ));
    }
    Ok(name)
}

fn send(args: &SendArgs, name: &str) -> io::Result<Outcome> {
    let mut file = open_regular(&args.file)?;
    let size = file.metadata()?.len();
    let mut stream = connect(args)?;
    let mut answers = Answers::default();

    stream.write_all(format!("{size} {name}\n").as_bytes())?;
    let answer = answers.line(&mut stream)?;
    if answer != "ok" {
        return Ok(first_answer_refusal(answer));
    }

    let progress = Progress::new(size);
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = vec![0; CHUNK_BYTES];
    let mut sent: u64 = 0;
    while sent < size {
        let want = usize::try_from(size - sent).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        let count = match file.read(&mut buffer[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} shrank while it was sent ({sent} of {size} bytes)",
                        args.file.display()
                    ),
                ))
            }
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crc.update(&buffer[..count]);
        if let Err(e) = stream.write_all(&buffer[..count]) {
            // The server may have refused mid-body and closed: its reason beats "broken pipe".
            progress.finish();
            return match answers.line(&mut stream) {
                Ok(line) if is_error_line(&line) => Ok(Outcome::Refused(line)),
                _ => Err(e),
            };
        }
        sent += count as u64;
        progress.set(sent);
    }
    progress.finish();
    stream.flush()?;
    let crc = crc.finalize();
    let answer = answers.line(&mut stream)?;
    stream.finish();
    Ok(check_saved(answer, size, crc))
}

/// The upload's connection: a plain stream, or a TLS session over TCP.
enum Connection {
    /// TCP or Unix.
    Plain(BlockingStream),
    /// TLS over TCP, the handshake done.
    Tls(Box<BlockingTls>),
}

/// Connects to the upload service, every wait bounded by `--timeout` (over `tls:` the
/// handshake too).
fn connect(args: &SendArgs) -> io::Result<Connection> {
    let timeout = Some(args.timeout);
    if let Address::Tls { addr, host } = &args.address {
        let tls = ClientTls::new(&args.tls.options()).map_err(io::Error::other)?;
        let tcp = std::net::TcpStream::connect_timeout(addr, args.timeout)?;
        tcp.set_read_timeout(timeout)?;
        tcp.set_write_timeout(timeout)?;
        tcp.set_nodelay(true)?;
        return Ok(Connection::Tls(Box::new(
            tls.handshake_blocking(host, tcp)?,
        )));
    }
    let stream = crate::client::connect_stream(&args.address, timeout)?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    Ok(Connection::Plain(stream))
}

impl Connection {
    /// Ends the conversation: over TLS, the close_notify (best effort: the answer is in).
    fn finish(&mut self) {
        if let Connection::Tls(tls) = self {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.read(buf),
            Connection::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.write(bytes),
            Connection::Tls(tls) => tls.write(bytes),
        }
    }

    /// Over TLS, sends what rustls still holds (plain streams hold nothing).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(_) => Ok(()),
            Connection::Tls(tls) => tls.flush(),
        }
    }
}

/// Opens `path` for reading, refusing what is not a regular file (a directory, a FIFO whose
/// size says nothing).
fn open_regular(path: &Path) -> io::Result<File> {
    let file = File::open(path).map_err(|e| named(path, e))?;
    if !file.metadata().map_err(|e| named(path, e))?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(file)
}

fn named(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("{}: {}", path.display(), crate::sys::os_reason(&error)),
    )
}

/// What a first answer other than `ok` means: the server's refusal if it is an `error ...` line,
/// else a sign that ADDRESS is some other service (the contract's wording for both).
fn first_answer_refusal(answer: String) -> Outcome {
    if is_error_line(&answer) {
        Outcome::Refused(answer)
    } else {
        Outcome::NotUpload(answer)
    }
}

/// Whether `line` is an `error ...` line: `error` alone, or followed by a space and a reason.
fn is_error_line(line: &str) -> bool {
    line == "error" || line.starts_with("error ")
}

/// The server's last answer, checked against what was sent.
fn check_saved(answer: String, size: u64, crc: u32) -> Outcome {
    let Some(rest) = answer.strip_prefix("saved ") else {
        return Outcome::Refused(answer);
    };
    // NAME may contain spaces: SIZE and CRC32HEX are the last two words.
    let mut words = rest.rsplitn(3, ' ');
    let (Some(their_crc), Some(their_size), Some(_name)) =
        (words.next(), words.next(), words.next())
    else {
        return Outcome::Refused(answer);
    };
    let expected_crc = format!("{crc:08x}");
    if their_size != size.to_string() || their_crc != expected_crc {
        return Outcome::Mismatch(format!(
            "the server answered {answer:?}, but {size} bytes with CRC-32 {expected_crc} were sent"
        ));
    }
    Outcome::Saved(answer)
}

/// Reads the server's answer lines.
#[derive(Debug, Default)]
struct Answers {
    buffer: Vec<u8>,
}

impl Answers {
    /// The next line, without its newline (and `\r`). End of stream before a newline is an
    /// error, and so is a line longer than [`MAX_ANSWER_BYTES`].
    fn line(&mut self, stream: &mut impl Read) -> io::Result<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]);
                return Ok(text.trim_end_matches('\r').to_string());
            }
            if self.buffer.len() > MAX_ANSWER_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server's answer is not a line",
                ));
            }
            let mut piece = [0; 1024];
            let count = match stream.read(&mut piece) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if count == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without an answer",
                ));
            }
            self.buffer.extend_from_slice(&piece[..count]);
        }
    }
}

/// A progress bar on standard error, only when it is a terminal (a script's logs get none).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(size: u64) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec}, {eta} left",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    fn set(&self, sent: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(sent);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_line_must_match_what_was_sent() {
        let crc = crc32fast::hash(b"123456789");
        assert_eq!(crc, 0xcbf4_3926, "zlib.crc32's check value");
        let ok = check_saved("saved my file.txt 9 cbf43926".into(), 9, crc);
        assert!(matches!(ok, Outcome::Saved(line) if line.contains("my file.txt")));
        assert!(matches!(
            check_saved("saved x 8 cbf43926".into(), 9, crc),
            Outcome::Mismatch(_)
        ));
        assert!(matches!(
            check_saved("saved x 9 00000000".into(), 9, crc),
            Outcome::Mismatch(_)
        ));
        assert!(matches!(
            check_saved("error storage failed: disk full".into(), 9, crc),
            Outcome::Refused(_)
        ));
    }

    #[test]
    fn a_first_answer_that_is_neither_ok_nor_error_is_another_service() {
        for other in [
            "5 x.txt",
            "[Mon Dec  7 03:00:00 2026] 5 x.txt",
            "5 X.TXT",
            "errors",
        ] {
            assert!(
                matches!(first_answer_refusal(other.into()), Outcome::NotUpload(l) if l == other),
                "{other:?}"
            );
        }
        for error in ["error too large", "error no space", "error"] {
            assert!(matches!(
                first_answer_refusal(error.into()),
                Outcome::Refused(_)
            ));
        }
    }
}
