//! The PROXY header parser's properties, for any bytes, however cut.

use crate::protocol::proxy::{self, Header, Parse, ProxyHeader};

use super::plan;

/// What [`drive_proxy`] saw: the outcome, and the header bytes consumed over all reads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyRun {
    /// The input ended before the header did.
    NeedMore,
    /// The header, and how many input bytes it took in all.
    Done(Header, usize),
    /// Refused, and why.
    Invalid(proxy::Reason),
}

/// Feeds `input` to a fresh [`ProxyHeader`] cut at `cuts` (sorted offsets) until it answers,
/// checking at every read that it holds no more than its bound and uses no more than it is
/// given, and after the answer that a later read gets the same one.
pub(crate) fn drive_proxy(input: &[u8], cuts: &[usize]) -> ProxyRun {
    let mut parser = ProxyHeader::new();
    let (mut start, mut total) = (0, 0);
    let run = 'reads: {
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            let outcome = parser.on_input(&input[start..cut]);
            let bound = if input.first() == Some(&b'P') {
                proxy::V1_MAX_BYTES
            } else {
                proxy::MAX_HELD_BYTES
            };
            assert!(parser.held_bytes() <= bound, "the parser holds too much");
            match outcome {
                Parse::NeedMore => total += cut - start,
                Parse::Done { header, consumed } => {
                    assert!(consumed <= cut - start, "consumed more than it was given");
                    break 'reads ProxyRun::Done(header, total + consumed);
                }
                Parse::Invalid(reason) => break 'reads ProxyRun::Invalid(reason),
            }
            start = cut;
        }
        return ProxyRun::NeedMore;
    };
    let again = match parser.on_input(b"PROXY UNKNOWN\r\n") {
        Parse::Done { header, consumed } => {
            assert_eq!(consumed, 0, "a finished parser consumed more");
            ProxyRun::Done(header, 0)
        }
        Parse::Invalid(reason) => ProxyRun::Invalid(reason),
        Parse::NeedMore => panic!("a finished parser asked for more"),
    };
    match (&run, &again) {
        (ProxyRun::Done(a, _), ProxyRun::Done(b, _)) => assert_eq!(a, b, "not sticky"),
        _ => assert_eq!(run, again, "not sticky"),
    }
    assert_eq!(parser.held_bytes(), 0, "a finished parser holds bytes");
    run
}

/// The PROXY header parser, on a [`plan`] of any bytes:
/// * **the cutting changes nothing**: whole, cut where the data says, and a byte at a time, the
///   outcome is the same, and so is the number of bytes the header took in all;
/// * **bounded**: it never holds more than 107 bytes of a v1 line or 232 of a v2 header
///   ([`drive_proxy`]); it never waits past the longest header (`NeedMore` only for input
///   shorter than that);
/// * **exactly the header**: a v1 header is a line that starts `PROXY ` and ends at its first
///   CRLF, at most 107 bytes; a v2 header is the signature, then 16 + its length field bytes,
///   at most 4 KiB;
/// * **it reads what a balancer writes**: the header found, written again in v2 (and in v1 where
///   v1 can say it), parses back to the same header, taking exactly the bytes written.
pub fn check_proxy(data: &[u8]) {
    let (cuts, input) = plan(data);
    let whole = drive_proxy(input, &[]);
    assert_eq!(
        drive_proxy(input, &cuts),
        whole,
        "the PROXY header depends on how the input was cut"
    );
    let every_byte: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        drive_proxy(input, &every_byte),
        whole,
        "the PROXY header differs when the input comes a byte at a time"
    );
    match whole {
        ProxyRun::NeedMore => {
            let longest = if input.first() == Some(&b'P') {
                proxy::V1_MAX_BYTES
            } else {
                proxy::V2_MAX_BYTES
            };
            assert!(
                input.len() < longest,
                "waits for more past the longest header"
            );
        }
        ProxyRun::Invalid(_) => {}
        ProxyRun::Done(header, consumed) => {
            let bytes = &input[..consumed];
            if bytes.starts_with(b"PROXY ") {
                assert!(consumed <= proxy::V1_MAX_BYTES, "a v1 line over 107 bytes");
                let line_end = bytes.windows(2).position(|w| w == b"\r\n");
                assert_eq!(line_end, Some(consumed - 2), "v1 ends at its first CRLF");
            } else {
                assert!(bytes.starts_with(&proxy::V2_SIGNATURE), "neither v1 nor v2");
                let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
                assert_eq!(
                    consumed,
                    proxy::V2_FIXED_BYTES + length,
                    "v2 took the wrong bytes"
                );
                assert!(consumed <= proxy::V2_MAX_BYTES, "a v2 header over 4 KiB");
            }
            let written = [header.to_v1(), header.to_v2()];
            assert!(
                written[1].is_some(),
                "every header read can be written in v2"
            );
            for bytes in written.into_iter().flatten() {
                assert_eq!(
                    drive_proxy(&bytes, &[]),
                    ProxyRun::Done(header.clone(), bytes.len()),
                    "a header written again reads differently"
                );
            }
        }
    }
}
