//! Uploads in the loop: the protocol decides, I/O threads touch the disk, the loop only routes.
//!
//! An upload's bytes arrive on a socket the loop reads like any other, and the sans-I/O
//! [`UploadSession`] says what they mean: a header (`Begin`), body bytes (`Body`), the end of the
//! body (`BodyDone`). None of that may touch the disk here — a `write` to a file can wait for the
//! page cache, an `fsync` for the disk, and a one-thread server that waits serves nobody — so
//! every file operation becomes an [`Op`] for the [`StoragePool`]'s I/O threads, and its answer
//! comes back as a [`Completion`] when the pool's [`mio::Waker`] wakes the poll
//! ([`STORAGE_TOKEN`](super::STORAGE_TOKEN)).
//!
//! Three rules keep that safe:
//!
//! * **Back-pressure, not buffering.** Body bytes are gathered into chunks of [`CHUNK_BYTES`];
//!   while [`MAX_WRITES_IN_FLIGHT`] chunks of a connection are with the I/O threads, or the pool
//!   refuses an op because it is full, the loop stops reading that connection. The bytes of the
//!   read that was being handled wait in the connection (at most one read), and the rest waits
//!   in the kernel's socket buffer, where TCP flow control slows the client down. However fast a
//!   client sends, an upload holds a few chunks of memory.
//! * **Every upload ends with a commit or a discard.** A body that arrives whole is committed
//!   (fsync, rename without replacing, directory fsync) and only then answered `saved ...`; an
//!   upload cut short — end of stream mid-body, a reset, the idle timeout, a shutdown — is
//!   discarded when its connection is reaped, so no partial file stays. A discard the pool cannot
//!   take at once waits in a list the loop retries every time completions are drained.
//! * **`ok` after the room is known.** With `--min-free`, the upload's first op ([`Op::Begin`])
//!   also reserves its SIZE and reads the free space on an I/O thread (`fallocate`, `fstatvfs`:
//!   file-system calls the loop must not make); the session holds `ok` back until that answer
//!   comes ([`UploadSession::with_admission`]), and the client is not read meanwhile. So
//!   `error no space` comes instead of `ok`, from a figure that is never stale (see
//!   [`crate::storage::durable`], "Room").
//! * **Serial numbers, not slab keys.** Completions name their upload by a serial number that is
//!   never reused; a connection that closed while its op was in flight has no serial any more,
//!   and its late completion is dropped.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use log::{debug, trace, warn};
use mio::Waker;

use crate::clock::Now;
use crate::protocol::upload::{Step, UploadSession};
use crate::protocol::Limits;
use crate::storage::durable::UploadDir;
use crate::storage::pool::{
    Completion, IoThread, Op, Outcome, StoragePool, SubmitError, DEFAULT_IO_THREADS,
    DEFAULT_QUEUE_PER_THREAD,
};

use super::handler::{self, Client, Handler};
use super::Reactor;

/// Body bytes gathered before they are handed to an I/O thread as one write.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks of one connection that may be with the I/O threads at once before the loop stops
/// reading it: two, so the disk writes one while the socket fills the next.
pub const MAX_WRITES_IN_FLIGHT: u8 = 2;

/// How the log says an op runs under `--upload-io loop`, the foil.
const IN_LOOP: &str = "in the loop itself (--upload-io loop): every other client waits meanwhile";

/// Emptied chunk buffers kept for reuse (no allocation per chunk in the steady state).
const SPARE_CHUNKS: usize = 16;

/// The loop's side of the storage: the I/O pool, which connection each upload belongs to, and
/// what is waiting to be retried.
pub struct Uploads {
    pool: StoragePool,
    /// Upload serial number → slab key of its connection.
    owners: HashMap<u64, usize>,
    next_serial: u64,
    /// Emptied chunk buffers, back from the I/O threads.
    spare_chunks: Vec<Vec<u8>>,
    /// Discards of uploads whose connection is gone, waiting for room in the pool.
    orphan_discards: Vec<u64>,
    /// Connections with ops the pool refused for lack of room: a worker is shared by many
    /// uploads, so room may come from another connection's completion, and these must be
    /// retried at every drain, not only at their own completions.
    blocked: Vec<usize>,
    /// Reused list of drained completions.
    completions: Vec<Completion>,
    /// `--min-free` is on: `ok` waits for the I/O thread's answer to [`Op::Begin`], which
    /// reserves the upload's room (the loop never calls `statvfs` itself).
    admission: bool,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("in_flight", &self.pool.in_flight())
            .field("uploads", &self.owners.len())
            .field("orphan_discards", &self.orphan_discards.len())
            .finish()
    }
}

