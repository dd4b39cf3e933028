//! The upload session's properties, for any header and body, however cut.

use crate::protocol::upload::{BadName, End, Refusal, Step, UploadSession, RESERVED_PREFIX};
use crate::protocol::{Flow, Limits};

use super::plan;

/// One thing an upload session told its driver, as [`drive_upload`] records it: consecutive
/// [`Step::Body`] slices are joined into one `Body`, so that transcripts of differently cut
/// inputs compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UploadEvent {
    /// [`Step::Begin`].
    Begin {
        /// The cleaned name.
        name: String,
        /// The announced SIZE.
        size: u64,
    },
    /// Every body byte of one upload (all its [`Step::Body`] slices, joined).
    Body(Vec<u8>),
    /// [`Step::BodyDone`].
    BodyDone {
        /// The body's length.
        size: u64,
        /// Its CRC-32.
        crc32: u32,
    },
    /// [`Step::Refused`].
    Refused(Refusal),
    /// The driver reported a storage failure for the upload just completed.
    StorageFailed,
    /// [`UploadSession::on_end`]'s answer.
    End(End),
}

/// What a driven upload session did: its events and every byte it replied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UploadTranscript {
    /// The steps, in order.
    pub events: Vec<UploadEvent>,
    /// The replies, in order.
    pub out: Vec<u8>,
}

impl UploadTranscript {
    fn push(&mut self, event: UploadEvent) {
        match (self.events.last_mut(), event) {
            (Some(UploadEvent::Body(body)), UploadEvent::Body(more)) => body.extend(more),
            (_, event) => self.events.push(event),
        }
    }
}

/// Drives an upload session the way a driver must: `input` cut at `cuts` (sorted offsets),
/// each piece run down to [`Step::NeedInput`]; every completed body stored at once under the
/// name it began with, except upload number `fail_at` (counting from 0), whose storage fails;
/// then the end of stream. Checks on the way that held header bytes never pass `max_line`,
/// that each body is exactly SIZE bytes with the CRC-32 reported (computed here bit by bit),
/// that a completed body holds back the next input until its outcome is reported, and that a
/// refused or failed session stays closed.
pub(crate) fn drive_upload(
    limits: Limits,
    input: &[u8],
    cuts: &[usize],
    fail_at: Option<usize>,
) -> UploadTranscript {
    let mut session = UploadSession::new(limits);
    let mut t = UploadTranscript::default();
    let mut current: Option<(String, u64)> = None;
    let mut body = Vec::new();
    let mut uploads = 0;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        let mut rest = &input[start..cut];
        start = cut;
        loop {
            let before = rest;
            let step = session.on_input(&mut rest, &mut t.out);
            assert!(
                session.held_bytes() <= limits.max_line,
                "an upload header holds more than max_line"
            );
            let consumed = before.len() - rest.len();
            match step {
                Step::NeedInput => {
                    assert!(rest.is_empty(), "NeedInput with input left");
                    break;
                }
                Step::Begin { name, size } => {
                    assert!(t.out.ends_with(b"ok\n"), "Begin without `ok`");
                    assert!(consumed > 0 && current.is_none());
                    current = Some((name.clone(), size));
                    body.clear();
                    t.push(UploadEvent::Begin { name, size });
                }
                Step::Body(bytes) => {
                    assert!(!bytes.is_empty(), "an empty Body step");
                    assert!(
                        bytes.as_ptr() == before.as_ptr() && bytes.len() == consumed,
                        "Body is not the consumed prefix of the input"
                    );
                    body.extend_from_slice(bytes);
                    t.push(UploadEvent::Body(bytes.to_vec()));
                }
                Step::BodyDone { size, crc32 } => {
                    assert_eq!(consumed, 0, "BodyDone consumed input");
                    // Until the outcome is reported, nothing more is taken.
                    let out_len = t.out.len();
                    assert_eq!(session.on_input(&mut rest, &mut t.out), Step::Storing);
                    assert!(rest.len() == before.len() && t.out.len() == out_len);
                    let (name, _) = current.take().expect("BodyDone without Begin");
                    check_body(&body, size, crc32, &t);
                    t.push(UploadEvent::BodyDone { size, crc32 });
                    if !answer(&mut session, &name, fail_at == Some(uploads), &mut t) {
                        return t;
                    }
                    uploads += 1;
                }
                Step::Refused(refusal) => {
                    assert!(current.is_none(), "refused mid-body");
                    assert!(t.out.ends_with(refusal.reply()));
                    t.push(UploadEvent::Refused(refusal));
                    assert_closed(&mut session, &mut t);
                    return t;
                }
                Step::Storing | Step::Admitting | Step::Closed => panic!("unexpected {step:?}"),
            }
        }
    }
    let end = session.on_end(&mut t.out);
    match end {
        End::Idle | End::PartialHeader | End::Closed => assert!(current.is_none()),
        End::CutShort { received, size } => {
            let (_, begun) = current.expect("cut short without Begin");
            assert!(received == body.len() as u64 && size == begun && received < size);
        }
        End::Storing { .. } => panic!("the body was complete but BodyDone never came"),
    }
    t.push(UploadEvent::End(end));
    t
}

