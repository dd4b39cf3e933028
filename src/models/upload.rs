//! Upload under the blocking models: the sans-I/O [`UploadSession`] driven step by step, with the
//! file work done right here, in the thread or process that serves the connection.
//!
//! The reactor cannot afford to wait for a disk, so it sends every file operation to I/O threads
//! ([`crate::storage::pool`]). A blocking model has nothing else to do while its connection's
//! file is written: a thread blocked in `fsync` is the same as a thread blocked in `read`, which
//! is what these models are. So the driver here is the protocol's own driver loop, told in its
//! module docs, with [`TempFile`] calls in place of "create the file", "write", "store":
//!
//! * [`Step::Begin`]: a new hidden temporary file in the upload directory, with room reserved
//!   for SIZE bytes under `--min-free` ([`TempFile::reserve`]); then `ok` — or `error no space`
//!   and the end of the connection, the file removed (with `--min-free`, the session holds `ok`
//!   back until this is known: [`UploadSession::with_admission`]). If the file cannot be
//!   created (a full disk, a directory made read-only since the start), the client is told
//!   `error storage failed: REASON` and the connection ends.
//! * [`Step::Body`]: appended to that file as it comes. A failed write (`ENOSPC`, `EIO`) removes
//!   the file at once and ends the connection the same way.
//! * [`Step::BodyDone`]: [`TempFile::commit`] (`fsync`, a rename that never replaces, a directory
//!   `fsync`), then `saved NAME SIZE CRC32HEX` with the name the file got — or `error storage
//!   failed: REASON`, the temporary file removed, and the end of the connection.
//! * [`Step::Refused`]: the error line, then the lingering close (`linger`), so a client that
//!   was already sending its body reads the error instead of a reset.
//!
//! Replies are written after each read has been run down, before the next `read`: `ok` reaches a
//! client that waits for it before sending its body (the seeds' client does), and the `saved`
//! line before the connection reads the next header.
//!
//! ## Cut short, idle, shut down
//!
//! The file being received is owned by the connection's state: whatever ends the
//! connection early — the client's end of stream mid-body, a reset, `--idle-timeout` — drops it,
//! and dropping a [`TempFile`] removes it. So an upload cut short leaves no file, with no clean-up
//! code on each of those paths (the end of stream mid-body discards it explicitly, to log a
//! failure to remove it).
//!
//! At a graceful shutdown the contract keeps uploads "whose bytes have all arrived" and removes
//! the rest. Arrived means received by this host: bytes the thread has read, and bytes waiting in
//! the socket's receive queue, which stay readable after the `shutdown(SHUT_RD)` that woke the
//! thread. So the connection reads what was queued when it noticed the shutdown — no more: the
//! queue's length (`FIONREAD`) bounds it, so a client that keeps sending cannot keep the server
//! from exiting — and runs it through the session as usual; then the session's
//! [`on_end`](UploadSession::on_end) says what is left: a complete body is stored and answered,
//! a partial one is removed and answered `error shutting down`
//! ([`on_shutdown`](UploadSession::on_shutdown)), and an idle connection simply ends. A connection still storing at
//! `--shutdown-timeout` is abandoned with the process (or its forked child is killed): its
//! temporary file is then a crash's leftover, which the next start removes.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use log::{debug, warn};

use crate::net::Peer;
use crate::options::ServeOptions;
use crate::protocol::upload::{End, Step, UploadSession};
use crate::protocol::{Flow, Limits};
use crate::storage::{Room, TempFile, UploadDir};
use crate::sys;

use super::{linger, linger_after_stop, read_input, Conn, Input};

/// Bytes an upload connection reads at a time. Larger than [`super::BLOCKING_READ_BYTES`]: each
/// read is followed by a write to the file, and 64 KiB (the size `oneloop send` writes) makes
/// eight times fewer of both per MiB than 8 KiB would. On the heap, allocated once per
/// connection.
pub(crate) const UPLOAD_READ_BYTES: usize = 64 * 1024;

