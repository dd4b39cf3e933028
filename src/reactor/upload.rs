//! Uploads in the loop: the protocol decides, I/O threads touch the disk, the loop only routes.
//!
//! An upload's bytes arrive on a socket the loop reads like any other, and the sans-I/O
//! [`UploadSession`](crate::protocol::upload::UploadSession) says what they mean: a header (`Begin`), body bytes (`Body`), the end of the
//! body (`BodyDone`). None of that may touch the disk here — a `write` to a file can wait for the
//! page cache, an `fsync` for the disk, and a one-thread server that waits serves nobody — so
//! every file operation becomes an [`Op`] for the [`StoragePool`]'s I/O threads, and its answer
//! comes back as a [`Completion`] when the pool's [`mio::Waker`] wakes the poll
//! ([`STORAGE_TOKEN`](super::STORAGE_TOKEN)).
//!
//! Four rules keep that safe:
//!
//! * **Back-pressure, not buffering.** Body bytes are gathered into chunks of [`CHUNK_BYTES`];
//!   while [`MAX_WRITES_IN_FLIGHT`](super::handler::upload::MAX_WRITES_IN_FLIGHT) chunks of a connection are with the I/O threads, or the pool
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
//!   comes ([`UploadSession::with_admission`](crate::protocol::upload::UploadSession::with_admission)), and the client is not read meanwhile. So
//!   `error no space` comes instead of `ok`, from a figure that is never stale (see
//!   [`crate::storage::durable`], "Room").
//! * **Serial numbers, not slab keys.** Completions name their upload by a serial number that is
//!   never reused; a connection that closed while its op was in flight has no serial any more,
//!   and its late completion is dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use log::{debug, trace, warn};
use mio::Waker;

use crate::service::{Address, ProtocolKind};
use crate::storage::durable::UploadDir;
use crate::storage::pool::{
    Completion, IoThread, Op, Outcome, StoragePool, SubmitError, DEFAULT_IO_THREADS,
    DEFAULT_QUEUE_PER_THREAD,
};

use super::counters::{EndpointCounters, UploadFailure};

/// Body bytes gathered before they are handed to an I/O thread as one write.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;

/// How the log says an op runs under `--upload-io loop`, the foil.
pub(super) const IN_LOOP: &str =
    "in the loop itself (--upload-io loop): every other client waits meanwhile";

/// Emptied chunk buffers kept for reuse (no allocation per chunk in the steady state).
const SPARE_CHUNKS: usize = 16;

/// The loop's side of the storage: the I/O pool, which connection each upload belongs to, and
/// what is waiting to be retried.
pub(super) struct Uploads {
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
    pub(super) fn start(
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
    pub(super) fn drain(&mut self, out: &mut Vec<(usize, Completion)>) {
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
    pub(super) fn shut_down(self, timeout: std::time::Duration) {
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
    pub(super) fn forget(&mut self, serial: u64, cut_short: bool) {
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
            Err(SubmitError::Closed) => {
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
    pub(super) fn take_blocked(&mut self, into: &mut Vec<usize>) {
        into.append(&mut self.blocked);
    }

    /// A new upload of connection `key`: its serial number, which its completions will name.
    pub(super) fn begin(&mut self, key: usize) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.owners.insert(serial, key);
        serial
    }

    /// Whether `--min-free` is on: `ok` waits for the I/O thread to reserve the upload's room.
    pub(super) fn admission(&self) -> bool {
        self.admission
    }

    /// The I/O thread upload `serial`'s ops run on (for the log).
    pub(super) fn thread_of(&self, serial: u64) -> IoThread {
        self.pool.thread_of(serial)
    }

    /// Hands `op` of upload `serial` to its I/O thread, or says why not (full: retry later).
    pub(super) fn try_submit(&mut self, serial: u64, op: Op) -> Result<(), SubmitError> {
        self.pool.try_submit(serial, op)
    }

    /// Puts connection `key`, whose op the pool refused for lack of room, on the list retried
    /// at the next drain.
    pub(super) fn list_blocked(&mut self, key: usize) {
        self.blocked.push(key);
    }

    /// An empty buffer for the next chunk: one back from the I/O threads when there is one (no
    /// allocation per chunk in the steady state).
    pub(super) fn spare_chunk(&mut self) -> Vec<u8> {
        self.spare_chunks
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES))
    }
}

/// What an upload connection's input goes to while it is driven: the loop's storage side, and
/// the connection's slab key (which owns the uploads it begins).
#[derive(Debug)]
pub(super) struct UploadSink<'a> {
    /// The I/O pool and its bookkeeping.
    pub uploads: &'a mut Uploads,
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial number, as the trace names it (`conn #N`).
    pub conn: u64,
    /// Its endpoint's counters, which the uploads' outcomes add to (the metrics).
    pub counters: &'a mut EndpointCounters,
    /// Its endpoint's protocol and address, as the access log names them.
    pub service: (ProtocolKind, &'a Address),
    /// The name and size of an upload stored in this call, for the access log.
    pub stored: Option<(String, u64)>,
}

impl UploadSink<'_> {
    /// An upload failed for `reason`.
    pub(super) fn count_failure(&mut self, reason: UploadFailure) {
        self.counters.uploads_failed[reason.index()] += 1;
    }

    /// An upload was stored as `name`, `size` bytes.
    pub(super) fn count_stored(&mut self, name: &str, size: u64) {
        self.counters.uploads_stored += 1;
        self.counters.upload_stored_bytes += size;
        if log::log_enabled!(target: super::counters::ACCESS_TARGET, log::Level::Info) {
            self.stored = Some((name.to_owned(), size));
        }
    }
}

/// An I/O thread's answer, in words: `wrote a chunk`, `stored it durably as photo.jpg`.
pub(super) struct Answer<'a>(pub &'a Outcome);

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
