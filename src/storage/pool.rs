//! A few I/O threads that do the reactor's file work, so that the loop never waits for a disk.
//!
//! ## Why file I/O leaves the loop
//!
//! A socket can say "not now" (`WouldBlock`); a file cannot. A `write` to a file may wait for
//! the page cache to make room, and an `fsync` waits until the disk has the data — tens to
//! hundreds of milliseconds on a busy disk, seconds on a struggling one. In a one-thread server
//! every one of those milliseconds is a millisecond in which *no* client is served. Redis meets
//! the same problem with its append-only file and moves the `fsync` to a background thread
//! (`bio.c`); this pool does that for everything an upload does to the file system: create,
//! write, `fsync`, rename, directory `fsync`, unlink ([`super::durable`]).
//!
//! ## How work goes out and comes back
//!
//! ```text
//!  loop thread                          I/O thread oneloop-io-N
//!  ───────────                          ───────────────────────
//!  try_submit(upload, op) ──bounded queue──▶ runs the op (blocking)
//!                                            pushes a Completion
//!  poll() returns the waker's token ◀──── Waker::wake()
//!  drain(&mut completions)
//! ```
//!
//! Each worker has its own bounded queue (`sync_channel`), and an upload is pinned to one worker
//! (`upload % threads`), so an upload's ops — begin, writes, commit — run in the order they were
//! submitted without any lock around the file. The price is head-of-line blocking: an upload
//! whose worker is stuck in a slow `fsync` waits, although another worker may be free. With a
//! handful of uploads at a time that is the right trade; a work-stealing pool would need a lock
//! per upload to keep the order.
//!
//! Completions come back on one shared queue, and the worker wakes the loop through a
//! [`mio::Waker`] (an `eventfd` the poll watches) — only when the queue was empty, because the
//! loop drains all of it once woken: one wake-up, and one system call, per batch, not per chunk.
//!
//! ## Bounds
//!
//! Everything the pool holds is bounded, so a client that sends faster than the disk writes
//! cannot grow the server's memory:
//!
//! * threads: 1 to [`MAX_IO_THREADS`], chosen at [`StoragePool::new`];
//! * ops *in flight* per worker — submitted and not yet returned by [`StoragePool::drain`],
//!   whether queued, running, or done and waiting to be drained — at most `queue_per_thread` (1
//!   to [`MAX_QUEUE_PER_THREAD`]). Past it [`StoragePool::try_submit`] answers
//!   [`SubmitError::Full`] at once: the loop then stops reading that connection (back-pressure)
//!   and tries again after the next drain. It never blocks the loop.
//! * so the upload bytes in the pool's hands are at most `threads × queue_per_thread × chunk
//!   size`: with the defaults (2 × 8) and 64 KiB chunks, 1 MiB, whatever the number of uploads.
//!
//! A [`Op::Write`]'s buffer comes back in its [`Completion`], emptied, for the loop to fill
//! again: in the steady state no chunk is allocated.
//!
//! ## Failures
//!
//! The first failure ends an upload: its temporary file is removed, the op is answered
//! [`Outcome::Failed`] with a short human reason (`no space left on device`), and every later op
//! for that upload is answered the same way without touching the file system — until a
//! [`Op::Commit`] or [`Op::Discard`], which make the worker forget it. Every upload should end
//! with one of those two. A panic in an op is caught and answered as a failure too; the worker
//! goes on with the next op.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use mio::Waker;

use super::durable::{Room, Stored, TempFile, UploadDir};
use crate::sys;

/// I/O threads when nothing else is said: uploads are disk-bound, so more threads than disks
/// help little; two let one upload's `fsync` overlap another's writes.
pub(crate) const DEFAULT_IO_THREADS: usize = 2;

/// Ops in flight per I/O thread when nothing else is said (see the module docs, "Bounds").
pub(crate) const DEFAULT_QUEUE_PER_THREAD: usize = 8;

/// The most I/O threads a pool may have.
pub(crate) const MAX_IO_THREADS: usize = 64;

/// The most ops in flight per I/O thread.
pub(crate) const MAX_QUEUE_PER_THREAD: usize = 4096;

/// How long dropping a pool waits for its threads to finish their queued ops before leaving
/// them to finish (or be ended with the process) on their own.
pub(crate) const DROP_WAIT: Duration = Duration::from_secs(10);

/// One thing to do for an upload. An upload's ops run in the order they were submitted.
pub(crate) enum Op {
    /// Create the upload's temporary file, and reserve room for its `size` bytes under
    /// `--min-free` ([`TempFile::reserve`]): [`Outcome::Begun`] or [`Outcome::NoSpace`].
    Begin {
        /// The SIZE its header announced.
        size: u64,
    },
    /// Append these bytes. The vector comes back, emptied, in the [`Completion`].
    Write(Vec<u8>),
    /// Make the upload durable under this name, or the first free variant of it
    /// ([`TempFile::commit`]). The upload is then forgotten.
    Commit {
        /// The name the client asked for, already cleaned by the protocol.
        name: String,
    },
    /// Remove the temporary file: the upload was cut short. The upload is then forgotten.
    Discard,
    /// Tests only: the worker waits until the sender is dropped or sends, holding up its queue.
    #[cfg(test)]
    Hold(Receiver<()>),
}

