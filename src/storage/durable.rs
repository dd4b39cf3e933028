//! Storing one upload so that it is either there, whole and under its own name, or not there at
//! all — even if the machine loses power a moment later.
//!
//! These calls block: the blocking models call them in the thread or process that serves the
//! connection, the reactor only from its I/O threads ([`super::pool`]).
//!
//! ## The steps, and why each one
//!
//! 1. **A hidden temporary file in the same directory** ([`TempFile::create`]):
//!    `.oneloop-upload-<pid>-<serial>-<random>`, created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!    so it is always a new file of ours — never an existing file, never the target of a symbolic
//!    link someone planted under that name. It lives in the upload directory itself because a
//!    rename is atomic only within one file system. Nobody sees a half-written upload under a real
//!    name, and one cut short is removed (by [`TempFile::discard`], or when the value is dropped:
//!    an early return or a panic cannot leave it behind).
//! 2. **`fsync` the file** before it gets its name. Without it, a crash soon after the rename can
//!    leave the *name* on disk with the data still missing: the rename reached the journal, the
//!    data blocks never did (the ext4 "zero-length files after a crash" reports of 2009 are this).
//! 3. **Name it without ever replacing a file**: `renameat2(RENAME_NOREPLACE)` fails with `EEXIST`
//!    instead of replacing. A check-then-rename ("does `photo.jpg` exist? no — rename") would let
//!    two uploads of one name pass the check together, and the second rename would silently
//!    destroy the first upload. On `EEXIST` another candidate is tried: `photo.jpg`,
//!    `photo-2.jpg`, `photo-3.jpg`... ([`candidate_name`]; which one, see below). File systems without
//!    `RENAME_NOREPLACE` (NFS, some FUSE ones) get `link` + `unlink` instead: `link` also fails
//!    with `EEXIST` rather than replace, and the temporary name is removed after.
//! 4. **`fsync` the directory**: a rename changes the *directory*, and until the directory is
//!    flushed the new name may not survive a crash. Only after this is the upload durable, and
//!    only then may the client be told `saved`.
//!
//! ## Finding a free name
//!
//! Trying `photo.jpg`, `photo-2.jpg`, `photo-3.jpg`... in turn made the n-th copy of a name cost
//! n renames: 2,000 uploads of one name took 26 times as long as 500, and with a cap on the
//! tries every upload of that name failed past it. Now the directory remembers the last suffix
//! it gave each recently stored name (`NameHints`: a bounded two-generation map, O(1)
//! amortised) and a commit tries, in order:
//!
//! 1. the name itself (a name freed since is given again);
//! 2. the suffix after the one remembered — the usual case: 2 calls in all;
//! 3. if that is taken too (the directory changed behind our back, or the name is not
//!    remembered: a new server, a forked child, a name evicted), a search by existence checks
//!    (`fstatat`, not following links): doubling steps up from the last taken suffix to a free
//!    one, then halving back to the lowest free one above it — O(log n) checks for n copies,
//!    and the same name a one-by-one search would find when copies are numbered densely. The
//!    rename that follows never replaces; if it meets a file created meanwhile, the search goes
//!    on from there.
//!
//! So there is no limit on copies (but `u32::MAX`), and every try is still a rename that
//! cannot replace: a stale hint costs calls, never a file. [`Stored::name_calls`] counts them.
//!
//! ## Room (`--min-free`)
//!
//! An upload whose SIZE would leave less than `--min-free` on the file system gets
//! `error no space` instead of `ok` (Postfix's `queue_minfree`). "Counting what uploads in
//! progress still need" is the hard part: two uploads that each fit alone must not both be let
//! in when together they do not. So [`TempFile::reserve`] asks the file system itself to hold
//! the space — `fallocate(FALLOC_FL_KEEP_SIZE)` of SIZE bytes on the new temporary file — and
//! only then reads what is left (`fstatvfs`). Every upload in progress has reserved its whole
//! SIZE, so what is left already counts them: in this process, in a forked child, in another
//! server on the same directory — no shared ledger to keep right. Written bytes fill the space
//! reserved, so the figure does not drop twice; a discarded upload gives its space back with its
//! file. Where `fallocate` is not supported (some FUSE or NFS mounts) only the free space and
//! this SIZE are counted, and a warning says so once.
//!
//! Both calls are file-system I/O, so the reactor makes them on its I/O threads, as part of an
//! upload's first op, and sends `ok` only when that op's answer is back (the session's
//! [`with_admission`](crate::protocol::upload::UploadSession::with_admission)): one thread
//! round trip before `ok`, and a figure that is never stale. (A figure kept by the I/O threads
//! and read by the loop would answer sooner, but could be seconds old when another process fills
//! the disk, and could not count another process's uploads.)
//!
//! ## An `fsync` that fails is never retried
//!
//! In 2018 PostgreSQL learned ("fsyncgate") that when `fsync` reports an I/O error, Linux may
//! already have thrown the unwritten pages away and marked them clean: a second `fsync` then
//! succeeds with the data lost. So a failed `fsync` here fails the upload — the caller answers
//! `error storage failed: ...` — and the temporary file is removed. The client still has its
//! file and can send it again; what must never happen is `saved` for bytes that are gone.
//!
//! ## The directory, held open
//!
//! [`UploadDir`] keeps the upload directory open and names every file relative to it (`openat`,
//! `renameat2`, `unlinkat`): if someone renames the directory's path away, or puts a symbolic link
//! in its place, after the server started, uploads still land in the directory that was checked
//! at start. Stored names are a single path component (no `/`), so nothing can climb out of it.
//!
//! ## Leftovers
//!
//! A crash (or `kill -9`) between step 1 and step 3 leaves a temporary file behind.
//! [`UploadDir::open`] removes them: regular files directly inside the directory whose name starts
//! with [`TEMP_PREFIX`]. It never follows a symbolic link and never removes anything that is not a
//! regular file — a symbolic link, directory or FIFO under such a name was not made by this
//! program, so it is left alone (with a warning). A temporary file that another *running* server
//! sharing the directory is still writing is left alone too: each writer holds a `flock` on its
//! temporary file for as long as it writes, and the lock dies with its process, so a file nobody
//! holds locked is a crash's leftover. (On a file system without `flock` support, every such
//! file is taken for a leftover, as it would be with a single server.)

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

