//! The `metrics` handler: a scraper's HTTP requests in, the exposition out.
//!
//! The request heads are read by `protocol::http` (sans-I/O, `httparse`) from the bytes this
//! handler keeps, at most [`MAX_HEAD_BYTES`] and one byte (enough to tell a head that is too
//! long): a scraper's request fits one read, and a client that pipelines requests has them
//! answered in order, each after the last, with reading paused while the answers queued pass
//! `--output-limit`, as for every protocol. The exposition is the loop's to render — it reads
//! every counter, this connection's own included — so when a `GET /metrics` comes, the drive
//! stops and asks for it ([`Drive::NeedsExposition`]); the loop renders it and drives again
//! with it.

use log::trace;

use crate::clock::Now;
use crate::protocol::exposition::CONTENT_TYPE;
use crate::protocol::http::{self, Request, Route, Status, MAX_HEAD_BYTES};

use super::super::buffers::SharedBuffers;
use super::super::connection::{Connection, FirstInput, Input, Verdict, MAX_READ_BYTES_PER_TURN};
use super::protocol_ended;

/// A scraper's requests received and not answered yet.
#[derive(Debug, Default)]
pub(crate) struct MetricsRequests {
    /// Bytes of request heads, oldest first (bounded: see the module docs).
    head: Vec<u8>,
    /// A socket read came up short since the last head was answered: the peer has sent all it
    /// has, so the drive waits for the next readiness event rather than read again.
    drained: bool,
}

/// How far a drive of a metrics connection got.
#[derive(Debug)]
pub(crate) enum Drive {
    /// The drive is over: the loop settles the connection.
    Done(Verdict),
    /// A `GET /metrics` waits for its answer: render the exposition and drive again with it.
    NeedsExposition,
}

/// Answers what has been asked and reads on, until the socket is drained, the budget or the
/// output limit stops it, or a `GET /metrics` needs the `exposition` (which, when given, is
/// the answer to the first one).
pub(crate) fn drive(
    conn: &mut Connection,
    requests: &mut MetricsRequests,
    shared: &mut SharedBuffers,
    now: &Now,
    mut exposition: Option<&[u8]>,
    mut first: Option<FirstInput>,
) -> Drive {
    conn.flush_unsent();
    if exposition.is_none() {
        requests.drained = false; // a new event: the socket may hold more
    }
    let mut budget = MAX_READ_BYTES_PER_TURN;
    let mut still_ready = false;
    if !conn.is_serving() {
        let still_ready = conn.take_input(shared, |_, _| false);
        return Drive::Done(conn.settle(&mut shared.read, now, still_ready, false));
    }
    while conn.is_serving() && !conn.is_over_output_limit(0, shared.output_limit) {
        match http::read_request(&requests.head) {
            Request::Complete {
                len,
                route,
                keep_alive,
                with_body,
            } => {
                if route == Route::Metrics {
                    let Some(body) = exposition.take() else {
                        return Drive::NeedsExposition;
                    };
                    let body = (body, with_body);
                    answer(conn, shared, Status::Ok, CONTENT_TYPE, body, keep_alive);
                } else {
                    let status = Status::of(route);
                    let body = status.error_body().as_bytes();
                    answer(conn, shared, status, TEXT, (body, with_body), keep_alive);
                }
                requests.head.drain(..len);
                requests.drained = false;
                if !keep_alive {
                    protocol_ended(conn);
                }
                continue;
            }
            Request::Bad => {
                let body = Status::BadRequest.error_body().as_bytes();
                answer(conn, shared, Status::BadRequest, TEXT, (body, true), false);
                requests.head = Vec::new();
                protocol_ended(conn);
                break;
            }
            Request::Partial if requests.drained => break,
            Request::Partial => {}
        }
        // Room for one byte past the limit, so that a head too long is seen as one.
        let allowance = MAX_HEAD_BYTES + 1 - requests.head.len();
        match conn.read_input(&mut shared.read, &mut budget, allowance, &mut first) {
            Input::Bytes { len, arrival } => {
                requests.head.extend_from_slice(&shared.read[..len]);
                requests.drained = !conn.reads_on(arrival);
            }
            Input::End => {
                // A head cut off by the end of stream is not answered (as nginx does).
                conn.drain();
                requests.head = Vec::new();
            }
            Input::Blocked => requests.drained = true,
            Input::Failed => {}
            Input::BudgetSpent => {
                still_ready = true;
                break;
            }
        }
    }
    if requests.head.is_empty() && requests.head.capacity() > 0 {
        requests.head = Vec::new(); // an idle scraper keeps no buffer between scrapes
    }
    Drive::Done(conn.settle(&mut shared.read, now, still_ready, false))
}

/// The content type of the error answers' short bodies.
const TEXT: &str = "text/plain; charset=utf-8";

/// Sends one answer: its head and its body, in one write. `(body, with_body)`: the body, and
/// whether it is sent (not to a `HEAD`, whose answer only says its length).
fn answer(
    conn: &mut Connection,
    shared: &mut SharedBuffers,
    status: Status,
    content_type: &str,
    (body, with_body): (&[u8], bool),
    keep_alive: bool,
) {
    shared.replies.clear();
    http::write_head(
        &mut shared.replies,
        status,
        content_type,
        body.len(),
        keep_alive,
    );
    if with_body {
        shared.replies.extend_from_slice(body);
    }
    trace!(
        "conn #{}: HTTP answer {status:?}, {} bytes of body{}",
        conn.id,
        body.len(),
        if keep_alive {
            ""
        } else {
            "; then the connection closes"
        }
    );
    conn.send(&shared.replies);
}