impl fmt::Debug for Op {
    /// Without the bytes of a write: a log line must not print a 64 KiB chunk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Begin { size } => write!(f, "Begin({size} bytes)"),
            Op::Write(bytes) => write!(f, "Write({} bytes)", bytes.len()),
            Op::Commit { name } => write!(f, "Commit({name:?})"),
            Op::Discard => f.write_str("Discard"),
            #[cfg(test)]
            Op::Hold(_) => f.write_str("Hold"),
        }
    }
}

/// How an op turned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// [`Op::Begin`]: the temporary file exists, its room reserved.
    Begun,
    /// [`Op::Begin`]: the upload would leave less than `--min-free` free; nothing was kept, and
    /// the upload is forgotten (as after a commit).
    NoSpace {
        /// Bytes free on the file system when asked.
        available: u64,
    },
    /// [`Op::Write`]: the bytes are written (not yet durable: that is the commit's `fsync`).
    Written,
    /// [`Op::Commit`]: the upload is durably stored; here is under what name.
    Committed(Stored),
    /// [`Op::Discard`]: the temporary file is gone.
    Discarded,
    /// The op failed, or an earlier one of the same upload did. The temporary file is removed.
    Failed {
        /// Short and human, for `error storage failed: REASON` (`no space left on device`).
        reason: String,
    },
}

/// The answer to one submitted op.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The upload the op was for.
    pub upload: u64,
    /// What happened.
    pub outcome: Outcome,
    /// A [`Op::Write`]'s vector, emptied (capacity kept) for the next chunk, whether the write
    /// worked or not; `None` for other ops.
    pub buffer: Option<Vec<u8>>,
}

/// Why [`StoragePool::try_submit`] did not take an op; when it may be tried again, the op comes
/// back unharmed.
#[derive(Debug)]
pub(crate) enum SubmitError {
    /// The upload's worker has `queue_per_thread` ops in flight: drain completions, then try
    /// again (stop reading the connection meanwhile).
    Full(Op),
    /// The upload's worker is gone (it can only have died of a bug): the op will never run, and
    /// is dropped.
    Closed,
}

/// An op on its way to a worker.
struct Job {
    upload: u64,
    op: Op,
}

/// One worker, as the pool sees it.
struct Worker {
    /// Its queue; `None` once hung up (shutdown), which tells the worker to finish and exit.
    jobs: Option<SyncSender<Job>>,
    /// `None` once joined, or left to itself after a timed-out shutdown.
    thread: Option<JoinHandle<()>>,
    /// Ops submitted to it and not yet drained (see the module docs, "Bounds").
    in_flight: AtomicUsize,
}

/// What the workers and the loop share.
struct Shared {
    /// Completions not yet drained, oldest first.
    completions: Mutex<VecDeque<Completion>>,
    /// Wakes the loop's `poll`.
    waker: Arc<Waker>,
}

impl Shared {
    /// Queues a completion from worker `index`, waking the loop if it may be asleep: if the
    /// queue was not empty, a wake-up is already on its way for the completions in it, and the
    /// loop drains all of them.
    fn complete(&self, index: usize, completion: Completion) {
        let upload = completion.upload;
        let ahead = {
            let mut queue = self
                .completions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ahead = queue.len();
            queue.push_back(completion);
            ahead
        };
        if ahead == 0 {
            trace!("io-{index}: upload #{upload}: answer queued for the loop; waking it");
            if let Err(e) = self.waker.wake() {
                warn!("cannot wake the event loop: {}", sys::os_reason(&e));
            }
        } else {
            trace!(
                "io-{index}: upload #{upload}: answer queued behind {ahead} more; the loop's \
                 wake-up is already on its way"
            );
        }
    }
}

/// The reactor's I/O threads for uploads (see the module docs).
pub(crate) struct StoragePool {
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    /// Most ops in flight per worker.
    queue_per_thread: usize,
    /// Each worker sends its index here as it exits (also when it dies): how shutdown waits
    /// with a deadline, which `JoinHandle::join` cannot.
    exits: Mutex<Receiver<usize>>,
    /// The foil ([`StoragePool::in_caller`]): no threads, every op runs in the submitting thread.
    in_caller: Option<Mutex<WorkerLoop>>,
}

