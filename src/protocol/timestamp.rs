//! `timestamp`: the seeds' `[ctime] data` server.
//!
//! Every message comes back as `[Www Mmm dd hh:mm:ss yyyy] MESSAGE` — Python's `time.ctime()` in
//! the server's local time zone. A message is
//!
//! * a line ending in `\n` (the reply keeps the `\n`), or
//! * whatever is pending, without a newline, when the peer pauses ([`Arrival::Drained`]): the
//!   seeds' clients send `hello` with no newline and wait for the answer. A line that arrives in
//!   pieces may therefore be answered in several stamped pieces whose payloads join into the
//!   exact line;
//! * whatever is pending at end of stream.
//!
//! `--max-line` bounds the bytes since the last newline, *including* bytes already answered as an
//! unterminated message: otherwise a client sending one byte per pause could grow a "line"
//! forever at no cost to itself. Past the limit the session answers `error line too long` and
//! asks the driver to close. Like every error line it starts a line: after a pause's answer,
//! which has no newline, a `\n` goes first.
//!
//! Each byte is scanned for a newline exactly once (bytes held over between reads are never
//! rescanned), so a long line costs linear time, not quadratic.

use crate::clock::Now;

use super::{Arrival, Flow, LINE_TOO_LONG_REPLY};

/// A timestamp session.
#[derive(Clone, Debug)]
pub struct Timestamp {
    /// Bytes of the current line read but not yet answered. Filled only when a read stopped
    /// early ([`Arrival::Partial`]) in the middle of a line, which is rare, so it is usually
    /// empty and unallocated.
    unanswered: Vec<u8>,
    /// Bytes since the last newline, answered or not: what `max_line` bounds.
    line_len: usize,
    /// The `--max-line` limit.
    max_line: usize,
}

impl Timestamp {
    /// A session that refuses lines longer than `max_line` bytes (not counting the `\n`).
    pub fn new(max_line: usize) -> Timestamp {
        Timestamp {
            unanswered: Vec::new(),
            line_len: 0,
            max_line,
        }
    }

    /// Answers every complete line in `input`, and the pending tail too if the peer has paused.
    pub fn on_input(
        &mut self,
        input: &[u8],
        arrival: Arrival,
        now: &Now,
        out: &mut Vec<u8>,
    ) -> Flow {
        let mut rest = input;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            if self.line_len + newline > self.max_line {
                return self.refuse_long_line(out);
            }
            let (line, after) = rest.split_at(newline + 1);
            stamp(now, out);
            self.take_unanswered(out);
            out.extend_from_slice(line);
            self.line_len = 0;
            rest = after;
        }
        if self.line_len + rest.len() > self.max_line {
            return self.refuse_long_line(out);
        }
        self.line_len += rest.len();
        match arrival {
            Arrival::Drained if !rest.is_empty() || !self.unanswered.is_empty() => {
                stamp(now, out);
                self.take_unanswered(out);
                out.extend_from_slice(rest);
            }
            Arrival::Drained => {}
            Arrival::Partial => self.unanswered.extend_from_slice(rest),
        }
        Flow::Continue
    }

    /// End of stream: pending bytes are a message too.
    pub fn on_end(&mut self, now: &Now, out: &mut Vec<u8>) {
        if !self.unanswered.is_empty() {
            stamp(now, out);
            self.take_unanswered(out);
        }
    }

    /// Moves the held-over bytes to `out` and frees their buffer: it is rarely needed, and an
    /// idle connection should hold no memory it does not use.
    fn take_unanswered(&mut self, out: &mut Vec<u8>) {
        if !self.unanswered.is_empty() {
            out.extend_from_slice(&self.unanswered);
            self.unanswered = Vec::new();
        }
    }

    fn refuse_long_line(&mut self, out: &mut Vec<u8>) -> Flow {
        // Bytes of this line already answered (at a pause) mean the last byte sent was not a
        // newline: `…aaaa`, then the limit. The error line must start a line of its own (the
        // contract, v3). Derived, not stored: a field would grow every connection.
        if self.line_len > self.unanswered.len() {
            out.push(b'\n');
        }
        self.unanswered = Vec::new();
        out.extend_from_slice(LINE_TOO_LONG_REPLY);
        Flow::Close
    }
}

/// Appends `[ctime] `.
fn stamp(now: &Now, out: &mut Vec<u8>) {
    out.push(b'[');
    out.extend_from_slice(now.ctime());
    out.extend_from_slice(b"] ");
}

#[cfg(test)]
mod tests {
    use super::super::testing::{feed, fixed_now};
    use super::super::{Limits, Session};
    use super::*;
    use crate::service::ProtocolKind;
    use proptest::prelude::*;

    const STAMP: &str = "[Wed Sep  9 16:42:46 2026] ";

    fn session(max_line: usize) -> Session {
        let limits = Limits {
            max_line,
            ..Limits::default()
        };
        Session::new(ProtocolKind::Timestamp, limits).unwrap()
    }

