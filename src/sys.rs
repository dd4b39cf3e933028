//! Raw syscalls that std does not wrap. The only module with `unsafe`; each block is one libc
//! call with its safety argument beside it.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force (the hard limit, if raising it worked).
    pub now: u64,
    /// The hard limit, the ceiling an unprivileged process may raise its soft limit to.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit.
///
/// Each connection is a file descriptor, and many systems still start processes with a soft
/// limit of 1024: without this, the 1,021st client would be refused with `EMFILE`.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a valid, owned struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the `rlimit` struct passed by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(FdLimit {
        before,
        now: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Which side of a [`fork_single_threaded`] the caller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    /// The new process.
    Child,
    /// The original process; the child has this process id.
    Parent {
        /// The child's process id.
        child: i32,
    },
}

/// `fork()`, refused unless this process has exactly one thread.
///
/// After a fork, the child has only the thread that called it; a lock another thread held at
/// that moment (the allocator's, a logger's) stays locked in the child for ever. With one thread
/// there is no such lock, which is why the forking model's parent never starts a thread, and why
/// this checks rather than trusts that.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )));
    }
    // SAFETY: fork takes no arguments; the process is single-threaded (checked above), so the
    // child's copy of memory holds no lock owned by a thread that no longer exists.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// Ends a forked child at once, without running the parent's exit handlers or flushing buffers
/// that were copied from the parent (which would print the parent's pending output twice).
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit takes a plain integer and never returns; no Rust state is relied on after.
    unsafe { libc::_exit(code) }
}

/// Collects every child process that has exited, without blocking, so none lingers as a zombie.
/// Returns how many were collected.
pub fn reap_exited_children() -> usize {
    let mut reaped = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int through a pointer to a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children remain but none has exited; -1: no children (ECHILD) or EINTR.
            return reaped;
        }
        reaped += 1;
    }
}

/// The number of threads in this process, from `/proc/self/status`.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Describes an OS error the way `strerror` does, lower-cased and without Rust's
/// `(os error N)` suffix: `address already in use`.
pub fn os_reason(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Runs `bind` with the process umask set to `mask`, then restores the old umask.
///
/// A Unix socket file is created by `bind` with mode `0o777 & !umask`, and there is no way to
/// pass a mode to `bind` itself; setting the umask around it is how `--unix-mode` takes effect
/// from the moment the file exists, with no window in which it has looser bits. The umask is
/// per process, so this must run while the process is still single-threaded (`serve` binds
/// before it starts any thread), or another thread creating a file meanwhile would get this mask.
pub fn with_umask<T>(mask: u32, bind: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let result = bind();
    // SAFETY: as above, restoring the mask that was in force.
    unsafe { libc::umask(old) };
    result
}

/// The process and user on the other end of a Unix stream socket (`SO_PEERCRED`), as the
/// kernel recorded them at `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's user id.
    pub uid: u32,
}

/// Reads `SO_PEERCRED` from a connected Unix socket.
pub fn peer_credentials(socket: &impl std::os::fd::AsRawFd) -> io::Result<PeerCredentials> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into the owned `ucred` and updates
    // `length`; the descriptor is borrowed from a live socket for the duration of the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: credentials.pid,
        uid: credentials.uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_at_hard() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.now, limit.hard);
        assert!(limit.now >= limit.before);
    }

    #[test]
    fn fork_is_refused_with_threads() {
        // The test harness runs tests on several threads, so this process has more than one.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        let error = fork_single_threaded().unwrap_err();
        assert!(error.to_string().contains("threads"), "{error}");
    }

    #[test]
    fn os_reason_reads_like_strerror() {
        let error = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(os_reason(&error), "address already in use");
    }
}
