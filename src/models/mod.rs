//! The classic server models oneloop is compared against, driving the very same protocol code.
//!
//! Python's `socketserver` gives the seeds three ways to serve many clients: one at a time
//! (`TCPServer`), a thread per client (`ThreadingMixIn`), a process per client (`ForkingMixIn`);
//! a fixed pool of worker threads is the usual fourth. Here they are in Rust, with blocking std
//! sockets on purpose: they are the foil for the reactor, and the point of the comparison is what
//! blocking costs — a stack and a kernel task per waiting client, a context switch per request.
//!
//! Every model starts from the same [`BoundListener`]s as the reactor and serves each connection
//! with [`serve_blocking`], which feeds the same [`Session`] state machines the reactor uses. So
//! a benchmark of two models compares the models, not two implementations of a protocol. They
//! accept through the same [`Acceptor`], which keeps the backlog moving when the process runs out
//! of file descriptors, as the reactor does (see [`acceptor`]).
//!
//! Chat is the exception to "the same [`Session`]": a room is shared by all its members, so
//! `threaded` and `pool` keep one per chat service behind a lock, and each member's thread writes
//! to the others' sockets itself ([`chat`], the foil to the reactor's routing). `serial` and
//! `forking` do not serve it. Upload is the other exception: its input is mostly a file's bytes,
//! so [`serve_blocking`] hands it to [`upload`], which drives the protocol's
//! [`UploadSession`](crate::protocol::upload::UploadSession) and does the file work — create,
//! write, `fsync`, rename — in the serving thread or process itself, as these models naturally
//! would. Every model serves it.
//!
//! Every driver reads and writes a [`Conn`]: the socket itself, or — for a `tls:` service,
//! under `threaded` and `pool` — a rustls session over it ([`tls`]), whose handshake runs on the
//! connection's own thread, after its PROXY header if there is one. The protocol inside is the
//! one over TCP, byte for byte. `serial` (one slow handshake would hold the whole server) and
//! `forking` refuse `tls:` at start.
//!
//! What a blocking model does not need: `--output-limit` for the stream protocols (a thread
//! blocked in `write` stops reading, and the kernel's socket buffers are the bound; chat is the
//! exception: each member has a bounded queue, see [`chat`]) and fairness budgets (the kernel
//! scheduler shares the CPU between threads). `--max-line` applies unchanged: it lives in the
//! protocol. `--idle-timeout` becomes the socket's read and write timeouts (a blocked `read` or
//! `write` that long means no byte moved that long), and `--max-connections` a count of the
//! connections being served (threads or child processes).
//!
//! ## Graceful shutdown
//!
//! SIGINT and SIGTERM end every model as they end the reactor: stop accepting at once, close idle
//! connections at once, finish writing the replies to requests already read, close, exit 0 —
//! within `--shutdown-timeout`, after which connections still busy are closed; a second signal
//! exits at once. The signal handler only writes to a pipe that the [`Acceptor`]'s poll watches,
//! so the thread that accepts is the one that shuts down:
//!
//! * **threaded, pool, serial** — connections are served on threads (serial has one, and accepts
//!   only while it is free). The acceptor closes the listeners, then [`Admission::stop`] sets the
//!   stop flag and shuts down the reading side of every registered socket: a thread blocked in
//!   `read` sees an end of stream at once, answers what its session still holds, and closes; a
//!   thread busy writing finishes, then stops. The acceptor waits until the last connection has
//!   closed, the timeout has passed, or a second signal has come, and returns `Ok`. The pool's
//!   queued connections, never read, are closed at once.
//! * **forking** — connections are served by child processes, which do not share the parent's
//!   memory, so the parent forwards SIGTERM to each child, and each child's own small handler
//!   (installed right after the fork, see [`crate::sys::stop_gracefully_on_signal`]) does what
//!   [`Admission::stop`] does for a thread. The parent collects the children as they exit
//!   (SIGCHLD, through the same pipe), and kills those still busy at the timeout or at a second
//!   signal.
//!
//! An upload connection stops the same way, with one difference: "requests already read"
//! includes the bytes already received and queued in its socket, so an upload whose body has
//! wholly arrived is still stored and answered, and one cut short by the shutdown is removed
//! (see [`upload`]).
//!
//! [`Admission::stop`]: admission::Admission::stop

