//! A connection's reply queue: the bytes the socket would not take yet.
//!
//! Replies are written the moment they exist, from a buffer every connection shares; only what
//! the socket refuses is copied here, and the queue gives its memory back as soon as it has
//! been written. So in the steady state — a peer that keeps up — it is empty and unallocated.

/// Reply bytes the socket has not accepted yet, oldest first.
///
/// Empty — and unallocated — whenever the peer keeps up, which is the steady state.
/// Boxed, so that an idle connection pays one pointer for it, not a `Vec` and its cursor: the
/// 24 bytes saved pay for the byte counters every connection keeps (`wire.rs`) and its
/// access-log pointer.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    queue: Option<Box<Queued>>,
}

/// The bytes of a non-empty [`Unsent`].
#[derive(Debug, Default)]
struct Queued {
    bytes: Vec<u8>,
    /// How much of the front of `bytes` has already been written.
    written: usize,
}

impl Unsent {
    /// Queued bytes not yet written.
    pub(super) fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes.len() - q.written)
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_none()
    }

    pub(super) fn pending(&self) -> &[u8] {
        self.queue.as_ref().map_or(&[], |q| &q.bytes[q.written..])
    }

    pub(super) fn push(&mut self, more: &[u8]) {
        if more.is_empty() {
            return;
        }
        let queue = self.queue.get_or_insert_with(Box::default);
        // Move the unwritten rest to the front only when that halves the buffer, so each byte is
        // moved O(1) times however the writes are split.
        if queue.written > 0 && queue.written >= queue.bytes.len() / 2 {
            queue.bytes.drain(..queue.written);
            queue.written = 0;
        }
        queue.bytes.extend_from_slice(more);
    }

    pub(super) fn consume(&mut self, count: usize) {
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        queue.written += count;
        if queue.written == queue.bytes.len() {
            // Drained: give the memory back, so a connection that once had a burst of output
            // does not keep its high-water mark while idle.
            self.queue = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_frees_its_buffer_once_drained() {
        let mut unsent = Unsent::default();
        unsent.push(b"hello world");
        unsent.consume(6);
        assert_eq!(unsent.pending(), b"world");
        unsent.push(b"!");
        assert_eq!(unsent.pending(), b"world!");
        unsent.consume(6);
        assert!(unsent.is_empty());
        assert!(unsent.queue.is_none(), "its buffer is freed");
    }

    #[test]
    fn unsent_compacts_only_when_half_is_written() {
        let mut unsent = Unsent::default();
        unsent.push(&[1; 10]);
        unsent.consume(3);
        unsent.push(&[2; 2]);
        assert_eq!(
            unsent.queue.as_ref().unwrap().written,
            3,
            "no move while most of the buffer is unwritten"
        );
        unsent.consume(4);
        unsent.push(&[3; 1]);
        assert_eq!(unsent.queue.as_ref().unwrap().written, 0);
        assert_eq!(unsent.pending(), &[1, 1, 1, 2, 2, 3]);
    }
}
