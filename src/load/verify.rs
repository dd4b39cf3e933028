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
//! Request `n` on connection `c` is a pseudo-random string of [`ALPHABET`] (lowercase ASCII
//! letters and digits) seeded by both `c` and `n`: consecutive requests differ, so a lost,
//! repeated or reordered reply shows up as wrong bytes, and so do two connections' requests at
//! the same step, so a reply delivered to the wrong connection shows up too. (Requests of a few
//! bytes have few possible values and two may agree by chance; from 8 bytes on, two different
//! requests agree with a probability under 2⁻⁴⁰.)
//!
//! The generator is splitmix64 (Steele, Lea and Flood's `SplittableRandom`), counter-based: the
//! `i`-th 64-bit word of a request is one multiply-and-xorshift mix of its seed plus `i` steps,
//! so any part of any request can be computed on its own, without state or a buffer. That is
//! what lets the verifier check a reply against the request it answers as the bytes arrive. Each
//! word spells eight bytes (5 bits each) with a few whole-word operations and no table, and the
//! verifier compares whole words where the reply's bytes line up with them: the instrument has
//! to stay cheap, since its cost is spent on the same cores as the server's.
//!
//! Lowercase ASCII makes `upper`'s expected answer simply its ASCII upper-case, and keeps `[` and
//! `\n` out of payloads, which is what lets the timestamp verifier tell a stamp from payload.
//! For `timestamp` the last byte of each request is `\n`, so each request is one line.
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
use std::ops::Range;

use crate::service::ProtocolKind;

/// The 32 bytes request payloads are made of, so that each takes exactly 5 random bits: no `[`,
/// no `\n`, and no byte that upper-casing changes in a way other than ASCII upper-casing. The
/// specification [`word`] computes without a table; the tests check the two agree.
#[cfg_attr(not(test), allow(dead_code))]
pub const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz012345";

/// Payload bytes spelled from one 64-bit word: one per byte of the word, from its low 5 bits.
const SYMBOLS_PER_WORD: usize = 8;

/// splitmix64's step between consecutive words: 2⁶⁴ divided by the golden ratio, odd.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Bits of a connection's number below which the request number is placed in the seed key:
/// keys are distinct while requests stay under 2⁴⁰ per connection and connections under 2²⁴
/// (more than [`super::limits::MAX_CONNECTIONS`]).
const REQUEST_BITS: u32 = 40;

/// Length of the stamp the timestamp server puts before each message: `[` + 24 bytes of
/// `ctime` text + `] `.
pub const STAMP_LEN: usize = 1 + crate::clock::CTIME_LEN + 2;

/// splitmix64's finaliser: a bijection on 64-bit words in which every input bit affects every
/// output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of request `request` on connection `connection`. Distinct (connection, request)
/// pairs (within [`REQUEST_BITS`]) give distinct keys, and [`mix64`] is a bijection, so they give
/// distinct seeds.
fn seed_of(connection: u64, request: u64) -> u64 {
    mix64((connection << REQUEST_BITS) ^ request)
}

/// Payload bytes `8 * index .. 8 * index + 8` of the request with seed `seed`, as a
/// little-endian word, spelled from `a` (`b'a'`, or `b'A'` for what `upper` answers): the
/// [`ALPHABET`], or its upper case.
///
/// Each byte's low 5 bits, `v`, become `a + v` for `v < 26` and a digit `'0' + v - 26` above,
/// computed for the eight bytes at once. No byte's sum carries into the next: `v + 102` is at
/// most 133, `a + v` at most `0x80`, and a digit's byte stays at or above `'0'`.
fn word(seed: u64, index: usize, a: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let step = (index as u64).wrapping_add(1).wrapping_mul(GOLDEN_GAMMA);
    let v = mix64(seed.wrapping_add(step)) & (ONES * 0x1f);
    // 1 in each byte whose value is 26 or more (its high bit set by adding 128 - 26), else 0.
    let digit = ((v + ONES * (128 - 26)) >> 7) & ONES;
    v + ONES * u64::from(a) - digit * u64::from(a + 26 - b'0')
}

/// The requests of one run: their protocol and size. Their bytes are computed, never stored, so
/// one value serves every connection of a thread and no connection needs a buffer of its own to
/// build or check a request.
#[derive(Clone, Debug)]
pub struct Requests {
    protocol: ProtocolKind,
    size: usize,
}