/// The body reported since `Begin` is exactly SIZE bytes, and its CRC-32 is the one reported.
fn check_body(body: &[u8], size: u64, crc32: u32, t: &UploadTranscript) {
    let begun = t.events.iter().rev().find_map(|e| match e {
        UploadEvent::Begin { size, .. } => Some(*size),
        _ => None,
    });
    assert_eq!(begun, Some(size), "BodyDone's size is not the header's");
    assert_eq!(body.len() as u64, size, "body bytes reported != SIZE");
    assert_eq!(crc32, crc32_bitwise(body), "wrong CRC-32");
}

/// Reports the storage outcome of a completed body: stored under `name`, or failed. Returns
/// whether the conversation goes on.
fn answer(session: &mut UploadSession, name: &str, fail: bool, t: &mut UploadTranscript) -> bool {
    if fail {
        session.storage_failed("disk full", &mut t.out);
        assert!(t.out.ends_with(b"error storage failed: disk full\n"));
        t.push(UploadEvent::StorageFailed);
        assert_closed(session, t);
        false
    } else {
        session.stored(name, &mut t.out) == Flow::Continue
    }
}

/// A session that has refused or failed takes nothing more and says nothing more.
fn assert_closed(session: &mut UploadSession, t: &mut UploadTranscript) {
    let out_len = t.out.len();
    let mut more: &[u8] = b"1 a\nx";
    assert_eq!(session.on_input(&mut more, &mut t.out), Step::Closed);
    assert_eq!(session.on_end(&mut t.out), End::Closed);
    assert_eq!(t.out.len(), out_len, "a closed session replied");
}

/// The upload contract spelled out the plain way, over the whole input at once: what
/// [`drive_upload`] must record for any cutting of it.
pub(crate) fn upload_by_the_rules(
    input: &[u8],
    limits: Limits,
    fail_at: Option<usize>,
) -> UploadTranscript {
    let mut t = UploadTranscript::default();
    let refuse = |mut t: UploadTranscript, refusal: Refusal| {
        t.out.extend_from_slice(refusal.reply());
        t.push(UploadEvent::Refused(refusal));
        t
    };
    let mut rest = input;
    let mut uploads = 0;
    loop {
        // A header line.
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > limits.max_line {
                return refuse(t, Refusal::LineTooLong);
            }
            let end = if rest.is_empty() {
                End::Idle
            } else {
                t.out.extend_from_slice(b"error bad header\n");
                End::PartialHeader
            };
            t.push(UploadEvent::End(end));
            return t;
        };
        if newline > limits.max_line {
            return refuse(t, Refusal::LineTooLong);
        }
        let line = &rest[..newline];
        rest = &rest[newline + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, size) = match header_by_the_rules(line, limits.max_upload) {
            Ok(header) => header,
            Err(refusal) => return refuse(t, refusal),
        };
        t.out.extend_from_slice(b"ok\n");
        t.push(UploadEvent::Begin {
            name: name.clone(),
            size,
        });
        // Its body.
        let available = rest.len() as u64;
        if available < size {
            if !rest.is_empty() {
                t.push(UploadEvent::Body(rest.to_vec()));
            }
            t.push(UploadEvent::End(End::CutShort {
                received: available,
                size,
            }));
            return t;
        }
        let (body, after) = rest.split_at(size as usize);
        rest = after;
        if !body.is_empty() {
            t.push(UploadEvent::Body(body.to_vec()));
        }
        let crc32 = crc32_bitwise(body);
        t.push(UploadEvent::BodyDone { size, crc32 });
        if fail_at == Some(uploads) {
            t.out
                .extend_from_slice(b"error storage failed: disk full\n");
            t.push(UploadEvent::StorageFailed);
            return t;
        }
        t.out
            .extend_from_slice(format!("saved {name} {size} {crc32:08x}\n").as_bytes());
        uploads += 1;
    }
}

