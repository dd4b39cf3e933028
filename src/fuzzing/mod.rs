//! The properties every protocol must keep for *any* input, as functions that panic when one is
//! broken. The `cargo fuzz` targets in `fuzz/` call them with the fuzzer's bytes, and
//! `tests/fuzz_corpus.rs` replays the saved corpus through them on every `cargo test`, so a
//! finding stays fixed without anyone running the fuzzer.
//!
//! Scaffolding, not interface: the module is compiled only for the crate's own tests and under
//! the `fuzzing` feature (which `fuzz/` enables, and `cargo test` through the crate's
//! dev-dependency on itself), and hidden from the documentation. It sits above
//! [`protocol`](crate::protocol) and [`service`](crate::service) rather than inside `protocol`:
//! it is not a protocol but the checks of several, and of the service-spec parser; and no library
//! module imports it (`tests/architecture.rs` checks both).
//!
//! The fuzzer's bytes are read as a plan: the first byte says how many cut points follow (each a
//! byte, scaled), the rest is the input the protocol receives, cut at those points.

use std::time::Instant;

use crate::clock::Now;
use crate::protocol::{Arrival, Flow, Limits, Session, LINE_TOO_LONG_REPLY};
use crate::service::{ProtocolKind, ServiceSpec};

mod proxy;
mod room;
mod upload;

pub use self::proxy::check_proxy;
pub use self::room::check_room;
pub use self::upload::check_upload;
#[cfg(test)]
pub(crate) use self::upload::{drive_upload, upload_by_the_rules, UploadEvent};

/// Splits fuzzer bytes into sorted cut offsets and the input they cut.
pub(crate) fn plan(data: &[u8]) -> (Vec<usize>, &[u8]) {
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
pub(crate) fn run(
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
pub(crate) fn feed(
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
        ..Limits::default()
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
                return error_line(out);
            }
            out.extend_from_slice(STAMP);
            out.extend_from_slice(&piece[..=newline]);
            since_newline = 0;
            piece = &piece[newline + 1..];
        }
        if since_newline + piece.len() > max_line {
            return error_line(out);
        }
        since_newline += piece.len();
        if !piece.is_empty() {
            out.extend_from_slice(STAMP);
            out.extend_from_slice(piece);
        }
    }
    (out, Flow::Continue)
}

/// `error line too long`, starting a line: after a newline if the last byte sent was not one.
fn error_line(mut out: Vec<u8>) -> (Vec<u8>, Flow) {
    if out.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
    out.extend_from_slice(LINE_TOO_LONG_REPLY);
    (out, Flow::Close)
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
            check_room(data);
            check_upload(data);
            check_proxy(data);
        }
        for header in [
            &b"\x00PROXY TCP4 203.0.113.7 192.0.2.1 56324 7000\r\nhello\n"[..],
            b"\x02\x10\x80PROXY TCP6 ::1 ::2 1 2\r\n",
            b"\x00PROXY UNKNOWN\r\n",
            b"\x00\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x50\x01\xbbGET",
            b"\x01\x20\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
        ] {
            check_proxy(header);
        }
        for data in [
            &b"\x40\x64\x07\x00"[..],
            b"\x40\x64\x07\x03\x10\x20\xc85 a.txt\nhello0 b\r\n\n3 ../c\nxy",
            b"\x04\x64\x07\x00123456 a\n",
            b"\x40\x05\x00\x00\x01 a\nx2 b\nyz",
            b"\x40\xff\x07\x0099999999999999999999 a\n",
        ] {
            check_upload(data);
        }
        check_service_spec(b"echo@[::1]:7");
        check_service_spec(b"chat@unix:/tmp/x");
    }

    /// A [`check_room`] read: member `k` sends `text`, cut at `cuts` (bytes of a [`plan`]).
    fn read(k: u8, cuts: &[u8], text: &[u8]) -> Vec<u8> {
        let mut op = vec![
            k << 3,
            (1 + cuts.len() + text.len()) as u8,
            cuts.len() as u8,
        ];
        op.extend_from_slice(cuts);
        op.extend_from_slice(text);
        op
    }

    #[test]
    fn room_scripts_of_every_kind_pass() {
        let (end, drop, join) = (
            |k: u8| vec![k << 3 | 5],
            |k: u8| vec![k << 3 | 6],
            |k: u8, n: u8| vec![k << 3 | 7, n],
        );
        let scripts: Vec<Vec<Vec<u8>>> = vec![
            // --max-line 64, three members: chat, commands, renames, a taken name, quit.
            vec![
                vec![63, 1],
                read(0, &[], b"hello\n/who\n"),
                read(1, &[2, 90, 200], b"/nick  alice \n/NICK a\nhi\r\n"),
                read(2, &[], b"/nick alice\n/nick *x\n/me waves\n:q\nignored\n"),
                end(1),
                read(0, &[], b"alone?\n/nick z\n/who\n"),
            ],
            // --max-line 4: a line at the limit, then one byte more, in pieces.
            vec![
                vec![3, 0],
                read(0, &[], b"abcd\nab\r\n"),
                read(1, &[], b"ab"),
                read(1, &[], b"c"),
                read(1, &[], b"de\n"),
                read(0, &[], b"\x1b[2J\x7f\0\n"),
            ],
            // Five members, a drop holding half a line, joins again under taken names.
            vec![
                vec![63, 3],
                read(3, &[], b"half a li"),
                drop(3),
                read(3, &[], b"ne\n"),
                join(3, 0),
                join(4, 5),
                join(2, 2),
                read(4, &[], b"two\nlast"),
                end(4),
                end(4),
            ],
        ];
        for script in scripts {
            check_room(&script.concat());
        }
        check_room(b"");
        check_room(b"\x07");
    }

    #[test]
    #[should_panic(expected = "no name lookups")]
    fn names_are_never_resolved_under_the_fuzzer() {
        let no_names = |host: &str, _port: u16| Err(format!("{host:?}: no name lookups here"));
        ServiceSpec::parse_with("echo@localhost:1", &no_names).unwrap();
    }
}
