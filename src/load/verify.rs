//! What the load generator sends, and how it checks what comes back — sans-I/O, like the
//! server's protocols.
//!
//! A load generator that only counts bytes measures a server that might be answering wrongly, or
//! answering someone else. So every reply byte is checked against the request it answers, as the
//! bytes arrive: no reply is buffered, and a connection holds at most one `[ctime] ` stamp
//! (27 bytes) plus a position in the expected reply, whatever the request size or pipeline depth.
//!
//! ## Requests
//!
//! Request `n` on a connection is a window of [`ALPHABET`] (ASCII lowercase letters and digits)
//! starting at a place that depends on `n`, so consecutive requests differ and a lost, repeated
//! or reordered reply shows up as wrong bytes. Lowercase ASCII makes `upper`'s expected answer
//! simply its ASCII upper-case, and keeps `[` and `\n` out of payloads, which is what lets the
//! timestamp verifier tell a stamp from payload. For `timestamp` the last byte of each request
//! is `\n`, so each request is one line.
//!
//! ## Replies
//!
//! * `echo`: the request, byte for byte.
//! * `upper`: the request, ASCII upper-cased.
//! * `timestamp`: `[Www Mmm dd hh:mm:ss yyyy] ` and the line. When TCP delivers a line to the
//!   server in pieces, the server may answer each piece on its own, each with its own stamp; the
//!   contract promises only that the pieces' payloads join into the exact line. So in the middle
//!   of a line the verifier accepts a `[` as the start of another stamp.

use std::fmt;

use crate::protocol::ProtocolKind;

/// The bytes request payloads are made of: no `[`, no `\n`, and no byte that upper-casing
/// changes in a way other than ASCII upper-casing.
pub const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Length of the stamp the timestamp server puts before each message: `[` + 24 bytes of
/// `ctime` text + `] `.
pub const STAMP_LEN: usize = 1 + crate::clock::CTIME_LEN + 2;

/// Where in [`ALPHABET`] request `n`'s payload starts. 7 is coprime with 36, so 36 requests in a
/// row all start differently.
fn start_of(request: u64) -> usize {
    (request % ALPHABET.len() as u64) as usize * 7 % ALPHABET.len()
}

/// The requests of one run: their protocol and size, and the patterns their bytes are cut from.
///
/// Shared by every connection of a thread (the patterns are as long as one request), so a
/// connection needs no buffer of its own to build or check a request.
#[derive(Clone, Debug)]
pub struct Requests {
    protocol: ProtocolKind,
    size: usize,
    /// [`ALPHABET`] repeated, long enough to cut a payload from any starting place.
    lower: Box<[u8]>,
    /// `lower` upper-cased: what `upper` answers. Empty for the other protocols.
    upper: Box<[u8]>,
}

impl Requests {
    /// Requests of `size` bytes for `protocol` (upper, timestamp or echo).
    ///
    /// ```
    /// use oneloop::load::verify::Requests;
    /// use oneloop::protocol::ProtocolKind;
    ///
    /// let requests = Requests::new(ProtocolKind::Timestamp, 8).unwrap();
    /// let mut out = Vec::new();
    /// requests.write_request(0, &mut out);
    /// assert_eq!(out, b"abcdefg\n");
    /// ```
    pub fn new(protocol: ProtocolKind, size: usize) -> Result<Requests, String> {
        if !matches!(
            protocol,
            ProtocolKind::Upper | ProtocolKind::Timestamp | ProtocolKind::Echo
        ) {
            return Err(format!(
                "cannot generate load for {protocol} (upper, timestamp or echo)"
            ));
        }
        if size == 0 {
            return Err("requests must be at least 1 byte".into());
        }
        let lower: Box<[u8]> = ALPHABET
            .iter()
            .copied()
            .cycle()
            .take(size + ALPHABET.len())
            .collect();
        let upper = if protocol == ProtocolKind::Upper {
            lower.to_ascii_uppercase().into_boxed_slice()
        } else {
            Box::default()
        };
        Ok(Requests {
            protocol,
            size,
            lower,
            upper,
        })
    }

    /// The protocol the requests are for.
    pub fn protocol(&self) -> ProtocolKind {
        self.protocol
    }