/// Serves one upload connection on a blocking socket until it ends (see the module docs).
/// `stopping` is the graceful shutdown, as in [`super::serve_blocking`]; the socket's timeouts
/// (`--idle-timeout`) are already set. `first`: bytes already read for the session (what followed
/// a PROXY header), taken before the socket is read.
pub(crate) fn serve(
    stream: Conn<'_>,
    peer: Peer,
    options: &ServeOptions,
    stopping: &AtomicBool,
    first: &[u8],
) {
    let Some(dir) = &options.upload_dir else {
        // `serve` opens the directory whenever an upload service is configured.
        warn!("{peer}: no --upload-dir to store uploads in; closing");
        return;
    };
    let mut connection = Connection::new(peer, dir, options.limits);
    let mut input = vec![0; UPLOAD_READ_BYTES.max(first.len())];
    input[..first.len()].copy_from_slice(first);
    let mut first = first.len();
    loop {
        let count = if first > 0 {
            std::mem::take(&mut first)
        } else {
            match read_input(stream, &mut input, stopping, peer) {
                Input::Bytes(count) => count,
                Input::Stopping => return connection.end_for_shutdown(stream, &mut input),
                Input::End => {
                    connection.end();
                    if connection.flush(stream).is_ok() {
                        stream.finish();
                    }
                    return;
                }
                // An upload in progress goes with the connection: its file is removed.
                Input::Gone => return,
            }
        };
        let flow = connection.feed(&input[..count]);
        if let Err(e) = connection.flush(stream) {
            debug!("{peer}: write failed: {e}");
            return;
        }
        if flow == Flow::Close {
            linger(stream, &mut input);
            return;
        }
    }
}

/// One upload connection: the protocol's state, the file being received, and the replies not
/// yet written.
struct Connection<'a> {
    peer: Peer,
    dir: &'a Arc<UploadDir>,
    session: UploadSession,
    /// The upload whose body is arriving, between [`Step::Begin`] and its commit. Dropping it
    /// removes its temporary file: that is how an upload cut short leaves nothing behind.
    receiving: Option<Receiving>,
    /// Replies (`ok`, `saved ...`, an error line) for the client, written after each read.
    out: Vec<u8>,
}

/// An upload being received: its temporary file and the (cleaned) name the client asked for.
struct Receiving {
    file: TempFile,
    name: String,
}

