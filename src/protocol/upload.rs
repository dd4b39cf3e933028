//! `upload`: the seeds' file transfer with a size header, as a sans-I/O state machine.
//!
//! Seed 001's client sends a picture's size, waits for an answer, then streams the bytes, which
//! its server writes into `new.jpg`. Here the client sends `SIZE NAME\n`; the server answers `ok\n` (or `error REASON\n` and
//! closes); the client sends exactly SIZE bytes; the server answers
//! `saved NAME SIZE CRC32HEX\n` once the file is durably stored. Then the connection takes
//! another header, or the client's close.
//!
//! ## Why the file is not in here
//!
//! Storing a file is slow and can fail in ways a protocol has no business knowing about: `fsync`
//! may take hundreds of milliseconds on a busy disk, and the reactor must keep serving everyone
//! else meanwhile, so it hands the file work to I/O threads; the blocking models just do it in
//! place. What the *bytes* mean — where the header ends, which bytes are body, when the body is
//! complete, what its CRC-32 is, which name is acceptable — is the same for all of them, and is
//! what this module decides. The session never sees a socket, a file or a clock: it reads input
//! and tells the driver, one [`Step`] at a time, what to do with the file it never sees.
//!
//! ## Driving it: one step at a time
//!
//! One read can hold a header, a whole body and the start of the next header. The driver cannot
//! be handed all of that at once: it must create the temporary file ([`Step::Begin`]) before it
//! can write body bytes to it, and the next header must wait until the previous file is stored
//! (its `saved` line comes first, and a failed store ends the connection). So
//! [`UploadSession::on_input`] takes the input as a `&mut &[u8]`, does *one* thing, advances the
//! slice past the bytes it used, and returns what it did. The driver acts on the step, then calls
//! again with what is left — even when nothing is left, because finishing a body is a step of its
//! own — until [`Step::NeedInput`] (read more) or a step that ends the conversation.
//!
//! Body bytes come back as [`Step::Body`], a sub-slice of the input: the session copies nothing
//! and allocates nothing per chunk. Once the body is complete ([`Step::BodyDone`]) the session
//! takes no more input ([`Step::Storing`], nothing consumed) until the driver reports the outcome
//! with [`UploadSession::stored`] or [`UploadSession::storage_failed`]; the bytes after the body
//! stay with the driver meanwhile (the reactor stops reading that connection: back-pressure).
//! There is no [`Arrival`](super::Arrival) here: what an upload's bytes mean never depends on
//! when the client pauses.
//!
//! ```
//! use oneloop::protocol::upload::{Step, UploadSession};
//! use oneloop::protocol::Limits;
//!
//! let mut session = UploadSession::new(Limits::default());
//! let mut out = Vec::new(); // replies for the peer
//! let mut file = Vec::new(); // stands in for the temporary file
//! // One read: a header, its whole body, and the start of the next header.
//! let mut input: &[u8] = b"5 ../notes.txt\nhello3 b";
//! loop {
//!     match session.on_input(&mut input, &mut out) {
//!         Step::NeedInput => break, // read more
//!         Step::Begin { name, size } => assert_eq!((name.as_str(), size), ("notes.txt", 5)),
//!         Step::Body(bytes) => file.extend_from_slice(bytes),
//!         Step::BodyDone { .. } => {
//!             // fsync, rename to a free name, fsync the directory; then:
//!             let _ = session.stored("notes.txt", &mut out);
//!         }
//!         Step::Storing => unreachable!("answered at BodyDone"),
//!         Step::Admitting => unreachable!("only with UploadSession::with_admission"),
//!         Step::Refused(_) | Step::Closed => break, // flush `out`, then close
//!     }
//! }
//! assert_eq!(file, b"hello");
//! assert_eq!(out, b"ok\nsaved notes.txt 5 3610a686\n");
//! assert_eq!(session.held_bytes(), 3); // `3 b`, waiting for its newline
//! ```
//!
//! ## Names
//!
//! [`clean_name`] turns what the client sent into a single path component: everything up to the
//! last `/` or `\` is removed (`../../etc/passwd` is `passwd`, `C:\x\y.txt` is `y.txt`), then
//! empty, `.`, `..`, control characters, invalid UTF-8, more than 255 bytes, and the temporary
//! files' prefix are refused (`error bad name`). [`candidate_name`] is the rule the storage layer
//! follows when the name is taken: `photo.jpg`, `photo-2.jpg`, `photo-3.jpg`, ...
//!
//! ## Choices where the contract is silent
//!
//! * **SIZE** is one or more ASCII digits; leading zeros are fine (`007` is 7, as Python's
//!   `int()` reads it). No sign, no spaces, no `0x`: `-1`, `+5`, ` 5` are `error bad header`.
//!   A number too big for 64 bits is simply bigger than `--max-upload`: `error too large`.
//! * **The separator** is the first space; NAME is the rest of the line byte for byte, spaces
//!   included (` a` from `5  a` is a name that starts with a space): a file name may contain
//!   spaces anywhere, and trimming would change which file is meant. No space at all is
//!   `error bad header`; nothing after it is `error bad name` (an empty name).
//! * **Line ends**: one trailing `\r` is dropped before parsing, as chat does, so CRLF clients
//!   (`nc -C`, telnet) work; `--max-line` still counts it (every byte since the last newline).
//! * **Blank lines** (`\n` or `\r\n`) where a header is expected are skipped, as Redis skips
//!   empty inline commands: `(echo 5 a; echo hello) | nc` sends a newline after its 5-byte
//!   body, and that stray newline should not cost the upload its connection.
//! * **Which error first**: the line's length (`error line too long`, as soon as the held bytes
//!   would pass `--max-line`, before its newline), then its shape (`error bad header`), then SIZE
//!   (`error too large`), then NAME (`error bad name`), reading left to right. Nothing is
//!   refused before its newline except a line that is too long.
//! * **Names**: invalid UTF-8 is refused, not stored as raw bytes: the name goes back in the
//!   `saved` line and into logs, and every client this server has (the seeds' Python client,
//!   `oneloop send`) sends UTF-8. *Control characters* are Unicode's (`char::is_control`): C0,
//!   DEL and also C1 (U+0080–U+009F), since U+009B is a terminal escape (CSI) in some terminals
//!   and the name is echoed to the client and shown by `ls`. Invalid UTF-8 or controls in the
//!   removed path parts do not matter: only the base name is kept. Names starting with
//!   `.oneloop-upload` (the temporaries' prefix without its dash) are refused, so no suffix
//!   ([`candidate_name`] adds `-N`) can turn a stored name into a temporary's.
//! * **End of stream** ([`UploadSession::on_end`]): between uploads, a clean close. Mid-header:
//!   `error bad header` (a header ends with a newline; the client may still be reading and learn
//!   why nothing happened). Mid-body: cut short, no reply (the contract names none, and the
//!   client knows it stopped early): the driver removes the temporary file. After the whole body:
//!   not cut short — the file is stored and answered, then the connection closes (a client may
//!   send everything and half-close, like `nc -N`).
//! * **Storage failure reasons** are put on one line: control characters in the driver's reason
//!   become spaces, so `error storage failed: REASON` is always exactly one line.
//!
//! ## Memory and time
//!
//! A session holds the header line only while it is split across reads (bounded by
//! `--max-line`, given back once the line is complete; a header read whole is parsed in place),
//! and a running CRC. Body bytes are never held. Held header bytes contain no newline, so only
//! new bytes are scanned (with `memchr`): a long header costs linear time, not quadratic. The
//! CRC is `crc32fast`'s, which uses the CPU's carry-less multiply instructions where it can.