pub(crate) mod acceptor;
pub(crate) mod admission;
pub(crate) mod chat;
pub(crate) mod conn;
pub(crate) mod datagram;
pub(crate) mod forking;
pub(crate) mod pool;
mod proxy;
pub(crate) mod serial;
pub(crate) mod threaded;
pub(crate) mod tls;
pub(crate) mod upload;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use signal_hook_mio::v1_0::Signals;
use socket2::SockRef;

use crate::clock::Clock;
use crate::net::systemd::Notifier;
use crate::net::{BlockingStream, BoundListener, Peer, LINGER, TOO_MANY_CONNECTIONS_REPLY};
use crate::options::ServeOptions;
use crate::protocol::{Arrival, Flow, Session};
use crate::service::ProtocolKind;
use crate::sys::unacknowledged_bytes;

pub(crate) use acceptor::{Acceptor, Next};
pub(crate) use admission::{Admission, Admitted};
pub(crate) use conn::Conn;

/// What a blocking model needs from the command line: the options every driver shares, and
/// systemd's notifications, which only the accepting thread sends.
///
/// A connection's thread or process sees only the [`ServeOptions`]: plain data, cloned into each
/// serving thread (or shared behind an [`Arc`]); a forked child has its own copy.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The options shared with the reactor (limits, timeouts, upload directory, ...).
    pub options: ServeOptions,
    /// systemd's notifications (`NOTIFY_SOCKET`; a no-op without it): the acceptor sends
    /// `STOPPING=1` and the watchdog pings.
    pub notifier: Arc<Notifier>,
    /// How often to send `WATCHDOG=1`, when systemd asked for it (`WATCHDOG_USEC`).
    pub watchdog_every: Option<Duration>,
}

impl Settings {
    /// The acceptor every blocking model turns — over `listeners`, stopping on `signals`, and
    /// telling systemd what it asked to hear — and the options its connections are served with.
    pub(crate) fn into_acceptor(
        self,
        listeners: Vec<BoundListener>,
        signals: Signals,
    ) -> io::Result<(Acceptor, ServeOptions)> {
        let mut acceptor = Acceptor::new(listeners, signals)?;
        acceptor.notify_systemd(self.notifier, self.watchdog_every);
        Ok((acceptor, self.options))
    }
}

/// Refuses a connection over the limit: one best-effort line, then close. On a `tls:` service
/// just the close: a plaintext line would only be a bad record to a TLS client.
pub(crate) fn refuse(accepted: &mut Accepted) {
    if accepted.tls {
        return;
    }
    let _ = accepted.stream.set_nonblocking(true);
    let _ = accepted.stream.write(TOO_MANY_CONNECTIONS_REPLY);
}

/// Bytes one blocking connection reads at a time: std's `BufReader` default. The buffer is on
/// the serving thread's stack, so it is part of what each blocked client costs.
pub(crate) const BLOCKING_READ_BYTES: usize = 8 * 1024;

/// An accepted connection, as a blocking std socket, and the protocol it speaks.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The client's socket (TCP or Unix), in blocking mode.
    pub stream: BlockingStream,
    /// The protocol of the listener it arrived on.
    pub protocol: ProtocolKind,
    /// The index of that listener among those the model was given: its service (one chat room
    /// per chat service).
    pub service: usize,
    /// The client's address, for logs.
    pub peer: Peer,
    /// Whether the listener is a `tls:` service: a handshake comes first.
    pub tls: bool,
}

/// Serves one connection on a blocking socket until it ends: read, feed the session, write the
/// replies, repeat. This is the whole protocol driver of the blocking models.
///
/// Under `--proxy-protocol` the connection's PROXY header is read first, within 3 s; the client
/// it names is the `peer` of every later log line, and the bytes that followed it are the
/// session's first input.
///
/// `stopping` is the graceful shutdown: once it is set, the connection reads no more requests;
/// what the protocol still holds is answered as at the client's end of stream, the replies are
/// written, and the connection ends with a lingering close. It is checked before every `read`,
/// and whoever sets it also shuts down this socket's reading side, so a `read` already blocked
/// returns at once.
pub(crate) fn serve_blocking(
    stream: &BlockingStream,
    protocol: ProtocolKind,
    peer: Peer,
    options: &ServeOptions,
    stopping: &AtomicBool,
) {
    // `&BlockingStream` reads and writes: the socket may be shared with the shutdown registry.
    let mut input = [0u8; BLOCKING_READ_BYTES];
    let Some((peer, first)) = proxy::client(stream, peer, options, stopping, &mut input) else {
        return;
    };
    let conn = Conn::Plain(stream);
    serve_stream(conn, protocol, peer, options, stopping, &mut input, first);
}