// The name rules are the upload protocol's: one definition of what a stored name may be, of how
// a taken name's alternatives are made, and of the temporaries' prefix that no stored name has.
use crate::protocol::upload::{candidate_name, clean_name, TEMP_PREFIX};
use crate::sys;

/// Names whose last suffix one generation of the name hints remembers; two generations are kept,
/// so at most twice this many names (each at most 255 bytes) are held, whatever the uploads.
pub(crate) const NAME_HINTS_PER_GENERATION: usize = 1024;

/// How many fresh temporary names [`TempFile::create`] tries before giving up. A collision needs
/// a 64-bit random tag to repeat (or a cleaner to take the file, see the module docs), so more
/// than one attempt is already rare.
const CREATE_ATTEMPTS: u32 = 16;

/// `--min-free` when nothing else is said: 256 MiB, as Postfix's `queue_minfree` advice for a
/// small queue — room for logs and the rest of the system once uploads stop.
pub(crate) const DEFAULT_MIN_FREE: u64 = 256 << 20;

/// Permission bits of a stored file, before the umask: what `cp` or a shell redirection gives.
const FILE_MODE: u32 = 0o644;

/// Serial number for the next temporary file of this process (part of its name).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);

/// The upload directory, held open; every file operation of this module goes through it.
///
/// Share it between threads in an [`Arc`]: a [`TempFile`] keeps the directory alive for as long
/// as it needs it.
#[derive(Debug)]
pub struct UploadDir {
    /// The path it was opened with, for messages.
    path: PathBuf,
    /// The directory itself (`O_DIRECTORY | O_CLOEXEC`): what the `*at` calls name files
    /// relative to, and what is `fsync`ed after a rename.
    dir: File,
    /// Whether `renameat2(RENAME_NOREPLACE)` works here. Found out at [`UploadDir::open`], and
    /// switched off for good if a later rename says it is unsupported; `link` + `unlink` then.
    no_replace_rename: AtomicBool,
    /// What the start-up clean-up found.
    leftovers: Leftovers,
    /// The last suffix given to each recently stored name (see "Finding a free name").
    hints: Mutex<NameHints>,
    /// `--min-free`: bytes an upload must leave free (0: no check). See "Room".
    min_free: u64,
    /// The file system cannot reserve space (`fallocate`): said once, then only `statvfs`.
    cannot_reserve: AtomicBool,
}

/// Temporary files that [`UploadDir::open`] found left behind in the directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Regular files named `.oneloop-upload-*` that nobody was writing: removed.
    pub removed: usize,
    /// Entries with such a name left in place: not a regular file (a symbolic link, directory,
    /// FIFO...), a file another running server is still writing, or one that could not be
    /// examined. Each is logged as a warning with its reason.
    pub kept: usize,
}