use std::fmt;
use std::io::Write as _;

use super::{Flow, Limits, LINE_TOO_LONG_REPLY};

/// The prefix of the temporary files the storage layer writes bodies to (`.oneloop-upload-*`):
/// hidden, and never a stored name.
pub const TEMP_PREFIX: &str = ".oneloop-upload-";

/// Names starting with this are refused: [`TEMP_PREFIX`] without its dash, so that a suffix
/// added by [`candidate_name`] (`.oneloop-upload` → `.oneloop-upload-2`) cannot produce a
/// temporary's name either.
pub const RESERVED_PREFIX: &str = ".oneloop-upload";

/// The longest stored name, in bytes: `NAME_MAX` on Linux and most file systems.
pub const MAX_NAME_BYTES: usize = 255;

/// The reply to an accepted header.
pub const OK_REPLY: &[u8] = b"ok\n";

/// The reply, instead of `ok`, to a header whose SIZE would leave less than `--min-free` on the
/// upload directory's file system.
pub const NO_SPACE_REPLY: &[u8] = b"error no space\n";

/// The reply to an upload cut short by a graceful shutdown (or a header it interrupted).
pub const SHUTTING_DOWN_REPLY: &[u8] = b"error shutting down\n";

/// What [`UploadSession::on_input`] did, in the order the driver must act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Step<'a> {
    /// Every input byte was used, and more are needed (mid-header, mid-body, or between
    /// uploads): read more.
    NeedInput,
    /// A header was accepted and `ok\n` appended to the output: create the temporary file. The
    /// input now starts with body bytes (if any arrived). Followed by SIZE bytes of
    /// [`Body`](Step::Body), then [`BodyDone`](Step::BodyDone).
    Begin {
        /// The cleaned name the client asked for ([`clean_name`]): one path component. The
        /// stored name may differ if it is taken ([`candidate_name`]).
        name: String,
        /// The number of body bytes that will follow.
        size: u64,
    },
    /// Body bytes to append to the file, in order: a non-empty prefix of the input given, which
    /// the input has been advanced past.
    Body(&'a [u8]),
    /// All SIZE body bytes have been reported: make the file durable and give it its final name,
    /// then call [`UploadSession::stored`] or [`UploadSession::storage_failed`]. Nothing was
    /// consumed, and nothing will be until then.
    BodyDone {
        /// The body's length (the header's SIZE).
        size: u64,
        /// The body's CRC-32 (IEEE, as `zlib.crc32`).
        crc32: u32,
    },
    /// The body is complete but its storage outcome has not been reported: no input is consumed
    /// until it is. Stop reading and keep what is left of the input.
    Storing,
    /// A session made [`with_admission`](UploadSession::with_admission) has reported
    /// [`Begin`](Step::Begin) and waits for the driver's word on room for it
    /// ([`UploadSession::admit`] or [`UploadSession::refuse_no_space`]): no input is consumed
    /// until then. Stop reading and keep what is left of the input.
    Admitting,
    /// The input broke a rule: its error line has been appended to the output. Flush it, then
    /// close (the rest of the input has been discarded). No file was begun for this header.
    Refused(Refusal),
    /// The conversation is over (refused, storage failed, or ended): input is discarded.
    Closed,
}

/// Why a header was refused. Each has its own one-line reply ([`Refusal::reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not `DIGITS SPACE NAME`: `error bad header`.
    BadHeader,
    /// SIZE is over `--max-upload`: `error too large`.
    TooLarge,
    /// NAME is not acceptable once cleaned ([`clean_name`]): `error bad name`.
    BadName(BadName),
    /// The header line passed `--max-line`: `error line too long`.
    LineTooLong,
}

impl Refusal {
    /// The line sent to the client before closing.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::BadHeader => b"error bad header\n",
            Refusal::TooLarge => b"error too large\n",
            Refusal::BadName(_) => b"error bad name\n",
            Refusal::LineTooLong => LINE_TOO_LONG_REPLY,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadHeader => f.write_str("bad header"),
            Refusal::TooLarge => f.write_str("too large"),
            Refusal::BadName(why) => write!(f, "bad name ({why})"),
            Refusal::LineTooLong => f.write_str("line too long"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Why [`clean_name`] refused a name. The client sees only `error bad name`; the reason is for
/// the server's logs and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadName {
    /// Nothing is left after removing the path parts.
    Empty,
    /// `.` or `..`.
    Dots,
    /// More than [`MAX_NAME_BYTES`] bytes.
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
    /// A control character (C0, DEL or C1).
    Control,
    /// Starts with [`RESERVED_PREFIX`], the temporary files' prefix.
    Reserved,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadName::Empty => "empty",
            BadName::Dots => "`.` or `..`",
            BadName::TooLong => "over 255 bytes",
            BadName::NotUtf8 => "not UTF-8",
            BadName::Control => "control character",
            BadName::Reserved => "reserved for temporary files",
        })
    }
}

impl std::error::Error for BadName {}

/// What the end of the client's stream means for the upload in progress
/// ([`UploadSession::on_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum End {
    /// Nothing was in progress (no header byte held, no body open): close.
    Idle,
    /// A header had started but not ended: `error bad header` has been appended. Close.
    PartialHeader,
    /// The body was cut short: remove the temporary file, close. No reply.
    CutShort {
        /// Body bytes reported before the end.
        received: u64,
        /// The SIZE the header announced.
        size: u64,
    },
    /// Every body byte had arrived: store the file (if [`Step::BodyDone`] was never acted on,
    /// this is that step), report it with [`UploadSession::stored`] or
    /// [`UploadSession::storage_failed`], flush the reply, then close.
    Storing {
        /// The body's length.
        size: u64,
        /// The body's CRC-32.
        crc32: u32,
    },
    /// The conversation was already over.
    Closed,
}

/// Where a session is in the conversation.
#[derive(Clone, Debug)]
enum State {
    /// Waiting for a header line (part of it may be held in `header`).
    Header,
    /// A header of `size` was accepted; waiting for the driver to [`admit`](UploadSession::admit)
    /// it (`ok`) or refuse it for want of room. Only with
    /// [`with_admission`](UploadSession::with_admission).
    Admitting { size: u64 },
    /// Reading a body: `remaining` of its `size` bytes are still to come. `remaining == 0`
    /// means the next call reports [`Step::BodyDone`].
    Body {
        size: u64,
        remaining: u64,
        crc: crc32fast::Hasher,
    },
    /// The body is complete; waiting for the driver's storage outcome.
    Storing { size: u64, crc32: u32 },
    /// Refused, failed, or ended: nothing more.
    Closed,
}

