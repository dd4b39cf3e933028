//! Durable, atomic file storage for uploads, and the I/O threads that keep it off the loop.
//!
//! An upload must be either stored whole, under a name no other file had, and still there after
//! a power cut — or not there at all. [`durable`] does that with blocking calls: a hidden
//! temporary file, `fsync`, a rename that never replaces, a directory `fsync`. The blocking
//! models call it directly from the thread or process serving the connection.
//!
//! The reactor must not: one `fsync` can stall a single-threaded loop, and every client with it,
//! for hundreds of milliseconds. [`pool`] runs the same calls on a few I/O threads fed through
//! bounded queues, and hands the outcomes back to the loop through a [`mio::Waker`].
//!
//! This module sits beside [`crate::net`]: it knows files, not sockets or loops, and of the
//! protocols only the upload's name rules. The names it is given are already cleaned by the upload protocol; it checks them again all the
//! same, with the protocol's own rules ([`crate::protocol::upload::clean_name`]), and takes the
//! protocol's [`candidate_name`](crate::protocol::upload::candidate_name) and
//! [`TEMP_PREFIX`](crate::protocol::upload::TEMP_PREFIX) rather than keeping copies.

pub(crate) mod durable;
pub(crate) mod pool;
#[cfg(test)]
mod testing;

pub(crate) use durable::{Room, DEFAULT_MIN_FREE};
pub use durable::{TempFile, UploadDir};