impl fmt::Debug for StoragePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoragePool")
            .field("threads", &self.workers.len())
            .field("queue_per_thread", &self.queue_per_thread)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl StoragePool {
    /// Starts `threads` I/O threads (`oneloop-io-0`, ...) storing uploads in `dir`, each taking
    /// at most `queue_per_thread` ops in flight. `waker` is registered in the loop's `Poll`; the
    /// workers call it when completions are ready, and the loop then calls
    /// [`drain`](StoragePool::drain).
    ///
    /// Fails if `threads` or `queue_per_thread` is 0 or above its maximum, or if a thread
    /// cannot be started.
    pub(crate) fn new(
        dir: Arc<UploadDir>,
        threads: usize,
        queue_per_thread: usize,
        waker: Arc<Waker>,
    ) -> io::Result<StoragePool> {
        if !(1..=MAX_IO_THREADS).contains(&threads)
            || !(1..=MAX_QUEUE_PER_THREAD).contains(&queue_per_thread)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an I/O pool needs 1 to {MAX_IO_THREADS} threads and 1 to \
                     {MAX_QUEUE_PER_THREAD} ops per thread (asked: {threads} and \
                     {queue_per_thread})"
                ),
            ));
        }
        let (exit_tx, exit_rx) = mpsc::channel();
        let mut pool = StoragePool {
            workers: Vec::with_capacity(threads),
            shared: Arc::new(Shared {
                completions: Mutex::new(VecDeque::new()),
                waker,
            }),
            queue_per_thread,
            exits: Mutex::new(exit_rx),
            in_caller: None,
        };
        for index in 0..threads {
            let (jobs, queue) = mpsc::sync_channel(queue_per_thread);
            let worker = WorkerLoop {
                index,
                dir: Arc::clone(&dir),
                shared: Arc::clone(&pool.shared),
                uploads: HashMap::new(),
            };
            let exit = ExitNotice {
                index,
                exits: exit_tx.clone(),
            };
            // On failure `pool` is dropped, which stops the threads already started.
            let thread = thread::Builder::new()
                .name(format!("oneloop-io-{index}"))
                .spawn(move || worker.run(queue, exit))?;
            pool.workers.push(Worker {
                jobs: Some(jobs),
                thread: Some(thread),
                in_flight: AtomicUsize::new(0),
            });
        }
        debug!("storage: {threads} I/O thread(s), {queue_per_thread} ops in flight each at most");
        Ok(pool)
    }

    /// The foil for measuring what the threads are for: no I/O thread at all, every op runs in
    /// the thread that submits it — for the reactor, *in the loop*, `fsync` and all — and its
    /// completion is queued and `waker` woken as a thread's would be. `--upload-io loop` serves
    /// with it, so `docs/BENCHMARKS.md` can show what a disk wait inside the loop costs every
    /// other client. Never the default.
    pub(crate) fn in_caller(dir: Arc<UploadDir>, queue: usize, waker: Arc<Waker>) -> StoragePool {
        let (_, exits) = mpsc::channel();
        let shared = Arc::new(Shared {
            completions: Mutex::new(VecDeque::new()),
            waker,
        });
        let worker = WorkerLoop {
            index: 0,
            dir,
            shared: Arc::clone(&shared),
            uploads: HashMap::new(),
        };
        debug!("storage: no I/O thread; file operations run in the event loop (a foil)");
        StoragePool {
            workers: vec![Worker {
                jobs: None,
                thread: None,
                in_flight: AtomicUsize::new(0),
            }],
            shared,
            queue_per_thread: queue.clamp(1, MAX_QUEUE_PER_THREAD),
            exits: Mutex::new(exits),
            in_caller: Some(Mutex::new(worker)),
        }
    }

    /// Hands `op` for `upload` to that upload's worker, without ever waiting: if the worker has
    /// its fill of ops in flight, the op comes back in [`SubmitError::Full`].
    ///
    /// `upload` is any number the caller uses for one upload, unique among uploads in flight (a
    /// serial number, not a reusable slab key: the worker may still hold an old upload's state
    /// until its commit or discard is done).
    pub(crate) fn try_submit(&self, upload: u64, op: Op) -> Result<(), SubmitError> {
        let worker = &self.workers[self.worker_of(upload)];
        // Count first, then send: the count can only be over the limit for the moment between
        // the two lines, and then the op is refused, never queued past the bound.
        if worker.in_flight.fetch_add(1, Ordering::AcqRel) >= self.queue_per_thread {
            worker.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Full(op));
        }
        if let Some(in_caller) = &self.in_caller {
            let mut worker = in_caller.lock().unwrap_or_else(PoisonError::into_inner);
            let (outcome, buffer) = worker.perform(upload, op);
            worker.shared.complete(
                worker.index,
                Completion {
                    upload,
                    outcome,
                    buffer,
                },
            );
            return Ok(());
        }
        let Some(jobs) = &worker.jobs else {
            worker.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Closed);
        };
        match jobs.try_send(Job { upload, op }) {
            Ok(()) => Ok(()),
            Err(refused) => {
                worker.in_flight.fetch_sub(1, Ordering::AcqRel);
                match refused {
                    // Cannot happen: the queue holds no more than the ops counted in flight.
                    TrySendError::Full(job) => Err(SubmitError::Full(job.op)),
                    TrySendError::Disconnected(_) => Err(SubmitError::Closed),
                }
            }
        }
    }

    /// Moves every completion that is ready into `out`, oldest first, and returns how many. Call
    /// it when `poll` reports the waker's token (and, harmlessly, at any other time).
    ///
    /// An upload's completions come in the order of its ops; different uploads' interleave.
    pub(crate) fn drain(&self, out: &mut Vec<Completion>) -> usize {
        let mut queue = self
            .shared
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = queue.len();
        for completion in queue.drain(..) {
            self.workers[self.worker_of(completion.upload)]
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
            out.push(completion);
        }
        count
    }

    /// Ops submitted and not yet drained, over all workers.
    pub(crate) fn in_flight(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.in_flight.load(Ordering::Acquire))
            .sum()
    }

    /// The number of I/O threads.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Stops the pool: takes no more ops, lets the workers finish every op already submitted (so
    /// uploads whose commit was submitted are stored), waits for them up to `timeout`, and
    /// returns the completions not drained yet, for the loop to answer its clients.
    ///
    /// Uploads begun but neither committed nor discarded have their temporary files removed. A
    /// worker still busy at the timeout (a disk that hangs) is left to finish on its own — or to
    /// be ended with the process — and a warning says so; its late completions are lost.
    pub(crate) fn shutdown(mut self, timeout: Duration) -> Vec<Completion> {
        self.stop(timeout);
        let mut rest = Vec::new();
        self.drain(&mut rest);
        rest
    }

    /// Hangs up every worker's queue and waits for the workers to exit, up to `timeout`.
    /// Returns whether they all did. Idempotent.
    fn stop(&mut self, timeout: Duration) -> bool {
        for worker in &mut self.workers {
            worker.jobs = None; // The worker finishes what is queued, then sees the hang-up.
        }
        let mut running = self.workers.iter().filter(|w| w.thread.is_some()).count();
        let deadline = Instant::now() + timeout;
        let exits = self.exits.lock().unwrap_or_else(PoisonError::into_inner);
        while running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match exits.recv_timeout(left) {
                Ok(index) => {
                    if let Some(thread) = self.workers[index].thread.take() {
                        // It has announced its exit: joining takes a moment at most.
                        let _ = thread.join();
                        running -= 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    warn!(
                        "storage: {running} I/O thread(s) still busy after {timeout:?}; not \
                         waiting for them"
                    );
                    for worker in &mut self.workers {
                        worker.thread = None; // Detached.
                    }
                    return false;
                }
                // Every worker has exited and said so already.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        true
    }

    /// The thread that runs `upload`'s ops, for the log: `io-1`, or the loop itself for the
    /// foil ([`StoragePool::in_caller`]).
    pub(crate) fn thread_of(&self, upload: u64) -> IoThread {
        IoThread((self.in_caller.is_none()).then(|| self.worker_of(upload)))
    }

    fn worker_of(&self, upload: u64) -> usize {
        (upload % self.workers.len() as u64) as usize
    }
}

impl Drop for StoragePool {
    /// Stops the pool as [`StoragePool::shutdown`] does, waiting at most [`DROP_WAIT`].
    fn drop(&mut self) {
        self.stop(DROP_WAIT);
    }
}

/// Which thread runs an upload's ops, as the log names it: `io-1` (the thread `oneloop-io-1`),
/// or `the loop itself` under `--upload-io loop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoThread(Option<usize>);

impl IoThread {
    /// Whether the ops run in the loop itself (`--upload-io loop`), every other client waiting.
    pub(crate) fn is_the_loop(self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Display for IoThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(index) => write!(f, "io-{index}"),
            None => f.write_str("the loop itself"),
        }
    }
}