impl AsFd for UploadDir {
    /// The open directory: a forked child that stores uploads must keep this descriptor when it
    /// closes what it inherited.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

impl UploadDir {
    /// Opens the upload directory: it must exist, be a directory, and be writable; then removes
    /// the temporary files a crash left in it (see [`Leftovers`]).
    ///
    /// "Writable" is checked by really creating (and removing) a temporary file, not with
    /// `access(2)`: for root `access` says yes even on a read-only mount, and it knows nothing of
    /// a full disk's inode table. The same check finds out whether the file system can rename
    /// without replacing (see the module docs). Each error's message starts with the path, for
    /// the command line to print as it is.
    pub fn open(path: impl AsRef<Path>) -> io::Result<UploadDir> {
        let path = path.as_ref();
        let named = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{}: {what}{}", path.display(), sys::os_reason(&e)),
            )
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY) // std adds O_CLOEXEC itself
            .open(path)
            .map_err(|e| named("", e))?;
        let mut upload_dir = UploadDir {
            path: path.to_path_buf(),
            dir,
            no_replace_rename: AtomicBool::new(true),
            leftovers: Leftovers::default(),
            hints: Mutex::new(NameHints::default()),
            min_free: 0,
            cannot_reserve: AtomicBool::new(false),
        };
        upload_dir.leftovers = upload_dir
            .remove_leftovers()
            .map_err(|e| named("cannot list the directory: ", e))?;
        let upload_dir = Arc::new(upload_dir);
        probe(&upload_dir).map_err(|e| named("not writable: ", e))?;
        // Makes the removals above durable, and proves `fsync` works on this directory before
        // any upload depends on it.
        upload_dir
            .sync()
            .map_err(|e| named("cannot fsync the directory: ", e))?;
        let leftovers = upload_dir.leftovers;
        if leftovers.removed > 0 {
            info!(
                "{}: removed {} temporary file(s) left by an earlier run",
                path.display(),
                leftovers.removed
            );
        }
        // Every TempFile of the probe is gone, so this is the only reference.
        Ok(Arc::try_unwrap(upload_dir).expect("the probe keeps no reference"))
    }

    /// Sets `--min-free`: each upload must leave this many bytes free on the directory's file
    /// system, counting what uploads in progress still need ([`TempFile::reserve`]); 0 (as
    /// [`UploadDir::open`] leaves it) turns the check off.
    pub fn with_min_free(mut self, bytes: u64) -> UploadDir {
        self.min_free = bytes;
        self
    }

    /// `--min-free` (0: no check).
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// The path the directory was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What [`UploadDir::open`] found and removed.
    pub fn leftovers(&self) -> Leftovers {
        self.leftovers
    }

    /// Whether names are given with `renameat2(RENAME_NOREPLACE)` (`true`) or with `link` +
    /// `unlink` on a file system that lacks it (`false`).
    pub fn renames_without_replacing(&self) -> bool {
        self.no_replace_rename.load(Ordering::Relaxed)
    }

    /// `fsync`s the directory itself, making the names created or removed in it durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Gives the file named `from` the name `to`, never replacing an existing `to` (`EEXIST`
    /// instead). See the module docs, step 3.
    fn give_name(&self, from: &CStr, to: &CStr) -> io::Result<()> {
        if self.no_replace_rename.load(Ordering::Relaxed) {
            match sys::rename_no_replace_at(self.fd(), from, to) {
                Err(e) if is_unsupported(&e) => {
                    warn!(
                        "{}: renameat2(RENAME_NOREPLACE) is not supported here ({}); using link + \
                         unlink",
                        self.path.display(),
                        sys::os_reason(&e)
                    );
                    self.no_replace_rename.store(false, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        sys::link_at(self.fd(), from, to)?;
        if let Err(e) = sys::unlink_at(self.fd(), from) {
            // The file is stored under `to` all the same; the extra name is a leftover that the
            // next start removes (removing a name never touches the data another name holds).
            warn!(
                "{}: stored as {}, but the temporary name {} could not be removed: {}",
                self.path.display(),
                to.to_string_lossy(),
                from.to_string_lossy(),
                sys::os_reason(&e)
            );
        }
        Ok(())
    }

    /// Gives the temporary file `temp` the name `wanted`, or if that is taken the lowest free
    /// [`candidate_name`] above the last one this directory gave (see "Finding a free name" in
    /// the module docs), never replacing a file. Returns the name and the system calls spent.
    fn name_without_replacing(&self, temp: &CStr, wanted: &str) -> io::Result<(CString, u32)> {
        let mut calls = 0;
        let try_name = |n: u32, calls: &mut u32| -> io::Result<Option<CString>> {
            *calls += 1;
            let candidate = CString::new(candidate_name(wanted, n))?;
            match self.give_name(temp, &candidate) {
                Ok(()) => Ok(Some(candidate)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e),
            }
        };
        // The name itself first, always: a name freed since (the file was moved away) is the
        // one the client should get back.
        if let Some(name) = try_name(1, &mut calls)? {
            return Ok((name, calls));
        }
        let hint = self.hints().last_suffix(wanted);
        // `taken`: a suffix known to be taken; `n`: the next one to try.
        let mut taken = hint.unwrap_or(1);
        let mut n = taken.checked_add(1).ok_or_else(|| all_taken(wanted))?;
        loop {
            if let Some(name) = try_name(n, &mut calls)? {
                self.hints().remember(wanted, n);
                return Ok((name, calls));
            }
            // Taken behind our back (another server, a copy by hand, a concurrent commit of the
            // same name), or never seen (a directory full of copies at start): gallop up to a
            // free suffix, then halve back down to the lowest free one above `taken`. Copies
            // are usually numbered densely, and then this finds the one a linear search would,
            // in O(log n) checks; if they are not, it finds *a* free one, which is all the
            // contract asks. The rename that follows still never replaces: a name taken between
            // the check and the rename sends the search on from there.
            taken = n;
            let mut step: u32 = 1;
            let mut free = loop {
                let probe = taken.checked_add(step).ok_or_else(|| all_taken(wanted))?;
                calls += 1;
                if !self.name_exists(&candidate_name(wanted, probe))? {
                    break probe;
                }
                taken = probe;
                step = step.saturating_mul(2);
            };
            while free - taken > 1 {
                let middle = taken + (free - taken) / 2;
                calls += 1;
                if self.name_exists(&candidate_name(wanted, middle))? {
                    taken = middle;
                } else {
                    free = middle;
                }
            }
            n = free;
        }
    }

    /// Whether `name` exists in the directory, as anything (a dangling symbolic link too: a
    /// rename onto it would fail with `EEXIST` as well).
    fn name_exists(&self, name: &str) -> io::Result<bool> {
        match sys::file_id_at(self.fd(), &CString::new(name)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, NameHints> {
        self.hints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the temporary files a crash left behind (see the module docs).
    fn remove_leftovers(&self) -> io::Result<Leftovers> {
        // List the directory we hold open, not whatever its path leads to now. /proc is missing
        // in some chroots: then the path, which was the same directory a moment ago. Either way
        // every name found is then opened and removed relative to our descriptor.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
            .or_else(|_| std::fs::read_dir(&self.path))?;
        let mut leftovers = Leftovers::default();
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name();
            if !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            // The entry's own type (lstat's view: a symbolic link is a link), checked before
            // opening anything: opening a device node or FIFO can have effects of its own.
            let regular = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            let fate = if regular {
                self.remove_leftover(&name)
            } else {
                Ok(Fate::Kept("not a regular file"))
            };
            match fate {
                Ok(Fate::Removed) => {
                    debug!(
                        "{}: removed leftover {}",
                        self.path.display(),
                        name.to_string_lossy()
                    );
                    leftovers.removed += 1;
                }
                Ok(Fate::Gone) => {}
                Ok(Fate::Kept(why)) => {
                    warn!(
                        "{}: left {} alone: {why}",
                        self.path.display(),
                        name.to_string_lossy()
                    );
                    leftovers.kept += 1;
                }
                Err(e) => {
                    warn!(
                        "{}: left {} alone: {}",
                        self.path.display(),
                        name.to_string_lossy(),
                        sys::os_reason(&e)
                    );
                    leftovers.kept += 1;
                }
            }
        }
        Ok(leftovers)
    }

    /// Removes one leftover regular file, unless a live process holds its lock.
    fn remove_leftover(&self, name: &OsStr) -> io::Result<Fate> {
        let name = CString::new(name.as_bytes())?;
        // O_NOFOLLOW: if the entry became a symbolic link since it was listed, the open fails
        // (ELOOP) instead of reaching the link's target. O_NONBLOCK: a FIFO put there meanwhile
        // cannot make the open wait.
        let flags =
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let file = match sys::open_at(self.fd(), &name, flags, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Fate::Gone),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Fate::Kept("not a regular file"))
            }
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Ok(Fate::Kept("not a regular file"));
        }
        match sys::try_lock_exclusive(file.as_fd()) {
            Ok(true) => {}
            Ok(false) => return Ok(Fate::Kept("another running process is writing it")),
            // A file system without locks cannot tell a live writer from a dead one: the file
            // is taken for a leftover, as it would be with a single server.
            Err(e) => debug!(
                "{}: cannot lock {} ({}); removing it as a leftover",
                self.path.display(),
                name.to_string_lossy(),
                sys::os_reason(&e)
            ),
        }
        // Holding the lock, check that the name still leads to the file locked: a writer that
        // created this name a moment ago checks the same from its side (see `TempFile::create`).
        match sys::file_id_at(self.fd(), &name) {
            Ok(id) if id == (metadata.dev(), metadata.ino()) => {}
            Ok(_) => return Ok(Fate::Kept("replaced while being examined")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Fate::Gone),
            Err(e) => return Err(e),
        }
        match sys::unlink_at(self.fd(), &name) {
            Ok(()) => Ok(Fate::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Fate::Gone),
            Err(e) => Err(e),
        }
    }
}

/// The last suffix given to each recently stored name, so that the next copy of `photo.jpg`
/// costs one rename, not one per copy already stored (see "Finding a free name").
///
/// Bounded like a two-generation LRU: lookups and updates go to `current`; when it has
/// [`NAME_HINTS_PER_GENERATION`] names and a new one comes, it becomes `previous` (the older one
/// is dropped) and a new `current` starts. A name used again is moved back into `current`. So
/// every operation is O(1) amortised and at most two generations are held; a name forgotten
/// costs only the fallback search once.
#[derive(Debug, Default)]
struct NameHints {
    current: HashMap<String, u32>,
    previous: HashMap<String, u32>,
}

impl NameHints {
    /// The last suffix given to `name` (2 for `photo-2.jpg`), if remembered.
    fn last_suffix(&mut self, name: &str) -> Option<u32> {
        if let Some(&n) = self.current.get(name) {
            return Some(n);
        }
        let n = self.previous.remove(name)?;
        self.insert(name, n);
        Some(n)
    }

    /// `name` was just stored with suffix `n`. A smaller `n` than remembered (another thread
    /// found a lower free one) does not move the hint back: it only has to be a good start.
    fn remember(&mut self, name: &str, n: u32) {
        let n = self.last_suffix(name).map_or(n, |known| known.max(n));
        self.insert(name, n);
    }

    fn insert(&mut self, name: &str, n: u32) {
        if let Some(known) = self.current.get_mut(name) {
            *known = n;
            return;
        }
        if self.current.len() >= NAME_HINTS_PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name.to_owned(), n);
    }

    /// How many names are remembered (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The error when every suffix up to `u32::MAX` is taken (never in practice).
fn all_taken(wanted: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("every name like {wanted} up to -{} is taken", u32::MAX),
    )
}

/// What happened to one leftover.
enum Fate {
    Removed,
    /// Left in place, and why.
    Kept(&'static str),
    /// Vanished while we looked (its owner renamed or removed it).
    Gone,
}

/// Whether a rename failed because the file system (or kernel) cannot do `RENAME_NOREPLACE`.
fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Creates and removes a temporary file, and gives it a second hidden name on the way, to learn
/// whether `RENAME_NOREPLACE` works (else whether `link` does). Leaves nothing behind.
fn probe(dir: &Arc<UploadDir>) -> io::Result<()> {
    let mut file = TempFile::create(dir)?;
    let other = fresh_temp_name();
    match sys::rename_no_replace_at(dir.fd(), &file.name, &other) {
        Ok(()) => {
            file.name = other; // So that dropping it removes the right name.
            Ok(())
        }
        Err(e) if is_unsupported(&e) => {
            dir.no_replace_rename.store(false, Ordering::Relaxed);
            info!(
                "{}: renameat2(RENAME_NOREPLACE) is not supported here ({}); uploads are named \
                 with link + unlink",
                dir.path.display(),
                sys::os_reason(&e)
            );
            sys::link_at(dir.fd(), &file.name, &other).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "no way to name a file without replacing another: neither \
                         renameat2(RENAME_NOREPLACE) nor link works here ({})",
                        sys::os_reason(&e)
                    ),
                )
            })?;
            sys::unlink_at(dir.fd(), &other)
        }
        Err(e) => Err(e),
    }
}