    /// Splits a reply stream into stamped pieces, checking each starts with the stamp.
    fn payloads(out: &[u8]) -> Vec<String> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.is_empty() || text.starts_with(STAMP), "{text:?}");
        text.split(STAMP).skip(1).map(str::to_owned).collect()
    }

    #[test]
    fn seed_client_without_newline_is_answered_when_it_pauses() {
        let mut s = session(100);
        let mut out = Vec::new();
        let flow = s.on_input(b"hello", Arrival::Drained, &fixed_now(), &mut out);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(out, format!("{STAMP}hello").as_bytes());
    }

    #[test]
    fn each_line_is_stamped_and_keeps_its_newline() {
        let (out, _) = feed(&mut session(100), b"one\ntwo\n", &[], Arrival::Drained);
        assert_eq!(out, format!("{STAMP}one\n{STAMP}two\n").as_bytes());
    }

    #[test]
    fn partial_reads_are_held_until_the_line_or_the_pause() {
        let mut s = session(100);
        let now = fixed_now();
        let mut out = Vec::new();
        let _ = s.on_input(b"he", Arrival::Partial, &now, &mut out);
        let _ = s.on_input(b"llo\nwor", Arrival::Partial, &now, &mut out);
        assert_eq!(out, format!("{STAMP}hello\n").as_bytes());
        let _ = s.on_input(b"ld", Arrival::Drained, &now, &mut out);
        assert_eq!(out, format!("{STAMP}hello\n{STAMP}world").as_bytes());
    }

    #[test]
    fn pending_bytes_at_end_of_stream_are_a_message() {
        let (out, _) = feed(&mut session(100), b"bye", &[], Arrival::Partial);
        assert_eq!(out, format!("{STAMP}bye").as_bytes());
    }

    #[test]
    fn an_empty_pause_sends_nothing() {
        let mut out = Vec::new();
        let _ = session(10).on_input(b"", Arrival::Drained, &fixed_now(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn line_at_the_limit_is_fine_one_more_byte_is_refused() {
        let (out, flow) = feed(&mut session(4), b"abcd\n", &[], Arrival::Drained);
        assert_eq!(
            (out, flow),
            (format!("{STAMP}abcd\n").into_bytes(), Flow::Continue)
        );
        let (out, flow) = feed(&mut session(4), b"ok\nabcde\n", &[], Arrival::Drained);
        assert_eq!(flow, Flow::Close);
        assert_eq!(out, format!("{STAMP}ok\nerror line too long\n").as_bytes());
    }

    #[test]
    fn the_error_line_starts_a_line_after_a_pause_was_answered() {
        let mut s = session(6);
        let now = fixed_now();
        let mut out = Vec::new();
        let _ = s.on_input(b"aaaa", Arrival::Drained, &now, &mut out);
        assert_eq!(
            s.on_input(b"aaa", Arrival::Drained, &now, &mut out),
            Flow::Close
        );
        assert_eq!(
            out,
            format!("{STAMP}aaaa\nerror line too long\n").as_bytes()
        );
        // After a whole line, no extra newline.
        let (out, _) = feed(&mut session(4), b"ab\nabcde", &[], Arrival::Drained);
        assert_eq!(out, format!("{STAMP}ab\nerror line too long\n").as_bytes());
    }

    #[test]
    fn limit_counts_bytes_already_answered_after_pauses() {
        // A slowloris peer: a byte per pause. Each is answered, but the line still grows.
        let mut s = session(3);
        let now = fixed_now();
        let mut out = Vec::new();
        for byte in [b"a", b"b", b"c"] {
            assert_eq!(
                s.on_input(byte, Arrival::Drained, &now, &mut out),
                Flow::Continue
            );
        }
        assert_eq!(
            s.on_input(b"d", Arrival::Drained, &now, &mut out),
            Flow::Close
        );
        assert!(out.ends_with(LINE_TOO_LONG_REPLY));
        // A newline resets the count.
        let mut s = session(3);
        for input in [&b"abc"[..], b"\n", b"abc", b"\n"] {
            assert_eq!(
                s.on_input(input, Arrival::Drained, &now, &mut out),
                Flow::Continue
            );
        }
    }

    #[test]
    fn held_bytes_are_bounded_by_max_line() {
        let mut s = session(1000);
        let now = fixed_now();
        let mut out = Vec::new();
        for _ in 0..10 {
            if s.on_input(&[b'x'; 150], Arrival::Partial, &now, &mut out) == Flow::Close {
                break;
            }
            if let Session::Timestamp(t) = &s {
                assert!(t.unanswered.len() <= 1000);
            }
        }
        assert_eq!(out, LINE_TOO_LONG_REPLY);
    }

    proptest! {
        /// Without pauses, chunking never changes the output.
        #[test]
        fn partial_chunking_does_not_change_output(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..512),
            mut cuts in proptest::collection::vec(0usize..512, 0..8),
        ) {
            cuts.sort_unstable();
            let whole = feed(&mut session(64), &input, &[], Arrival::Partial);
            let chunked = feed(&mut session(64), &input, &cuts, Arrival::Partial);
            prop_assert_eq!(whole, chunked);
        }

        /// With a pause after every piece, every piece is stamped and the payloads join into the
        /// exact input.
        #[test]
        fn paused_pieces_join_into_the_input(
            input in "[a-z\n]{0,300}",
            mut cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            cuts.sort_unstable();
            let (out, flow) = feed(&mut session(1000), input.as_bytes(), &cuts, Arrival::Drained);
            prop_assert_eq!(flow, Flow::Continue);
            let joined: String = payloads(&out).concat();
            prop_assert_eq!(joined, input);
        }
    }
}