impl Requests {
    /// Requests of `size` bytes for `protocol` (upper, timestamp or echo).
    ///
    /// ```
    /// use oneloop::load::verify::Requests;
    /// use oneloop::service::ProtocolKind;
    ///
    /// let requests = Requests::new(ProtocolKind::Timestamp, 16).unwrap();
    /// let (mut first, mut other) = (Vec::new(), Vec::new());
    /// requests.write_request(0, 0, &mut first); // connection 0, request 0
    /// requests.write_request(1, 0, &mut other); // connection 1, request 0
    /// assert_eq!(first.len(), 16);
    /// assert_eq!(first.last(), Some(&b'\n'));
    /// assert_ne!(first, other);
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
        Ok(Requests { protocol, size })
    }

    /// Payload bytes drawn from the generator; for timestamp the `\n` follows them.
    fn body_len(&self) -> usize {
        match self.protocol {
            ProtocolKind::Timestamp => self.size - 1,
            _ => self.size,
        }
    }

    /// Appends request number `request` of connection number `connection` to `out`.
    pub fn write_request(&self, connection: u64, request: u64, out: &mut Vec<u8>) {
        let seed = seed_of(connection, request);
        let start = out.len();
        out.resize(start + self.body_len(), 0);
        for (index, bytes) in out[start..].chunks_mut(SYMBOLS_PER_WORD).enumerate() {
            let symbols = word(seed, index, b'a').to_le_bytes();
            bytes.copy_from_slice(&symbols[..bytes.len()]);
        }
        if self.protocol == ProtocolKind::Timestamp {
            out.push(b'\n');
        }
    }

    /// The first letter of the reply payloads' alphabet.
    fn reply_a(&self) -> u8 {
        if self.protocol == ProtocolKind::Upper {
            b'A'
        } else {
            b'a'
        }
    }

    /// The expected reply payload of the request with seed `seed` from `offset` on, up to the end
    /// of the word that holds it (the timestamp line's `\n` comes as a piece of its own): the
    /// bytes are `piece[range]`. The range is empty at the end.
    fn expected_from(&self, seed: u64, offset: usize) -> ([u8; SYMBOLS_PER_WORD], Range<usize>) {
        let body = self.body_len();
        if offset < body {
            let index = offset / SYMBOLS_PER_WORD;
            let word_start = index * SYMBOLS_PER_WORD;
            let end = (body - word_start).min(SYMBOLS_PER_WORD);
            let symbols = word(seed, index, self.reply_a()).to_le_bytes();
            (symbols, offset - word_start..end)
        } else if offset < self.size {
            let mut newline = [0; SYMBOLS_PER_WORD];
            newline[0] = b'\n';
            (newline, 0..1)
        } else {
            ([0; SYMBOLS_PER_WORD], 0..0)
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
    /// A datagram ended before the reply it carries did (over UDP a reply is one datagram).
    Short {
        /// The request whose reply it is.
        request: u64,
        /// The datagram's length.
        len: usize,
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
            WrongReply::Short { request, len } => write!(
                f,
                "reply to request {request}: a datagram of {len} bytes is not the whole reply"
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
/// It remembers only its connection, which request's reply it is in, how far, and (timestamp)
/// the stamp being read; the expected bytes are recomputed from [`Requests`].
///
/// ```
/// use oneloop::load::verify::{ReplyVerifier, Requests};
/// use oneloop::service::ProtocolKind;
///
/// let requests = Requests::new(ProtocolKind::Upper, 4).unwrap();
/// let mut sent = Vec::new();
/// requests.write_request(7, 0, &mut sent); // connection 7's requests 0 and 1
/// requests.write_request(7, 1, &mut sent);
/// let replies = sent.to_ascii_uppercase();
/// // Their replies arrive split anywhere.
/// let mut verifier = ReplyVerifier::new(&requests, 7);
/// assert_eq!(verifier.feed(&requests, &replies[..5], 2).completed, 1);
/// assert_eq!(verifier.feed(&requests, &replies[5..], 2).completed, 1);
/// assert!(verifier.feed(&requests, b"X", 2).wrong.is_some()); // nothing was asked
/// // The same replies are wrong on another connection.
/// let mut other = ReplyVerifier::new(&requests, 8);
/// assert!(other.feed(&requests, &replies, 2).wrong.is_some());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ReplyVerifier {
    /// The connection's number: its requests are its own.
    connection: u64,
    /// The request whose reply is arriving (requests are numbered from 0 on each connection).
    request: u64,
    /// That request's seed, kept so that it is mixed once per request, not once per word.
    seed: u64,
    /// How many of its reply's payload bytes have been matched.
    offset: usize,
    /// Timestamp only: `Some` while a stamp is being read, which is where every reply and every
    /// reply piece starts.
    stamp: Option<StampReader>,
    /// Timestamp only: whether a reply may come in several stamped pieces. Over a stream it may
    /// (the server answers each piece of a line it read); a datagram is exactly one stamp and
    /// the payload, so there a second stamp is a wrong byte.
    pieces: bool,
}

impl ReplyVerifier {
    /// A verifier of connection number `connection`, expecting the reply to its request 0.
    pub fn new(requests: &Requests, connection: u64) -> ReplyVerifier {
        ReplyVerifier {
            connection,
            request: 0,
            seed: seed_of(connection, 0),
            offset: 0,
            stamp: (requests.protocol == ProtocolKind::Timestamp).then_some(StampReader::EMPTY),
            pieces: true,
        }
    }

    /// Checks that `datagram` is, whole, the reply to request `request` of connection
    /// `connection`: over UDP each reply is one datagram, so a reply split, joined to another or
    /// cut short is wrong, and a timestamp reply is one stamp and the payload — never TCP's
    /// stamped pieces. Nothing is kept; the expected bytes are recomputed.
    ///
    /// ```
    /// use oneloop::load::verify::{ReplyVerifier, Requests};
    /// use oneloop::service::ProtocolKind;
    ///
    /// let requests = Requests::new(ProtocolKind::Upper, 16).unwrap();
    /// let mut request = Vec::new();
    /// requests.write_request(3, 9, &mut request); // socket 3's request 9
    /// let reply = request.to_ascii_uppercase();
    /// assert!(ReplyVerifier::check_datagram(&requests, 3, 9, &reply).is_ok());
    /// assert!(ReplyVerifier::check_datagram(&requests, 3, 8, &reply).is_err());
    /// assert!(ReplyVerifier::check_datagram(&requests, 3, 9, &reply[..15]).is_err());
    /// ```
    pub fn check_datagram(
        requests: &Requests,
        connection: u64,
        request: u64,
        datagram: &[u8],
    ) -> Result<(), WrongReply> {
        let mut verifier = ReplyVerifier {
            request,
            seed: seed_of(connection, request),
            pieces: false,
            ..ReplyVerifier::new(requests, connection)
        };
        let fed = verifier.feed(requests, datagram, request + 1);
        match (fed.wrong, fed.completed) {
            (Some(wrong), _) => Err(wrong),
            (None, 1) => Ok(()),
            (None, _) => Err(WrongReply::Short {
                request,
                len: datagram.len(),
            }),
        }
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
            rest = self.match_whole_words(requests, rest);
            let (piece, range) = requests.expected_from(self.seed, self.offset);
            let expected = &piece[range];
            let n = expected.len().min(rest.len());
            if rest[..n] != expected[..n] {
                let at = (0..n)
                    .find(|&i| rest[i] != expected[i])
                    .expect("slices differ somewhere");
                if timestamp && self.pieces && rest[at] == b'[' {
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
                self.seed = seed_of(self.connection, self.request);
                self.offset = 0;
                if timestamp {
                    self.stamp = Some(StampReader::EMPTY);
                }
            }
        }
        fed
    }
}

impl ReplyVerifier {
    /// The fast path of [`ReplyVerifier::feed`]: while the reply is at a word boundary of its
    /// payload with a whole word left in both the payload and `input`, compares eight bytes at
    /// once. Stops at the first word that differs (the byte-by-byte path then says where) and
    /// returns the input left.
    fn match_whole_words<'a>(&mut self, requests: &Requests, mut input: &'a [u8]) -> &'a [u8] {
        let body = requests.body_len();
        let a = requests.reply_a();
        while self.offset % SYMBOLS_PER_WORD == 0 && self.offset + SYMBOLS_PER_WORD <= body {
            let Some((got, after)) = input.split_first_chunk::<SYMBOLS_PER_WORD>() else {
                break;
            };
            if u64::from_le_bytes(*got) != word(self.seed, self.offset / SYMBOLS_PER_WORD, a) {
                break;
            }
            self.offset += SYMBOLS_PER_WORD;
            input = after;
        }
        input
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

    /// The connection the tests' requests are sent on.
    const CONN: u64 = 3;

    /// Requests `0..count` of connection [`CONN`], concatenated.
    fn requests_bytes(requests: &Requests, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for n in 0..count {
            requests.write_request(CONN, n, &mut out);
        }
        out
    }

    /// Request `request` of connection `connection`, alone.
    fn request(requests: &Requests, connection: u64, request: u64) -> Vec<u8> {
        let mut out = Vec::new();
        requests.write_request(connection, request, &mut out);
        out
    }

    /// Feeds `stream` cut at every offset into two pieces; returns the replies completed
    /// (the same for every cut) or panics.
    fn feed_all_splits(requests: &Requests, stream: &[u8], sent: u64) -> u64 {
        let mut result = None;
        for cut in 0..=stream.len() {
            let mut verifier = ReplyVerifier::new(requests, CONN);
            let a = verifier.feed(requests, &stream[..cut], sent);
            let b = verifier.feed(requests, &stream[cut..], sent);
            assert_eq!((a.wrong, b.wrong), (None, None), "cut at {cut}");
            let completed = a.completed + b.completed;
            assert_eq!(*result.get_or_insert(completed), completed, "cut at {cut}");
        }
        result.unwrap()
    }

    #[test]
    fn requests_differ_by_connection_and_number_and_use_only_the_alphabet() {
        let requests = Requests::new(ProtocolKind::Echo, 13).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut symbols = std::collections::HashSet::new();
        for connection in [0, 1, 2, 255, 256, 999_999] {
            for n in (0..200).chain([1 << 20, (1 << 40) - 1]) {
                let out = request(&requests, connection, n);
                assert_eq!(out.len(), 13);
                assert!(out.iter().all(|b| ALPHABET.contains(b)), "{out:?}");
                symbols.extend(out.iter().copied());
                assert!(
                    seen.insert(out),
                    "connection {connection}'s request {n} repeats an earlier one"
                );
            }
        }
        assert_eq!(symbols.len(), ALPHABET.len(), "every symbol is drawn");
    }

    #[test]
    fn words_spell_each_byte_with_the_alphabet() {
        // The whole-word spelling agrees with a table lookup, byte by byte, in both cases.
        for seed in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            for index in [0, 1, 2, 1000] {
                let step = (index as u64 + 1).wrapping_mul(GOLDEN_GAMMA);
                let bits = mix64(seed.wrapping_add(step)).to_le_bytes();
                let lower = word(seed, index, b'a').to_le_bytes();
                let upper = word(seed, index, b'A').to_le_bytes();
                for i in 0..SYMBOLS_PER_WORD {
                    let symbol = ALPHABET[usize::from(bits[i] & 31)];
                    assert_eq!(lower[i], symbol, "seed {seed}, word {index}, byte {i}");
                    assert_eq!(upper[i], symbol.to_ascii_uppercase());
                }
            }
        }
    }

    #[test]
    fn requests_are_the_same_whatever_their_size_cuts_off() {
        // A request is a prefix of the same request made longer: the words do not depend on
        // the size, so a size that is not a multiple of a word cuts the last one short.
        let long = request(&Requests::new(ProtocolKind::Echo, 100).unwrap(), 5, 9);
        for size in [1, 11, 12, 13, 25, 99] {
            let short = request(&Requests::new(ProtocolKind::Echo, size).unwrap(), 5, 9);
            assert_eq!(short[..], long[..size], "size {size}");
        }
    }

    #[test]
    fn timestamp_requests_are_lines_of_exactly_size_bytes() {
        for size in [1, 2, 13, 64] {
            let requests = Requests::new(ProtocolKind::Timestamp, size).unwrap();
            let out = request(&requests, CONN, 3);
            assert_eq!(out.len(), size);
            assert_eq!(out.iter().position(|&b| b == b'\n'), Some(size - 1));
        }
    }

    #[test]
    fn echo_replies_verify_however_they_are_split() {
        let requests = Requests::new(ProtocolKind::Echo, 30).unwrap();
        let stream = requests_bytes(&requests, 3);
        assert_eq!(feed_all_splits(&requests, &stream, 3), 3);
    }

    #[test]
    fn a_reply_meant_for_another_connection_is_wrong() {
        for protocol in [ProtocolKind::Echo, ProtocolKind::Upper] {
            let requests = Requests::new(protocol, 64).unwrap();
            let mut theirs = request(&requests, CONN + 1, 0);
            if protocol == ProtocolKind::Upper {
                theirs.make_ascii_uppercase();
            }
            let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &theirs, 1);
            assert_eq!(fed.completed, 0, "{protocol}");
            assert!(
                matches!(fed.wrong, Some(WrongReply::Byte { request: 0, .. })),
                "{protocol}: {fed:?}"
            );
        }
        let requests = Requests::new(ProtocolKind::Timestamp, 64).unwrap();
        let stream = [STAMP, &request(&requests, CONN + 1, 0)].concat();
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &stream, 1);
        assert!(
            matches!(fed.wrong, Some(WrongReply::Byte { request: 0, .. })),
            "timestamp: {fed:?}"
        );
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
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &stream, 1);
        assert_eq!(fed.completed, 0);
        // The first letter differs in case (a digit is the same either way).
        let at = stream
            .iter()
            .position(u8::is_ascii_lowercase)
            .expect("16 symbols hold a letter");
        let (got, expected) = (stream[at], stream[at].to_ascii_uppercase());
        assert_eq!(
            fed.wrong,
            Some(WrongReply::Byte {
                request: 0,
                offset: at,
                expected,
                got
            })
        );
        assert_eq!(
            fed.wrong.unwrap().to_string(),
            format!(
                "reply to request 0: byte {at} is '{}', expected '{}'",
                char::from(got),
                char::from(expected)
            )
        );
    }

    #[test]
    fn a_reply_to_the_wrong_request_is_detected() {
        let requests = Requests::new(ProtocolKind::Echo, 16).unwrap();
        let second = request(&requests, CONN, 1);
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &second, 2);
        assert!(
            matches!(fed.wrong, Some(WrongReply::Byte { request: 0, .. })),
            "{fed:?}"
        );
    }

    #[test]
    fn bytes_beyond_the_requests_sent_are_unsolicited() {
        let requests = Requests::new(ProtocolKind::Echo, 4).unwrap();
        let stream = requests_bytes(&requests, 2);
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &stream, 1);
        assert_eq!(fed.completed, 1);
        assert_eq!(fed.wrong, Some(WrongReply::Unsolicited { got: stream[4] }));
    }

    #[test]
    fn timestamp_replies_verify_however_they_are_split() {
        let requests = Requests::new(ProtocolKind::Timestamp, 30).unwrap();
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
    fn a_datagram_is_one_stamp_and_the_payload() {
        // What a stream may carry is wrong in a datagram: the line answered in two pieces.
        let requests = Requests::new(ProtocolKind::Timestamp, 12).unwrap();
        let line = request(&requests, CONN, 5);
        let whole = [STAMP, &line].concat();
        assert!(ReplyVerifier::check_datagram(&requests, CONN, 5, &whole).is_ok());
        let pieces = [STAMP, &line[..6], STAMP, &line[6..]].concat();
        assert_eq!(
            ReplyVerifier::check_datagram(&requests, CONN, 5, &pieces),
            Err(WrongReply::Byte {
                request: 5,
                offset: 6,
                expected: line[6],
                got: b'['
            })
        );
        let mut verifier = ReplyVerifier::new(&requests, CONN);
        let stream = requests_bytes(&requests, 1);
        let pieces = [STAMP, &stream[..6], STAMP, &stream[6..]].concat();
        assert_eq!(verifier.feed(&requests, &pieces, 1).completed, 1);
    }

    #[test]
    fn a_timestamp_reply_without_its_stamp_is_wrong() {
        let requests = Requests::new(ProtocolKind::Timestamp, 40).unwrap();
        let line = requests_bytes(&requests, 1); // what an echo server would send
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &line, 1);
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
        let fed = ReplyVerifier::new(&requests, CONN).feed(&requests, &stream, 1);
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
