//! The upload handler: an upload connection's state ([`UploadWork`]: its session, the chunk being
//! gathered, its ops with the I/O threads), how its bytes reach that state, and how the I/O
//! threads' answers reach the client.
//!
//! The rules (back-pressure, commit or discard, serial numbers) are in [`super::super::upload`],
//! the loop's side of the storage pool, which this hands every file operation to. The read
//! path here reads while the work is not paused for the disk, hands the bytes over, sends the
//! session's answers, and ends the input at the client's end of stream or, at a graceful
//! shutdown, once the bytes that had already arrived are read.

use std::collections::VecDeque;
use std::fmt;

use log::{debug, trace};

use crate::clock::Now;
use crate::protocol::upload::{End, Step, UploadSession};
use crate::protocol::Limits;
use crate::storage::pool::{Completion, IoThread, Op, Outcome, SubmitError};

use super::super::buffers::SharedBuffers;
use super::super::connection::{Connection, FirstInput, Input, Verdict, MAX_READ_BYTES_PER_TURN};
use super::super::counters::EndCause;
use super::super::counters::UploadFailure;
use super::super::upload::{Answer, UploadSink, CHUNK_BYTES, IN_LOOP};
use super::protocol_ended;

/// Drives an upload client: writes what is queued, reads and hands over its bytes while the
/// disk keeps up (or discards input while it lingers), then settles its phase.
pub(crate) fn drive(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    now: &Now,
    sink: &mut UploadSink<'_>,
    first: Option<FirstInput>,
) -> Verdict {
    conn.flush_unsent();
    let still_ready = conn.take_input(shared, |conn, shared| {
        read_upload(conn, work, shared, sink, first)
    });
    conn.settle(&mut shared.read, now, still_ready, work.is_storing())
}

/// Reads the upload and hands its bytes to the work until the socket is drained, the budget is
/// spent, the work pauses for the I/O threads, or the conversation ends. Returns whether it
/// stopped on the budget.
fn read_upload(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    sink: &mut UploadSink<'_>,
    mut first: Option<FirstInput>,
) -> bool {
    let mut budget = MAX_READ_BYTES_PER_TURN;
    while conn.is_serving() {
        if work.is_paused() {
            trace!(
                "conn #{}: upload waits for the I/O threads; not reading",
                conn.id
            );
            return false;
        }
        if work.input_is_over() || work.is_shutting_down() && conn.arrived_input_is_read() {
            trace!(
                "conn #{}: shutdown: every byte that had arrived is read",
                conn.id
            );
            end_input(conn, work, shared, sink, true);
            return false;
        }
        if conn.is_over_output_limit(0, shared.output_limit) {
            return false;
        }
        let allowance = work.read_allowance(usize::MAX);
        let arrival = match conn.read_input(&mut shared.read, &mut budget, allowance, &mut first) {
            Input::Bytes { len, arrival } => {
                work.note_read(len);
                shared.replies.clear();
                let feed = work.feed(&shared.read[..len], sink, &mut shared.replies);
                conn.send(&shared.replies);
                match feed {
                    Feed::Continue => {}
                    Feed::Pause => return false,
                    Feed::End => protocol_ended(conn),
                }
                arrival
            }
            Input::End => {
                end_input(conn, work, shared, sink, false);
                return false;
            }
            // Over TLS the connection says when what had arrived is read: end it now, as no
            // new readiness edge may come.
            Input::Blocked if work.is_shutting_down() && conn.arrived_input_is_read() => continue,
            Input::Blocked | Input::Failed => return false,
            Input::BudgetSpent => return true,
        };
        let shutdown_read_all = work.is_shutting_down() && conn.arrived_input_is_read();
        if !(conn.reads_on(arrival) || shutdown_read_all) {
            return false;
        }
    }
    false
}

/// The upload's input is over (the client's end of stream, or at a shutdown every byte that
/// had arrived): a complete body is stored and answered before the close, a partial one is cut
/// short (the temporary file goes when the connection is reaped).
///
/// At a shutdown (`unread_may_follow`) the client may still be sending: the connection ends
/// like an error reply, with its write side shut down and a lingering close, so the unread
/// bytes do not turn the close into an RST that would destroy the answer.
fn end_input(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    sink: &mut UploadSink<'_>,
    unread_may_follow: bool,
) {
    shared.replies.clear();
    let end = if unread_may_follow {
        work.on_shutdown(&mut shared.replies) // `error shutting down` if cut short
    } else {
        work.on_end(&mut shared.replies)
    };
    conn.send(&shared.replies);
    if let End::CutShort { received, size } = end {
        sink.count_failure(UploadFailure::CutShort);
        debug!(
            "conn #{}: upload cut short at {received} of {size} bytes",
            conn.id
        );
        if unread_may_follow {
            // Its `error shutting down` goes out first, then the lingering close; the
            // temporary file is discarded when the connection is reaped.
            conn.end_conversation();
        } else {
            conn.close(EndCause::ClientClosed, "upload cut short");
        }
    } else if unread_may_follow {
        // Waits for the answer of an upload being stored, if any, then lingers.
        conn.end_conversation();
    } else {
        // Waits for the answer of an upload being stored, if any.
        conn.drain();
    }
}

