//! Unix stream socket files: binding over a stale one, `--unix-mode`, and removal at exit.
//!
//! A Unix listener is a file in the file system, and that file outlives the process: after a
//! crash it stays behind, and the next `bind` fails with "address in use" although nobody
//! listens. Servers have settled on one careful rule (redis, haproxy, systemd-socket-proxyd all
//! do a version of it):
//!
//! * nothing at the path: bind;
//! * a socket nobody answers (`connect` is refused): left over from a dead server, so unlink it
//!   and bind;
//! * a live socket — another server answers — or anything that is not a socket (a regular file, a
//!   directory): refuse, naming the path. A file that is not a socket is never deleted: a typo in
//!   a path must not cost someone their data.
//!
//! At exit the file is removed only if it is still the one this process bound (same device and
//! inode): another server may have replaced it meanwhile, and its socket is not ours to delete.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use socket2::{Domain, SockAddr, Socket, Type};

/// Binds a Unix stream listener at `path`, replacing a stale socket file, with the file's
/// permission bits set to `mode` from the moment it exists (`None`: as the umask makes them).
pub(crate) fn bind_unix(path: &Path, mode: Option<u32>) -> io::Result<(UnixListener, SocketFile)> {
    clear_stale(path)?;
    let listener = match mode {
        // bind creates the file with 0o777 & !umask: a umask of !mode gives exactly `mode`.
        Some(mode) => crate::sys::with_umask(!mode & 0o777, || UnixListener::bind(path))?,
        None => UnixListener::bind(path)?,
    };
    listener.set_nonblocking(true)?;
    let metadata = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        device: metadata.dev(),
        inode: metadata.ino(),
        owner: std::process::id(),
    };
    Ok((listener, file))
}

/// Applies the stale-path rule before binding (see the module documentation).
fn clear_stale(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket (left untouched)",
        ));
    }
    match probe(path) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening there",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Unlink only the file just found stale: another server may have replaced it since.
            let now = std::fs::symlink_metadata(path)?;
            if (now.dev(), now.ino()) != (metadata.dev(), metadata.ino()) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the socket was replaced while we looked at it",
                ));
            }
            info!(
                "{}: removing a stale socket nobody listens on",
                path.display()
            );
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

/// Whether anybody listens at `path`: a non-blocking `connect`, so a live server whose backlog
/// is full (`EAGAIN`) counts as live instead of making us wait for it. `ConnectionRefused`
/// means nobody listens.
fn probe(path: &Path) -> io::Result<()> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// A socket file this process created; dropping it removes the file if it is still the same
/// file (device and inode) and this is still the process that bound it.
///
/// The process check matters for the forking model: a child process holds a copy of every
/// value the parent had, and must not delete the parent's socket when it exits.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
    owner: u32,
}

impl SocketFile {
    /// Where the socket file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file now, if it is still ours (what dropping does).
    pub fn remove(self) {}
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.device && m.ino() == self.inode => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => debug!("{}: socket file removed", self.path.display()),
                    Err(e) => warn!(
                        "{}: cannot remove the socket file: {e}",
                        self.path.display()
                    ),
                }
            }
            Ok(_) => info!(
                "{}: replaced by another file since we bound it; left alone",
                self.path.display()
            ),
            Err(e) => debug!("{}: already gone ({e})", self.path.display()),
        }
    }
}