/// Sends a worker's index to the pool when the worker ends, however it ends (a drop guard, so
/// that a panic that escapes still reports).
struct ExitNotice {
    index: usize,
    exits: Sender<usize>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.exits.send(self.index);
    }
}

/// What a worker knows of one upload.
enum UploadState {
    /// Being written.
    Open(TempFile),
    /// Failed (its file is already removed); later ops get this reason.
    Failed(String),
}

/// One I/O thread's state.
struct WorkerLoop {
    index: usize,
    dir: Arc<UploadDir>,
    shared: Arc<Shared>,
    /// The uploads pinned to this worker that have begun and not yet ended.
    uploads: HashMap<u64, UploadState>,
}

impl WorkerLoop {
    /// Runs ops until the pool hangs up the queue, then removes what was never committed.
    fn run(mut self, queue: Receiver<Job>, _exit: ExitNotice) {
        debug!("io-{}: started", self.index);
        for Job { upload, op } in queue.iter() {
            let (outcome, buffer) =
                match panic::catch_unwind(AssertUnwindSafe(|| self.perform(upload, op))) {
                    Ok(done) => done,
                    Err(_) => {
                        // The panic's message is printed by the panic hook; the upload is over.
                        warn!("io-{}: upload #{upload}: panicked", self.index);
                        self.uploads.remove(&upload); // Dropping a TempFile removes its file.
                        (failed("internal error".to_owned()), None)
                    }
                };
            self.shared.complete(
                self.index,
                Completion {
                    upload,
                    outcome,
                    buffer,
                },
            );
        }
        for (upload, state) in self.uploads.drain() {
            if let UploadState::Open(file) = state {
                debug!(
                    "io-{}: upload #{upload}: never committed; removing {} ({} bytes)",
                    self.index,
                    file.name(),
                    file.written()
                );
            }
        }
        debug!("io-{}: stopped", self.index);
    }

