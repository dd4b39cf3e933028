//! `upper`: the seeds' "translation" server, as a byte-stream transform.
//!
//! Valid UTF-8 is upper-cased with the full Unicode mapping (`straße` → `STRASSE`, as Rust's
//! `str::to_uppercase` and Python's `str.upper`); bytes that are not valid UTF-8 pass through
//! unchanged. Replies flow as input arrives — no waiting for a newline — so the only thing a
//! session remembers between reads is a character that TCP split in two: up to three bytes of an
//! incomplete UTF-8 sequence, converted whole once the rest arrives, or passed through unchanged
//! if the stream ends first.

/// An upper-casing session: at most one incomplete UTF-8 sequence carried between reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Upper {
    /// The start of a character whose remaining bytes have not arrived yet.
    carry: [u8; 3],
    /// How many bytes of `carry` are in use (0 when nothing is carried).
    carry_len: u8,
}

impl Upper {
    /// Upper-cases `input` into `out`, holding back a trailing incomplete character.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let rest = if self.carry_len > 0 {
            let consumed = self.finish_carried(input, out);
            &input[consumed..]
        } else {
            input
        };
        if self.carry_len > 0 {
            // `rest` was too short to finish the carried character; it is all in the carry now.
            return;
        }
        let incomplete = upper_into(rest, out);
        let tail = &rest[rest.len() - incomplete..];
        self.carry[..tail.len()].copy_from_slice(tail);
        self.carry_len = tail.len() as u8;
    }

    /// End of stream: an incomplete character can never be finished, so it passes unchanged.
    pub fn on_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.carry[..usize::from(self.carry_len)]);
        self.carry_len = 0;
    }

    /// Completes the carried sequence with the first bytes of `input`; returns how many bytes of
    /// `input` it used. Leaves `carry_len` non-zero only if `input` ran out first.
    fn finish_carried(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let carried = usize::from(self.carry_len);
        // A UTF-8 sequence is at most four bytes, so three more bytes settle the carried one.
        let borrowed = input.len().min(3);
        let mut joined = [0u8; 6];
        joined[..carried].copy_from_slice(&self.carry[..carried]);
        joined[carried..carried + borrowed].copy_from_slice(&input[..borrowed]);
        let joined = &joined[..carried + borrowed];

        let first = joined
            .utf8_chunks()
            .next()
            .expect("joined holds at least the carried bytes");
        if let Some(c) = first.valid().chars().next() {
            // The carried bytes were the start of this character, now complete.
            push_upper_char(c, out);
            self.carry_len = 0;
            return c.len_utf8() - carried;
        }
        let invalid = first.invalid();
        if invalid.len() == joined.len() && is_incomplete(invalid) {
            // Still unfinished (the new input was one or two bytes): keep carrying.
            self.carry[..joined.len()].copy_from_slice(joined);
            self.carry_len = joined.len() as u8;
            return borrowed;
        }
        // The carried bytes can never become a character: they pass through unchanged. The
        // invalid sequence covers at least the carried bytes (they were a valid prefix).
        out.extend_from_slice(invalid);
        self.carry_len = 0;
        invalid.len() - carried
    }
}

/// Upper-cases `bytes` into `out`, passing invalid sequences through. Returns the length of an
/// incomplete UTF-8 sequence at the very end (0–3 bytes), which it leaves unconverted.
pub(crate) fn upper_into(bytes: &[u8], out: &mut Vec<u8>) -> usize {
    if bytes.is_ascii() {
        // The common case, checked a word at a time: no UTF-8 decoding needed at all.
        push_ascii_upper(bytes, out);
        return 0;
    }
    out.reserve(bytes.len());
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        push_upper_str(chunk.valid(), out);
        let invalid = chunk.invalid();
        if chunks.peek().is_none() && is_incomplete(invalid) {
            return invalid.len();
        }
        out.extend_from_slice(invalid);
    }
    0
}

/// Whether `bytes` (a chunk's invalid part, at most three bytes) is the start of a valid
/// sequence cut short, rather than bytes that can never be valid.
fn is_incomplete(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && matches!(std::str::from_utf8(bytes), Err(e) if e.valid_up_to() == 0 && e.error_len().is_none())
}

/// Appends the upper case of `text`; ASCII runs take a byte-at-a-time fast path.
fn push_upper_str(text: &str, out: &mut Vec<u8>) {
    let mut rest = text;
    while !rest.is_empty() {
        let ascii_len = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        push_ascii_upper(&rest.as_bytes()[..ascii_len], out);
        rest = &rest[ascii_len..];
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            push_upper_char(c, out);
            rest = chars.as_str();
        }
    }
}