/// The server is shutting down while an upload is under way: "arrived" means received by this
/// host, so the bytes already in the socket are read (and no more), and an upload whose body is
/// all here is still stored.
pub(crate) fn begin_shutdown(conn: &mut Connection, work: &mut UploadWork) {
    let queued = conn.read_only_what_arrived();
    trace!(
        "conn #{}: shutdown; the upload may still read the {} bytes that have arrived",
        conn.id,
        queued.map_or_else(|| "TLS".to_owned(), |queued| queued.to_string())
    );
    work.allow_until_shutdown(queued);
}

/// The I/O threads answered an op of this connection's upload: the client gets the session's
/// answer (`saved ...`, `error storage failed: ...`), ops that waited for room go, input held
/// meanwhile is handled. `still_ready` says the socket should be read again now: no new edge
/// will come for bytes that arrived while reading was paused.
///
/// Without a completion: only the retry of ops that waited for room in the pool (another
/// connection's completion made some).
pub(crate) fn on_completion(
    conn: &mut Connection,
    work: &mut UploadWork,
    completion: Option<&Completion>,
    shared: &mut SharedBuffers,
    sink: &mut UploadSink<'_>,
    now: &Now,
) -> Verdict {
    if conn.is_closed() {
        return Verdict::default();
    }
    shared.replies.clear();
    let mut feed = match completion {
        Some(completion) => work.on_completion(completion, sink, &mut shared.replies),
        None => Feed::Continue,
    };
    if feed == Feed::Continue && conn.is_serving() {
        feed = work.retry_waiting(sink, &mut shared.replies);
    }
    if feed == Feed::Continue && conn.is_serving() && !work.is_paused_for_io() {
        // Even with nothing held: the session may have a step left without new input (the
        // end of a body whose last bytes were handed over just before the pause).
        let held = work.take_held();
        feed = work.feed(&held, sink, &mut shared.replies);
        work.return_held(held);
    }
    if let Some((name, size)) = sink.stored.take() {
        super::super::access::log_stored(conn, sink.service, &name, size);
    }
    let paused = work.is_paused();
    conn.send(&shared.replies);
    // The disk made progress for it: the idle timeout counts from here, not from the client's
    // last byte (its quiet was the server's doing).
    conn.mark_active(now);
    if feed == Feed::End && conn.is_serving() {
        debug!("conn #{}: upload ended the conversation", conn.id);
        conn.end_conversation();
    }
    // Bytes that arrived while reading was paused raised no new edge: read them now.
    let still_ready = conn.is_serving() && !paused;
    conn.settle(&mut shared.read, now, still_ready, work.is_storing())
}

/// Chunks of one connection that may be with the I/O threads at once before the loop stops
/// reading it: two, so the disk writes one while the socket fills the next.
pub(crate) const MAX_WRITES_IN_FLIGHT: u8 = 2;

/// What the connection should do after its input was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Feed {
    /// Read on.
    Continue,
    /// Stop reading until the I/O threads answer (a commit, or room for more chunks).
    Pause,
    /// The session ended the conversation (an error line is queued): end the connection.
    End,
}

/// One upload connection's state beside its session.
#[derive(Debug)]
pub(crate) struct UploadWork {
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
    pub(crate) fn new(limits: Limits) -> UploadWork {
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
    pub(crate) fn is_storing(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.committing && !c.failed)
    }

    /// Whether reading must wait: an answer from the I/O threads is needed first, or input
    /// read earlier is still to be handled.
    pub(crate) fn is_paused(&self) -> bool {
        !self.held.is_empty() || self.is_paused_for_io()
    }