/// One upload connection's protocol state.
///
/// Holds no file, no socket and no body byte: see the [module docs](self) for how a driver
/// runs it.
#[derive(Clone, Debug)]
pub struct UploadSession {
    state: State,
    /// The start of a header line split across reads. Never holds a newline, never passes
    /// `max_line`; empty and unallocated between headers (a header read whole is parsed in
    /// place, without being copied here).
    header: Vec<u8>,
    /// `--max-line`: the longest header line, not counting its `\n`.
    max_line: usize,
    /// `--max-upload`: the largest SIZE accepted.
    max_upload: u64,
    /// The client's stream has ended ([`on_end`](Self::on_end)): once the body in storage is
    /// answered, the conversation is over.
    input_ended: bool,
    /// `ok` waits for [`admit`](Self::admit) (the driver checks for room first).
    admission: bool,
}

impl UploadSession {
    /// A session waiting for its first header, bounded by `limits.max_line` (the header line)
    /// and `limits.max_upload` (SIZE).
    pub fn new(limits: Limits) -> UploadSession {
        UploadSession {
            state: State::Header,
            header: Vec::new(),
            max_line: limits.max_line,
            max_upload: limits.max_upload,
            input_ended: false,
            admission: false,
        }
    }

    /// Like [`new`](Self::new), but `ok` is not sent with [`Step::Begin`]: the session then
    /// answers [`Step::Admitting`] until the driver has found out whether the upload fits
    /// (`--min-free`, which needs the file system) and called [`admit`](Self::admit) or
    /// [`refuse_no_space`](Self::refuse_no_space). So `error no space` comes *instead of* `ok`.
    pub fn with_admission(limits: Limits) -> UploadSession {
        UploadSession {
            admission: true,
            ..UploadSession::new(limits)
        }
    }

    /// The upload [`Step::Begin`] announced has room: appends `ok`; its body follows. Does
    /// nothing unless the session is [`Step::Admitting`].
    pub fn admit(&mut self, out: &mut Vec<u8>) {
        if let State::Admitting { size } = self.state {
            out.extend_from_slice(OK_REPLY);
            self.state = body(size);
        }
    }

    /// The upload [`Step::Begin`] announced would leave less than `--min-free`: appends
    /// `error no space` and ends the conversation (flush, then close; nothing was written).
    pub fn refuse_no_space(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, State::Admitting { .. }) {
            out.extend_from_slice(NO_SPACE_REPLY);
            self.close();
        }
    }

    /// Takes the next step through `input`, advancing it past the bytes used, and appends any
    /// reply (`ok`, an error line) to `out`.
    ///
    /// Call it again with what is left of `input` — even when that is empty — until it returns
    /// [`Step::NeedInput`] (all used: read more), [`Step::Storing`] (report the storage outcome
    /// first, keeping the rest), or [`Step::Refused`] / [`Step::Closed`] (flush, then close).
    /// However the client's stream is cut into inputs, the steps and replies are the same (body
    /// bytes may come in different slices, but the same bytes in the same order).
    pub fn on_input<'a>(&mut self, input: &mut &'a [u8], out: &mut Vec<u8>) -> Step<'a> {
        match &mut self.state {
            State::Header => self.header_input(input, out),
            State::Body {
                size,
                remaining: 0,
                crc,
            } => {
                let (size, crc32) = (*size, crc.clone().finalize());
                self.state = State::Storing { size, crc32 };
                Step::BodyDone { size, crc32 }
            }
            State::Body { remaining, crc, .. } => {
                let whole: &'a [u8] = input;
                if whole.is_empty() {
                    return Step::NeedInput;
                }
                // `remaining` may not fit a `usize` (a 32-bit target), but then it is larger
                // than any slice.
                let take = usize::try_from(*remaining).map_or(whole.len(), |r| r.min(whole.len()));
                let (body, rest) = whole.split_at(take);
                crc.update(body);
                *remaining -= take as u64;
                *input = rest;
                Step::Body(body)
            }
            State::Storing { .. } => Step::Storing,
            State::Admitting { .. } => Step::Admitting,
            State::Closed => {
                *input = &[];
                Step::Closed
            }
        }
    }

    /// The file from the last [`Step::BodyDone`] is durably stored as `final_name` (the client's
    /// name, or a [`candidate_name`] of it): appends `saved NAME SIZE CRC32HEX\n`. The session
    /// then waits for the next header ([`Flow::Continue`]), or, if the client's stream has
    /// ended, is over ([`Flow::Close`]: flush, then close).
    ///
    /// Called at any other time (a driver bug) it does nothing and returns [`Flow::Close`].
    pub fn stored(&mut self, final_name: &str, out: &mut Vec<u8>) -> Flow {
        let State::Storing { size, crc32 } = self.state else {
            debug_assert!(false, "stored() without a body to store");
            return Flow::Close;
        };
        debug_assert!(
            clean_name(final_name.as_bytes()) == Ok(final_name),
            "{final_name:?} is not a name this protocol could have accepted"
        );
        writeln!(out, "saved {final_name} {size} {crc32:08x}").expect("writing to a Vec");
        if self.input_ended {
            self.state = State::Closed;
            Flow::Close
        } else {
            self.state = State::Header;
            Flow::Continue
        }
    }

    /// Storing failed (the temporary file could not be created, written or synced: disk full,
    /// I/O error), at any point of an upload: appends `error storage failed: REASON\n` and ends
    /// the conversation. The driver removes the temporary file, flushes, and closes. Control
    /// characters in `reason` become spaces, so the reply stays one line. Nothing happens if the
    /// conversation is already over.
    pub fn storage_failed(&mut self, reason: &str, out: &mut Vec<u8>) {
        if matches!(self.state, State::Closed) {
            return;
        }
        out.extend_from_slice(b"error storage failed: ");
        for c in reason.chars() {
            let c = if c.is_control() { ' ' } else { c };
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
        out.push(b'\n');
        self.close();
    }

    /// The client will send nothing more. Says what that means for the upload in progress (and
    /// appends `error bad header` for an unfinished header). Call it once every input has been
    /// run down to [`Step::NeedInput`] or [`Step::Storing`].
    pub fn on_end(&mut self, out: &mut Vec<u8>) -> End {
        self.end(out, false)
    }

    /// Like [`on_end`](Self::on_end), for a graceful shutdown that stops reading the client: what
    /// had arrived has been run through the session, and nothing more will be read. The same
    /// [`End`], but an upload cut short — and a header cut off, or one not yet admitted — is
    /// answered `error shutting down`, so the client knows why (the contract, v3).
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) -> End {
        self.end(out, true)
    }

    fn end(&mut self, out: &mut Vec<u8>, shutdown: bool) -> End {
        self.input_ended = true;
        let cut_short = |out: &mut Vec<u8>| {
            if shutdown {
                out.extend_from_slice(SHUTTING_DOWN_REPLY);
            }
        };
        match &self.state {
            State::Header if self.header.is_empty() => {
                self.close();
                End::Idle
            }
            State::Header if shutdown => {
                out.extend_from_slice(SHUTTING_DOWN_REPLY);
                self.close();
                End::PartialHeader
            }
            State::Header => {
                out.extend_from_slice(Refusal::BadHeader.reply());
                self.close();
                End::PartialHeader
            }
            &State::Admitting { size } => {
                cut_short(out);
                self.close();
                End::CutShort { received: 0, size }
            }
            State::Body {
                size,
                remaining: 0,
                crc,
            } => {
                let (size, crc32) = (*size, crc.clone().finalize());
                self.state = State::Storing { size, crc32 };
                End::Storing { size, crc32 }
            }
            &State::Body {
                size, remaining, ..
            } => {
                cut_short(out);
                self.close();
                End::CutShort {
                    received: size - remaining,
                    size,
                }
            }
            &State::Storing { size, crc32 } => End::Storing { size, crc32 },
            State::Closed => End::Closed,
        }
    }

    /// Bytes of an unfinished header line held between reads: never more than `--max-line`, and
    /// 0 whenever no header is split across reads. Body bytes are never held.
    pub fn held_bytes(&self) -> usize {
        self.header.len()
    }

    /// Whether the session is between uploads with nothing started: waiting for a header of
    /// which no byte has arrived. A graceful shutdown may close such a connection at once.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header.is_empty()
    }

    /// Scans for the end of the header line, holding a split line, and parses it.
    fn header_input<'a>(&mut self, input: &mut &'a [u8], out: &mut Vec<u8>) -> Step<'a> {
        loop {
            let rest: &'a [u8] = input;
            let Some(newline) = memchr::memchr(b'\n', rest) else {
                if self.header.len() + rest.len() > self.max_line {
                    return self.refuse(Refusal::LineTooLong, input, out);
                }
                self.header.extend_from_slice(rest);
                *input = &[];
                return Step::NeedInput;
            };
            if self.header.len() + newline > self.max_line {
                return self.refuse(Refusal::LineTooLong, input, out);
            }
            *input = &rest[newline + 1..];
            let parsed = if self.header.is_empty() {
                parse_header(&rest[..newline], self.max_upload)
            } else {
                self.header.extend_from_slice(&rest[..newline]);
                let parsed = parse_header(&self.header, self.max_upload);
                // Give the buffer back: a session between uploads holds none.
                self.header = Vec::new();
                parsed
            };
            match parsed {
                Ok(None) => continue,
                Ok(Some((name, size))) => {
                    self.state = if self.admission {
                        State::Admitting { size }
                    } else {
                        out.extend_from_slice(OK_REPLY);
                        body(size)
                    };
                    return Step::Begin { name, size };
                }
                Err(refusal) => return self.refuse(refusal, input, out),
            }
        }
    }

    fn refuse<'a>(&mut self, refusal: Refusal, input: &mut &[u8], out: &mut Vec<u8>) -> Step<'a> {
        out.extend_from_slice(refusal.reply());
        *input = &[];
        self.close();
        Step::Refused(refusal)
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.header = Vec::new();
    }
}