/// A new temporary file name: `.oneloop-upload-<pid>-<serial>-<16 hex digits>`.
///
/// The process id and serial number make it unique within this machine's running processes;
/// the random tag makes it unguessable, so nobody can plant a file under the next name (and if
/// they did, `O_EXCL` would refuse it and another name would be tried). The tag comes from std's
/// randomly keyed SipHash: no cryptography is needed, only unpredictability.
fn fresh_temp_name() -> CString {
    let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(serial);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    let name = format!(
        "{TEMP_PREFIX}{}-{serial}-{:016x}",
        std::process::id(),
        hasher.finish()
    );
    CString::new(name).expect("digits and dashes contain no NUL")
}

/// An upload being written: a hidden temporary file in the [`UploadDir`].
///
/// It ends in one of three ways: [`commit`](TempFile::commit) gives it its name (durably),
/// [`discard`](TempFile::discard) removes it, and dropping it without either removes it too — so
/// an upload cut short by an error, an early return or a panic leaves no file.
#[derive(Debug)]
pub struct TempFile {
    dir: Arc<UploadDir>,
    /// Open for writing, and `flock`ed for as long as it is open (see the module docs).
    file: File,
    /// Its hidden name in the directory.
    name: CString,
    /// Bytes written so far.
    written: u64,
    /// A write failed (the file is already removed): it can no longer be committed.
    broken: bool,
    /// Committed, discarded or removed: nothing left for `drop` to remove.
    done: bool,
}