/// Appends ASCII bytes upper-cased: copy, then convert in place — both simple loops the compiler
/// vectorises, unlike a byte-at-a-time `map`.
fn push_ascii_upper(ascii: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(ascii);
    out[start..].make_ascii_uppercase();
}

/// Appends the full upper-case mapping of one character (which may be several characters).
fn push_upper_char(c: char, out: &mut Vec<u8>) {
    let mut utf8 = [0u8; 4];
    for upper in c.to_uppercase() {
        out.extend_from_slice(upper.encode_utf8(&mut utf8).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::feed;
    use super::super::{Arrival, Limits, Session};
    use super::*;
    use crate::service::ProtocolKind;
    use proptest::prelude::*;

    fn upper_whole(input: &[u8]) -> Vec<u8> {
        let mut session = Session::new(ProtocolKind::Upper, Limits::default()).unwrap();
        feed(&mut session, input, &[], Arrival::Drained).0
    }

    /// The reference: what `upper` must produce for the whole input at once.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.utf8_chunks() {
            out.extend_from_slice(chunk.valid().to_uppercase().as_bytes());
            out.extend_from_slice(chunk.invalid());
        }
        out
    }

    #[test]
    fn seed_example() {
        assert_eq!(upper_whole(b"Hello world 123"), b"HELLO WORLD 123");
    }

    #[test]
    fn full_unicode_mapping() {
        assert_eq!(upper_whole("straße".as_bytes()), "STRASSE".as_bytes());
        // Python: "ﬁx ǆ ΐ".upper() == "FIX \u01c4 \u0399\u0308\u0301"
        assert_eq!(
            upper_whole("ﬁx ǆ ΐ".as_bytes()),
            "FIX \u{1c4} \u{399}\u{308}\u{301}".as_bytes()
        );
        assert_eq!(
            upper_whole("你好 hello".as_bytes()),
            "你好 HELLO".as_bytes()
        );
    }

    #[test]
    fn invalid_bytes_pass_through() {
        assert_eq!(upper_whole(b"a\xffb\xc3"), b"A\xffB\xc3");
        assert_eq!(upper_whole(b"\xe2\x82x"), b"\xe2\x82X");
        assert_eq!(upper_whole(b"\xed\xa0\x80z"), b"\xed\xa0\x80Z"); // a surrogate: invalid
    }

    #[test]
    fn character_split_across_reads_is_converted_whole() {
        let input = "aß€😀".as_bytes();
        for cut in 0..=input.len() {
            let mut session = Session::new(ProtocolKind::Upper, Limits::default()).unwrap();
            let (out, _) = feed(&mut session, input, &[cut], Arrival::Drained);
            assert_eq!(out, "ASS€😀".as_bytes(), "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = &["ﬂ😀é\u{1F600}x".as_bytes(), b"\xffy"].concat();
        let cuts: Vec<usize> = (1..input.len()).collect();
        let mut session = Session::new(ProtocolKind::Upper, Limits::default()).unwrap();
        let (out, _) = feed(&mut session, input, &cuts, Arrival::Drained);
        assert_eq!(out, reference(input));
    }

    #[test]
    fn incomplete_sequence_at_end_of_stream_passes_unchanged() {
        assert_eq!(upper_whole(b"ok\xf0\x9f\x98"), b"OK\xf0\x9f\x98");
        let mut upper = Upper::default();
        let mut out = Vec::new();
        upper.on_input(b"\xf0\x9f", &mut out);
        upper.on_input(b"\x98", &mut out);
        assert!(
            out.is_empty(),
            "nothing is sent for a character still arriving"
        );
        upper.on_end(&mut out);
        assert_eq!(out, b"\xf0\x9f\x98");
    }

    /// Bytes that look like UTF-8 starts, so random inputs often contain split characters.
    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
            Just("ß".as_bytes().to_vec()),
            Just("ǅ€".as_bytes().to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
            Just(b"\xf0\x9f".to_vec()),
            Just(b"\xe2".to_vec()),
        ];
        proptest::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn same_output_however_chunked(input in utf8ish(), mut cuts in proptest::collection::vec(0usize..256, 0..10)) {
            cuts.sort_unstable();
            let mut session = Session::new(ProtocolKind::Upper, Limits::default()).unwrap();
            let (out, _) = feed(&mut session, &input, &cuts, Arrival::Partial);
            prop_assert_eq!(out, reference(&input));
        }

        #[test]
        fn valid_text_matches_str_to_uppercase(text in any::<String>(), cut in 0usize..512) {
            let mut session = Session::new(ProtocolKind::Upper, Limits::default()).unwrap();
            let (out, _) = feed(&mut session, text.as_bytes(), &[cut], Arrival::Drained);
            prop_assert_eq!(out, text.to_uppercase().into_bytes());
        }
    }
}
