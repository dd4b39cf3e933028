//! The properties every protocol must keep for *any* input, as functions that panic when one is
//! broken. The `cargo fuzz` targets in `fuzz/` call them with the fuzzer's bytes, and
//! `tests/fuzz_corpus.rs` replays the saved corpus through them on every `cargo test`, so a
//! finding stays fixed without anyone running the fuzzer.
//!
//! The fuzzer's bytes are read as a plan: the first byte says how many cut points follow (each a
//! byte, scaled), the rest is the input the protocol receives, cut at those points.

use std::time::Instant;

use super::{Arrival, Flow, Limits, ProtocolKind, Session, LINE_TOO_LONG_REPLY};
use crate::clock::Now;
use crate::service::ServiceSpec;

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
    let mut session = Session::new(kind, limits).expect("a byte-stream protocol");
    feed(&mut session, input, cuts, arrival)
}

/// Feeds `input` to `session` cut at `cuts` (sorted offsets), each piece with `arrival`, at a
/// fixed moment (`Wed Sep  9 16:42:46 2026`), then ends the stream. Returns the output and
/// whether the session closed early.
pub fn feed(
    session: &mut Session,
    input: &[u8],
    cuts: &[usize],
    arrival: Arrival,
) -> (Vec<u8>, Flow) {
    let now = Now::with_ctime(Instant::now(), "Wed Sep  9 16:42:46 2026");
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
/// * with a pause after every piece, the output is exactly what the contract's rules give, built
///   here the plain way: each line stamped, each piece's unterminated tail stamped at its pause,
///   and `error line too long` once the bytes since the last newline pass the limit.
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

    let paused = run(
        ProtocolKind::Timestamp,
        limits,
        input,
        &cuts,
        Arrival::Drained,
    );
    let expected = timestamp_by_the_rules(input, &cuts, limits.max_line);
    assert!(
        paused == expected,
        "timestamp output differs from the contract's rules"
    );
}

/// The timestamp contract, spelled out for inputs that pause after every piece.
fn timestamp_by_the_rules(input: &[u8], cuts: &[usize], max_line: usize) -> (Vec<u8>, Flow) {
    const STAMP: &[u8] = b"[Wed Sep  9 16:42:46 2026] ";
    let mut out = Vec::new();
    let mut since_newline = 0;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        let mut piece = &input[start..cut];
        start = cut;
        while let Some(newline) = piece.iter().position(|&b| b == b'\n') {
            if since_newline + newline > max_line {
                out.extend_from_slice(LINE_TOO_LONG_REPLY);
                return (out, Flow::Close);
            }
            out.extend_from_slice(STAMP);
            out.extend_from_slice(&piece[..=newline]);
            since_newline = 0;
            piece = &piece[newline + 1..];
        }
        if since_newline + piece.len() > max_line {
            out.extend_from_slice(LINE_TOO_LONG_REPLY);
            return (out, Flow::Close);
        }
        since_newline += piece.len();
        if !piece.is_empty() {
            out.extend_from_slice(STAMP);
            out.extend_from_slice(piece);
        }
    }
    (out, Flow::Continue)
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
