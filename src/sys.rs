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
    fn os_reason_reads_like_strerror() {
        let error = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(os_reason(&error), "address already in use");
    }
}
