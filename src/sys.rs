//! Raw syscalls that std does not wrap. The only module with `unsafe`; each block is one libc
//! call with its safety argument beside it.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

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

/// The soft open-file limit now (`process_max_fds`).
pub(crate) fn fd_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a valid, owned struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Clock ticks per second (`_SC_CLK_TCK`) and the page size (`_SC_PAGESIZE`): the units of
/// `/proc/self/stat`'s times and resident size.
pub(crate) fn clock_ticks_and_page_size() -> (u64, u64) {
    // SAFETY: sysconf reads a configuration value; it takes no pointer and cannot fail for
    // these two names on Linux (a -1 would only mean "unknown", mapped to the usual values).
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (
        u64::try_from(ticks).unwrap_or(100),
        u64::try_from(page).unwrap_or(4096),
    )
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
pub(crate) enum Forked {
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
pub(crate) fn fork_single_threaded() -> io::Result<Forked> {
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
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit takes a plain integer and never returns; no Rust state is relied on after.
    unsafe { libc::_exit(code) }
}

/// Collects every child process that has exited, without blocking, so none lingers as a zombie.
/// Returns their process ids.
pub(crate) fn reap_exited_children() -> Vec<i32> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int through a pointer to a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children remain but none has exited; -1: no children (ECHILD) or EINTR.
            return reaped;
        }
        reaped.push(pid);
    }
}

/// Sends `signal` to the process `pid` (`kill(2)`).
///
/// Only for this process's own children, not yet collected by [`reap_exited_children`]: until
/// then their process ids cannot be reused, so the signal cannot reach a stranger.
pub fn send_signal(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes two plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGINT and SIGTERM held back (blocked) for as long as this guard lives; dropping it restores
/// the signal mask, and a signal that came meanwhile is delivered then.
///
/// The forking model holds it across `fork`, so that a new child cannot receive a stop signal
/// before it has installed its own handler ([`stop_gracefully_on_signal`]): until then it runs
/// the parent's, which would write to the parent's signal pipe, telling the parent to stop.
#[derive(Debug)]
pub(crate) struct StopSignalsBlocked {
    previous: libc::sigset_t,
}

/// Blocks SIGINT and SIGTERM in the calling thread until the guard is dropped.
pub(crate) fn block_stop_signals() -> io::Result<StopSignalsBlocked> {
    let mut stop = MaybeUninit::<libc::sigset_t>::uninit();
    let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given a pointer to; sigaddset then changes
    // that initialised set; pthread_sigmask reads `stop` and writes the old mask to `previous`.
    // Each pointer is to a local that outlives the call.
    let code = unsafe {
        libc::sigemptyset(stop.as_mut_ptr());
        libc::sigaddset(stop.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(stop.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, stop.as_ptr(), previous.as_mut_ptr())
    };
    if code != 0 {
        return Err(io::Error::from_raw_os_error(code));
    }
    Ok(StopSignalsBlocked {
        // SAFETY: pthread_sigmask succeeded, so it wrote the previous mask.
        previous: unsafe { previous.assume_init() },
    })
}

impl Drop for StopSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: pthread_sigmask only reads the mask saved by `block_stop_signals`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, ptr::null_mut()) };
    }
}