impl Uploads {
    /// Starts the I/O threads for uploads into `dir`; they wake the loop through `waker`. With
    /// `in_loop` there are none: file operations run in the loop itself (`--upload-io loop`, the
    /// foil that shows what that costs).
    pub fn start(
        dir: Arc<UploadDir>,
        waker: Arc<Waker>,
        in_loop: bool,
    ) -> std::io::Result<Uploads> {
        let admission = dir.min_free() > 0;
        let pool = if in_loop {
            StoragePool::in_caller(dir, DEFAULT_QUEUE_PER_THREAD, waker)
        } else {
            StoragePool::new(dir, DEFAULT_IO_THREADS, DEFAULT_QUEUE_PER_THREAD, waker)?
        };
        Ok(Uploads {
            pool,
            owners: HashMap::new(),
            next_serial: 1,
            spare_chunks: Vec::new(),
            orphan_discards: Vec::new(),
            blocked: Vec::new(),
            completions: Vec::new(),
            admission,
        })
    }

    /// Takes the completions that are ready (the waker fired), recycling write buffers and
    /// retrying orphaned discards. Returns each with the slab key of its connection, if it still
    /// has one.
    pub fn drain(&mut self, out: &mut Vec<(usize, Completion)>) {
        self.pool.drain(&mut self.completions);
        for mut completion in self.completions.drain(..) {
            if let Some(mut buffer) = completion.buffer.take() {
                if self.spare_chunks.len() < SPARE_CHUNKS {
                    buffer.clear();
                    self.spare_chunks.push(buffer);
                }
                completion.buffer = Some(Vec::new()); // marks a write's completion
            }
            let last = matches!(
                completion.outcome,
                Outcome::Committed(_) | Outcome::Discarded | Outcome::NoSpace { .. }
            );
            let owner = if last {
                self.owners.remove(&completion.upload)
            } else {
                self.owners.get(&completion.upload).copied()
            };
            match owner {
                Some(key) => out.push((key, completion)),
                None => trace!(
                    "upload #{}: {} {}; its connection is gone, so nobody is told",
                    completion.upload,
                    self.pool.thread_of(completion.upload),
                    Answer(&completion.outcome)
                ),
            }
        }
        self.retry_orphans();
    }

    /// Stops the I/O threads, letting them finish what was submitted (at most `timeout`).
    pub fn shut_down(self, timeout: std::time::Duration) {
        let left = self.pool.shutdown(timeout);
        if !left.is_empty() {
            debug!(
                "storage: {} completions came after their connections closed",
                left.len()
            );
        }
    }

    /// The connection of upload `serial` is being removed. Cut short (its commit never handed
    /// over), the upload's temporary file is discarded; otherwise its commit goes on, and its
    /// answer, which nobody will read, is dropped.
    pub fn forget(&mut self, serial: u64, cut_short: bool) {
        self.owners.remove(&serial);
        if cut_short {
            self.discard_orphan(serial);
        }
    }

    /// The upload of a connection being removed ended early: its temporary file goes.
    fn discard_orphan(&mut self, serial: u64) {
        // Said before it goes: the I/O thread may log its work before `try_submit` returns.
        let thread = self.pool.thread_of(serial);
        if thread.is_the_loop() {
            trace!("upload #{serial}: cut short; removes its temporary file {IN_LOOP}");
        } else {
            trace!("upload #{serial}: cut short; asks {thread} to remove its temporary file");
        }
        match self.pool.try_submit(serial, Op::Discard) {
            Ok(()) => {}
            Err(SubmitError::Full(_)) => {
                trace!(
                    "upload #{serial}: {thread} has its fill of ops; the discard waits for a later \
                     drain"
                );
                self.orphan_discards.push(serial);
            }
            Err(SubmitError::Closed(_)) => {
                warn!("upload #{serial}: the I/O thread is gone; its temporary file stays")
            }
        }
    }