impl TempFile {
    /// Creates a new, empty temporary file in `dir` (module docs, step 1).
    pub fn create(dir: &Arc<UploadDir>) -> io::Result<TempFile> {
        let flags =
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        for _ in 0..CREATE_ATTEMPTS {
            let name = fresh_temp_name();
            let fd = match sys::open_at(dir.fd(), &name, flags, FILE_MODE) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let mut temp = TempFile {
                dir: Arc::clone(dir),
                file: File::from(fd),
                name,
                written: 0,
                broken: false,
                done: false,
            };
            // Lock it, then check that the name is still ours: a server starting up on the same
            // directory at this very moment may have taken the file for a leftover (it locks
            // first, then removes). Either it holds the lock now, or it removed the name before
            // we locked; both times the file is its, and we start again with a new name.
            match sys::try_lock_exclusive(temp.file.as_fd()) {
                Ok(true) => {}
                Ok(false) => {
                    temp.done = true; // The cleaner removes the name.
                    continue;
                }
                // No locks on this file system: write unlocked (see `remove_leftover`).
                Err(_) => {}
            }
            let metadata = temp.file.metadata()?;
            match sys::file_id_at(dir.fd(), &temp.name) {
                Ok(id) if id == (metadata.dev(), metadata.ino()) => return Ok(temp),
                Ok(_) | Err(_) => {
                    temp.done = true; // The name is gone, or someone else's.
                    continue;
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temporary file name after {CREATE_ATTEMPTS} attempts"),
        ))
    }

    /// The temporary file's hidden name.
    pub fn name(&self) -> &str {
        self.name.to_str().expect("temporary names are ASCII")
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes room for an upload of `size` bytes, or finds there is none (`--min-free`; see
    /// "Room" in the module docs): reserves `size` bytes of disk for this file (`fallocate`,
    /// keeping its size 0), then asks the file system what is left (`fstatvfs`). [`Room::Short`]
    /// if that is under `--min-free`, or if the reservation itself found no space; the caller
    /// then drops the file, which gives the reservation back. With `--min-free 0` it does
    /// nothing and answers [`Room::Fits`].
    ///
    /// Blocking file-system calls: the reactor makes them on its I/O threads.
    pub fn reserve(&mut self, size: u64) -> io::Result<Room> {
        let min_free = self.dir.min_free;
        if min_free == 0 {
            return Ok(Room::Fits);
        }
        let mut reserved = true;
        if size > 0 {
            match sys::reserve_space(self.file.as_fd(), size) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EFBIG)) => {
                    let available = sys::available_bytes(self.file.as_fd()).unwrap_or(0);
                    return Ok(Room::Short { available });
                }
                Err(e) if is_unsupported(&e) => {
                    reserved = false;
                    if !self.dir.cannot_reserve.swap(true, Ordering::Relaxed) {
                        warn!(
                            "{}: cannot reserve space for uploads here ({}); --min-free then counts only the free space, not what uploads in progress still need",
                            self.dir.path.display(),
                            sys::os_reason(&e)
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let available = sys::available_bytes(self.file.as_fd())?;
        // Reserved, `available` already counts this upload and every other one in progress.
        let needed = if reserved {
            min_free
        } else {
            min_free.saturating_add(size)
        };
        Ok(if available < needed {
            Room::Short { available }
        } else {
            Room::Fits
        })
    }

    /// Appends all of `bytes`. If the write fails (a full disk, an I/O error), the temporary file
    /// is removed at once — freeing what it held on a full disk — and every later call, commit
    /// included, fails.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("an earlier write to this upload failed"));
        }
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                self.remove();
                Err(e)
            }
        }
    }

    /// Makes the upload durable under the name `wanted`, or, if a file of that name exists, the
    /// first free [`candidate_name`]: `fsync` the file, name it without replacing anything,
    /// `fsync` the directory (module docs, steps 2 to 4). Returns the name it got.
    ///
    /// On any error the upload is not stored and its temporary file is removed; a failed
    /// `fsync` is never retried. `wanted` must be a name the upload protocol accepts, unchanged
    /// by its [`clean_name`] (a single path component: not empty, `.` or `..`; no `/`, `\\` or
    /// control character; at most 255 bytes; not starting with the temporaries' prefix);
    /// anything else is refused with [`io::ErrorKind::InvalidInput`].
    pub fn commit(mut self, wanted: &str) -> io::Result<Stored> {
        check_name(wanted)?;
        if self.broken {
            return Err(io::Error::other("an earlier write to this upload failed"));
        }
        let started = Instant::now();
        // Never retried: on error `self` is dropped here, which removes the temporary file.
        self.file.sync_all()?;
        let file_sync = started.elapsed();

        let (name, name_calls) = self.dir.name_without_replacing(&self.name, wanted)?;
        // The temporary name is gone: from here on `drop` has nothing to remove.
        self.done = true;

        let started = Instant::now();
        if let Err(e) = self.dir.sync() {
            // Not durable, so not stored: the client is told so, and keeps no file it was told
            // was not saved. Never retried (see the module docs).
            self.unpublish(&name);
            return Err(e);
        }
        Ok(Stored {
            name: name.into_string().expect("made from a &str"),
            size: self.written,
            name_calls,
            file_sync,
            directory_sync: started.elapsed(),
        })
    }

    /// Removes the temporary file: the upload is abandoned.
    pub fn discard(mut self) -> io::Result<()> {
        self.done = true;
        sys::unlink_at(self.dir.fd(), &self.name)
    }

    /// Removes the temporary file now, logging (not returning) a failure: for `drop` and for a
    /// failed write, where nobody could act on the error.
    fn remove(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = sys::unlink_at(self.dir.fd(), &self.name) {
            warn!(
                "{}: cannot remove temporary file {}: {} (removed at the next start)",
                self.dir.path.display(),
                self.name(),
                sys::os_reason(&e)
            );
        }
    }

    /// After a failed directory `fsync`: removes the stored name, if it still leads to our file.
    fn unpublish(&self, name: &CStr) {
        let ours = self.file.metadata().map(|m| (m.dev(), m.ino()));
        match (ours, sys::file_id_at(self.dir.fd(), name)) {
            (Ok(ours), Ok(now)) if ours == now => {
                if let Err(e) = sys::unlink_at(self.dir.fd(), name) {
                    warn!(
                        "{}: cannot remove {} after a failed directory fsync: {}",
                        self.dir.path.display(),
                        name.to_string_lossy(),
                        sys::os_reason(&e)
                    );
                }
            }
            _ => warn!(
                "{}: {} is no longer our file; left alone",
                self.dir.path.display(),
                name.to_string_lossy()
            ),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Whether an upload fits under `--min-free` ([`TempFile::reserve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// It fits (or there is no check): its space is reserved.
    Fits,
    /// It would leave less than `--min-free`: `error no space`.
    Short {
        /// Bytes the file system had free when asked (after this upload's reservation, if it
        /// was made).
        available: u64,
    },
}

/// A committed upload: its final name, and what making it durable took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The name the file has now, directly inside the upload directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// System calls it took to find the name and take it: 1 when the name asked for was free,
    /// about 2 for the next copy of a name stored before (see "Finding a free name" in the
    /// module docs), a few dozen at most for the first copy of a name with thousands of copies
    /// the server never saw stored.
    pub name_calls: u32,
    /// How long the file's `fsync` took.
    pub file_sync: Duration,
    /// How long the directory's `fsync` took.
    pub directory_sync: Duration,
}

impl fmt::Display for Stored {
    /// `fsync'd 1048576 bytes (2.1ms), renamed to photo-2.jpg (2 calls to find a free name),
    /// fsync'd the directory (0.3ms)`: a log line's worth, in the order it happened.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fsync'd {} bytes ({:.1?}), renamed to {}",
            self.size, self.file_sync, self.name
        )?;
        if self.name_calls > 1 {
            write!(f, " ({} calls to find a free name)", self.name_calls)?;
        }
        write!(f, ", fsync'd the directory ({:.1?})", self.directory_sync)
    }
}

/// Refuses a name the upload protocol would not have accepted: anything but the single path
/// component [`clean_name`] gives back unchanged (so no `/` or `\\`, no control character, not
/// empty, `.` or `..`, at most 255 bytes, and not starting with the temporaries' prefix).
///
/// The names come from the protocol, cleaned already; this is the storage layer's own check that
/// nothing else reaches `renameat2`, with the very same rules — a second, looser copy of them
/// would let a name through that [`candidate_name`] does not expect (`.oneloop-upload` would get
/// `.oneloop-upload-2`, a temporary's name).
fn check_name(name: &str) -> io::Result<()> {
    match clean_name(name.as_bytes()) {
        Ok(clean) if clean == name => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad name {name:?}: not a single path component"),
        )),
        Err(why) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad name {name:?}: {why}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::Scratch;

    fn store(dir: &Arc<UploadDir>, name: &str, content: &[u8]) -> String {
        let mut file = TempFile::create(dir).unwrap();
        file.write_all(content).unwrap();
        file.commit(name).unwrap().name
    }

    #[test]
    fn link_and_unlink_never_replace_either() {
        // What a file system without RENAME_NOREPLACE (NFS) gets: forced here, on any.
        let scratch = Scratch::new("link-fallback");
        std::fs::write(scratch.path.join("x.txt"), b"existing").unwrap();
        let dir = Arc::new(UploadDir::open(&scratch.path).unwrap());
        dir.no_replace_rename.store(false, Ordering::Relaxed);
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let dir = Arc::clone(&dir);
                std::thread::spawn(move || store(&dir, "x.txt", format!("upload {i}").as_bytes()))
            })
            .collect();
        let mut names: Vec<String> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        names.sort();
        let mut expected: Vec<String> = (2..=9).map(|n| format!("x-{n}.txt")).collect();
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(
            std::fs::read(scratch.path.join("x.txt")).unwrap(),
            b"existing"
        );
        let mut all = expected.clone();
        all.push("x.txt".into());
        all.sort();
        assert_eq!(scratch.names(), all, "no temporary name may be left");
        assert!(!dir.renames_without_replacing());
    }