/// The state of a body of `size` bytes, none of them read yet.
fn body(size: u64) -> State {
    State::Body {
        size,
        remaining: size,
        crc: crc32fast::Hasher::new(),
    }
}

/// Parses one header line (without its `\n`): `Ok(None)` for a blank line, else the cleaned
/// name and SIZE, or why it is refused.
fn parse_header(line: &[u8], max_upload: u64) -> Result<Option<(String, u64)>, Refusal> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Ok(None);
    }
    let space = memchr::memchr(b' ', line).ok_or(Refusal::BadHeader)?;
    let (digits, name) = (&line[..space], &line[space + 1..]);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::BadHeader);
    }
    let size = digits
        .iter()
        .try_fold(0u64, |size, digit| {
            size.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
        .filter(|&size| size <= max_upload)
        .ok_or(Refusal::TooLarge)?;
    let name = clean_name(name).map_err(Refusal::BadName)?;
    Ok(Some((name.to_owned(), size)))
}

/// The name a file is stored under, from the NAME a client sent: the part after the last `/` or
/// `\`, if it is acceptable — not empty, `.` or `..`; valid UTF-8; no control character (C0,
/// DEL, C1); at most [`MAX_NAME_BYTES`] bytes; not starting with [`RESERVED_PREFIX`].
///
/// The result is a single path component (no `/`, no `\`, never `.` or `..`), borrowed from
/// `raw`. It says nothing about what already exists in the directory: that is the storage
/// layer's business ([`candidate_name`]).
///
/// ```
/// use oneloop::protocol::upload::{clean_name, BadName};
///
/// assert_eq!(clean_name(b"../../etc/passwd"), Ok("passwd"));
/// assert_eq!(clean_name(b"C:\\photos\\cat.jpg"), Ok("cat.jpg"));
/// assert_eq!(clean_name(b"x/.."), Err(BadName::Dots));
/// assert_eq!(clean_name(b"a\x1b[31m"), Err(BadName::Control));
/// ```
pub fn clean_name(raw: &[u8]) -> Result<&str, BadName> {
    let base = match raw.iter().rposition(|&b| b == b'/' || b == b'\\') {
        Some(separator) => &raw[separator + 1..],
        None => raw,
    };
    if base.is_empty() {
        return Err(BadName::Empty);
    }
    if base == b"." || base == b".." {
        return Err(BadName::Dots);
    }
    if base.len() > MAX_NAME_BYTES {
        return Err(BadName::TooLong);
    }
    let name = std::str::from_utf8(base).map_err(|_| BadName::NotUtf8)?;
    if name.chars().any(char::is_control) {
        return Err(BadName::Control);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(BadName::Reserved);
    }
    Ok(name)
}

/// The `n`th name to try when storing `name` (a [`clean_name`] result): `name` itself for
/// `n <= 1`, then a `-N` suffix before the extension: `photo.jpg`, `photo-2.jpg`,
/// `photo-3.jpg`.
///
/// The extension is what follows the *last* dot (`archive.tar.gz` → `archive.tar-2.gz`), unless
/// that dot starts the name or ends it: a dotfile or a name without an extension gets the suffix
/// at its end (`.bashrc-2`, `README-2`, `file.-2`). The result is never over
/// [`MAX_NAME_BYTES`]: the part before the suffix is shortened (at a character boundary), and if
/// the extension alone leaves no room, the whole name is shortened and suffixed. For a clean
/// `name`, every candidate is clean too, and no two candidates are the same name (so a storage
/// layer trying `n = 1, 2, 3, ...` never tries a name twice).
///
/// ```
/// use oneloop::protocol::upload::candidate_name;
///
/// assert_eq!(candidate_name("photo.jpg", 1), "photo.jpg");
/// assert_eq!(candidate_name("photo.jpg", 2), "photo-2.jpg");
/// assert_eq!(candidate_name(".bashrc", 3), ".bashrc-3");
/// ```
pub fn candidate_name(name: &str, n: u32) -> String {
    if n <= 1 {
        return name.to_owned();
    }
    let suffix = format!("-{n}");
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < name.len() => name.split_at(dot),
        _ => (name, ""),
    };
    if let Some(room) = MAX_NAME_BYTES.checked_sub(suffix.len() + extension.len()) {
        let short = shorten(stem, room, &suffix);
        if !short.is_empty() {
            return format!("{short}{suffix}{extension}");
        }
    }
    let short = shorten(name, MAX_NAME_BYTES - suffix.len(), &suffix);
    format!("{short}{suffix}")
}