    fn retry_orphans(&mut self) {
        let mut index = 0;
        while index < self.orphan_discards.len() {
            let serial = self.orphan_discards[index];
            match self.pool.try_submit(serial, Op::Discard) {
                Err(SubmitError::Full(_)) => index += 1,
                _ => {
                    self.orphan_discards.swap_remove(index);
                }
            }
        }
    }

    /// The connections whose ops waited for room, to retry now (the list is emptied; those still
    /// refused list themselves again).
    pub fn take_blocked(&mut self, into: &mut Vec<usize>) {
        into.append(&mut self.blocked);
    }
}

impl Reactor {
    /// The I/O threads answered: each answer goes to its upload's connection, which may reply
    /// (`saved ...`), send the ops that waited for room, and read again.
    pub(super) fn on_storage_ready(&mut self, now: &Now) {
        let Some(uploads) = self.uploads.as_mut() else {
            return;
        };
        let mut completions = std::mem::take(&mut self.upload_completions);
        uploads.drain(&mut completions);
        match completions.len() {
            1 => trace!("storage: 1 answer from the I/O threads"),
            n => trace!("storage: {n} answers from the I/O threads"),
        }
        // The room those answers freed goes first to the connections that were refused for lack
        // of it, and only then to those whose answers these are, which would take it at once.
        let mut blocked = std::mem::take(&mut self.upload_blocked);
        if let Some(uploads) = self.uploads.as_mut() {
            uploads.take_blocked(&mut blocked);
        }
        for key in blocked.drain(..) {
            self.upload_answered(key, None, now);
        }
        self.upload_blocked = blocked;
        for (key, completion) in completions.drain(..) {
            self.upload_answered(key, Some(&completion), now);
        }
        self.upload_completions = completions;
    }

    /// Gives upload connection `key` an answer from the I/O threads (or, with `None`, a chance
    /// to send the ops that waited for room), and settles it.
    fn upload_answered(&mut self, key: usize, completion: Option<&Completion>, now: &Now) {
        let (Some(client), Some(uploads)) = (self.clients.get_mut(key), self.uploads.as_mut())
        else {
            return;
        };
        let Client {
            conn,
            handler: Handler::Upload(work),
        } = client
        else {
            return;
        };
        let mut sink = UploadSink {
            uploads,
            key,
            conn: conn.id,
        };
        let verdict = handler::upload::on_completion(
            conn,
            work,
            completion,
            &mut self.shared,
            &mut sink,
            now,
        );
        self.apply(key, verdict);
    }
}

/// What an upload connection's input goes to while it is driven: the loop's storage side, and
/// the connection's slab key (which owns the uploads it begins).
#[derive(Debug)]
pub struct UploadSink<'a> {
    /// The I/O pool and its bookkeeping.
    pub uploads: &'a mut Uploads,
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial number, as the trace names it (`conn #N`).
    pub conn: u64,
}

/// What the connection should do after its input was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Read on.
    Continue,
    /// Stop reading until the I/O threads answer (a commit, or room for more chunks).
    Pause,
    /// The session ended the conversation (an error line is queued): end the connection.
    End,
}

/// One upload connection's state beside its session.
#[derive(Debug)]
pub struct UploadWork {
    session: UploadSession,
    /// The upload in progress, if any.
    current: Option<Current>,
    /// Input read but not yet handled (the session was storing, or the pool busy); at most one
    /// read's worth, because reading stops meanwhile.
    held: Vec<u8>,
    /// Body bytes gathered for the next write.
    chunk: Vec<u8>,
    /// Ops the pool refused for now, submitted in order as it drains.
    waiting: VecDeque<Op>,
    /// Whether it is on the loop's list of connections to retry at the next drain.
    listed_blocked: bool,
    /// At a graceful shutdown: the bytes that had arrived in the socket when it began, still to
    /// be read; what comes after is not read, and the connection then ends as at the client's
    /// end of stream (a complete body stored and answered, a partial one discarded).
    shutdown_allowance: Option<usize>,
    /// Writes submitted and not yet answered.
    writes_in_flight: u8,
    /// The limits the session was made with, to make it again with admission (`--min-free`)
    /// at the first input, which is when the loop's storage side is at hand.
    limits: Limits,
    /// Whether the session has been set up for the storage side (see `limits`).
    session_set_up: bool,
}