    #[test]
    fn the_probe_finds_rename_noreplace_and_leaves_nothing() {
        let scratch = Scratch::new("probe");
        let dir = UploadDir::open(&scratch.path).unwrap();
        assert!(dir.renames_without_replacing(), "ext4 and tmpfs have it");
        assert!(scratch.names().is_empty());
        assert_eq!(dir.leftovers(), Leftovers::default());
    }

    #[test]
    fn names_the_protocol_would_not_accept_are_refused() {
        // `candidate_name` and its tests live with the protocol (`protocol::upload`); what this
        // layer adds is that nothing else reaches a rename.
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/x",
            "a\\b",
            "a\0b",
            "tab\there",
            "esc\x1b[2J",
            ".oneloop-upload-1-2-3",
            // Reserved too, without the dash: its second candidate would be `.oneloop-upload-2`,
            // a temporary's name.
            ".oneloop-upload",
            ".oneloop-upload.txt",
        ] {
            let error = check_name(bad).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        check_name(&"n".repeat(256)).unwrap_err();
        check_name(&"n".repeat(255)).unwrap();
        check_name(".bashrc").unwrap();
        check_name("my photo.jpg").unwrap();
    }

    #[test]
    fn a_taken_255_byte_name_is_not_tried_twice() {
        // Its second candidate must be another name (the protocol's `candidate_name` shortens
        // one byte more): trying the name itself again would only cost an EEXIST.
        let scratch = Scratch::new("long-taken");
        let dir = Arc::new(UploadDir::open(&scratch.path).unwrap());
        let long = format!("{}-2.jpg", "x".repeat(249));
        assert_eq!(long.len(), 255);
        assert_eq!(store(&dir, &long, b"first"), long);
        let mut file = TempFile::create(&dir).unwrap();
        file.write_all(b"second").unwrap();
        let stored = file.commit(&long).unwrap();
        assert_eq!(stored.name_calls, 2, "the name, then the rename to -2");
        assert_eq!(stored.name, format!("{}-2.jpg", "x".repeat(248)));
    }