/// Unblocks SIGINT and SIGTERM in the calling thread: in a forked child, which inherited them
/// blocked from a [`StopSignalsBlocked`] guard that belongs to its parent, once its own handler
/// is in place.
pub(crate) fn unblock_stop_signals() -> io::Result<()> {
    let mut stop = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset changes it; pthread_sigmask only reads
    // it. The pointer is to a local that outlives the calls.
    let code = unsafe {
        libc::sigemptyset(stop.as_mut_ptr());
        libc::sigaddset(stop.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(stop.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, stop.as_ptr(), ptr::null_mut())
    };
    if code != 0 {
        return Err(io::Error::from_raw_os_error(code));
    }
    Ok(())
}

/// The socket a forked child serves, for its signal handler (-1: none yet).
static CHILD_CONNECTION: AtomicI32 = AtomicI32::new(-1);

/// Set by the child's signal handler: the server is shutting down.
static CHILD_STOPPING: AtomicBool = AtomicBool::new(false);

/// The forked child's handler for SIGINT and SIGTERM: what `Admission::stop` does for a serving
/// thread — set the stop flag, shut down the reading side of the connection so that a blocked
/// `read` returns at once — and nothing else. Atomics and `shutdown(2)` are async-signal-safe;
/// `errno` is put back, so the code the signal interrupted does not see it change.
extern "C" fn on_stop_signal_in_child(_signal: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life;
    // reading and writing it is what the interrupted code would do.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    CHILD_STOPPING.store(true, Ordering::SeqCst);
    let connection = CHILD_CONNECTION.load(Ordering::SeqCst);
    if connection >= 0 {
        // SAFETY: shutdown takes two integers; on a descriptor that is no longer a socket it
        // fails harmlessly (the child opens no other descriptor while serving).
        unsafe { libc::shutdown(connection, libc::SHUT_RD) };
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// In a forked child that serves `connection`: SIGINT and SIGTERM now stop it gracefully instead
/// of running the handler inherited from the parent. Returns the flag the handler sets, for
/// `serve_blocking`.
///
/// The child must first have dropped what it inherited of the parent's signal handling (the
/// acceptor, with its signal pipe). Stop signals should be blocked while this runs
/// ([`block_stop_signals`]) and unblocked after.
pub(crate) fn stop_gracefully_on_signal(
    connection: BorrowedFd<'_>,
) -> io::Result<&'static AtomicBool> {
    CHILD_CONNECTION.store(connection.as_raw_fd(), Ordering::SeqCst);
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags, SIG_DFL) that the
    // lines below fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_stop_signal_in_child as extern "C" fn(libc::c_int) as usize;
    // Restart interrupted calls: the handler's effect is the shutdown, not an EINTR.
    action.sa_flags = libc::SA_RESTART;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction reads the fully initialised `action`; the handler it installs is
        // async-signal-safe (see `on_stop_signal_in_child`).
        if unsafe { libc::sigaction(signal, &action, ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&CHILD_STOPPING)
}

/// In a forked child: have the kernel send it `signal` when the parent exits
/// (`PR_SET_PDEATHSIG`), so a child that serves for as long as its parent does (the forking
/// model's UDP server) cannot outlive it. `parent` is the parent's process id as the child knew
/// it before the fork: if the parent has already exited, the signal is raised at once.
pub(crate) fn signal_on_parent_exit(signal: i32, parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid cannot fail and touches no memory.
    if unsafe { libc::getppid() } as u32 != parent {
        // The parent exited before the prctl: no signal will come, so raise it now.
        // SAFETY: raise takes a plain integer.
        unsafe { libc::raise(signal) };
    }
    Ok(())
}

/// Adds an action to SIGINT and SIGTERM (beside whatever else handles them): set `stopping` and
/// shut down the reading side of each of `sockets`, so that a thread blocked in `recv_from` on
/// one of them returns at once. How the blocking models' UDP threads stop at the first signal,
/// as the reactor's UDP sockets do. Returns the registrations, for [`forget_signal_actions`].
///
/// The sockets must stay open until the actions are forgotten: the handler names them by
/// descriptor number, and a number closed and reused would be shut down by mistake.
pub(crate) fn shut_down_reading_on_stop_signals(
    sockets: Vec<RawFd>,
    stopping: Arc<AtomicBool>,
) -> io::Result<Vec<signal_hook::SigId>> {
    let action = move || {
        stopping.store(true, Ordering::SeqCst);
        for &socket in &sockets {
            // SAFETY: shutdown takes two integers; the descriptors stay open while registered.
            unsafe { libc::shutdown(socket, libc::SHUT_RD) };
        }
    };
    register_stop_action(action)
}

/// A handle on a child process that cannot be confused with a later process that reuses its
/// process id (a `pidfd`, Linux 5.3).
#[derive(Debug)]
pub(crate) struct ChildHandle(OwnedFd);

impl ChildHandle {
    /// The handle of `child`, taken right after `fork`, before anyone can collect it.
    pub(crate) fn open(child: i32) -> io::Result<ChildHandle> {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned to us and is owned by nobody else.
        Ok(ChildHandle(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }
}

/// Adds an action to SIGINT and SIGTERM: send SIGTERM to each of `children`, so that child
/// processes that are not the model's connections (the forking model's UDP servers) stop at the
/// parent's first signal too. A child already gone is not signalled, and no other process can be
/// (see [`ChildHandle`]). The handles must stay open while registered.
pub(crate) fn forward_stop_signals(
    children: &[ChildHandle],
) -> io::Result<Vec<signal_hook::SigId>> {
    let pidfds: Vec<RawFd> = children.iter().map(|c| c.0.as_raw_fd()).collect();
    let action = move || {
        for &pidfd in &pidfds {
            // SAFETY: pidfd_send_signal takes integers and a null siginfo pointer; it is a plain
            // system call, so async-signal-safe.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGTERM,
                    ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    };
    register_stop_action(action)
}

/// Registers `action` for SIGINT and SIGTERM. Private, so that only the async-signal-safe
/// actions above can be registered.
fn register_stop_action(
    action: impl Fn() + Sync + Send + Clone + 'static,
) -> io::Result<Vec<signal_hook::SigId>> {
    let mut ids = Vec::with_capacity(2);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: both callers' actions only store to an atomic and make system calls
        // (shutdown, pidfd_send_signal), all async-signal-safe, over vectors built beforehand:
        // no allocation, no lock.
        ids.push(unsafe { signal_hook::low_level::register(signal, action.clone()) }?);
    }
    Ok(ids)
}

/// Removes actions added by [`shut_down_reading_on_stop_signals`] or [`forward_stop_signals`].
pub(crate) fn forget_signal_actions(ids: Vec<signal_hook::SigId>) {
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
}

/// In a forked child: closes every descriptor but standard input, output, error and `keep`, so
/// the child holds nothing of its parent's (listening sockets above all: a listener held open by
/// a child keeps completing connections nobody will accept). Reads `/proc/self/fd`.
pub(crate) fn close_descriptors_except(keep: &[RawFd]) -> io::Result<()> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: close takes an integer; the Rust values that owned these descriptors in
            // the parent are never used or dropped in this child, which ends with `exit_child`.
            // (The directory listing's own descriptor is already closed, or fails harmlessly.)
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Bytes sent on a TCP socket that the peer has not acknowledged yet, our FIN counting as one
/// (`SIOCOUTQ`). Zero once the peer's kernel holds everything we sent, end of stream included.
pub fn unacknowledged_bytes(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int through a pointer to a valid local.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut count) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Bytes received on a stream socket and not yet read (`FIONREAD`, alias `SIOCINQ`): what has
/// arrived from the peer so far, TCP or Unix.
pub(crate) fn queued_input_bytes(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a pointer to a valid local.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut count) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Datagrams with their destination address (`recvmsg`/`sendmsg` with `IP_PKTINFO`)
//
// A socket bound to a wildcard address (`0.0.0.0`, `[::]`) receives datagrams sent to any of the
// host's addresses, but `send_to` lets the kernel pick a reply's source by routing, which may be
// another address than the one the request went to (a request to 127.0.0.2 answered from
// 127.0.0.1). A connected client drops such a reply. With `IP_PKTINFO` / `IPV6_RECVPKTINFO`
// the kernel tells each datagram's destination in a control message of `recvmsg`, and the same
// message given to `sendmsg` makes it the reply's source: one call each way, as with
// `recv_from` and `send_to`, and the control buffers live on the stack.

/// Room for one packet-information control message of either family. `cmsghdr` alignment is
/// that of `size_t`; the `u64` array gives it.
#[repr(C)]
struct ControlBuffer([u64; CONTROL_WORDS]);

/// `CMSG_SPACE(sizeof(struct in6_pktinfo))` (the larger of the two), in 8-byte words.
// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const CONTROL_BYTES: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as libc::c_uint) } as usize;
const CONTROL_WORDS: usize = CONTROL_BYTES.div_ceil(8);

/// Asks the kernel to report, with every datagram `socket` receives, the address it was sent to:
/// `IP_PKTINFO` on an IPv4 socket, `IPV6_RECVPKTINFO` on an IPv6 one (which also reports an
/// IPv4 datagram on a dual-stack socket, as a v4-mapped address). [`receive_datagram`] reads it.
pub(crate) fn report_datagram_destinations(socket: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one int from a valid local of the size given; the descriptor is
    // borrowed from a live socket for the duration of the call.
    let code = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if code != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram taken by [`receive_datagram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReceivedDatagram {
    /// Bytes written into the buffer (a longer datagram is cut to the buffer's length).
    pub length: usize,
    /// Its sender. `None` when the kernel gave no address: the empty "datagram" with which
    /// `shutdown(SHUT_RD)` wakes a blocked reader (std's `recv_from` panics on it).
    pub from: Option<SocketAddr>,
    /// The address it was sent to, when the socket reports it
    /// ([`report_datagram_destinations`]): the source its reply should leave from.
    pub to: Option<IpAddr>,
}

/// Receives one datagram into `buffer` with `recvmsg`, its sender's address and (when the socket
/// reports it) its destination address. `flags` as for `recvmsg` (`MSG_DONTWAIT`...).
pub(crate) fn receive_datagram(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    flags: i32,
) -> io::Result<ReceivedDatagram> {
    // SAFETY: all-zero is a valid sockaddr_storage (family AF_UNSPEC).
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = ControlBuffer([0; CONTROL_WORDS]);
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: all-zero is a valid msghdr (no name, no buffers, no control); the fields that
    // matter are set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    message.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of::<ControlBuffer>() as _;
    // SAFETY: every pointer in `message` points to a live local or to `buffer`, with the length
    // beside it; the kernel writes within those lengths and updates them.
    let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, flags) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = socket_address(&name, message.msg_namelen);
    let mut to = None;
    // SAFETY: CMSG_FIRSTHDR/NXTHDR stay within the `msg_controllen` bytes of `control` the kernel
    // filled, and return null past them; each header they return is aligned and whole. Its
    // data is read (with `read_unaligned`) only when `cmsg_len` covers the structure read.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            let data = libc::CMSG_DATA(header);
            let length = (*header).cmsg_len as usize;
            match ((*header).cmsg_level, (*header).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO)
                    if length
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as _)
                            as usize =>
                {
                    let info: libc::in_pktinfo = ptr::read_unaligned(data.cast());
                    // `ipi_spec_dst`, not `ipi_addr`: for a unicast datagram they are the same,
                    // for a broadcast one it is the receiving interface's own address.
                    to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_spec_dst.s_addr,
                    ))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if length
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as _)
                            as usize =>
                {
                    let info: libc::in6_pktinfo = ptr::read_unaligned(data.cast());
                    to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok(ReceivedDatagram {
        length: received as usize,
        from,
        to,
    })
}

/// Sends `payload` to `to` with `sendmsg`, from the source address `from` when given (an
/// address of this host: [`ReceivedDatagram::to`] of the request), else from the one the
/// kernel picks. `flags` as for `sendmsg` (`MSG_DONTWAIT`...). On an IPv6 socket `from` is an
/// IPv6 address (v4-mapped for an IPv4 peer); on an IPv4 socket, an IPv4 one.
pub(crate) fn send_datagram(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
    flags: i32,
) -> io::Result<usize> {
    let (name, name_length) = socket_address_to_c(to);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let mut control = ControlBuffer([0; CONTROL_WORDS]);
    // SAFETY: all-zero is a valid msghdr (no name, no buffers, no control).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = (&name as *const libc::sockaddr_storage).cast_mut().cast();
    message.msg_namelen = name_length;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if let Some(from) = from {
        message.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only does arithmetic; the header is written within `control`,
        // which is CONTROL_BYTES long (the space of the larger message) and aligned for
        // cmsghdr, and the data after it with `write_unaligned`.
        unsafe {
            let (level, kind, data_length) = match from {
                IpAddr::V4(_) => (
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    std::mem::size_of::<libc::in_pktinfo>(),
                ),
                IpAddr::V6(_) => (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_PKTINFO,
                    std::mem::size_of::<libc::in6_pktinfo>(),
                ),
            };
            message.msg_controllen = libc::CMSG_SPACE(data_length as _) as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = level;
            (*header).cmsg_type = kind;
            (*header).cmsg_len = libc::CMSG_LEN(data_length as _) as _;
            let data = libc::CMSG_DATA(header);
            // Interface 0: routing picks the way out, as it does for any reply; only the
            // source address is fixed.
            match from {
                IpAddr::V4(address) => ptr::write_unaligned(
                    data.cast(),
                    libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(address).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    },
                ),
                IpAddr::V6(address) => ptr::write_unaligned(
                    data.cast(),
                    libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: address.octets(),
                        },
                        ipi6_ifindex: 0,
                    },
                ),
            }
        }
    }
    // SAFETY: every pointer in `message` points to a live local or to `payload`, with the
    // length beside it; sendmsg only reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &message, flags) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// The socket address the kernel wrote into `name` (`length` bytes); `None` for none at all
/// (length 0) or a family other than IPv4 and IPv6.
fn socket_address(name: &libc::sockaddr_storage, length: libc::socklen_t) -> Option<SocketAddr> {
    let length = length as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if length >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr, and the
            // kernel wrote a whole sockaddr_in (family and length checked).
            let v4 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if length >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a whole sockaddr_in6.
            let v6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo, // As std keeps it: in network order.
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `address` as the kernel takes it, and its length.
fn socket_address_to_c(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let c = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            c.sin_family = libc::AF_INET as libc::sa_family_t;
            c.sin_port = v4.port().to_be();
            c.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let c = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            c.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            c.sin6_port = v6.port().to_be();
            c.sin6_flowinfo = v6.flowinfo();
            c.sin6_addr.s6_addr = v6.ip().octets();
            c.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

/// The number of threads in this process, from `/proc/self/status`.
pub(crate) fn thread_count() -> io::Result<usize> {
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
pub(crate) fn with_umask<T>(mask: u32, bind: impl FnOnce() -> T) -> T {
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
pub(crate) struct PeerCredentials {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's user id.
    pub uid: u32,
}

/// Reads `SO_PEERCRED` from a connected Unix socket.
pub(crate) fn peer_credentials(socket: &impl std::os::fd::AsRawFd) -> io::Result<PeerCredentials> {
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

/// The first descriptor systemd passes to an activated process (`SD_LISTEN_FDS_START`): 0, 1 and
/// 2 stay standard input, output and error.
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// Whether [`take_listen_fds`] has run in this process: it may hand each descriptor out once.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the `count` descriptors a socket-activating parent passed (numbers 3,
/// 4, ...), marking each close-on-exec. One result per descriptor, in order; a number that is not
/// open gives `EBADF` for that entry.
///
/// Crate-private on purpose: its one caller (`net::systemd::take_activated_sockets`) has read
/// `LISTEN_PID` from the environment and checked that it names this process — the check that
/// makes the descriptors ours — and no other code may claim descriptors it did not open. It
/// runs at most once per process; a second call returns nothing, so no descriptor ever gets two
/// owners.
pub(crate) fn take_listen_fds(count: usize) -> Vec<(RawFd, io::Result<OwnedFd>)> {
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    (0..count)
        .map_while(|index| {
            let fd = LISTEN_FDS_START.checked_add(RawFd::try_from(index).ok()?)?;
            Some((fd, take_inherited_fd(fd)))
        })
        .collect()
}

/// Takes one inherited descriptor: checks it is open, sets `FD_CLOEXEC` so a program this
/// process runs does not inherit it, and wraps it.
fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) takes two integers and touches no memory of ours; on a number that
    // is not open it fails with EBADF, which is how a missing descriptor is told apart.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFD only changes the descriptor's close-on-exec flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), and it is this process's to own: by the
    // socket-activation protocol, the process that LISTEN_PID names owns descriptors 3 to
    // 3 + LISTEN_FDS - 1 (the caller has checked LISTEN_PID), and nothing in this process opened
    // them — they were open before `main`. `take_listen_fds` runs once per process, so no second
    // `OwnedFd` for the same number can ever be made here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// File-system calls relative to a directory descriptor, for `storage`. std opens and renames by
// path only; these name a file *inside a directory already open*, so that the directory's path
// being renamed or replaced afterwards cannot send a write somewhere else.
// ---------------------------------------------------------------------------------------------

/// `openat(2)`: opens `name`, looked up inside the open directory `dir`, with `flags` (`O_*`) and,
/// when the file is created, permission bits `mode` (the umask applies).
pub(crate) fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; openat reads it,
    // and the mode argument is a plain integer (the C variadic promotes it as it would).
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat2(2)` with `RENAME_NOREPLACE`, both names inside `dir`: gives the file `from` the
/// name `to` in one atomic step, and fails with `EEXIST` rather than replace a file that already
/// has that name. A file system that cannot do it fails with `EINVAL` (a kernel older than 3.15
/// with `ENOSYS`): see [`link_at`] for the fallback.
///
/// Made as a raw system call rather than through the C library's wrapper, which only glibc 2.28
/// and later have.
pub(crate) fn rename_no_replace_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: both names are valid NUL-terminated strings that outlive the call; the kernel only
    // reads them. The other arguments are plain integers.
    let code = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            fd,
            from.as_ptr(),
            fd,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if code != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `linkat(2)`, both names inside `dir`: gives the file `from` a second name `to`, failing with
/// `EEXIST` if `to` exists — like [`rename_no_replace_at`], never replacing a file, but leaving
/// the old name in place too (unlink it with [`unlink_at`]). Symbolic links are not followed.
pub(crate) fn link_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: both names are valid NUL-terminated strings that outlive the call and are only read.
    if unsafe { libc::linkat(fd, from.as_ptr(), fd, to.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unlinkat(2)`: removes the name `name` inside `dir`. A symbolic link is removed itself (its
/// target is untouched); a directory is refused (`EISDIR`).
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call and is only read.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The device and inode numbers of `name` inside `dir`, without following a symbolic link
/// (`fstatat(2)` with `AT_SYMLINK_NOFOLLOW`): whether a name still leads to a file we hold open
/// (compare with `MetadataExt::dev` and `ino` of the open file).
pub(crate) fn file_id_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(u64, u64)> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; fstatat writes one
    // `stat` through a pointer to an owned, properly sized and aligned local.
    let code = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if code != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled the struct in.
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

/// `fallocate(2)` with `FALLOC_FL_KEEP_SIZE`: allocates `len` bytes of disk for `file` from
/// offset 0 without changing its size, so the file system counts them as used (by `statvfs`,
/// for every process) before they are written. `EOPNOTSUPP` where the file system cannot.
pub(crate) fn reserve_space(file: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: fallocate takes integers only and touches no memory of ours.
        let code = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
        if code == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Bytes free for unprivileged users on the file system holding `file` (`fstatvfs(2)`:
/// `f_bavail × f_frsize`), what `df` shows as available.
pub(crate) fn available_bytes(file: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs writes one `statvfs` through a pointer to an owned, properly sized and
    // aligned local.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatvfs succeeded, so it filled the struct in.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u64 on 64-bit Linux, narrower elsewhere
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Tries to take an exclusive `flock(2)` lock on an open file without waiting: `Ok(true)` if it
/// is now ours, `Ok(false)` if another open file description holds one. The lock goes away when
/// every descriptor of that open file is closed — also when its process dies, which is how a
/// temporary file still being written by a live server is told from one a crash left behind.
pub(crate) fn try_lock_exclusive(file: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock takes two integers and touches no memory of ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
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
    fn fork_is_refused_with_threads() {
        // The test harness runs tests on several threads, so this process has more than one.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        let error = fork_single_threaded().unwrap_err();
        assert!(error.to_string().contains("threads"), "{error}");
    }

    #[test]
    fn unacknowledged_bytes_counts_what_the_peer_has_not_taken() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsFd;
        use std::time::{Duration, Instant};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(unacknowledged_bytes(client.as_fd()).unwrap(), 0);
        // The server reads nothing: fill its window and our send buffer.
        client.set_nonblocking(true).unwrap();
        let chunk = [7u8; 64 * 1024];
        while client.write(&chunk).is_ok() {}
        assert!(unacknowledged_bytes(client.as_fd()).unwrap() > 0);
        // Once the server has taken everything, everything is acknowledged.
        server.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while unacknowledged_bytes(client.as_fd()).unwrap() > 0 {
            assert!(Instant::now() < deadline, "never acknowledged");
            if server.read(&mut sink).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn at_calls_work_inside_the_directory_and_never_replace() {
        use std::fs::File;
        use std::io::Write;
        use std::os::fd::AsFd;

        let path = std::env::temp_dir().join(format!("oneloop-sys-at-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        let dir = File::open(&path).unwrap();
        let dir = dir.as_fd();
        let create = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC;

        File::from(open_at(dir, c"a", create, 0o600).unwrap())
            .write_all(b"A")
            .unwrap();
        assert!(path.join("a").exists());
        let again = open_at(dir, c"a", create, 0o600).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

        std::fs::write(path.join("b"), b"B").unwrap();
        let error = rename_no_replace_at(dir, c"a", c"b").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        let error = link_at(dir, c"a", c"b").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(path.join("b")).unwrap(), b"B");

        link_at(dir, c"a", c"c").unwrap();
        assert_eq!(
            file_id_at(dir, c"a").unwrap(),
            file_id_at(dir, c"c").unwrap()
        );
        assert_ne!(
            file_id_at(dir, c"a").unwrap(),
            file_id_at(dir, c"b").unwrap()
        );
        unlink_at(dir, c"a").unwrap();
        let gone = file_id_at(dir, c"a").unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        rename_no_replace_at(dir, c"c", c"d").unwrap();
        assert_eq!(std::fs::read(path.join("d")).unwrap(), b"A");

        // Two open files of one inode: one lock at a time, released when its file closes.
        let first = open_at(dir, c"d", libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap();
        let second = open_at(dir, c"d", libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap();
        assert!(try_lock_exclusive(first.as_fd()).unwrap());
        assert!(!try_lock_exclusive(second.as_fd()).unwrap());
        drop(first);
        assert!(try_lock_exclusive(second.as_fd()).unwrap());

        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn os_reason_reads_like_strerror() {
        let error = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(os_reason(&error), "address already in use");
    }
}