/// The upload a connection is sending.
#[derive(Debug)]
struct Current {
    /// Its serial number in the pool.
    serial: u64,
    /// The cleaned name to store it under.
    name: String,
    /// Whether its body is complete and its commit asked for (it may still wait for room in
    /// the pool): the client is owed `saved` or an error, and is not read meanwhile.
    committing: bool,
    /// Whether the pool has taken its commit (or a discard): the I/O thread will end the upload
    /// on its own. Until then, a connection that goes away must discard it.
    handed_over: bool,
    /// Whether the storage failed and the client has been told.
    failed: bool,
    /// Whether `ok` waits for the answer to its [`Op::Begin`] (`--min-free`): the client is not
    /// read meanwhile.
    admitting: bool,
    /// The thread its ops run on, for the log.
    thread: IoThread,
}

impl UploadWork {
    /// A new upload connection.
    pub fn new(limits: Limits) -> UploadWork {
        UploadWork {
            session: UploadSession::new(limits),
            current: None,
            held: Vec::new(),
            chunk: Vec::new(),
            waiting: VecDeque::new(),
            listed_blocked: false,
            shutdown_allowance: None,
            writes_in_flight: 0,
            limits,
            session_set_up: false,
        }
    }

    /// Whether a body is complete and its storage not yet answered: the connection must stay
    /// (and say nothing more) until it is.
    pub fn is_storing(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.committing && !c.failed)
    }

    /// Whether reading must wait: an answer from the I/O threads is needed first, or input
    /// read earlier is still to be handled.
    pub fn is_paused(&self) -> bool {
        !self.held.is_empty() || self.is_paused_for_io()
    }

    /// Whether the I/O threads must answer before more input can be handled: ops wait for room
    /// in the pool, enough chunks are in flight, or a body is being stored.
    pub fn is_paused_for_io(&self) -> bool {
        !self.waiting.is_empty()
            || self.writes_in_flight >= MAX_WRITES_IN_FLIGHT
            || self.is_storing()
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.admitting && !c.failed)
    }

    /// The serial number of the upload under way, if any.
    pub fn serial(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.serial)
    }

    /// Whether the connection has anything to finish at a shutdown: an upload under way or
    /// being stored, or input held.
    pub fn is_busy(&self) -> bool {
        self.current.is_some() || !self.held.is_empty()
    }

    /// The graceful shutdown began with `queued` bytes waiting in the socket: read those and no
    /// more.
    pub fn allow_until_shutdown(&mut self, queued: usize) {
        self.shutdown_allowance = Some(queued);
    }

    /// How much of `asked` may be read now: all of it normally; at a shutdown, what is left of
    /// the bytes that had arrived when it began (`Some(0)`: the input is over).
    pub fn read_allowance(&self, asked: usize) -> usize {
        self.shutdown_allowance
            .map_or(asked, |left| left.min(asked))
    }

    /// Whether a shutdown's allowance is used up: the input is over.
    pub fn input_is_over(&self) -> bool {
        self.shutdown_allowance == Some(0)
    }

    /// Counts `count` bytes read against a shutdown's allowance.
    pub fn note_read(&mut self, count: usize) {
        if let Some(left) = self.shutdown_allowance.as_mut() {
            *left = left.saturating_sub(count);
        }
    }

    /// Whether the I/O threads still hold an upload of this connection that only a discard will
    /// end: its commit was never taken by the pool (it failed, or waits for room).
    pub fn needs_discard(&self) -> bool {
        self.current.as_ref().is_some_and(|c| !c.handed_over)
    }

    /// Whether the connection waits for the disk (ops waiting for room, chunks in flight, a
    /// body being stored): its quiet is the server's, and the idle timeout must not count it.
    pub fn waits_for_disk(&self) -> bool {
        // A failed upload waits for nothing: its client has been told, and writes it counted
        // may never be answered.
        let failed = self.current.as_ref().is_some_and(|c| c.failed);
        !failed && (self.is_paused_for_io() || self.writes_in_flight > 0)
    }

    /// Handles `input`, as far as the session and the pool allow; the rest is held.
    pub fn feed(&mut self, input: &[u8], sink: &mut UploadSink<'_>, out: &mut Vec<u8>) -> Feed {
        if !std::mem::replace(&mut self.session_set_up, true) && sink.uploads.admission {
            // Nothing has reached the session yet, so nothing is lost by making it anew.
            self.session = UploadSession::with_admission(self.limits);
        }
        let mut rest = input;
        loop {
            if self.writes_in_flight >= MAX_WRITES_IN_FLIGHT || !self.waiting.is_empty() {
                // Ops waiting for room said so when they were refused.
                self.narrate_back_pressure(rest.len());
                self.held.extend_from_slice(rest);
                return Feed::Pause;
            }
            let stop = match self.session.on_input(&mut rest, out) {
                Step::NeedInput => return Feed::Continue,
                Step::Begin { name, size } => self.begin(name, size, sink, out),
                Step::Body(bytes) => self.gather(bytes, sink, out),
                Step::BodyDone { size, crc32 } => self.body_done(size, crc32, sink, out),
                Step::Storing => return self.wait_for_answer(false, rest),
                Step::Admitting => return self.wait_for_answer(true, rest),
                Step::Refused(refusal) => {
                    debug!("upload refused from conn #{}: {refusal}", sink.conn);
                    return Feed::End;
                }
                Step::Closed => return Feed::End,
            };
            if stop == Some(Feed::End) {
                return Feed::End;
            }
        }
    }

    /// Why reading stops while chunks or ops wait for the I/O threads (at trace level).
    fn narrate_back_pressure(&self, held: usize) {
        match self.current.as_ref().filter(|_| self.waiting.is_empty()) {
            Some(current) if current.committing => trace!(
                "upload #{}: waits for the answer to its commit (from {}); its client is not \
                 read until then{}",
                current.serial,
                current.thread,
                Held(held)
            ),
            Some(current) => trace!(
                "upload #{}: {} chunks with {}, the most; its client is not read until one is \
                 written (back-pressure){}",
                current.serial,
                self.writes_in_flight,
                current.thread,
                Held(held)
            ),
            None => {}
        }
    }

    /// The session waits for an answer of the I/O threads (its commit's, or `--min-free`'s
    /// reservation when `admitting`) before it takes more input: `rest` is held until then.
    fn wait_for_answer(&mut self, admitting: bool, rest: &[u8]) -> Feed {
        self.narrate_wait(admitting, rest.len());
        self.held.extend_from_slice(rest);
        Feed::Pause
    }

    /// Why the session waits for an answer of the I/O threads (at trace level).
    fn narrate_wait(&self, admitting: bool, held: usize) {
        let Some(current) = &self.current else {
            return;
        };
        if admitting {
            trace!(
                "upload #{}: `ok` waits for {} to reserve its room (--min-free); its client is \
                 not read until then{}",
                current.serial,
                current.thread,
                Held(held)
            );
        } else {
            trace!(
                "upload #{}: waits for the answer to its commit (from {}); its client is not \
                 read until then{}",
                current.serial,
                current.thread,
                Held(held)
            );
        }
    }

    /// The session accepted a header: a new upload, whose first op creates its file.
    fn begin(
        &mut self,
        name: String,
        size: u64,
        sink: &mut UploadSink<'_>,
        out: &mut Vec<u8>,
    ) -> Option<Feed> {
        let serial = sink.uploads.next_serial;
        sink.uploads.next_serial += 1;
        sink.uploads.owners.insert(serial, sink.key);
        debug!(
            "upload #{serial}: header accepted from conn #{}: {name:?}, {size} bytes; answering \
             \"ok\"",
            sink.conn
        );
        self.current = Some(Current {
            serial,
            name,
            committing: false,
            handed_over: false,
            failed: false,
            admitting: sink.uploads.admission,
            thread: sink.uploads.pool.thread_of(serial),
        });
        self.submit(Op::Begin { size }, sink, out)
    }

    /// Body bytes the session has counted: every one goes into a chunk now. A chunk the pool
    /// cannot take waits in `waiting`, and `feed`'s first check holds the rest of the input
    /// until it has gone.
    fn gather(
        &mut self,
        mut bytes: &[u8],
        sink: &mut UploadSink<'_>,
        out: &mut Vec<u8>,
    ) -> Option<Feed> {
        while !bytes.is_empty() {
            if self.chunk.capacity() == 0 {
                self.chunk = sink
                    .uploads
                    .spare_chunks
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
            }
            let room = CHUNK_BYTES - self.chunk.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.chunk.extend_from_slice(now);
            bytes = later;
            if self.chunk.len() == CHUNK_BYTES && self.submit_chunk(sink, out) == Some(Feed::End) {
                return Some(Feed::End);
            }
        }
        if let Some(current) = self.current.as_ref().filter(|_| !self.chunk.is_empty()) {
            trace!(
                "upload #{}: {} of {CHUNK_BYTES} bytes gathered for its next chunk",
                current.serial,
                self.chunk.len()
            );
        }
        None
    }

    /// The body is complete: its last chunk goes, then its commit (in that order, even if
    /// both wait for room in the pool).
    fn body_done(
        &mut self,
        size: u64,
        crc32: u32,
        sink: &mut UploadSink<'_>,
        out: &mut Vec<u8>,
    ) -> Option<Feed> {
        if let Some(current) = &self.current {
            trace!(
                "upload #{}: body complete: {size} bytes, CRC-32 {crc32:08x}",
                current.serial
            );
        }
        if !self.chunk.is_empty() && self.submit_chunk(sink, out) == Some(Feed::End) {
            return Some(Feed::End);
        }
        let Some(current) = self.current.as_mut() else {
            return Some(Feed::End);
        };
        current.committing = true;
        let name = current.name.clone();
        self.submit(Op::Commit { name }, sink, out)
    }

    /// Hands the gathered chunk to the I/O threads.
    fn submit_chunk(&mut self, sink: &mut UploadSink<'_>, out: &mut Vec<u8>) -> Option<Feed> {
        let chunk = std::mem::take(&mut self.chunk);
        self.writes_in_flight += 1; // counted from now: a waiting write holds reading too
        self.submit(Op::Write(chunk), sink, out)
    }

    /// Submits `op` after any op still waiting; `Some` if the connection must stop here.
    fn submit(&mut self, op: Op, sink: &mut UploadSink<'_>, out: &mut Vec<u8>) -> Option<Feed> {
        let current = self.current.as_ref()?;
        if !self.waiting.is_empty() {
            self.waiting.push_back(op);
            return Some(Feed::Pause);
        }
        let ends_upload = matches!(op, Op::Commit { .. } | Op::Discard);
        // Said before it goes: the I/O thread may log its work before `try_submit` returns.
        self.log_handing(Handed::of(&op));
        match sink.uploads.pool.try_submit(current.serial, op) {
            Ok(()) => {
                if ends_upload {
                    self.mark_handed_over();
                }
                None
            }
            Err(SubmitError::Full(op)) => {
                trace!(
                    "upload #{}: {} has its fill of ops; this one waits here, and its client is \
                     not read until {} answers",
                    current.serial,
                    current.thread,
                    current.thread
                );
                self.waiting.push_back(op);
                self.list_blocked(sink);
                Some(Feed::Pause)
            }
            Err(SubmitError::Closed(_)) => {
                self.fail("the I/O thread is gone", out);
                Some(Feed::End)
            }
        }
    }

    /// Submits the ops that waited for room in the pool, in order; whether all went.
    pub fn retry_waiting(&mut self, sink: &mut UploadSink<'_>, out: &mut Vec<u8>) -> Feed {
        self.listed_blocked = false;
        let Some(serial) = self.current.as_ref().map(|c| c.serial) else {
            self.waiting.clear();
            return Feed::Continue;
        };
        while let Some(op) = self.waiting.pop_front() {
            let ends_upload = matches!(op, Op::Commit { .. } | Op::Discard);
            self.log_handing(Handed::of(&op));
            match sink.uploads.pool.try_submit(serial, op) {
                Ok(()) => {
                    if ends_upload {
                        self.mark_handed_over();
                    }
                }
                Err(SubmitError::Full(op)) => {
                    self.waiting.push_front(op);
                    self.list_blocked(sink);
                    return Feed::Pause;
                }
                Err(SubmitError::Closed(_)) => {
                    self.fail("the I/O thread is gone", out);
                    return Feed::End;
                }
            }
        }
        Feed::Continue
    }

    /// One line per op handed to the I/O threads: the loop gives the work away and goes on.
    /// (Under `--upload-io loop` it does the work itself, and says what that costs.)
    fn log_handing(&self, handed: Handed) {
        let Some(current) = &self.current else {
            return;
        };
        let (serial, thread) = (current.serial, current.thread);
        if thread.is_the_loop() {
            let name = &current.name;
            return match handed {
                Handed::Begin => trace!("upload #{serial}: creates its temporary file {IN_LOOP}"),
                Handed::Chunk(bytes) => {
                    trace!("upload #{serial}: writes a {bytes}-byte chunk {IN_LOOP}")
                }
                Handed::Commit => trace!(
                    "upload #{serial}: commits (fsync, name it {name:?}, fsync the directory) \
                     {IN_LOOP}"
                ),
                Handed::Discard => {
                    trace!("upload #{serial}: removes its temporary file {IN_LOOP}")
                }
            };
        }
        match handed {
            Handed::Begin => trace!(
                "upload #{serial}: asks {thread} to create its temporary file; the loop does not \
                 wait"
            ),
            Handed::Chunk(bytes) => trace!(
                "upload #{serial}: a {bytes}-byte chunk goes to {thread} ({} of {} in flight)",
                self.writes_in_flight,
                MAX_WRITES_IN_FLIGHT
            ),
            Handed::Commit => trace!(
                "upload #{serial}: asks {thread} to commit: fsync, name it {:?}, fsync the \
                 directory; the loop does not wait",
                current.name
            ),
            Handed::Discard => {
                trace!("upload #{serial}: asks {thread} to remove its temporary file")
            }
        }
    }

    fn mark_handed_over(&mut self) {
        if let Some(current) = self.current.as_mut() {
            current.handed_over = true;
        }
    }

    /// Puts this connection on the loop's list to retry at the next drain (once).
    fn list_blocked(&mut self, sink: &mut UploadSink<'_>) {
        if !std::mem::replace(&mut self.listed_blocked, true) {
            sink.uploads.blocked.push(sink.key);
        }
    }

    /// The input held while reading was paused, to be handled before anything new is read.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Gives back the (emptied) buffer [`take_held`](Self::take_held) returned, keeping its
    /// allocation if nothing new was held meanwhile.
    pub fn return_held(&mut self, mut buffer: Vec<u8>) {
        if self.held.is_empty() {
            buffer.clear();
            self.held = buffer;
        }
    }

    /// An answer from the I/O threads for this connection's upload. Returns what to do next.
    pub fn on_completion(&mut self, completion: &Completion, out: &mut Vec<u8>) -> Feed {
        if completion.buffer.is_some() {
            self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        }
        let Some(current) = self.current.as_mut() else {
            return Feed::Continue;
        };
        if current.serial != completion.upload {
            return Feed::Continue; // an earlier upload's late answer
        }
        match &completion.outcome {
            Outcome::Written => {
                let freed = self.writes_in_flight + 1 == MAX_WRITES_IN_FLIGHT;
                trace!(
                    "upload #{}: {} wrote a chunk (its answer came through the waker); {} still \
                     in flight{}",
                    current.serial,
                    current.thread,
                    self.writes_in_flight,
                    if freed && !current.committing {
                        ", so its client may be read again"
                    } else {
                        ""
                    }
                );
                Feed::Continue
            }
            Outcome::Begun if current.admitting => {
                current.admitting = false;
                debug!(
                    "upload #{}: {} reserved its room (its answer came through the waker); \
                     answering \"ok\"",
                    current.serial, current.thread
                );
                self.session.admit(out);
                Feed::Continue
            }
            Outcome::NoSpace { available } => {
                debug!(
                    "upload #{}: {} found {available} bytes free, under --min-free; answering \
                     \"error no space\"",
                    current.serial, current.thread
                );
                // The I/O thread has removed the file and forgotten the upload.
                self.current = None;
                self.waiting.clear();
                self.held.clear();
                self.session.refuse_no_space(out);
                Feed::End
            }
            Outcome::Begun | Outcome::Discarded => {
                trace!(
                    "upload #{}: {} {} (its answer came through the waker)",
                    current.serial,
                    current.thread,
                    Answer(&completion.outcome)
                );
                Feed::Continue
            }
            Outcome::Committed(stored) => {
                let name = stored.name.clone();
                let (serial, thread) = (current.serial, current.thread);
                self.current = None;
                let start = out.len();
                let flow = self.session.stored(&name, out);
                debug!(
                    "upload #{serial}: {thread} {} (its answer came through the waker); \
                     answering {:?}",
                    Answer(&completion.outcome),
                    String::from_utf8_lossy(&out[start..]).trim_end()
                );
                match flow {
                    crate::protocol::Flow::Continue => Feed::Continue,
                    crate::protocol::Flow::Close => Feed::End,
                }
            }
            Outcome::Failed { reason } => {
                if current.failed {
                    return Feed::End; // told already; later ops of it fail the same way
                }
                let reason = reason.clone();
                self.fail(&reason, out);
                Feed::End
            }
        }
    }

    /// The storage failed: the client is told once, and the connection ends.
    fn fail(&mut self, reason: &str, out: &mut Vec<u8>) {
        if let Some(current) = self.current.as_mut() {
            debug!(
                "upload #{}: storage failed: {reason}; the client is told",
                current.serial
            );
            current.failed = true;
        }
        self.waiting.clear();
        self.held.clear();
        self.session.storage_failed(reason, out);
    }

    /// The client's end of stream: the session's last word, and whether an upload was cut short.
    pub fn on_end(&mut self, out: &mut Vec<u8>) -> crate::protocol::upload::End {
        self.session.on_end(out)
    }

    /// A graceful shutdown's end of input: as [`on_end`](Self::on_end), but an upload cut short
    /// is answered `error shutting down`.
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) -> crate::protocol::upload::End {
        self.session.on_shutdown(out)
    }
}