    #[test]
    fn the_nth_copy_of_a_name_costs_what_the_second_did() {
        let scratch = Scratch::new("many-copies");
        let dir = Arc::new(UploadDir::open(&scratch.path).unwrap());
        let mut names = std::collections::HashSet::new();
        for i in 0..1000 {
            let mut file = TempFile::create(&dir).unwrap();
            file.write_all(b"x").unwrap();
            let stored = file.commit("photo.jpg").unwrap();
            let expected = if i == 0 { 1 } else { 2 };
            assert_eq!(stored.name_calls, expected, "copy {i}: {stored}");
            assert_eq!(stored.name, candidate_name("photo.jpg", i + 1));
            assert!(names.insert(stored.name));
        }
    }

    #[test]
    fn copies_made_behind_its_back_cost_a_logarithmic_search() {
        let scratch = Scratch::new("copies-behind");
        for n in 1..=10_000 {
            std::fs::write(scratch.path.join(candidate_name("a.txt", n)), b"").unwrap();
        }
        let dir = Arc::new(UploadDir::open(&scratch.path).unwrap());
        let mut file = TempFile::create(&dir).unwrap();
        file.write_all(b"new").unwrap();
        let stored = file.commit("a.txt").unwrap();
        assert_eq!(stored.name, "a-10001.txt", "the lowest free one");
        assert!(stored.name_calls <= 32, "{stored}");
        // Remembered now: the next copy is cheap again. Then some copies appear above the hint
        // (another server), and a hole below it: the hole is not refilled, and no file replaced.
        let stored = store(&dir, "a.txt", b"next");
        assert_eq!(stored, "a-10002.txt");
        for n in 10_003..=10_100 {
            std::fs::write(scratch.path.join(candidate_name("a.txt", n)), b"theirs").unwrap();
        }
        std::fs::remove_file(scratch.path.join("a-5000.txt")).unwrap();
        let mut file = TempFile::create(&dir).unwrap();
        file.write_all(b"after").unwrap();
        let stored = file.commit("a.txt").unwrap();
        assert_eq!(stored.name, "a-10101.txt");
        assert!(stored.name_calls <= 20, "{stored}");
        for n in 10_003..=10_100 {
            let path = scratch.path.join(candidate_name("a.txt", n));
            assert_eq!(std::fs::read(path).unwrap(), b"theirs");
        }
        // A name freed is given again.
        std::fs::remove_file(scratch.path.join("a.txt")).unwrap();
        assert_eq!(store(&dir, "a.txt", b"back"), "a.txt");
    }