    /// Runs one op: its outcome, and a write's emptied buffer.
    fn perform(&mut self, upload: u64, op: Op) -> (Outcome, Option<Vec<u8>>) {
        let index = self.index;
        match op {
            Op::Begin { size } => (self.begin(upload, size), None),
            Op::Write(mut bytes) => {
                let outcome = self.write(upload, &bytes);
                bytes.clear();
                (outcome, Some(bytes))
            }
            Op::Commit { name } => {
                let outcome = match self.uploads.remove(&upload) {
                    Some(UploadState::Open(file)) => match file.commit(&name) {
                        Ok(stored) => {
                            debug!("io-{index}: upload #{upload}: {stored}");
                            Outcome::Committed(stored)
                        }
                        Err(e) => self.fail(upload, "committing", &e),
                    },
                    Some(UploadState::Failed(reason)) => failed(reason),
                    None => not_begun(index, upload, "commit"),
                };
                (outcome, None)
            }
            Op::Discard => {
                let outcome = match self.uploads.remove(&upload) {
                    Some(UploadState::Open(file)) => {
                        let (name, size) = (file.name().to_owned(), file.written());
                        match file.discard() {
                            Ok(()) => {
                                debug!(
                                    "io-{index}: upload #{upload}: cut short; removed {name} \
                                     ({size} bytes)"
                                );
                                Outcome::Discarded
                            }
                            Err(e) => self.fail(upload, "removing the temporary file", &e),
                        }
                    }
                    // Already removed when it failed; nothing was ever created for an unknown one.
                    Some(UploadState::Failed(_)) | None => Outcome::Discarded,
                };
                (outcome, None)
            }
            #[cfg(test)]
            Op::Hold(until) => {
                let _ = until.recv();
                (Outcome::Written, None)
            }
        }
    }

    fn begin(&mut self, upload: u64, size: u64) -> Outcome {
        let index = self.index;
        if let Some(state) = self.uploads.get_mut(&upload) {
            // A caller's bug; the first failure ends the upload, like any other (dropping the
            // old state removes its temporary file).
            let reason = "upload begun twice".to_owned();
            warn!("io-{index}: upload #{upload}: {reason}");
            *state = UploadState::Failed(reason.clone());
            return failed(reason);
        }
        let mut file = match TempFile::create(&self.dir) {
            Ok(file) => file,
            Err(e) => return self.end_in_failure(upload, "creating the temporary file", &e),
        };
        match file.reserve(size) {
            Ok(Room::Fits) => {
                debug!("io-{index}: upload #{upload}: created {}", file.name());
                self.uploads.insert(upload, UploadState::Open(file));
                Outcome::Begun
            }
            // Dropping the file removes it and gives its reservation back.
            Ok(Room::Short { available }) => {
                debug!(
                    "io-{index}: upload #{upload}: {size} bytes would leave {available} free, under --min-free; not begun"
                );
                Outcome::NoSpace { available }
            }
            Err(e) => self.end_in_failure(upload, "reserving its space", &e),
        }
    }

    fn write(&mut self, upload: u64, bytes: &[u8]) -> Outcome {
        let index = self.index;
        let result = match self.uploads.get_mut(&upload) {
            Some(UploadState::Open(file)) => file.write_all(bytes).map(|()| file.written()),
            Some(UploadState::Failed(reason)) => return failed(reason.clone()),
            None => return not_begun(index, upload, "write"),
        };
        match result {
            Ok(total) => {
                trace!(
                    "io-{index}: upload #{upload}: wrote {} bytes ({total} so far)",
                    bytes.len()
                );
                Outcome::Written
            }
            // `write_all` has removed the file already.
            Err(e) => self.end_in_failure(upload, "writing", &e),
        }
    }