/// `text` cut to at most `room` bytes (at a character boundary), to be followed by `suffix`;
/// one byte shorter if that would give `text` back (a 255-byte `x-2.jpg` cut for `-2`), so
/// that a candidate is never the name itself.
fn shorten<'a>(text: &'a str, room: usize, suffix: &str) -> &'a str {
    let short = truncate(text, room);
    if short.len() + suffix.len() == text.len() && text.ends_with(suffix) {
        truncate(text, room.saturating_sub(1))
    } else {
        short
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{drive_upload, upload_by_the_rules, UploadEvent};
    use proptest::prelude::*;

    fn limits(max_line: usize, max_upload: u64) -> Limits {
        Limits {
            max_line,
            max_upload,
        }
    }

    /// Runs `input` (in one piece) through a session whose uploads are all stored under their
    /// own names, then ends the stream; returns the replies.
    fn replies(limits: Limits, input: &[u8]) -> String {
        let transcript = drive_upload(limits, input, &[], None);
        String::from_utf8(transcript.out).unwrap()
    }

    fn events(limits: Limits, input: &[u8]) -> Vec<UploadEvent> {
        drive_upload(limits, input, &[], None).events
    }

    fn begin(name: &str, size: u64) -> UploadEvent {
        UploadEvent::Begin {
            name: name.into(),
            size,
        }
    }

    fn done(body: &[u8]) -> UploadEvent {
        UploadEvent::BodyDone {
            size: body.len() as u64,
            crc32: crc32fast::hash(body),
        }
    }

    #[test]
    fn the_seed_upload_is_accepted_stored_and_answered() {
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"5 new.jpg\n";
        let step = s.on_input(&mut input, &mut out);
        assert_eq!(
            step,
            Step::Begin {
                name: "new.jpg".into(),
                size: 5
            }
        );
        assert_eq!(out, b"ok\n");
        assert_eq!(s.on_input(&mut input, &mut out), Step::NeedInput);
        let mut input: &[u8] = b"hel";
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"hel"));
        assert_eq!(s.on_input(&mut input, &mut out), Step::NeedInput);
        let mut input: &[u8] = b"lo";
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"lo"));
        let done = s.on_input(&mut input, &mut out);
        assert_eq!(
            done,
            Step::BodyDone {
                size: 5,
                crc32: 0x3610_a686
            }
        );
        assert_eq!(s.stored("new-2.jpg", &mut out), Flow::Continue);
        assert_eq!(out, b"ok\nsaved new-2.jpg 5 3610a686\n");
        assert!(s.is_idle());
        assert_eq!(s.on_end(&mut out), End::Idle);
    }

    #[test]
    fn with_admission_ok_waits_for_the_drivers_word_and_no_space_replaces_it() {
        let mut s = UploadSession::with_admission(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"3 a\nxyz";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { size: 3, .. }
        ));
        for _ in 0..2 {
            assert_eq!(s.on_input(&mut input, &mut out), Step::Admitting);
            assert_eq!(input, b"xyz", "nothing consumed before the answer");
        }
        assert!(out.is_empty(), "no `ok` yet");
        s.admit(&mut out);
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"xyz"));
        assert_eq!(out, b"ok\n");
        // The next one does not fit.
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::BodyDone { .. }
        ));
        let _ = s.stored("a", &mut out);
        let mut input: &[u8] = b"9 b\n123";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        s.refuse_no_space(&mut out);
        assert_eq!(s.on_input(&mut input, &mut out), Step::Closed);
        assert!(
            out.ends_with(b"saved a 3 eb8eba67\nerror no space\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        // A shutdown before the answer: cut short, and told so.
        let mut s = UploadSession::with_admission(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"9 c\n";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        assert_eq!(
            s.on_shutdown(&mut out),
            End::CutShort {
                received: 0,
                size: 9
            }
        );
        assert_eq!(out, SHUTTING_DOWN_REPLY);
    }

    #[test]
    fn a_shutdown_tells_an_upload_cut_short_and_stores_a_whole_one() {
        let run = |input: &[u8]| {
            let mut s = UploadSession::new(Limits::default());
            let mut out = Vec::new();
            let mut input = input;
            loop {
                match s.on_input(&mut input, &mut out) {
                    Step::NeedInput | Step::Storing => break,
                    _ => {}
                }
            }
            let end = s.on_shutdown(&mut out);
            (end, String::from_utf8(out).unwrap())
        };
        assert_eq!(run(b""), (End::Idle, String::new()));
        assert_eq!(
            run(b"5 a"),
            (End::PartialHeader, "error shutting down\n".into())
        );
        assert_eq!(
            run(b"5 a\nhel"),
            (
                End::CutShort {
                    received: 3,
                    size: 5
                },
                "ok\nerror shutting down\n".into()
            )
        );
        let (end, out) = run(b"5 a\nhello");
        assert!(matches!(end, End::Storing { size: 5, .. }), "{end:?}");
        assert_eq!(
            out, "ok\n",
            "stored and answered by the driver, not refused"
        );
    }

    #[test]
    fn bytes_after_the_header_in_the_same_read_are_body() {
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"3 a\nxyz4 b\n";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { size: 3, .. }
        ));
        assert_eq!(input, b"xyz4 b\n");
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"xyz"));
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::BodyDone { size: 3, .. }
        ));
        // The next header waits for the outcome: nothing consumed, however often asked.
        for _ in 0..3 {
            assert_eq!(s.on_input(&mut input, &mut out), Step::Storing);
            assert_eq!(input, b"4 b\n");
        }
        assert_eq!(out, b"ok\n");
        let _ = s.stored("a", &mut out);
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { size: 4, .. }
        ));
        assert_eq!(
            out,
            format!("ok\nsaved a 3 {:08x}\nok\n", crc32fast::hash(b"xyz")).as_bytes()
        );
    }

    #[test]
    fn several_files_per_connection() {
        let out = replies(Limits::default(), b"1 a\nx2 b\nyz0 c\n");
        let expected = format!(
            "ok\nsaved a 1 {:08x}\nok\nsaved b 2 {:08x}\nok\nsaved c 0 00000000\n",
            crc32fast::hash(b"x"),
            crc32fast::hash(b"yz"),
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn size_zero_begins_and_is_done_at_once() {
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"0 empty.txt\n";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { size: 0, .. }
        ));
        assert_eq!(
            s.on_input(&mut input, &mut out),
            Step::BodyDone { size: 0, crc32: 0 }
        );
        let _ = s.stored("empty.txt", &mut out);
        assert_eq!(out, b"ok\nsaved empty.txt 0 00000000\n");
    }

    #[test]
    fn crc32_matches_zlib() {
        // Values from Python's zlib.crc32.
        for (body, crc) in [
            (&b"123456789"[..], "cbf43926"),
            (b"hello", "3610a686"),
            (b"The quick brown fox jumps over the lazy dog", "414fa339"),
            (&[0; 1000], "060b1780"),
        ] {
            let mut input = format!("{} f\n", body.len()).into_bytes();
            input.extend_from_slice(body);
            let out = replies(Limits::default(), &input);
            assert_eq!(out, format!("ok\nsaved f {} {crc}\n", body.len()));
        }
        let every_byte: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        let mut input = b"1024 f\n".to_vec();
        input.extend_from_slice(&every_byte);
        // One byte per read: the CRC runs over the chunks.
        let cuts: Vec<usize> = (0..input.len()).collect();
        let out = drive_upload(Limits::default(), &input, &cuts, None).out;
        assert_eq!(out, b"ok\nsaved f 1024 b70b4c26\n");
    }

    #[test]
    fn each_bad_header_gets_its_error_and_closes() {
        for (header, reply) in [
            (&b"-5 a\n"[..], "error bad header\n"),
            (b"+5 a\n", "error bad header\n"),
            (b"5a b\n", "error bad header\n"),
            (b" 5 a\n", "error bad header\n"),
            (b"0x10 a\n", "error bad header\n"),
            (b"five a\n", "error bad header\n"),
            (b"5\n", "error bad header\n"),
            (b"5\t a\n", "error bad header\n"),
            (b"GET / HTTP/1.1\r\n", "error bad header\n"),
            (b"5 \n", "error bad name\n"),
            (b"5 ../\n", "error bad name\n"),
            (b"5 ..\n", "error bad name\n"),
            (b"5 a\x00b\n", "error bad name\n"),
            (b"5 \xff\n", "error bad name\n"),
            (b"5 .oneloop-upload-1234\n", "error bad name\n"),
            (b"101 a\n", "error too large\n"),
            (b"99999999999999999999999999 a\n", "error too large\n"),
        ] {
            let mut s = UploadSession::new(limits(1000, 100));
            let mut out = Vec::new();
            let mut input = header;
            let step = s.on_input(&mut input, &mut out);
            assert!(matches!(step, Step::Refused(_)), "{header:?}: {step:?}");
            assert_eq!(String::from_utf8(out.clone()).unwrap(), reply, "{header:?}");
            // The conversation is over: more input is discarded, nothing more is said.
            let mut more: &[u8] = b"1 b\nx";
            assert_eq!(s.on_input(&mut more, &mut out), Step::Closed);
            assert!(more.is_empty());
            assert_eq!(s.on_end(&mut out), End::Closed);
            assert_eq!(String::from_utf8(out).unwrap(), reply, "{header:?}");
        }
    }

    #[test]
    fn size_is_checked_before_the_name_and_the_body() {
        assert_eq!(
            events(limits(1000, 10), b"11 \x01\nbody"),
            [UploadEvent::Refused(Refusal::TooLarge)]
        );
        assert_eq!(
            events(limits(1000, 10), b"x \x01\n"),
            [UploadEvent::Refused(Refusal::BadHeader)]
        );
        // Exactly max_upload is fine; leading zeros too.
        assert_eq!(
            events(limits(1000, 10), b"0010 a\n0123456789"),
            [
                begin("a", 10),
                UploadEvent::Body(b"0123456789".to_vec()),
                done(b"0123456789"),
                UploadEvent::End(End::Idle),
            ]
        );
        // u64::MAX as the limit: a 20-digit SIZE that fits is not too large, one that
        // overflows is.
        let out = replies(limits(1000, u64::MAX), b"18446744073709551616 a\n");
        assert_eq!(out, "error too large\n");
        let mut s = UploadSession::new(limits(1000, u64::MAX));
        let mut input: &[u8] = b"18446744073709551615 a\n";
        assert!(matches!(
            s.on_input(&mut input, &mut Vec::new()),
            Step::Begin { size: u64::MAX, .. }
        ));
    }

    #[test]
    fn a_name_is_the_rest_of_the_line_cleaned() {
        for (header, name) in [
            (&b"0 ../../etc/passwd\n"[..], "passwd"),
            (b"0 /etc/passwd\n", "passwd"),
            (b"0 a\\b\n", "b"),
            (b"0 my photo.jpg\n", "my photo.jpg"),
            (b"0  lead\n", " lead"),
            (b"0 crlf.txt\r\n", "crlf.txt"),
            (b"0 \xff\x1b/ok\n", "ok"),
            ("0 café.txt\n".as_bytes(), "café.txt"),
        ] {
            assert_eq!(
                events(Limits::default(), header)[0],
                begin(name, 0),
                "{header:?}"
            );
        }
    }

    #[test]
    fn blank_lines_between_uploads_are_skipped() {
        assert_eq!(
            replies(Limits::default(), b"\n\r\n1 a\nx\n\n0 b\n"),
            format!(
                "ok\nsaved a 1 {:08x}\nok\nsaved b 0 00000000\n",
                crc32fast::hash(b"x")
            )
        );
        // A lone `\r` is blank too, but a lone space is not.
        assert_eq!(replies(Limits::default(), b"\r\n"), "");
        assert_eq!(replies(Limits::default(), b" \n"), "error bad header\n");
    }

    #[test]
    fn a_header_at_the_limit_passes_one_more_byte_is_refused() {
        // `5 abc` is 5 bytes; with `\r` it is 6, and the limit counts it.
        assert_eq!(events(limits(5, 100), b"0 abc\n")[0], begin("abc", 0));
        assert_eq!(
            replies(limits(5, 100), b"0 abcd\n"),
            "error line too long\n"
        );
        assert_eq!(
            replies(limits(5, 100), b"0 abc\r\n"),
            "error line too long\n"
        );
        // Refused before its newline: as soon as the held bytes would pass the limit.
        let mut s = UploadSession::new(limits(5, 100));
        let mut out = Vec::new();
        let mut input: &[u8] = b"0 abc";
        assert_eq!(s.on_input(&mut input, &mut out), Step::NeedInput);
        assert_eq!(s.held_bytes(), 5);
        let mut input: &[u8] = b"d";
        assert_eq!(
            s.on_input(&mut input, &mut out),
            Step::Refused(Refusal::LineTooLong)
        );
        assert_eq!(out, LINE_TOO_LONG_REPLY);
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn a_header_in_tiny_pieces_holds_no_more_than_max_line() {
        let mut s = UploadSession::new(limits(64, 100));
        let mut out = Vec::new();
        for _ in 0..1000 {
            let mut input: &[u8] = b"9";
            match s.on_input(&mut input, &mut out) {
                Step::NeedInput => assert!(s.held_bytes() <= 64),
                Step::Refused(Refusal::LineTooLong) => break,
                step => panic!("{step:?}"),
            }
        }
        assert_eq!(out, LINE_TOO_LONG_REPLY);
        // Split, but short enough: parsed from the held bytes, which are then given back.
        let mut s = UploadSession::new(limits(64, 100));
        for piece in [&b"1"[..], b"0 n", b"ame", b".txt"] {
            let mut input = piece;
            assert_eq!(s.on_input(&mut input, &mut out), Step::NeedInput);
        }
        assert!(!s.is_idle());
        let mut input: &[u8] = b"\n";
        assert_eq!(
            s.on_input(&mut input, &mut out),
            Step::Begin {
                name: "name.txt".into(),
                size: 10
            }
        );
        assert_eq!((s.held_bytes(), s.header.capacity()), (0, 0));
    }

    #[test]
    fn the_end_of_stream_says_what_was_cut_short() {
        let end = |input: &[u8]| {
            let t = drive_upload(Limits::default(), input, &[], None);
            (
                t.events.last().cloned().unwrap(),
                String::from_utf8(t.out).unwrap(),
            )
        };
        assert_eq!(end(b""), (UploadEvent::End(End::Idle), String::new()));
        assert_eq!(
            end(b"5 a"),
            (
                UploadEvent::End(End::PartialHeader),
                "error bad header\n".into()
            )
        );
        assert_eq!(
            end(b"5 a\nhel"),
            (
                UploadEvent::End(End::CutShort {
                    received: 3,
                    size: 5
                }),
                "ok\n".into()
            )
        );
        assert_eq!(
            end(b"5 a\n"),
            (
                UploadEvent::End(End::CutShort {
                    received: 0,
                    size: 5
                }),
                "ok\n".into()
            )
        );
    }

    #[test]
    fn a_body_complete_at_the_end_of_stream_is_stored_then_closed() {
        // The driver ends the stream right after the last Body step (without the call that
        // would have reported BodyDone): the body is complete, not cut short.
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"2 a\nhi";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"hi"));
        let crc32 = crc32fast::hash(b"hi");
        assert_eq!(s.on_end(&mut out), End::Storing { size: 2, crc32 });
        assert_eq!(s.on_input(&mut input, &mut out), Step::Storing);
        assert_eq!(s.stored("a", &mut out), Flow::Close);
        assert_eq!(out, format!("ok\nsaved a 2 {crc32:08x}\n").as_bytes());
        assert_eq!(s.on_input(&mut input, &mut out), Step::Closed);
        // Or after BodyDone, while storing.
        let mut s = UploadSession::new(Limits::default());
        let mut input: &[u8] = b"0 a\n";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::BodyDone { .. }
        ));
        assert_eq!(s.on_end(&mut out), End::Storing { size: 0, crc32: 0 });
        assert_eq!(s.stored("a", &mut out), Flow::Close);
    }

    #[test]
    fn storage_failure_is_one_line_and_ends_the_conversation() {
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"5 a\nhello1 b\nx";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"hello"));
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::BodyDone { .. }
        ));
        s.storage_failed("No space left\non device\x1b[2J (os error 28)", &mut out);
        assert_eq!(
            out,
            b"ok\nerror storage failed: No space left on device [2J (os error 28)\n"
        );
        assert_eq!(s.on_input(&mut input, &mut out), Step::Closed);
        assert_eq!(s.on_end(&mut out), End::Closed);
        // A second report changes nothing.
        s.storage_failed("again", &mut out);
        assert!(out.ends_with(b"(os error 28)\n"));

        // Mid-body (a write failed): the rest of the body is never read.
        let mut s = UploadSession::new(Limits::default());
        let mut out = Vec::new();
        let mut input: &[u8] = b"5 a\nhe";
        assert!(matches!(
            s.on_input(&mut input, &mut out),
            Step::Begin { .. }
        ));
        assert_eq!(s.on_input(&mut input, &mut out), Step::Body(b"he"));
        s.storage_failed("Input/output error (os error 5)", &mut out);
        assert_eq!(
            out,
            b"ok\nerror storage failed: Input/output error (os error 5)\n"
        );
        let mut input: &[u8] = b"llo";
        assert_eq!(s.on_input(&mut input, &mut out), Step::Closed);
    }

    #[test]
    fn failing_the_second_upload_keeps_the_first() {
        let t = drive_upload(Limits::default(), b"1 a\nx1 b\ny1 c\nz", &[], Some(1));
        assert_eq!(
            String::from_utf8(t.out).unwrap(),
            format!(
                "ok\nsaved a 1 {:08x}\nok\nerror storage failed: disk full\n",
                crc32fast::hash(b"x")
            )
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without a body")]
    fn stored_without_a_body_is_a_driver_bug() {
        let _ = UploadSession::new(Limits::default()).stored("a", &mut Vec::new());
    }

    #[test]
    fn clean_name_keeps_one_component() {
        for (raw, cleaned) in [
            (&b"../../etc/passwd"[..], Ok("passwd")),
            (b"/etc/passwd", Ok("passwd")),
            (b"a\\b", Ok("b")),
            (b"..\\..\\windows\\win.ini", Ok("win.ini")),
            (b"dir/", Err(BadName::Empty)),
            (b"", Err(BadName::Empty)),
            (b".", Err(BadName::Dots)),
            (b"..", Err(BadName::Dots)),
            (b"a/..", Err(BadName::Dots)),
            (b"...", Ok("...")),
            (b".hidden", Ok(".hidden")),
            (b"a\nb", Err(BadName::Control)),
            (b"tab\there", Err(BadName::Control)),
            (b"del\x7f", Err(BadName::Control)),
            ("csi\u{9b}".as_bytes(), Err(BadName::Control)),
            (b"\xc3(", Err(BadName::NotUtf8)),
            (b".oneloop-upload-x1", Err(BadName::Reserved)),
            (b".oneloop-upload", Err(BadName::Reserved)),
            (b"dir/.oneloop-upload-x", Err(BadName::Reserved)),
            (b".oneloop-uploa", Ok(".oneloop-uploa")),
            (b"x.oneloop-upload-1", Ok("x.oneloop-upload-1")),
        ] {
            assert_eq!(clean_name(raw), cleaned, "{raw:?}");
        }
        let at_limit = "n".repeat(255);
        assert_eq!(clean_name(at_limit.as_bytes()), Ok(at_limit.as_str()));
        assert_eq!(clean_name(&[b'n'; 256]), Err(BadName::TooLong));
        // The limit is on the cleaned name, in bytes: 127 two-byte characters pass, 128 do not.
        let long_path = format!("{}/{}", "d".repeat(1000), "é".repeat(127));
        assert!(clean_name(long_path.as_bytes()).is_ok());
        assert_eq!(
            clean_name("é".repeat(128).as_bytes()),
            Err(BadName::TooLong)
        );
    }

    #[test]
    fn candidate_names_put_the_suffix_before_the_extension() {
        for (name, n, candidate) in [
            ("photo.jpg", 0, "photo.jpg"),
            ("photo.jpg", 1, "photo.jpg"),
            ("photo.jpg", 2, "photo-2.jpg"),
            ("photo.jpg", 3, "photo-3.jpg"),
            ("photo.jpg", 10, "photo-10.jpg"),
            ("archive.tar.gz", 2, "archive.tar-2.gz"),
            ("backup.tar.gz", 3, "backup.tar-3.gz"),
            ("notes", 2, "notes-2"),
            (".config.bak", 2, ".config-2.bak"),
            ("README", 2, "README-2"),
            (".bashrc", 2, ".bashrc-2"),
            (".config.json", 2, ".config-2.json"),
            ("file.", 2, "file.-2"),
            ("...", 2, "...-2"),
            ("a b.txt", 10, "a b-10.txt"),
        ] {
            assert_eq!(candidate_name(name, n), candidate, "{name:?} {n}");
        }
        // Kept within 255 bytes by shortening the stem, at a character boundary.
        let long = format!("{}.jpg", "x".repeat(251));
        let c = candidate_name(&long, 2);
        assert_eq!(c.len(), 255);
        assert!(c.ends_with("x-2.jpg"));
        let c = candidate_name(&long, 123_456);
        assert_eq!(c.len(), 255);
        assert!(c.ends_with("x-123456.jpg"), "{c}");
        // 'é' is two bytes: with `-2` and `.jpg`, 249 bytes are left for a 250-byte stem, which
        // is cut at 248, between two characters, not at 249, inside one.
        let long = format!("{}.jpg", "é".repeat(125));
        let c = candidate_name(&long, 2);
        assert!(c.len() <= 255 && c.ends_with("é-2.jpg"), "{c}");
        assert_eq!(c.chars().filter(|&c| c == 'é').count(), 124);
        // A 255-byte name that already ends in `-2`: its second candidate is not itself.
        let long = format!("{}-2.jpg", "x".repeat(249));
        assert_eq!(long.len(), 255);
        let c = candidate_name(&long, 2);
        assert_eq!(c, format!("{}-2.jpg", "x".repeat(248)));
        // An extension too long to keep: the whole name is shortened and suffixed.
        let long = format!("a.{}", "e".repeat(253));
        let c = candidate_name(&long, 12);
        assert_eq!(c.len(), 255);
        assert!(c.starts_with("a.eee") && c.ends_with("e-12"), "{c}");
        let long = format!("a.{}-12", "e".repeat(250));
        assert_eq!(
            candidate_name(&long, 12),
            format!("a.{}-12", "e".repeat(249))
        );
    }

    /// Upload streams: uploads with headers that are mostly right (the body exactly SIZE bytes),
    /// sometimes wrong, with CRLF and blank lines, optionally cut short at the end.
    fn upload_stream() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("a.txt".to_owned()),
            Just("../../etc/passwd".to_owned()),
            Just("dir\\x y".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            "[a-z.\n\r /]{1,12}",
        ];
        let body = proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..40);
        let upload = (name, body, 0u8..12).prop_map(|(name, body, shape)| {
            let mut bytes = match shape {
                0 => format!("{}x {name}\n", body.len()).into_bytes(), // bad SIZE
                1 => format!("{} {name}\r\n", body.len()).into_bytes(),
                2 => format!("\n{:03} {name}\n", body.len()).into_bytes(),
                3 => format!("{} {name}\n", body.len() + 1000).into_bytes(), // too large
                _ => format!("{} {name}\n", body.len()).into_bytes(),
            };
            bytes.extend_from_slice(&body);
            bytes
        });
        (
            proptest::collection::vec(upload, 0..5),
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(|(uploads, cut, cut_short)| {
                let mut stream = uploads.concat();
                if cut_short && !stream.is_empty() {
                    stream.truncate(usize::from(cut) % stream.len());
                }
                stream
            })
    }

    proptest! {
        /// The key property: however the stream is cut into reads, the session reports the
        /// same uploads, the same body bytes, the same CRCs and the same replies, and they are
        /// what the contract's rules give for the whole stream.
        #[test]
        fn every_chunking_gives_the_same_steps(
            input in upload_stream(),
            mut cuts in proptest::collection::vec(0usize..400, 0..16),
            max_line in prop_oneof![Just(64usize), 1usize..24],
            fail_at in proptest::option::of(0usize..3),
        ) {
            cuts.sort_unstable();
            let limits = limits(max_line, 500);
            let whole = drive_upload(limits, &input, &[], fail_at);
            let cut = drive_upload(limits, &input, &cuts, fail_at);
            prop_assert_eq!(&whole, &cut);
            prop_assert_eq!(&whole, &upload_by_the_rules(&input, limits, fail_at));
        }

        /// One byte per read is the hardest chunking: still the same.
        #[test]
        fn one_byte_per_read_gives_the_same_steps(input in upload_stream()) {
            let cuts: Vec<usize> = (0..input.len()).collect();
            let limits = Limits::default();
            prop_assert_eq!(
                drive_upload(limits, &input, &cuts, None),
                drive_upload(limits, &input, &[], None)
            );
        }

        /// Whatever the bytes, a cleaned name is one component, a suffix of what was sent.
        #[test]
        fn clean_names_are_one_component(raw in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'\\'), Just(b'.'), any::<u8>()], 0..300,
        )) {
            if let Ok(name) = clean_name(&raw) {
                prop_assert!(raw.ends_with(name.as_bytes()));
                prop_assert!(!name.contains(['/', '\\']));
                prop_assert!(name != "." && name != ".." && !name.is_empty());
                prop_assert!(name.len() <= MAX_NAME_BYTES);
                prop_assert!(!name.starts_with(TEMP_PREFIX));
            }
        }

        /// Every candidate of a clean name is clean, and different candidates differ.
        #[test]
        fn candidates_are_clean_and_distinct(
            head in "(\\.|x|é|\\.oneloop|-upload|-2|-12){0,6}",
            padding in 0usize..256,
            tail in "(\\.|x|é|\\.oneloop|-upload|-2|-12){0,6}",
        ) {
            // Names near 255 bytes, with long stems or long extensions, where candidates must
            // be shortened.
            let raw = format!("{head}{}{tail}", "p".repeat(padding));
            if let Ok(name) = clean_name(raw.as_bytes()) {
                let candidates: Vec<String> = (1..=12).map(|n| candidate_name(name, n)).collect();
                for c in &candidates {
                    prop_assert_eq!(clean_name(c.as_bytes()), Ok(c.as_str()));
                }
                let distinct: std::collections::HashSet<&String> = candidates.iter().collect();
                prop_assert_eq!(distinct.len(), candidates.len());
            }
        }
    }
}