    #[test]
    fn name_hints_hold_two_generations_at_most() {
        let mut hints = NameHints::default();
        for i in 0..10 * NAME_HINTS_PER_GENERATION {
            hints.remember(&format!("f{i}"), 2);
            assert!(hints.len() <= 2 * NAME_HINTS_PER_GENERATION);
        }
        // The most recent are remembered; one used again survives a generation change.
        let last = format!("f{}", 10 * NAME_HINTS_PER_GENERATION - 1);
        assert_eq!(hints.last_suffix(&last), Some(2));
        hints.remember("kept", 7);
        for i in 0..NAME_HINTS_PER_GENERATION - 1 {
            hints.remember(&format!("g{i}"), 2);
        }
        assert_eq!(hints.last_suffix("kept"), Some(7));
        hints.remember("kept", 5);
        assert_eq!(hints.last_suffix("kept"), Some(7), "never moves back");
        assert_eq!(hints.last_suffix("f0"), None);
    }

    #[test]
    fn stored_reads_as_a_log_line() {
        let stored = Stored {
            name: "photo-2.jpg".into(),
            size: 1_048_576,
            name_calls: 2,
            file_sync: Duration::from_micros(2_100),
            directory_sync: Duration::from_micros(300),
        };
        assert_eq!(
            stored.to_string(),
            "fsync'd 1048576 bytes (2.1ms), renamed to photo-2.jpg (2 calls to find a free name), \
             fsync'd the directory (300.0µs)"
        );
    }
}