/// `SIZE NAME` (a non-blank line without `\r\n`) checked the way the contract words it: SIZE
/// digits only, within `max_upload`; NAME's base name not empty, `.`, `..`, over 255 bytes,
/// invalid UTF-8, with control characters, or reserved.
fn header_by_the_rules(line: &[u8], max_upload: u64) -> Result<(String, u64), Refusal> {
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Refusal::BadHeader)?;
    let (digits, name) = (&line[..space], &line[space + 1..]);
    if digits.is_empty() || digits.iter().any(|b| !b.is_ascii_digit()) {
        return Err(Refusal::BadHeader);
    }
    let first = digits
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(digits.len());
    let significant = std::str::from_utf8(&digits[first..]).expect("ASCII digits");
    let size: u128 = match significant.len() {
        0 => 0,
        1..=20 => significant.parse().expect("at most 20 digits"),
        _ => u128::MAX,
    };
    if size > u128::from(max_upload) {
        return Err(Refusal::TooLarge);
    }
    let base = name
        .split(|&b| b == b'/' || b == b'\\')
        .next_back()
        .unwrap_or_default();
    let bad = |why| Err(Refusal::BadName(why));
    match base {
        b"" => return bad(BadName::Empty),
        b"." | b".." => return bad(BadName::Dots),
        _ if base.len() > 255 => return bad(BadName::TooLong),
        _ => {}
    }
    let Ok(base) = String::from_utf8(base.to_vec()) else {
        return bad(BadName::NotUtf8);
    };
    if base.chars().any(|c| {
        let c = u32::from(c);
        c < 0x20 || (0x7f..=0x9f).contains(&c)
    }) {
        return bad(BadName::Control);
    }
    if base.starts_with(RESERVED_PREFIX) {
        return bad(BadName::Reserved);
    }
    Ok((base, size as u64))
}

/// CRC-32 (IEEE 802.3, reflected, as `zlib.crc32`), one bit at a time: slow, but plainly the
/// definition, to check the fast one against.
fn crc32_bitwise(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// upload, with limits taken from the data (the first byte gives `--max-line`, 1 to 256; the
/// second `--max-upload`, 0 to 254 or unlimited; the third which upload's storage fails, if
/// any), then a [`plan`] of the stream:
/// * held header bytes never pass `--max-line`; every body is exactly SIZE bytes, with the
///   right CRC-32 ([`drive_upload`]'s checks);
/// * cutting never changes the events or the replies, and both are what the contract's rules
///   give for the whole stream;
/// * the replies are `ok` and `saved ...` lines, and at most one `error ...` line, the last.
pub fn check_upload(data: &[u8]) {
    let [line, upload, fail, data @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_line: 1 + usize::from(*line),
        max_upload: if *upload == 255 {
            u64::MAX
        } else {
            u64::from(*upload)
        },
    };
    let fail_at = (fail & 7 != 7).then_some(usize::from(fail & 7));
    let (cuts, input) = plan(data);
    let whole = drive_upload(limits, input, &[], fail_at);
    let cut = drive_upload(limits, input, &cuts, fail_at);
    assert!(whole == cut, "upload steps depend on how the input was cut");
    let expected = upload_by_the_rules(input, limits, fail_at);
    assert!(
        whole == expected,
        "upload steps differ from the contract's rules"
    );

    let lines: Vec<&[u8]> = whole.out.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(line.ends_with(b"\n"), "a reply is not a whole line");
        let is_error = line.starts_with(b"error ");
        assert!(
            *line == b"ok\n" || line.starts_with(b"saved ") || (is_error && i + 1 == lines.len()),
            "unexpected reply {line:?}"
        );
    }
    let ended_in_error = matches!(
        whole.events.last(),
        Some(
            UploadEvent::Refused(_)
                | UploadEvent::StorageFailed
                | UploadEvent::End(End::PartialHeader)
        )
    );
    assert_eq!(
        ended_in_error,
        lines.last().is_some_and(|l| l.starts_with(b"error ")),
        "a refusal must end with exactly one error line"
    );
}