/// What was handed to the I/O threads, for the log (the op itself has gone with them).
#[derive(Clone, Copy, Debug)]
enum Handed {
    Begin,
    Chunk(usize),
    Commit,
    Discard,
}

impl Handed {
    fn of(op: &Op) -> Handed {
        match op {
            Op::Write(bytes) => Handed::Chunk(bytes.len()),
            Op::Commit { .. } => Handed::Commit,
            Op::Discard => Handed::Discard,
            Op::Begin { .. } => Handed::Begin,
            // Tests only: it holds up a worker, like a slow begin.
            #[cfg(test)]
            Op::Hold(_) => Handed::Begin,
        }
    }
}

/// An I/O thread's answer, in words: `wrote a chunk`, `stored it durably as photo.jpg`.
struct Answer<'a>(&'a Outcome);

impl fmt::Display for Answer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Begun => f.write_str("created its temporary file"),
            Outcome::NoSpace { available } => {
                write!(f, "found {available} bytes free, under --min-free")
            }
            Outcome::Written => f.write_str("wrote a chunk"),
            Outcome::Committed(stored) => write!(f, "stored it durably as {}", stored.name),
            Outcome::Discarded => f.write_str("removed its temporary file"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// `; the 1200 bytes already read wait` when a paused connection holds input, else nothing.
struct Held(usize);

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            bytes => write!(f, "; the {bytes} bytes already read wait"),
        }
    }
}