    /// A failure in the middle of an upload: its state becomes the failure's reason, which
    /// every later op of the upload gets (see the module docs, "Failures").
    fn end_in_failure(&mut self, upload: u64, doing: &str, error: &io::Error) -> Outcome {
        let outcome = self.fail(upload, doing, error);
        if let Outcome::Failed { reason } = &outcome {
            // Replacing an open file drops it, which removes it.
            self.uploads
                .insert(upload, UploadState::Failed(reason.clone()));
        }
        outcome
    }

    /// Logs a storage failure in plain words and makes its outcome.
    fn fail(&self, upload: u64, doing: &str, error: &io::Error) -> Outcome {
        let reason = sys::os_reason(error);
        warn!(
            "io-{}: upload #{upload}: storage failed while {doing}: {reason}; temporary file \
             removed",
            self.index
        );
        failed(reason)
    }
}

fn failed(reason: String) -> Outcome {
    Outcome::Failed { reason }
}

/// An op for an upload this worker does not know: a caller's bug, answered without touching
/// any file.
fn not_begun(index: usize, upload: u64, op: &str) -> Outcome {
    warn!("io-{index}: upload #{upload}: {op} before begin");
    failed("upload not begun".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::{Scratch, Tmpfs};
    use mio::{Events, Poll, Token};

    const WAKE: Token = Token(7);
    /// Every wait in these tests has this deadline; none is expected to come near it.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A pool on a scratch (or given) directory, and the poll its waker wakes.
    struct Harness {
        poll: Poll,
        events: Events,
        pool: StoragePool,
    }

    impl Harness {
        fn new(path: &std::path::Path, threads: usize, queue_per_thread: usize) -> Harness {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
            let dir = Arc::new(UploadDir::open(path).unwrap());
            let pool = StoragePool::new(dir, threads, queue_per_thread, waker).unwrap();
            Harness {
                poll,
                events: Events::with_capacity(8),
                pool,
            }
        }

        /// Blocks in `poll` until the waker's token is reported; fails after `PATIENCE`.
        fn wait_for_wake(&mut self) {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "the waker never woke the poll");
                self.poll.poll(&mut self.events, Some(left)).unwrap();
                if self.events.iter().any(|e| e.token() == WAKE) {
                    return;
                }
            }
        }

        /// Drains completions, waiting on the poll for more, until there are `count`.
        fn collect(&mut self, count: usize) -> Vec<Completion> {
            let mut out = Vec::new();
            self.pool.drain(&mut out);
            while out.len() < count {
                self.wait_for_wake();
                self.pool.drain(&mut out);
            }
            assert_eq!(out.len(), count, "more completions than ops: {out:?}");
            out
        }

        /// Submits `ops` in the given order (stopping on `Full` to drain, which keeps every
        /// upload's order), and returns all their completions.
        fn run(&mut self, ops: Vec<(u64, Op)>) -> Vec<Completion> {
            let total = ops.len();
            let mut pending = VecDeque::from(ops);
            let mut done = Vec::new();
            while done.len() < total {
                while let Some((upload, op)) = pending.pop_front() {
                    match self.pool.try_submit(upload, op) {
                        Ok(()) => {}
                        Err(SubmitError::Full(op)) => {
                            pending.push_front((upload, op));
                            break;
                        }
                        Err(SubmitError::Closed) => panic!("the pool closed"),
                    }
                }
                if self.pool.drain(&mut done) == 0 {
                    self.wait_for_wake();
                }
            }
            done
        }
    }

    fn outcomes_of(completions: &[Completion], upload: u64) -> Vec<Outcome> {
        completions
            .iter()
            .filter(|c| c.upload == upload)
            .map(|c| c.outcome.clone())
            .collect()
    }

    fn reason(outcome: &Outcome) -> &str {
        match outcome {
            Outcome::Failed { reason } => reason,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn a_completion_wakes_the_poll() {
        let scratch = Scratch::new("pool-wake");
        let mut h = Harness::new(&scratch.path, 1, 4);
        h.pool.try_submit(1, Op::Begin { size: 0 }).unwrap();
        // Nothing drained yet: only the waker can end this poll before the deadline.
        h.wait_for_wake();
        let mut out = Vec::new();
        assert_eq!(h.pool.drain(&mut out), 1);
        assert_eq!(out[0].upload, 1);
        assert_eq!(out[0].outcome, Outcome::Begun);
        assert_eq!(h.pool.in_flight(), 0);
    }

    #[test]
    fn an_uploads_ops_run_in_order_and_its_file_is_whole() {
        const UPLOADS: u64 = 6;
        const CHUNKS: usize = 20;
        let scratch = Scratch::new("pool-order");
        let mut h = Harness::new(&scratch.path, 2, 3);
        let mut ops = vec![];
        for upload in 0..UPLOADS {
            ops.push((upload, Op::Begin { size: 0 }));
        }
        for chunk in 0..CHUNKS {
            for upload in 0..UPLOADS {
                ops.push((upload, Op::Write(format!("{upload}:{chunk};").into_bytes())));
            }
        }
        for upload in 0..UPLOADS {
            let name = format!("upload-{upload}.txt");
            ops.push((upload, Op::Commit { name }));
        }
        let done = h.run(ops);
        for upload in 0..UPLOADS {
            let mut expected = vec![Outcome::Begun];
            expected.extend(std::iter::repeat(Outcome::Written).take(CHUNKS));
            let outcomes = outcomes_of(&done, upload);
            assert_eq!(outcomes[..=CHUNKS], expected[..], "upload {upload}");
            match &outcomes[CHUNKS + 1] {
                Outcome::Committed(stored) => {
                    assert_eq!(stored.name, format!("upload-{upload}.txt"))
                }
                other => panic!("upload {upload}: {other:?}"),
            }
            let content: String = (0..CHUNKS).map(|c| format!("{upload}:{c};")).collect();
            let path = scratch.path.join(format!("upload-{upload}.txt"));
            assert_eq!(std::fs::read_to_string(path).unwrap(), content);
        }
        assert_eq!(
            scratch.names().len(),
            UPLOADS as usize,
            "{:?}",
            scratch.names()
        );
    }

    #[test]
    fn a_writes_buffer_comes_back_empty_with_its_capacity() {
        let scratch = Scratch::new("pool-buffer");
        let mut h = Harness::new(&scratch.path, 1, 4);
        let mut chunk = Vec::with_capacity(64 * 1024);
        chunk.extend_from_slice(&[b'z'; 1000]);
        let done = h.run(vec![
            (9, Op::Begin { size: 0 }),
            (9, Op::Write(chunk)),
            (9, Op::Discard),
        ]);
        let buffer = done[1].buffer.as_ref().expect("a write returns its buffer");
        assert!(buffer.is_empty());
        assert!(buffer.capacity() >= 64 * 1024);
        assert!(done[0].buffer.is_none() && done[2].buffer.is_none());
        assert_eq!(done[2].outcome, Outcome::Discarded);
        assert!(scratch.names().is_empty());
    }

    #[test]
    fn a_busy_worker_refuses_ops_at_once_and_the_others_go_on() {
        let scratch = Scratch::new("pool-full");
        let mut h = Harness::new(&scratch.path, 2, 2);
        // Worker 0 (even uploads) is held inside its first op; a second op fills it.
        let (release, hold) = mpsc::channel();
        h.pool.try_submit(0, Op::Hold(hold)).unwrap();
        h.pool.try_submit(2, Op::Begin { size: 0 }).unwrap();
        match h.pool.try_submit(4, Op::Begin { size: 0 }) {
            Err(SubmitError::Full(Op::Begin { .. })) => {}
            other => panic!("a third op for a full worker: {other:?}"),
        }
        // Worker 1 (odd uploads) is not held up by worker 0.
        h.pool.try_submit(1, Op::Begin { size: 0 }).unwrap();
        let done = h.collect(1);
        assert_eq!((done[0].upload, &done[0].outcome), (1, &Outcome::Begun));
        assert!(matches!(
            h.pool.try_submit(4, Op::Begin { size: 0 }),
            Err(SubmitError::Full(_))
        ));
        // Released, worker 0 finishes; once its completions are drained it has room again.
        release.send(()).unwrap();
        let done = h.collect(2);
        assert_eq!(outcomes_of(&done, 2), vec![Outcome::Begun]);
        let done = h.run(vec![
            (4, Op::Begin { size: 0 }),
            (1, Op::Discard),
            (2, Op::Discard),
            (4, Op::Discard),
        ]);
        assert_eq!(
            outcomes_of(&done, 4),
            vec![Outcome::Begun, Outcome::Discarded]
        );
        assert!(scratch.names().is_empty(), "{:?}", scratch.names());
    }

    #[test]
    fn after_a_failure_every_op_fails_without_touching_files() {
        let scratch = Scratch::new("pool-failed");
        let mut h = Harness::new(&scratch.path, 1, 16);
        let done = h.run(vec![
            (5, Op::Begin { size: 0 }),
            (5, Op::Write(b"data".to_vec())),
            (5, Op::Begin { size: 0 }), // a caller's bug: the upload fails, its file is removed
            (5, Op::Write(b"more".to_vec())),
            (5, Op::Commit { name: "x".into() }),
            (6, Op::Write(b"never begun".to_vec())),
            (7, Op::Discard),
        ]);
        let five = outcomes_of(&done, 5);
        assert_eq!(five[..2], [Outcome::Begun, Outcome::Written]);
        for outcome in &five[2..] {
            assert_eq!(reason(outcome), "upload begun twice");
        }
        assert!(
            done[3].buffer.is_some(),
            "a failed write returns its buffer too"
        );
        assert_eq!(reason(&outcomes_of(&done, 6)[0]), "upload not begun");
        assert_eq!(outcomes_of(&done, 7), vec![Outcome::Discarded]);
        assert!(scratch.names().is_empty(), "{:?}", scratch.names());
    }

    #[test]
    fn a_bad_name_fails_the_commit_and_removes_the_file() {
        let scratch = Scratch::new("pool-bad-name");
        let mut h = Harness::new(&scratch.path, 1, 4);
        let done = h.run(vec![
            (1, Op::Begin { size: 0 }),
            (1, Op::Write(b"x".to_vec())),
            (1, Op::Commit { name: "a/b".into() }),
        ]);
        assert!(reason(&done[2].outcome).starts_with("bad name"), "{done:?}");
        assert!(scratch.names().is_empty(), "{:?}", scratch.names());
    }

    #[test]
    fn a_full_disk_fails_the_upload_and_leaves_nothing() {
        let Some(tmpfs) = Tmpfs::mount("pool-full-disk", "size=64k") else {
            return;
        };
        let mut h = Harness::new(&tmpfs.scratch.path, 1, 4);
        let done = h.run(vec![
            (1, Op::Begin { size: 0 }),
            (1, Op::Write(vec![b'x'; 256 * 1024])),
            (1, Op::Write(vec![b'x'; 10])),
            (1, Op::Discard),
        ]);
        assert_eq!(done[0].outcome, Outcome::Begun);
        assert_eq!(reason(&done[1].outcome), "no space left on device");
        assert_eq!(reason(&done[2].outcome), "no space left on device");
        assert_eq!(done[3].outcome, Outcome::Discarded);
        assert!(
            tmpfs.scratch.names().is_empty(),
            "{:?}",
            tmpfs.scratch.names()
        );
        // The disk has its space back: a small upload fits.
        let done = h.run(vec![
            (2, Op::Begin { size: 0 }),
            (2, Op::Write(b"small".to_vec())),
            (
                2,
                Op::Commit {
                    name: "small.txt".into(),
                },
            ),
        ]);
        assert!(matches!(done[2].outcome, Outcome::Committed(_)), "{done:?}");
        drop(h);
    }

    #[test]
    fn shutdown_finishes_submitted_ops_and_removes_uncommitted_files() {
        let scratch = Scratch::new("pool-shutdown");
        let h = Harness::new(&scratch.path, 2, 16);
        for upload in 0..4 {
            h.pool.try_submit(upload, Op::Begin { size: 0 }).unwrap();
            let bytes = format!("upload {upload}").into_bytes();
            h.pool.try_submit(upload, Op::Write(bytes)).unwrap();
            if upload < 3 {
                let name = format!("s{upload}.txt");
                h.pool.try_submit(upload, Op::Commit { name }).unwrap();
            }
        }
        let rest = h.pool.shutdown(PATIENCE);
        assert_eq!(rest.len(), 11);
        for upload in 0..3 {
            let outcomes = outcomes_of(&rest, upload);
            assert!(matches!(outcomes[2], Outcome::Committed(_)), "{outcomes:?}");
            let path = scratch.path.join(format!("s{upload}.txt"));
            assert_eq!(
                std::fs::read_to_string(path).unwrap(),
                format!("upload {upload}")
            );
        }
        // Upload 3 was never committed: no file, temporary or not.
        assert_eq!(scratch.names(), vec!["s0.txt", "s1.txt", "s2.txt"]);
    }

    #[test]
    fn shutdown_does_not_wait_for_ever_for_a_stuck_worker() {
        let scratch = Scratch::new("pool-stuck");
        let h = Harness::new(&scratch.path, 2, 4);
        let (release, hold) = mpsc::channel();
        h.pool.try_submit(0, Op::Hold(hold)).unwrap();
        let started = Instant::now();
        let rest = h.pool.shutdown(Duration::from_millis(200));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < PATIENCE, "{waited:?}");
        assert!(rest.is_empty(), "{rest:?}");
        release.send(()).unwrap(); // The detached worker finishes and exits on its own.
    }

    #[test]
    fn sizes_out_of_bounds_are_refused() {
        let scratch = Scratch::new("pool-sizes");
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        let dir = Arc::new(UploadDir::open(&scratch.path).unwrap());
        for (threads, queue) in [
            (0, 4),
            (2, 0),
            (MAX_IO_THREADS + 1, 4),
            (2, MAX_QUEUE_PER_THREAD + 1),
        ] {
            let error =
                StoragePool::new(Arc::clone(&dir), threads, queue, Arc::clone(&waker)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
        let pool = StoragePool::new(dir, 3, 1, waker).unwrap();
        assert_eq!(pool.threads(), 3);
        let names: Vec<String> = pool
            .workers
            .iter()
            .map(|w| {
                w.thread
                    .as_ref()
                    .unwrap()
                    .thread()
                    .name()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["oneloop-io-0", "oneloop-io-1", "oneloop-io-2"]);
    }
}
