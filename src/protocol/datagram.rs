//! The protocols over UDP: one datagram in, one reply datagram out.
//!
//! A datagram is a whole message — there is no stream to split it and nothing to carry from one
//! datagram to the next — so over UDP a protocol is a pure function of the payload and the time,
//! with no session at all. That is also why a datagram endpoint needs no per-peer state in the
//! loop: a flood from a million source addresses costs the server nothing but the CPU to answer.
//!
//! * upper: the datagram converted on its own; an incomplete UTF-8 sequence at its end passes
//!   through unchanged, as at a stream's end.
//! * timestamp: `[ctime] PAYLOAD`, the payload unchanged (newline or not).
//! * echo: the payload (RFC 862's UDP service).
//!
//! A reply that would not fit one datagram (a timestamp request of 65,481 bytes or more: the
//! stamp adds 27; upper text that grows past 65,507 bytes, as `ΐ` does threefold) is replaced by
//! the one datagram [`REPLY_TOO_LARGE`], so the client learns why instead of waiting for nothing.
//! Like every reply over UDP it is a datagram, not a line: no newline (the stream protocols'
//! `error ...\n` lines end with one because a stream needs it to end the line).

use crate::clock::Now;

use super::upper::upper_into;
use crate::service::ProtocolKind;

/// The largest UDP payload the contract answers: 65,535 minus the 8-byte UDP and 20-byte IPv4
/// headers. Longer datagrams (IPv6 allows up to 65,527 bytes without jumbograms) are dropped.
pub(crate) const MAX_DATAGRAM_PAYLOAD: usize = 65_507;

/// The reply to a request whose reply would not fit one datagram (contract v3).
pub(crate) const REPLY_TOO_LARGE: &[u8] = b"error reply too large";

/// What [`reply`] put in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The protocol's answer.
    Answer,
    /// [`REPLY_TOO_LARGE`], in place of an answer longer than [`MAX_DATAGRAM_PAYLOAD`].
    TooLarge,
}

/// Appends `protocol`'s reply to the datagram `payload` to `out` (which the caller clears): the
/// answer, or [`REPLY_TOO_LARGE`] when the answer would not fit one datagram. `None` for a
/// protocol that is not served over UDP (chat and upload need a conversation).
///
/// `out` may briefly hold an answer three times the payload's length (upper's largest growth)
/// before it is found too large: bounded, and kept by the caller for the next datagram.
pub(crate) fn reply(
    protocol: ProtocolKind,
    payload: &[u8],
    now: &Now,
    out: &mut Vec<u8>,
) -> Option<Reply> {
    let start = out.len();
    match protocol {
        ProtocolKind::Upper => {
            let incomplete = upper_into(payload, out);
            out.extend_from_slice(&payload[payload.len() - incomplete..]);
        }
        ProtocolKind::Timestamp => {
            out.push(b'[');
            out.extend_from_slice(now.ctime());
            out.extend_from_slice(b"] ");
            out.extend_from_slice(payload);
        }
        ProtocolKind::Echo => out.extend_from_slice(payload),
        ProtocolKind::Chat | ProtocolKind::Upload | ProtocolKind::Metrics => return None,
    }
    if out.len() - start > MAX_DATAGRAM_PAYLOAD {
        out.truncate(start);
        out.extend_from_slice(REPLY_TOO_LARGE);
        return Some(Reply::TooLarge);
    }
    Some(Reply::Answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::fixed_now;
    use proptest::prelude::*;

    fn answer(protocol: ProtocolKind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        reply(protocol, payload, &fixed_now(), &mut out).unwrap();
        out
    }

    #[test]
    fn upper_converts_the_datagram_whole() {
        assert_eq!(answer(ProtocolKind::Upper, "straße".as_bytes()), b"STRASSE");
        assert_eq!(answer(ProtocolKind::Upper, b"ab\xffc"), b"AB\xffC");
        // An incomplete sequence at the end passes through: there is no next datagram.
        assert_eq!(answer(ProtocolKind::Upper, b"abc\xc3"), b"ABC\xc3");
        assert_eq!(answer(ProtocolKind::Upper, b""), b"");
    }

    #[test]
    fn timestamp_stamps_the_payload_with_or_without_a_newline() {
        assert_eq!(
            answer(ProtocolKind::Timestamp, b"hello"),
            b"[Wed Sep  9 16:42:46 2026] hello"
        );
        assert_eq!(
            answer(ProtocolKind::Timestamp, b"a\nb\n"),
            b"[Wed Sep  9 16:42:46 2026] a\nb\n"
        );
    }

    #[test]
    fn echo_and_unserved_protocols() {
        assert_eq!(answer(ProtocolKind::Echo, b"\x00\xff"), b"\x00\xff");
        let mut out = Vec::new();
        assert!(reply(ProtocolKind::Chat, b"x", &fixed_now(), &mut out).is_none());
    }

    #[test]
    fn a_reply_past_one_datagram_is_the_error() {
        // The stamp adds 27 bytes: 65,480 still fit, 65,481 do not.
        let stamp = answer(ProtocolKind::Timestamp, b"").len();
        assert_eq!(stamp, 27);
        let fits = answer(ProtocolKind::Timestamp, &[b'x'; MAX_DATAGRAM_PAYLOAD - 27]);
        assert_eq!(fits.len(), MAX_DATAGRAM_PAYLOAD);
        let mut out = Vec::new();
        let too_large = [b'x'; MAX_DATAGRAM_PAYLOAD - 26];
        let outcome = reply(ProtocolKind::Timestamp, &too_large, &fixed_now(), &mut out);
        assert_eq!(outcome, Some(Reply::TooLarge));
        assert_eq!(out, REPLY_TOO_LARGE);
        // Upper text that grows: `ŉ` (2 bytes) becomes `ʼN` (3).
        let grows = |ascii: usize| ["ŉ".repeat(20_000), "a".repeat(ascii)].concat();
        assert_eq!(
            answer(ProtocolKind::Upper, grows(5_507).as_bytes()).len(),
            65_507
        );
        assert_eq!(
            answer(ProtocolKind::Upper, grows(5_508).as_bytes()),
            REPLY_TOO_LARGE
        );
        // Echo never grows: the size limit on requests keeps it in one datagram.
        let largest = [b'e'; MAX_DATAGRAM_PAYLOAD];
        assert_eq!(
            answer(ProtocolKind::Echo, &largest).len(),
            MAX_DATAGRAM_PAYLOAD
        );
    }

    proptest! {
        /// A datagram's upper reply is what the stream protocol answers for the same bytes
        /// followed by the end of stream.
        #[test]
        fn upper_matches_the_stream_protocol(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut stream = Vec::new();
            let mut session = crate::protocol::Upper::default();
            session.on_input(&payload, &mut stream);
            session.on_end(&mut stream);
            prop_assert_eq!(answer(ProtocolKind::Upper, &payload), stream);
        }
    }
}
