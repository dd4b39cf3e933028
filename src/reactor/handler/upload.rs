//! The upload handler: how an upload connection's bytes reach its [`UploadWork`], and how the
//! I/O threads' answers reach the client.
//!
//! The upload's own state — its session, the chunk being gathered, the ops with the I/O
//! threads — is [`UploadWork`] (`reactor::upload`, beside the loop's side of the storage pool).
//! What is here is the connection's part: read while the work is not paused for the disk, hand
//! the bytes over, send the session's answers, and end the input at the client's end of stream
//! or, at a graceful shutdown, once the bytes that had already arrived are read.

use log::{debug, trace};

use crate::clock::Now;
use crate::protocol::upload::End;
use crate::storage::pool::Completion;

use super::super::buffers::SharedBuffers;
use super::super::connection::{
    Connection, FirstInput, Input, Phase, Verdict, MAX_READ_BYTES_PER_TURN,
};
use super::super::upload::{Feed, UploadSink, UploadWork};
use super::protocol_ended;

/// Drives an upload client: writes what is queued, reads and hands over its bytes while the
/// disk keeps up (or discards input while it lingers), then settles its phase.
pub fn drive(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    now: &Now,
    sink: &mut UploadSink<'_>,
    first: Option<FirstInput>,
) -> Verdict {
    conn.flush_unsent();
    let still_ready = match conn.phase() {
        Phase::Serving => read_upload(conn, work, shared, sink, first),
        Phase::Lingering { .. } => conn.discard_input(&mut shared.read),
        Phase::Draining | Phase::Ending | Phase::Closed => false,
    };
    conn.settle(&mut shared.read, now, still_ready, work.is_storing())
}

/// Reads the upload and hands its bytes to the work until the socket is drained, the budget is
/// spent, the work pauses for the I/O threads, or the conversation ends. Returns whether it
/// stopped on the budget.
fn read_upload(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    sink: &mut UploadSink<'_>,
    mut first: Option<FirstInput>,
) -> bool {
    let mut budget = MAX_READ_BYTES_PER_TURN;
    while conn.is_serving() {
        if work.is_paused() {
            trace!(
                "conn #{}: upload waits for the I/O threads; not reading",
                conn.id
            );
            return false;
        }
        if work.input_is_over() {
            trace!(
                "conn #{}: shutdown: every byte that had arrived is read",
                conn.id
            );
            end_input(conn, work, shared, true);
            return false;
        }
        if conn.unsent_len() > shared.output_limit {
            trace!(
                "conn #{}: {} reply bytes queued or held, over the limit: not reading until \
                 they drain",
                conn.id,
                conn.unsent_len()
            );
            return false;
        }
        let allowance = work.read_allowance(usize::MAX);
        let arrival = match conn.read_input(&mut shared.read, &mut budget, allowance, &mut first) {
            Input::Bytes { len, arrival } => {
                work.note_read(len);
                shared.replies.clear();
                let feed = work.feed(&shared.read[..len], sink, &mut shared.replies);
                conn.send(&shared.replies);
                match feed {
                    Feed::Continue => {}
                    Feed::Pause => return false,
                    Feed::End => protocol_ended(conn),
                }
                arrival
            }
            Input::End => {
                end_input(conn, work, shared, false);
                return false;
            }
            Input::Blocked | Input::Failed => return false,
            Input::BudgetSpent => return true,
        };
        if !conn.reads_on(arrival) {
            return false;
        }
    }
    false
}

/// The upload's input is over (the client's end of stream, or at a shutdown every byte that
/// had arrived): a complete body is stored and answered before the close, a partial one is cut
/// short (the temporary file goes when the connection is reaped).
///
/// At a shutdown (`unread_may_follow`) the client may still be sending: the connection ends
/// like an error reply, with its write side shut down and a lingering close, so the unread
/// bytes do not turn the close into an RST that would destroy the answer.
fn end_input(
    conn: &mut Connection,
    work: &mut UploadWork,
    shared: &mut SharedBuffers,
    unread_may_follow: bool,
) {
    shared.replies.clear();
    let end = if unread_may_follow {
        work.on_shutdown(&mut shared.replies) // `error shutting down` if cut short
    } else {
        work.on_end(&mut shared.replies)
    };
    conn.send(&shared.replies);
    if let End::CutShort { received, size } = end {
        debug!(
            "conn #{}: upload cut short at {received} of {size} bytes",
            conn.id
        );
        if unread_may_follow {
            // Its `error shutting down` goes out first, then the lingering close; the
            // temporary file is discarded when the connection is reaped.
            conn.end_conversation();
        } else {
            conn.close("upload cut short");
        }
    } else if unread_may_follow {
        // Waits for the answer of an upload being stored, if any, then lingers.
        conn.end_conversation();
    } else {
        // Waits for the answer of an upload being stored, if any.
        conn.drain();
    }
}

/// The server is shutting down while an upload is under way: "arrived" means received by this
/// host, so the bytes already in the socket are read (and no more), and an upload whose body is
/// all here is still stored.
pub fn begin_shutdown(conn: &mut Connection, work: &mut UploadWork) {
    use std::os::fd::AsFd;
    let queued = crate::sys::queued_input_bytes(conn.stream.as_fd()).unwrap_or(0);
    trace!(
        "conn #{}: shutdown; the upload may still read the {queued} bytes that have arrived",
        conn.id
    );
    work.allow_until_shutdown(queued);
}

/// The I/O threads answered an op of this connection's upload: the client gets the session's
/// answer (`saved ...`, `error storage failed: ...`), ops that waited for room go, input held
/// meanwhile is handled. `still_ready` says the socket should be read again now: no new edge
/// will come for bytes that arrived while reading was paused.
///
/// Without a completion: only the retry of ops that waited for room in the pool (another
/// connection's completion made some).
pub fn on_completion(
    conn: &mut Connection,
    work: &mut UploadWork,
    completion: Option<&Completion>,
    shared: &mut SharedBuffers,
    sink: &mut UploadSink<'_>,
    now: &Now,
) -> Verdict {
    if conn.is_closed() {
        return Verdict::default();
    }
    shared.replies.clear();
    let mut feed = match completion {
        Some(completion) => work.on_completion(completion, &mut shared.replies),
        None => Feed::Continue,
    };
    if feed == Feed::Continue && conn.is_serving() {
        feed = work.retry_waiting(sink, &mut shared.replies);
    }
    if feed == Feed::Continue && conn.is_serving() && !work.is_paused_for_io() {
        // Even with nothing held: the session may have a step left without new input (the
        // end of a body whose last bytes were handed over just before the pause).
        let held = work.take_held();
        feed = work.feed(&held, sink, &mut shared.replies);
        work.return_held(held);
    }
    let paused = work.is_paused();
    conn.send(&shared.replies);
    // The disk made progress for it: the idle timeout counts from here, not from the client's
    // last byte (its quiet was the server's doing).
    conn.mark_active(now);
    if feed == Feed::End && conn.is_serving() {
        debug!("conn #{}: upload ended the conversation", conn.id);
        conn.end_conversation();
    }
    // Bytes that arrived while reading was paused raised no new edge: read them now.
    let still_ready = conn.is_serving() && !paused;
    conn.settle(&mut shared.read, now, still_ready, work.is_storing())
}