impl<'a> Connection<'a> {
    fn new(peer: Peer, dir: &'a Arc<UploadDir>, limits: Limits) -> Connection<'a> {
        Connection {
            peer,
            dir,
            // With --min-free, `ok` waits until `begin` has found room (or `error no space`).
            session: if dir.min_free() > 0 {
                UploadSession::with_admission(limits)
            } else {
                UploadSession::new(limits)
            },
            receiving: None,
            out: Vec::new(),
        }
    }

    /// Runs one read's bytes through the session, a step at a time, doing each step's file
    /// work. [`Flow::Close`] once the conversation is over (refused, or storing failed): the
    /// replies are then to be flushed and the connection closed.
    fn feed(&mut self, mut input: &[u8]) -> Flow {
        loop {
            match self.session.on_input(&mut input, &mut self.out) {
                Step::NeedInput => return Flow::Continue,
                Step::Begin { name, size } => self.begin(name, size),
                Step::Body(bytes) => self.write(bytes),
                // The outcome is reported to the session: the next step is the next header, or
                // `Closed` if storing failed.
                Step::BodyDone { .. } => {
                    let _ = self.store();
                }
                Step::Storing | Step::Admitting => {
                    // Never: each BodyDone and Begin is answered before the session is asked
                    // again.
                    debug_assert!(false, "the session waits for an outcome already reported");
                    return Flow::Close;
                }
                Step::Refused(why) => {
                    debug!("{}: refused: {why}", self.peer);
                    return Flow::Close;
                }
                Step::Closed => return Flow::Close,
            }
        }
    }

    /// A header was accepted: the body's temporary file, with its space reserved under
    /// `--min-free` (`ok` then, or `error no space` and the end of the conversation).
    fn begin(&mut self, name: String, size: u64) {
        debug!("{}: receiving {name:?} ({size} bytes)", self.peer);
        let mut file = match TempFile::create(self.dir) {
            Ok(file) => file,
            Err(e) => return self.failed(&name, "cannot create a temporary file", &e),
        };
        match file.reserve(size) {
            Ok(Room::Fits) => {
                self.session.admit(&mut self.out);
                self.receiving = Some(Receiving { file, name });
            }
            Ok(Room::Short { available }) => {
                debug!(
                    "{}: {name:?} ({size} bytes) would leave {available} bytes free, under --min-free; error no space",
                    self.peer
                );
                drop(file); // removes it, and gives its reservation back
                self.session.refuse_no_space(&mut self.out);
            }
            Err(e) => self.failed(&name, "cannot reserve its space", &e),
        }
    }

    /// Body bytes: appended to the file.
    fn write(&mut self, bytes: &[u8]) {
        let Some(receiving) = &mut self.receiving else {
            debug_assert!(false, "body bytes without a file");
            return;
        };
        if let Err(e) = receiving.file.write_all(bytes) {
            let name = receiving.name.clone();
            self.failed(&name, "write failed", &e);
        }
    }

    /// The body is complete: make it durable under a free name, and tell the session how that
    /// went. [`Flow::Close`] if the conversation is now over.
    fn store(&mut self) -> Flow {
        let Some(Receiving { file, name }) = self.receiving.take() else {
            debug_assert!(false, "a complete body without a file");
            self.session.storage_failed("no file", &mut self.out);
            return Flow::Close;
        };
        match file.commit(&name) {
            Ok(stored) => {
                debug!("{}: {name:?}: {stored}", self.peer);
                self.session.stored(&stored.name, &mut self.out)
            }
            Err(e) => {
                // `commit` consumed the file, and removed it on the way out.
                self.failed(&name, "cannot store it", &e);
                Flow::Close
            }
        }
    }

    /// Storing `name` failed: the file (if any) is removed, and the client gets `error storage
    /// failed: REASON`, which ends the conversation.
    fn failed(&mut self, name: &str, what: &str, error: &io::Error) {
        warn!("{}: upload of {name:?}: {what}: {error}", self.peer);
        self.receiving = None;
        self.session
            .storage_failed(&sys::os_reason(error), &mut self.out);
    }

    /// The client's end of stream: what it means for the upload in progress (see [`End`]).
    fn end(&mut self) {
        let end = self.session.on_end(&mut self.out);
        self.finish(end);
    }

    /// Acts on how the input ended (the client's end of stream, or a shutdown's).
    fn finish(&mut self, end: End) {
        match end {
            End::Idle | End::Closed => {}
            End::PartialHeader => debug!("{}: ended in the middle of a header", self.peer),
            End::CutShort { received, size } => {
                debug!(
                    "{}: cut short after {received} of {size} bytes; removing the file",
                    self.peer
                );
                if let Some(Receiving { file, name }) = self.receiving.take() {
                    if let Err(e) = file.discard() {
                        warn!(
                            "{}: cannot remove the temporary file of {name:?}: {e}",
                            self.peer
                        );
                    }
                }
            }
            End::Storing { .. } => {
                let _ = self.store();
            }
        }
    }

    /// Writes the replies gathered so far.
    fn flush(&mut self, mut stream: Conn<'_>) -> io::Result<()> {
        let written = stream.write_all(&self.out).and_then(|()| stream.flush());
        self.out.clear();
        written
    }

    /// A graceful shutdown (see the module docs): what had arrived is still read and served, then
    /// the end of stream decides — a complete body is stored and answered, a partial one removed.
    fn end_for_shutdown(mut self, stream: Conn<'_>, scratch: &mut [u8]) {
        debug!("{}: shutting down", self.peer);
        // Usually done already by whoever set the stop flag; the reads below rely on it: after
        // it a `read` never waits.
        let _ = stream.socket().shutdown(Shutdown::Read);
        let mut arrived = sys::queued_input_bytes(stream.socket().as_fd()).unwrap_or(0);
        loop {
            // Under TLS, also the plaintext the session already holds.
            let count = match stream.read_queued(scratch, &mut arrived) {
                Ok(0) => break,
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let flow = self.feed(&scratch[..count]);
            if self.flush(stream).is_err() {
                return;
            }
            if flow == Flow::Close {
                break;
            }
        }
        // As at an end of stream, but one cut short is told `error shutting down`.
        let end = self.session.on_shutdown(&mut self.out);
        self.finish(end);
        if let Err(e) = self.flush(stream) {
            debug!("{}: write failed: {e}", self.peer);
            return;
        }
        linger_after_stop(stream, scratch);
    }
}
