//! The properties every protocol must keep for *any* input, as functions that panic when one is
//! broken. The `cargo fuzz` targets in `fuzz/` call them with the fuzzer's bytes, and
//! `tests/fuzz_corpus.rs` replays the saved corpus through them on every `cargo test`, so a
//! finding stays fixed without anyone running the fuzzer.
//!
//! The fuzzer's bytes are read as a plan: the first byte says how many cut points follow (each a
//! byte, scaled), the rest is the input the protocol receives, cut at those points.

use std::time::Instant;

use super::{Arrival, Flow, Limits, ProtocolKind, Session, LINE_TOO_LONG_REPLY};
use crate::clock::{Now, CTIME_LEN};
use crate::service::ServiceSpec;

/// `[` + ctime + `] `: what each timestamp reply adds to its message.
const STAMP_LEN: usize = CTIME_LEN + 3;

/// Splits fuzzer bytes into sorted cut offsets and the input they cut.
pub fn plan(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 16).min(rest.len());
    let (cut_bytes, input) = rest.split_at(count);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&b| usize::from(b) * input.len() / 255)
        .collect();
    cuts.sort_unstable();
    (cuts, input)
}

/// Feeds `input` to a fresh session, cut at `cuts`, each piece with `arrival`, then ends the
/// stream. Returns the output and whether the session closed early.
pub fn run(
    kind: ProtocolKind,
    limits: Limits,
    input: &[u8],
    cuts: &[usize],
    arrival: Arrival,
) -> (Vec<u8>, Flow) {
    let now = Now::with_ctime(Instant::now(), "Wed Sep  9 16:42:46 2026");
    let mut session = Session::new(kind, limits).expect("a byte-stream protocol");
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        if session.on_input(&input[start..cut], arrival, &now, &mut out) == Flow::Close {
            return (out, Flow::Close);
        }
        start = cut;
    }
    session.on_end(&now, &mut out);
    (out, Flow::Continue)
}

/// echo: the output is the input, however cut.
pub fn check_echo(data: &[u8]) {
    let (cuts, input) = plan(data);
    let (out, flow) = run(
        ProtocolKind::Echo,
        Limits::default(),
        input,
        &cuts,
        Arrival::Drained,
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(out, input);
}

/// upper: however cut, the output is the whole input's conversion (valid UTF-8 upper-cased,
/// everything else unchanged), and no more than three times as long.
pub fn check_upper(data: &[u8]) {
    let (cuts, input) = plan(data);
    let (out, flow) = run(
        ProtocolKind::Upper,
        Limits::default(),
        input,
        &cuts,
        Arrival::Partial,
    );
    assert_eq!(flow, Flow::Continue);
    let mut expected = Vec::new();
    for chunk in input.utf8_chunks() {
        expected.extend_from_slice(chunk.valid().to_uppercase().as_bytes());
        expected.extend_from_slice(chunk.invalid());
    }
    assert!(
        out == expected,
        "upper output depends on how the input was cut"
    );
    assert!(out.len() <= 3 * input.len(), "upper output out of bounds");
}

/// timestamp, with a small `--max-line` taken from the data:
/// * without pauses, cutting never changes the output;
/// * with a pause after every piece, the output is stamped pieces whose payloads join into the
///   input (up to an `error line too long` that ends it), each piece adding only its stamp;
/// * held bytes never exceed the limit (checked through the output bound).
pub fn check_timestamp(data: &[u8]) {
    let Some((&limit, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_line: 1 + usize::from(limit),
    };
    let (cuts, input) = plan(data);
    let whole = run(
        ProtocolKind::Timestamp,
        limits,
        input,
        &[],
        Arrival::Partial,
    );
    let cut = run(
        ProtocolKind::Timestamp,
        limits,
        input,
        &cuts,
        Arrival::Partial,
    );
    assert!(
        whole == cut,
        "timestamp output depends on how the input was cut"
    );

    let (out, flow) = run(
        ProtocolKind::Timestamp,
        limits,
        input,
        &cuts,
        Arrival::Drained,
    );
    let body = match flow {
        Flow::Close => {
            assert!(
                out.ends_with(LINE_TOO_LONG_REPLY),
                "closed without the error line"
            );
            &out[..out.len() - LINE_TOO_LONG_REPLY.len()]
        }
        Flow::Continue => &out[..],
    };
    let mut payload = Vec::new();
    let mut pieces = 0;
    let mut rest = body;
    while !rest.is_empty() {
        assert!(
            rest.len() >= STAMP_LEN && rest[0] == b'[',
            "a reply without its stamp"
        );
        assert_eq!(&rest[CTIME_LEN + 1..STAMP_LEN], b"] ");
        rest = &rest[STAMP_LEN..];
        // A piece runs to its newline, or to the next stamp (a piece ended by a pause).
        let end = match memchr::memchr(b'\n', rest) {
            Some(newline) => newline + 1,
            None => rest.len(),
        };
        let end = find_stamp(&rest[..end]).unwrap_or(end);
        payload.extend_from_slice(&rest[..end]);
        rest = &rest[end..];
        pieces += 1;
    }
    assert!(
        input.starts_with(&payload),
        "the payloads are not the input, in order"
    );
    if flow == Flow::Continue {
        assert_eq!(payload.len(), input.len(), "bytes lost");
    }
    let newlines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(
        pieces <= newlines + cuts.len() + 1,
        "more stamped pieces than lines and pauses"
    );
}

/// Where the next stamp (`[` + the fixed test ctime) starts in `bytes`, if it does.
fn find_stamp(bytes: &[u8]) -> Option<usize> {
    const STAMP: &[u8] = b"[Wed Sep  9 16:42:46 2026] ";
    bytes
        .windows(STAMP.len())
        .position(|window| window == STAMP)
        .filter(|&at| at > 0)
}

/// The service-spec parser: never panics, resolves no names (the stand-in resolver refuses
/// them), and whatever it accepts prints as a spec that parses back to the same thing.
pub fn check_service_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_names = |host: &str, _port: u16| Err(format!("{host:?}: no name lookups here"));
    if let Ok(spec) = ServiceSpec::parse_with(text, &no_names) {
        let printed = spec.to_string();
        let again = ServiceSpec::parse_with(&printed, &no_names)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, spec, "{text:?} does not survive printing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_simple_inputs() {
        for data in [
            &b""[..],
            b"\x03\x10\x80\xf0hello\nworld\xc3\xa9\xe2\x82",
            b"\x00abc",
            b"\x05\x01\x02\x03\x04\x05a\nb\nccccccccccccccccccccc",
        ] {
            check_echo(data);
            check_upper(data);
            check_timestamp(data);
            check_service_spec(data);
        }
        check_service_spec(b"echo@[::1]:7");
        check_service_spec(b"chat@unix:/tmp/x");
    }

    #[test]
    #[should_panic(expected = "no name lookups")]
    fn names_are_never_resolved_under_the_fuzzer() {
        let no_names = |host: &str, _port: u16| Err(format!("{host:?}: no name lookups here"));
        ServiceSpec::parse_with("echo@localhost:1", &no_names).unwrap();
    }
}
