//! # oneloop
//!
//! One thread, one [`mio::Poll`] loop, thousands of connections.
//!
//! oneloop serves the classic socket-tutorial protocols (an upper-casing "translation" server, a
//! timestamp server, echo, a group chat, a file upload) from a single event loop, and exists to
//! show — in code a newcomer can read and in numbers a benchmark can check — why that loop beats
//! a thread or a process per connection.
//!
//! ## Layout
//!
//! * [`protocol`] — the protocols as *sans-I/O* state machines: bytes (and the time) in, reply
//!   bytes out. No socket, no clock, no file inside, so the same code runs under the reactor and
//!   under every comparison model, and tests can split input at every offset.
//! * [`reactor`] — the event loop: one `mio::Poll`, listeners on reserved tokens, connections in a
//!   [`slab::Slab`], and the per-connection state machine that moves bytes between sockets and
//!   protocols. Start reading at [`reactor::Reactor::run`]: the whole loop fits on one screen.
//! * [`models`] — the classic models the reactor is compared against (serial, thread per
//!   connection, thread pool, process per connection), with blocking sockets, driving the same
//!   protocol sessions.
//! * [`options`] — what `serve` was asked for, as plain data: the options the reactor and every
//!   model share, filled by [`cli`] and embedded in the reactor's and the models' own settings.
//! * [`service`] — what `serve` is asked to serve: `PROTOCOL@ADDRESS` specs and their parsing,
//!   and the [`ProtocolKind`](service::ProtocolKind) a spec names (at the bottom, so that
//!   everything above can name a protocol without importing the protocols).
//! * [`clock`] — the caller's side of "sans-I/O time": reads the clocks once per loop turn and
//!   caches the formatted `ctime` text.
//! * [`client`] — `oneloop client`, a small blocking client (the seeds' `client.py`).
//! * [`send`] — `oneloop send`, the upload client (the seeds' size-header file sender), which
//!   checks the server's size and CRC-32 against its own.
//! * [`load`] — `oneloop load`, the closed-loop load generator that verifies every reply; its
//!   own mio loop per thread, so it is not the bottleneck it measures.
//! * [`net`] — the transport layer every driver shares: binding listeners, the
//!   write-until-`WouldBlock` loop, the lingering-close time and the reserve descriptor that keeps
//!   the backlog moving when the process runs out of file descriptors; and [`net::systemd`],
//!   the sockets systemd passes in and the `READY=1`/`WATCHDOG=1` notifications it waits for.
//! * [`storage`] — where uploads go: a hidden temporary file, `fsync`, a rename that never
//!   replaces a file, a directory `fsync`; and the I/O threads that do it for the reactor, so the
//!   loop never waits for a disk.
//! * [`generate`] — `oneloop generate`: the man page and the bash, zsh and fish completions, made
//!   from the command line's clap definition (so only [`cli`] uses it).
//! * [`cli`] — the command line (clap), and the exit-code policy.
//! * [`sys`] — the one module allowed `unsafe`: raw syscalls (`setrlimit`, `fork`, `waitpid`,
//!   `kill`, the forked child's signal handler, `SIOCOUTQ` and `FIONREAD`, the `*at` file calls of
//!   [`storage`], and taking ownership of the descriptors socket activation passes in).
//!
//! The public interface (command line, output lines, protocols, limits) is fixed by the project's
//! contract; `README.md` summarises it and `docs/ARCHITECTURE.md` walks through the loop.
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
// The internals are `pub(crate)`, and the docs are built with `--document-private-items`
// (`.ci/run`): a newcomer reads the loop's private modules, so a public page may link to them.
#![allow(rustdoc::private_intra_doc_links)]
// `unsafe` is confined to `sys`, each block with its `// SAFETY:` argument; anywhere else it is a
// compile error, so a new raw call has to go there behind a safe wrapper.
#![deny(unsafe_code)]

pub mod cli;
pub(crate) mod client;
pub mod clock;
pub(crate) mod generate;
// The fuzz targets' property checks: for the crate's tests and `fuzz/` only, never part of the
// interface (see the module's own documentation).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod load;
pub(crate) mod models;
pub mod net;
pub(crate) mod options;
pub(crate) mod process;
pub mod protocol;
pub(crate) mod reactor;
pub(crate) mod send;
pub mod service;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