    /// Whether the I/O threads must answer before more input can be handled: ops wait for room
    /// in the pool, enough chunks are in flight, or a body is being stored.
    pub(crate) fn is_paused_for_io(&self) -> bool {
        !self.waiting.is_empty()
            || self.writes_in_flight >= MAX_WRITES_IN_FLIGHT
            || self.is_storing()
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.admitting && !c.failed)
    }

    /// The serial number of the upload under way, if any.
    pub(crate) fn serial(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.serial)
    }

    /// Whether the connection has anything to finish at a shutdown: an upload under way or
    /// being stored, or input held.
    pub(crate) fn is_busy(&self) -> bool {
        self.current.is_some() || !self.held.is_empty()
    }

    /// The graceful shutdown began with `queued` bytes waiting in the socket: read those and no
    /// more. `None`: a TLS connection, which counts what had arrived itself (in records, not
    /// plaintext) and says when it is read.
    pub(crate) fn allow_until_shutdown(&mut self, queued: Option<usize>) {
        self.shutdown_allowance = Some(queued.unwrap_or(usize::MAX));
    }

    /// Whether a graceful shutdown has limited what it reads.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown_allowance.is_some()
    }

    /// How much of `asked` may be read now: all of it normally; at a shutdown, what is left of
    /// the bytes that had arrived when it began (`Some(0)`: the input is over).
    pub(crate) fn read_allowance(&self, asked: usize) -> usize {
        self.shutdown_allowance
            .map_or(asked, |left| left.min(asked))
    }

    /// Whether a shutdown's allowance is used up: the input is over.
    pub(crate) fn input_is_over(&self) -> bool {
        self.shutdown_allowance == Some(0)
    }

    /// Counts `count` bytes read against a shutdown's allowance.
    pub(crate) fn note_read(&mut self, count: usize) {
        if let Some(left) = self.shutdown_allowance.as_mut() {
            *left = left.saturating_sub(count);
        }
    }

    /// Whether the I/O threads still hold an upload of this connection that only a discard will
    /// end: its commit was never taken by the pool (it failed, or waits for room).
    pub(crate) fn needs_discard(&self) -> bool {
        self.current.as_ref().is_some_and(|c| !c.handed_over)
    }

    /// Whether the connection waits for the disk (ops waiting for room, chunks in flight, a
    /// body being stored): its quiet is the server's, and the idle timeout must not count it.
    pub(crate) fn waits_for_disk(&self) -> bool {
        // A failed upload waits for nothing: its client has been told, and writes it counted
        // may never be answered.
        let failed = self.current.as_ref().is_some_and(|c| c.failed);
        !failed && (self.is_paused_for_io() || self.writes_in_flight > 0)
    }

    /// Handles `input`, as far as the session and the pool allow; the rest is held.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        sink: &mut UploadSink<'_>,
        out: &mut Vec<u8>,
    ) -> Feed {
        if !std::mem::replace(&mut self.session_set_up, true) && sink.uploads.admission() {
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
                    sink.count_failure(UploadFailure::of(&refusal));
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
            Some(current) if current.committing => self.narrate_wait(false, held),
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
        let serial = sink.uploads.begin(sink.key);
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
            admitting: sink.uploads.admission(),
            thread: sink.uploads.thread_of(serial),
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
                self.chunk = sink.uploads.spare_chunk();
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
        match sink.uploads.try_submit(current.serial, op) {
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
            Err(SubmitError::Closed) => {
                self.fail("the I/O thread is gone", sink, out);
                Some(Feed::End)
            }
        }
    }

    /// Submits the ops that waited for room in the pool, in order; whether all went.
    pub(crate) fn retry_waiting(&mut self, sink: &mut UploadSink<'_>, out: &mut Vec<u8>) -> Feed {
        self.listed_blocked = false;
        let Some(serial) = self.current.as_ref().map(|c| c.serial) else {
            self.waiting.clear();
            return Feed::Continue;
        };
        while let Some(op) = self.waiting.pop_front() {
            let ends_upload = matches!(op, Op::Commit { .. } | Op::Discard);
            self.log_handing(Handed::of(&op));
            match sink.uploads.try_submit(serial, op) {
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
                Err(SubmitError::Closed) => {
                    self.fail("the I/O thread is gone", sink, out);
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
            sink.uploads.list_blocked(sink.key);
        }
    }

    /// The input held while reading was paused, to be handled before anything new is read.
    pub(crate) fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Gives back the (emptied) buffer [`take_held`](Self::take_held) returned, keeping its
    /// allocation if nothing new was held meanwhile.
    pub(crate) fn return_held(&mut self, mut buffer: Vec<u8>) {
        if self.held.is_empty() {
            buffer.clear();
            self.held = buffer;
        }
    }

    /// An answer from the I/O threads for this connection's upload. Returns what to do next.
    pub(crate) fn on_completion(
        &mut self,
        completion: &Completion,
        sink: &mut UploadSink<'_>,
        out: &mut Vec<u8>,
    ) -> Feed {
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
                sink.count_failure(UploadFailure::NoSpace);
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
                sink.count_stored(&name, stored.size);
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
                self.fail(&reason, sink, out);
                Feed::End
            }
        }
    }

    /// The storage failed: the client is told once, and the connection ends.
    fn fail(&mut self, reason: &str, sink: &mut UploadSink<'_>, out: &mut Vec<u8>) {
        if let Some(current) = self.current.as_mut() {
            debug!(
                "upload #{}: storage failed: {reason}; the client is told",
                current.serial
            );
            if !std::mem::replace(&mut current.failed, true) {
                sink.count_failure(UploadFailure::StorageFailed);
            }
        }
        self.waiting.clear();
        self.held.clear();
        self.session.storage_failed(reason, out);
    }

    /// The client's end of stream: the session's last word, and whether an upload was cut short.
    pub(crate) fn on_end(&mut self, out: &mut Vec<u8>) -> crate::protocol::upload::End {
        self.session.on_end(out)
    }

    /// A graceful shutdown's end of input: as [`on_end`](Self::on_end), but an upload cut short
    /// is answered `error shutting down`.
    pub(crate) fn on_shutdown(&mut self, out: &mut Vec<u8>) -> crate::protocol::upload::End {
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