/// [`serve_blocking`] once the connection's stream is known (after its PROXY header, and under
/// TLS its handshake): `input` is the read buffer, whose first `first` bytes are already the
/// session's first input.
pub(crate) fn serve_stream(
    stream: Conn<'_>,
    protocol: ProtocolKind,
    peer: Peer,
    options: &ServeOptions,
    stopping: &AtomicBool,
    input: &mut [u8],
    mut first: usize,
) {
    if stream.set_read_timeout(options.idle_timeout).is_err()
        || stream.set_write_timeout(options.idle_timeout).is_err()
    {
        return;
    }
    if protocol == ProtocolKind::Upload {
        // Its input is mostly a file's bytes, for a file this thread writes itself.
        return upload::serve(stream, peer, options, stopping, &input[..first]);
    }
    let Some(mut session) = Session::new(protocol, options.limits) else {
        warn!("{peer}: {protocol} is not served by this model; closing");
        return;
    };
    let mut clock = Clock::default();
    let mut replies = Vec::new();
    loop {
        // The bytes that followed a PROXY header, if any, stand for the first read.
        let (count, short) = if first > 0 {
            // Whether that read was short is not known here: the socket is asked below.
            (std::mem::take(&mut first), false)
        } else {
            match read_input(stream, input, stopping, peer) {
                Input::Bytes(count) => (count, count < input.len()),
                Input::Stopping => {
                    return end_for_shutdown(stream, peer, &mut session, options, input);
                }
                Input::End => {
                    replies.clear();
                    session.on_end(&clock.now(), &mut replies);
                    if write_reply(stream, &replies, options.reply_delay).is_ok() {
                        stream.finish();
                    }
                    return;
                }
                Input::Gone => return,
            }
        };
        // As in the reactor, a short read has taken everything there was: the peer has paused.
        // A full read may have emptied the socket exactly, and the next blocking read would wait
        // for ever for a client that is waiting for us: look first, without blocking.
        let arrival = if (short && stream.short_read_drains()) || !more_input_waiting(stream) {
            Arrival::Drained
        } else {
            Arrival::Partial
        };
        replies.clear();
        let flow = session.on_input(&input[..count], arrival, &clock.now(), &mut replies);
        if let Err(e) = write_reply(stream, &replies, options.reply_delay) {
            debug!("{peer}: write failed: {e}");
            return;
        }
        if flow == Flow::Close {
            linger(stream, input);
            return;
        }
    }
}

/// What one blocking read of a served connection brought.
pub(super) enum Input {
    /// This many bytes, at the start of the buffer.
    Bytes(usize),
    /// The client's end of stream.
    End,
    /// The graceful shutdown has begun (checked before the read, and when a read returns 0:
    /// woken by the shutdown's `SHUT_RD`, not by the client, which may still be sending).
    Stopping,
    /// The idle timeout or a socket error: the connection ends here (logged at debug).
    Gone,
}

/// One read, the way every blocking driver reads: the shutdown checked around it, an
/// interrupted read retried, the idle timeout and errors ending the connection.
pub(super) fn read_input(
    mut stream: Conn<'_>,
    buffer: &mut [u8],
    stopping: &AtomicBool,
    peer: Peer,
) -> Input {
    loop {
        if stopping.load(Ordering::Acquire) {
            return Input::Stopping;
        }
        match stream.read(buffer) {
            Ok(0) if stopping.load(Ordering::Acquire) => return Input::Stopping,
            Ok(0) => return Input::End,
            Ok(count) => return Input::Bytes(count),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Under TLS, the shutdown's SHUT_RD is an end without close_notify.
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof && stopping.load(Ordering::Acquire) =>
            {
                return Input::Stopping;
            }
            Err(e) if crate::net::is_timeout(&e) => {
                debug!("{peer}: idle timeout; closing");
                // Under TLS, its close_notify (one write, if the socket takes it).
                stream.finish_at_once();
                return Input::Gone;
            }
            Err(e) => {
                debug!("{peer}: read failed: {e}");
                return Input::Gone;
            }
        }
    }
}

