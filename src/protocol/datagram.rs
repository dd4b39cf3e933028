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

use crate::clock::Now;

use super::upper::upper_into;
use super::ProtocolKind;

/// The largest UDP payload the contract answers: 65,535 minus the 8-byte UDP and 20-byte IPv4
/// headers. Longer datagrams (IPv6 allows up to 65,527 bytes without jumbograms) are dropped.
pub const MAX_DATAGRAM_PAYLOAD: usize = 65_507;

/// Appends `protocol`'s reply to the datagram `payload` to `out`. `None` for a protocol that is
/// not served over UDP (chat and upload need a conversation).
pub fn reply(protocol: ProtocolKind, payload: &[u8], now: &Now, out: &mut Vec<u8>) -> Option<()> {
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
        ProtocolKind::Chat | ProtocolKind::Upload => return None,
    }
    Some(())
}

/// Whether `protocol` can be served over UDP.
pub fn serves(protocol: ProtocolKind) -> bool {
    matches!(
        protocol,
        ProtocolKind::Upper | ProtocolKind::Timestamp | ProtocolKind::Echo
    )
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
        assert!(!serves(ProtocolKind::Upload));
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