    /// Bytes per request (and per reply payload).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Payload bytes cut from the pattern; for timestamp the `\n` follows them.
    fn body_len(&self) -> usize {
        match self.protocol {
            ProtocolKind::Timestamp => self.size - 1,
            _ => self.size,
        }
    }

    /// Appends request number `request` of a connection to `out`.
    pub fn write_request(&self, request: u64, out: &mut Vec<u8>) {
        let start = start_of(request);
        out.extend_from_slice(&self.lower[start..start + self.body_len()]);
        if self.protocol == ProtocolKind::Timestamp {
            out.push(b'\n');
        }
    }

    /// The expected reply payload of `request` from `offset` on, as far as it is contiguous in
    /// memory (the timestamp line's `\n` comes as a separate piece). Empty at the end.
    fn expected_from(&self, request: u64, offset: usize) -> &[u8] {
        let body = self.body_len();
        if offset < body {
            let pattern = if self.protocol == ProtocolKind::Upper {
                &self.upper
            } else {
                &self.lower
            };
            let start = start_of(request);
            &pattern[start + offset..start + body]
        } else if offset < self.size {
            b"\n"
        } else {
            &[]
        }
    }
}

/// A reply that is not the right answer to the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongReply {
    /// A payload byte differs from what the request asks for.
    Byte {
        /// The request (numbered from 0 on its connection) whose reply is wrong.
        request: u64,
        /// Where in the reply's payload.
        offset: usize,
        /// The byte that should have come.
        expected: u8,
        /// The byte that came.
        got: u8,
    },
    /// A timestamp reply (or a piece of one) did not start with a `[Www Mmm dd hh:mm:ss yyyy] `
    /// stamp.
    Stamp {
        /// The request whose reply is wrong.
        request: u64,
        /// The bytes where the stamp should have been.
        got: [u8; STAMP_LEN],
    },
    /// Bytes arrived while no request was waiting for a reply.
    Unsolicited {
        /// The first such byte.
        got: u8,
    },
}

impl fmt::Display for WrongReply {
    /// `reply to request 17: byte 5 is 'a', expected 'A'`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WrongReply::Byte {
                request,
                offset,
                expected,
                got,
            } => write!(
                f,
                "reply to request {request}: byte {offset} is {:?}, expected {:?}",
                char::from(got),
                char::from(expected)
            ),
            WrongReply::Stamp { request, got } => write!(
                f,
                "reply to request {request}: {:?} is not a [Www Mmm dd hh:mm:ss yyyy] stamp",
                String::from_utf8_lossy(&got)
            ),
            WrongReply::Unsolicited { got } => write!(
                f,
                "{:?} arrived while no request was waiting for a reply",
                char::from(got)
            ),
        }
    }
}

/// What one batch of reply bytes amounted to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Replies completed (all of their bytes received and correct) by this batch.
    pub completed: u64,
    /// The first wrong byte, if any. Bytes after it were not looked at: a connection whose
    /// replies went wrong cannot be trusted to be in step any more.
    pub wrong: Option<WrongReply>,
}

/// A stamp being read: its bytes so far.
#[derive(Clone, Copy, Debug)]
struct StampReader {
    bytes: [u8; STAMP_LEN],
    len: usize,
}

impl StampReader {
    const EMPTY: StampReader = StampReader {
        bytes: [0; STAMP_LEN],
        len: 0,
    };
}

/// Checks one connection's reply stream as it arrives.
///
/// It remembers only which request's reply it is in, how far, and (timestamp) the stamp being
/// read; the expected bytes are recomputed from [`Requests`].
///
/// ```
/// use oneloop::load::verify::{ReplyVerifier, Requests};
/// use oneloop::protocol::ProtocolKind;
///
/// let requests = Requests::new(ProtocolKind::Upper, 4).unwrap();
/// let mut verifier = ReplyVerifier::new(&requests);
/// // Two requests sent ("abcd", "hijk"); their replies arrive split anywhere.
/// assert_eq!(verifier.feed(&requests, b"ABCDH", 2).completed, 1);
/// assert_eq!(verifier.feed(&requests, b"IJK", 2).completed, 1);
/// assert!(verifier.feed(&requests, b"x", 2).wrong.is_some()); // nothing was asked
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ReplyVerifier {
    /// The request whose reply is arriving (requests are numbered from 0 on each connection).
    request: u64,
    /// How many of its reply's payload bytes have been matched.
    offset: usize,
    /// Timestamp only: `Some` while a stamp is being read, which is where every reply and every
    /// reply piece starts.
    stamp: Option<StampReader>,
}