/// The end of a connection at a graceful shutdown: nothing more is read; what the session still
/// holds is answered as at the client's end of stream (a timestamp line without its newline, the
/// tail of a UTF-8 sequence), written, and the connection ends with [`linger_after_stop`].
fn end_for_shutdown(
    stream: Conn<'_>,
    peer: Peer,
    session: &mut Session,
    options: &ServeOptions,
    scratch: &mut [u8],
) {
    debug!("{peer}: shutting down");
    // Usually done already by whoever set the stop flag; `linger_after_stop` relies on it.
    let _ = stream.socket().shutdown(Shutdown::Read);
    let mut replies = Vec::new();
    session.on_end(&Clock::default().now(), &mut replies);
    if let Err(e) = write_reply(stream, &replies, options.reply_delay) {
        debug!("{peer}: write failed: {e}");
        return;
    }
    linger_after_stop(stream, scratch);
}

/// Writes a reply, after sleeping `--reply-delay` if it is set: the blocking models' way of
/// holding a reply (the seeds' `time.sleep(5)`), which holds the whole thread — under `serial`,
/// the whole server. Nothing is slept for an empty reply.
fn write_reply(mut stream: Conn<'_>, replies: &[u8], delay: Option<Duration>) -> io::Result<()> {
    if replies.is_empty() {
        return Ok(());
    }
    if let Some(delay) = delay {
        thread::sleep(delay);
    }
    stream.write_all(replies)?;
    stream.flush()
}

/// Whether bytes are waiting to be read, checked without blocking.
fn more_input_waiting(stream: Conn<'_>) -> bool {
    stream.input_waiting()
}

/// The lingering close, blocking version: shut down our sending side, then read and discard until
/// the peer closes or [`LINGER`] passes, so unread input does not turn the close into an RST.
///
/// Under TLS our close_notify goes first, and what is discarded is ciphertext.
pub(super) fn linger(conn: Conn<'_>, scratch: &mut [u8]) {
    conn.shutdown_write();
    let mut stream = conn.socket();
    let deadline = Instant::now() + LINGER;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// How often [`linger_after_stop`] looks whether the client has everything.
const LINGER_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The lingering close of a connection whose reading side is already shut down (a graceful
/// shutdown): discard input until the client has acknowledged every reply, then send our end of
/// stream, and close once that is acknowledged too — or when [`LINGER`] has passed.
///
/// [`linger`] cannot do here, for two reasons. After `shutdown(SHUT_RD)` a `read` no longer
/// waits: it returns 0 whenever nothing is queued, so the client's own close cannot be waited
/// for. And Linux answers input that arrives after both `SHUT_RD` and our FIN with an RST, which
/// throws away every reply still in our send queue — so the FIN must wait until that queue is
/// empty, that is until the client's kernel has acknowledged all of it (`SIOCOUTQ` says how much
/// is left). From then on an RST can destroy nothing: the client reads its replies, then its end
/// of stream. The queue is looked at every [`LINGER_CHECK_INTERVAL`].
///
/// A client that was still sending is then closed with an RST on purpose. Linux sends no window
/// update on a socket whose reading side is shut down, so such a client would wait on a closed
/// window — for its own timeout — instead of learning that nobody reads any more. (The reactor's
/// close with unread input does the same.)
///
/// Under TLS our close_notify is sealed and written first (the last of the replies), and what
/// is discarded is ciphertext.
pub(super) fn linger_after_stop(conn: Conn<'_>, scratch: &mut [u8]) {
    conn.finish();
    let mut stream = conn.socket();
    let deadline = Instant::now() + LINGER;
    let mut end_of_stream_sent = false;
    let mut client_kept_sending = false;
    loop {
        // Discard what the client sent; after SHUT_RD this never waits (0: nothing queued now).
        let nothing_queued = match stream.read(scratch) {
            Ok(0) => true,
            Ok(_) => {
                client_kept_sending = true;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(_) => return, // Reset by the client, or worse: closing is all that is left.
        };
        match unacknowledged_bytes(stream.as_fd()) {
            Ok(0) if end_of_stream_sent => {
                if client_kept_sending {
                    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
                }
                return;
            }
            Ok(0) => {
                // Fails only if the client is gone, which the next read reports.
                let _ = stream.shutdown(Shutdown::Write);
                end_of_stream_sent = true;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                debug!("cannot read the send queue's length: {e}; closing");
                return;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if nothing_queued {
            thread::sleep(left.min(LINGER_CHECK_INTERVAL));
        }
    }
}
