//! The buffers the loop lends to whichever connection or datagram socket it is serving.
//!
//! One loop serves one thing at a time, so one read buffer and one reply buffer are enough for
//! all of them: an idle connection holds no buffer of its own, which is what keeps it down to a
//! slab entry (see `a_client_stays_small` in [`super::handler`]).

use std::time::Duration;

/// Size of the read buffer the loop shares among all connections (one `read` call's maximum).
pub(super) const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Buffers the loop owns and lends to whichever connection it is driving, with the two settings
/// every connection's drive consults.
#[derive(Debug)]
pub(crate) struct SharedBuffers {
    /// Where every `read` (and every `recvmsg`) lands.
    pub(super) read: Box<[u8]>,
    /// Where protocols write replies before they are sent.
    pub(super) replies: Vec<u8>,
    /// `--output-limit`: queued reply bytes past which a connection stops reading.
    pub(super) output_limit: usize,
    /// `--reply-delay`: how long a byte-stream protocol's replies are held after their request
    /// was read (`None`: sent at once, the normal case).
    pub(super) reply_delay: Option<Duration>,
}

impl SharedBuffers {
    /// Buffers for a loop whose connections may queue up to `output_limit` reply bytes.
    pub(crate) fn new(output_limit: usize) -> SharedBuffers {
        SharedBuffers {
            read: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            replies: Vec::with_capacity(READ_BUFFER_BYTES),
            output_limit,
            reply_delay: None,
        }
    }

    /// Holds every byte-stream reply `delay` after its request was read (`--reply-delay`).
    pub(crate) fn with_reply_delay(mut self, delay: Option<Duration>) -> SharedBuffers {
        self.reply_delay = delay.filter(|delay| !delay.is_zero());
        self
    }
}