impl ReplyVerifier {
    /// A verifier expecting the reply to request 0.
    pub fn new(requests: &Requests) -> ReplyVerifier {
        ReplyVerifier {
            request: 0,
            offset: 0,
            stamp: (requests.protocol == ProtocolKind::Timestamp).then_some(StampReader::EMPTY),
        }
    }

    /// The request whose reply is expected next: also how many replies have completed.
    pub fn next_request(&self) -> u64 {
        self.request
    }

    /// Whether a reply has started to arrive but is not complete.
    pub fn in_reply(&self) -> bool {
        self.offset > 0 || self.stamp.is_some_and(|s| s.len > 0)
    }

    /// Checks `input`, the next reply bytes, given that requests `0..sent` have been sent.
    pub fn feed(&mut self, requests: &Requests, input: &[u8], sent: u64) -> Fed {
        let mut fed = Fed::default();
        let timestamp = requests.protocol == ProtocolKind::Timestamp;
        let mut rest = input;
        while let Some(&first) = rest.first() {
            if self.request >= sent {
                fed.wrong = Some(WrongReply::Unsolicited { got: first });
                return fed;
            }
            if let Some(stamp) = &mut self.stamp {
                let take = (STAMP_LEN - stamp.len).min(rest.len());
                stamp.bytes[stamp.len..stamp.len + take].copy_from_slice(&rest[..take]);
                stamp.len += take;
                rest = &rest[take..];
                if stamp.len == STAMP_LEN {
                    if !is_stamp(&stamp.bytes) {
                        fed.wrong = Some(WrongReply::Stamp {
                            request: self.request,
                            got: stamp.bytes,
                        });
                        return fed;
                    }
                    self.stamp = None;
                }
                continue;
            }
            let expected = requests.expected_from(self.request, self.offset);
            let n = expected.len().min(rest.len());
            if rest[..n] != expected[..n] {
                let at = (0..n)
                    .find(|&i| rest[i] != expected[i])
                    .expect("slices differ somewhere");
                if timestamp && rest[at] == b'[' {
                    // The server answered the line so far; another stamped piece begins.
                    self.offset += at;
                    rest = &rest[at..];
                    self.stamp = Some(StampReader::EMPTY);
                    continue;
                }
                fed.wrong = Some(WrongReply::Byte {
                    request: self.request,
                    offset: self.offset + at,
                    expected: expected[at],
                    got: rest[at],
                });
                return fed;
            }
            self.offset += n;
            rest = &rest[n..];
            if self.offset == requests.size {
                fed.completed += 1;
                self.request += 1;
                self.offset = 0;
                if timestamp {
                    self.stamp = Some(StampReader::EMPTY);
                }
            }
        }
        fed
    }
}

const WEEKDAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Whether `bytes` is `[Www Mmm dd hh:mm:ss yyyy] ` as Python's `time.ctime()` writes it (the
/// day padded with a space). The values are checked for range, not against a clock: the server's
/// time zone is its own.
pub fn is_stamp(bytes: &[u8; STAMP_LEN]) -> bool {
    let two_digits = |at: usize, max: u8| -> bool {
        let (a, b) = (bytes[at], bytes[at + 1]);
        a.is_ascii_digit() && b.is_ascii_digit() && (a - b'0') * 10 + (b - b'0') <= max
    };
    let day_ok = match (bytes[9], bytes[10]) {
        (b' ', d) => (b'1'..=b'9').contains(&d),
        (t, d) => {
            (b'1'..=b'3').contains(&t) && d.is_ascii_digit() && (t - b'0') * 10 + (d - b'0') <= 31
        }
    };
    bytes[0] == b'['
        && WEEKDAYS.iter().any(|w| &bytes[1..4] == *w)
        && bytes[4] == b' '
        && MONTHS.iter().any(|m| &bytes[5..8] == *m)
        && bytes[8] == b' '
        && day_ok
        && bytes[11] == b' '
        && two_digits(12, 23)
        && bytes[14] == b':'
        && two_digits(15, 59)
        && bytes[17] == b':'
        && two_digits(18, 60) // 60: a leap second
        && bytes[20] == b' '
        && bytes[21..25].iter().all(u8::is_ascii_digit)
        && &bytes[25..] == b"] "
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: &[u8] = b"[Wed Sep  9 16:42:46 2026] ";

    /// Requests `0..count`, concatenated.
    fn requests_bytes(requests: &Requests, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for n in 0..count {
            requests.write_request(n, &mut out);
        }
        out
    }

    /// Feeds `stream` cut at every offset into two pieces; returns the replies completed
    /// (the same for every cut) or panics.
    fn feed_all_splits(requests: &Requests, stream: &[u8], sent: u64) -> u64 {
        let mut result = None;
        for cut in 0..=stream.len() {
            let mut verifier = ReplyVerifier::new(requests);
            let a = verifier.feed(requests, &stream[..cut], sent);
            let b = verifier.feed(requests, &stream[cut..], sent);
            assert_eq!((a.wrong, b.wrong), (None, None), "cut at {cut}");
            let completed = a.completed + b.completed;
            assert_eq!(*result.get_or_insert(completed), completed, "cut at {cut}");
        }
        result.unwrap()
    }

    #[test]
    fn consecutive_requests_differ_and_use_only_the_alphabet() {
        let requests = Requests::new(ProtocolKind::Echo, 50).unwrap();
        let mut seen = std::collections::HashSet::new();
        for n in 0..36 {
            let mut out = Vec::new();
            requests.write_request(n, &mut out);
            assert_eq!(out.len(), 50);
            assert!(out.iter().all(|b| ALPHABET.contains(b)));
            assert!(seen.insert(out), "request {n} repeats an earlier one");
        }
    }

    #[test]
    fn timestamp_requests_are_lines_of_exactly_size_bytes() {
        for size in [1, 2, 64] {
            let requests = Requests::new(ProtocolKind::Timestamp, size).unwrap();
            let mut out = Vec::new();
            requests.write_request(3, &mut out);
            assert_eq!(out.len(), size);
            assert_eq!(out.iter().position(|&b| b == b'\n'), Some(size - 1));
        }
    }

    #[test]
    fn echo_replies_verify_however_they_are_split() {
        let requests = Requests::new(ProtocolKind::Echo, 10).unwrap();
        let stream = requests_bytes(&requests, 3);
        assert_eq!(feed_all_splits(&requests, &stream, 3), 3);
    }

    #[test]
    fn upper_replies_are_the_ascii_upper_case() {
        let requests = Requests::new(ProtocolKind::Upper, 40).unwrap();
        let stream = requests_bytes(&requests, 2).to_ascii_uppercase();
        assert_eq!(feed_all_splits(&requests, &stream, 2), 2);
    }

    #[test]
    fn an_echoed_reply_is_wrong_for_upper() {
        let requests = Requests::new(ProtocolKind::Upper, 16).unwrap();
        let stream = requests_bytes(&requests, 1);
        let fed = ReplyVerifier::new(&requests).feed(&requests, &stream, 1);
        assert_eq!(fed.completed, 0);
        assert_eq!(
            fed.wrong,
            Some(WrongReply::Byte {
                request: 0,
                offset: 0,
                expected: b'A',
                got: b'a'
            })
        );
        assert_eq!(
            fed.wrong.unwrap().to_string(),
            "reply to request 0: byte 0 is 'a', expected 'A'"
        );
    }

    #[test]
    fn a_reply_to_the_wrong_request_is_detected() {
        let requests = Requests::new(ProtocolKind::Echo, 8).unwrap();
        let mut second = Vec::new();
        requests.write_request(1, &mut second);
        let fed = ReplyVerifier::new(&requests).feed(&requests, &second, 2);
        assert!(
            matches!(fed.wrong, Some(WrongReply::Byte { request: 0, .. })),
            "{fed:?}"
        );
    }

    #[test]
    fn bytes_beyond_the_requests_sent_are_unsolicited() {
        let requests = Requests::new(ProtocolKind::Echo, 4).unwrap();
        let stream = requests_bytes(&requests, 2);
        let fed = ReplyVerifier::new(&requests).feed(&requests, &stream, 1);
        assert_eq!(fed.completed, 1);
        assert_eq!(fed.wrong, Some(WrongReply::Unsolicited { got: stream[4] }));
    }

    #[test]
    fn timestamp_replies_verify_however_they_are_split() {
        let requests = Requests::new(ProtocolKind::Timestamp, 12).unwrap();
        let lines = requests_bytes(&requests, 2);
        let mut stream = Vec::new();
        for line in lines.split_inclusive(|&b| b == b'\n') {
            stream.extend_from_slice(STAMP);
            stream.extend_from_slice(line);
        }
        assert_eq!(feed_all_splits(&requests, &stream, 2), 2);
    }

    #[test]
    fn a_line_answered_in_stamped_pieces_is_accepted() {
        // The server read "abcd", paused, then "efghijk\n": two stamped pieces, one line.
        let requests = Requests::new(ProtocolKind::Timestamp, 12).unwrap();
        let line = requests_bytes(&requests, 1);
        let mut stream = Vec::new();
        for piece in [&line[..4], &line[4..11], &line[11..]] {
            stream.extend_from_slice(STAMP);
            stream.extend_from_slice(piece);
        }
        assert_eq!(feed_all_splits(&requests, &stream, 1), 1);
    }

    #[test]
    fn a_timestamp_reply_without_its_stamp_is_wrong() {
        let requests = Requests::new(ProtocolKind::Timestamp, 40).unwrap();
        let line = requests_bytes(&requests, 1); // what an echo server would send
        let fed = ReplyVerifier::new(&requests).feed(&requests, &line, 1);
        assert!(
            matches!(fed.wrong, Some(WrongReply::Stamp { request: 0, .. })),
            "{fed:?}"
        );
    }

    #[test]
    fn a_timestamp_payload_that_differs_is_wrong() {
        let requests = Requests::new(ProtocolKind::Timestamp, 8).unwrap();
        let mut stream = STAMP.to_vec();
        stream.extend_from_slice(b"ABCDEFG\n");
        let fed = ReplyVerifier::new(&requests).feed(&requests, &stream, 1);
        assert!(
            matches!(
                fed.wrong,
                Some(WrongReply::Byte {
                    offset: 0,
                    got: b'A',
                    ..
                })
            ),
            "{fed:?}"
        );
    }

    #[test]
    fn stamps_are_checked_field_by_field() {
        let good: &[u8; STAMP_LEN] = STAMP.try_into().unwrap();
        assert!(is_stamp(good));
        assert!(is_stamp(b"[Sun Dec 31 23:59:60 1999] "));
        for bad in [
            b"[Wed Sep 09 16:42:46 2026] ", // day padded with a zero, not a space
            b"[Wed Sep 32 16:42:46 2026] ",
            b"[Xyz Sep  9 16:42:46 2026] ",
            b"[Wed Sept 9 16:42:46 2026] ",
            b"[Wed Sep  9 24:42:46 2026] ",
            b"[Wed Sep  9 16:42:46 2026]x",
            b"(Wed Sep  9 16:42:46 2026) ",
            b"[Wed Sep  0 16:42:46 2026] ",
        ] {
            assert!(!is_stamp(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_servers_own_clock_text_is_a_stamp() {
        for second in [0, 1_000_000_000, 1_789_000_000, 1_788_955_200] {
            let mut stamp = [0; STAMP_LEN];
            stamp[0] = b'[';
            stamp[1..25].copy_from_slice(&crate::clock::format_ctime(second));
            stamp[25..].copy_from_slice(b"] ");
            assert!(is_stamp(&stamp), "{}", String::from_utf8_lossy(&stamp));
        }
    }

    #[test]
    fn other_protocols_are_refused() {
        assert!(Requests::new(ProtocolKind::Chat, 8).is_err());
        assert!(Requests::new(ProtocolKind::Echo, 0).is_err());
    }
}
