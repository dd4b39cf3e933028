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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::clock::Now;
use crate::protocol::proxy::{self, Header, Parse, ProxyHeader};
use crate::protocol::room::{self, Delivery, MemberId, Room};
use crate::protocol::upload::{BadName, End, Refusal, Step, UploadSession, RESERVED_PREFIX};
use crate::protocol::{Arrival, Flow, Limits, Session, LINE_TOO_LONG_REPLY};
use crate::service::{ProtocolKind, ServiceSpec};

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

/// chat: a script of joins, reads, ends of stream and drops by two to five members, run against a
/// [`Room`] three times — every read whole, cut where the data says ([`plan`]), and one byte at a
/// time — with every step checked.
///
/// The script: `data[0]` chooses `--max-line` (1 to 64, small so that the limit is met often),
/// `data[1]` how many members join first (2 to 5). Then operations, each a byte whose low three
/// bits say what (0 to 4: a read; 5: end of stream; 6: dropped by the driver; 7: join again) and
/// whose other bits say which member; a read is followed by a length byte and that many bytes, a
/// [`plan`] (cut points, then the input); a join by a byte choosing the name the driver gives.
///
/// Checked:
/// * **every cut gives the same deliveries**: a read's pieces are all fed before the next
///   operation, so every run sees the members' lines interleaved in the same order, and must
///   emit the very same deliveries in the same order — what each member sees cannot depend on
///   how TCP chunked anyone's stream;
/// * **each step emits what the rules say**, exactly: a model written the plain way (a byte at a
///   time; a line handled at its newline, refused at the byte that takes it past `--max-line`),
///   from the module's rules rather than its code, predicts every delivery;
/// * **whatever the model says**, the contract holds delivery by delivery, so a mistake shared by
///   model and room still fails: each delivery is one line (one `\n`, at the end) with no control
///   character but tab; a broadcast spares only the member that caused it, reaches someone, and
///   goes back to that member only if it is a `* ` notice; a chat line reads `NAME: ` with the
///   sender's name at that moment, and is never longer than `--max-line` (escapes undone);
///   private lines go only to the member that acted, and never after its close; `error line too
///   long` is followed by that member's close;
/// * **after every piece**, the room's members are exactly those joined and neither closed nor
///   dropped; their names are unique and valid (1 to 32 bytes, no whitespace or control
///   character, no leading `*`: the driver's names here all are); each holds exactly the
///   unfinished tail of its stream, never more than `--max-line` bytes.
pub fn check_room(data: &[u8]) {
    let Some(script) = RoomScript::parse(data) else {
        return;
    };
    let whole = script.run(Split::Whole);
    assert_eq!(
        script.run(Split::Planned),
        whole,
        "room deliveries depend on how the input was cut"
    );
    assert_eq!(
        script.run(Split::Bytes),
        whole,
        "room deliveries differ when the input comes a byte at a time"
    );
}

/// The names the driver gives at a join: repeats and a name shaped like a suffixed one exercise
/// the `-2`, `-3` rule. All are short names `/nick` would accept, so that every name in the room
/// stays valid (a real driver may give a longer IPv6 address).
const JOIN_NAMES: [&str; 8] = [
    "a",
    "b",
    "a",
    "127.0.0.1:53122",
    "unix-1",
    "a-2",
    "[::1]:9000",
    "é",
];

/// One step of a [`check_room`] script.
enum RoomOp<'a> {
    Read {
        member: MemberId,
        cuts: Vec<usize>,
        input: &'a [u8],
    },
    End(MemberId),
    Drop(MemberId),
    Join(MemberId, &'static str),
}

/// How a run feeds each read to the room.
#[derive(Clone, Copy)]
enum Split {
    Whole,
    Planned,
    Bytes,
}

struct RoomScript<'a> {
    max_line: usize,
    members: usize,
    ops: Vec<RoomOp<'a>>,
}

impl<'a> RoomScript<'a> {
    fn parse(data: &'a [u8]) -> Option<RoomScript<'a>> {
        let [limit, count, ops @ ..] = data else {
            return None;
        };
        let mut rest = ops;
        let members = 2 + usize::from(count % 4);
        let mut ops = Vec::new();
        while let [op, tail @ ..] = rest {
            rest = tail;
            let member = MemberId(usize::from(op >> 3) % members);
            match op & 7 {
                5 => ops.push(RoomOp::End(member)),
                6 => ops.push(RoomOp::Drop(member)),
                7 => {
                    let [name, tail @ ..] = rest else { break };
                    rest = tail;
                    let name = JOIN_NAMES[usize::from(*name) % JOIN_NAMES.len()];
                    ops.push(RoomOp::Join(member, name));
                }
                _ => {
                    let [len, tail @ ..] = rest else { break };
                    let (payload, tail) = tail.split_at(usize::from(*len).min(tail.len()));
                    rest = tail;
                    let (cuts, input) = plan(payload);
                    ops.push(RoomOp::Read {
                        member,
                        cuts,
                        input,
                    });
                }
            }
        }
        Some(RoomScript {
            max_line: 1 + usize::from(limit % 64),
            members,
            ops,
        })
    }

    /// Runs the script against a fresh room, checking every step; returns every delivery.
    fn run(&self, split: Split) -> Vec<Delivery> {
        let mut run = RoomRun {
            room: Room::new(Limits {
                max_line: self.max_line,
                ..Limits::default()
            }),
            rules: RoomRules {
                max_line: self.max_line,
                members: BTreeMap::new(),
            },
            connected: BTreeMap::new(),
            log: Vec::new(),
        };
        for (i, name) in JOIN_NAMES.iter().take(self.members).enumerate() {
            run.join(MemberId(i), name);
        }
        for op in &self.ops {
            match op {
                RoomOp::Read {
                    member,
                    cuts,
                    input,
                } => match split {
                    Split::Whole => run.read(*member, input),
                    Split::Bytes => input.chunks(1).for_each(|b| run.read(*member, b)),
                    Split::Planned => {
                        let mut start = 0;
                        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                            let cut = cut.clamp(start, input.len());
                            run.read(*member, &input[start..cut]);
                            start = cut;
                        }
                    }
                },
                RoomOp::End(member) => run.end(*member),
                RoomOp::Drop(member) => run.drop_member(*member),
                RoomOp::Join(member, name) => run.join(*member, name),
            }
        }
        run.log
    }
}

/// A room under test, the rules' prediction, and what the driver knows from the deliveries.
struct RoomRun {
    room: Room,
    rules: RoomRules,
    /// The driver's view: every member joined and not yet closed or dropped, with its name as
    /// the deliveries have told it.
    connected: BTreeMap<MemberId, String>,
    log: Vec<Delivery>,
}

impl RoomRun {
    fn join(&mut self, member: MemberId, name: &str) {
        let mut expected = Vec::new();
        self.rules.join(member, name, &mut expected);
        let mut out = Vec::new();
        self.room.join(member, name, &mut out);
        // A join is told to its member only by the greeting, which the name is part of; the
        // rules check that greeting, so the room's word for the name is safe to take here.
        let joined = self.room.name(member).unwrap_or_default().to_owned();
        // Joining again under a used id leaves first: the old membership is still "connected"
        // for that leave's broadcast, which spares it.
        self.connected.entry(member).or_default();
        self.settle(member, out, expected);
        self.connected.insert(member, joined);
        self.check_state();
    }

    fn read(&mut self, member: MemberId, bytes: &[u8]) {
        let mut expected = Vec::new();
        self.rules.read(member, bytes, &mut expected);
        let mut out = Vec::new();
        self.room.on_input(member, bytes, &mut out);
        self.settle(member, out, expected);
        self.check_state();
    }

    fn end(&mut self, member: MemberId) {
        let mut expected = Vec::new();
        self.rules.end(member, &mut expected);
        let mut out = Vec::new();
        self.room.on_end(member, &mut out);
        self.settle(member, out, expected);
        self.check_state();
    }

    fn drop_member(&mut self, member: MemberId) {
        let mut expected = Vec::new();
        self.rules.leave(member, &mut expected);
        let mut out = Vec::new();
        self.room.leave(member, &mut out);
        self.settle(member, out, expected);
        // Dropped by the driver: no Close comes, the driver just stops.
        self.connected.remove(&member);
        self.check_state();
    }

    /// Checks `out`, what the room emitted for `actor`'s step, against the contract and the
    /// rules, carries it out, and logs it.
    fn settle(&mut self, actor: MemberId, out: Vec<Delivery>, expected: Vec<Expect>) {
        for delivery in &out {
            self.carry_out(actor, delivery);
        }
        let too_long = Delivery::To {
            member: actor,
            bytes: LINE_TOO_LONG_REPLY.to_vec(),
        };
        if out.contains(&too_long) {
            assert_eq!(
                out.last(),
                Some(&Delivery::Close { member: actor }),
                "`error line too long` without the close after it: {out:?}"
            );
        }
        let same = out.len() == expected.len()
            && out
                .iter()
                .zip(&expected)
                .all(|(got, want)| want.matches(got));
        assert!(
            same,
            "the room emitted\n{out:?}\nwhere the rules say\n{expected:?}"
        );
        self.log.extend(out);
    }

    /// The contract's rules for one delivery, whatever the model predicted.
    fn carry_out(&mut self, actor: MemberId, delivery: &Delivery) {
        match delivery {
            Delivery::Broadcast { except, bytes } => {
                assert_one_clean_line(bytes);
                assert!(
                    except.is_none() || *except == Some(actor),
                    "a broadcast for {actor:?}'s step spares {except:?}"
                );
                let recipients = self.connected.keys().filter(|m| Some(**m) != *except);
                assert!(recipients.count() > 0, "a broadcast nobody receives");
                if except.is_none() {
                    assert!(
                        bytes.starts_with(b"* "),
                        "a broadcast that goes back to its sender, not a notice: {:?}",
                        String::from_utf8_lossy(bytes)
                    );
                    self.follow_rename(actor, bytes);
                } else if !bytes.starts_with(b"* ") {
                    self.assert_chat_line(actor, bytes);
                }
            }
            Delivery::To { member, bytes } => {
                assert_one_clean_line(bytes);
                assert_eq!(
                    *member, actor,
                    "a private line to a member that did nothing"
                );
                assert!(
                    self.connected.contains_key(member),
                    "a line to a member already closed or dropped"
                );
            }
            Delivery::Close { member } => {
                assert_eq!(*member, actor, "a close of a member that did nothing");
                assert!(
                    self.connected.remove(member).is_some(),
                    "a close of a member already closed or dropped"
                );
                assert_eq!(self.room.name(*member), None, "a closed member stays");
            }
        }
    }

    /// `* OLD is now NEW`, sent to everyone: the only way a name changes.
    fn follow_rename(&mut self, actor: MemberId, bytes: &[u8]) {
        let name = self.connected.get_mut(&actor).expect("the renamed member");
        let prefix = format!("* {name} is now ");
        let new = bytes
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| rest.strip_suffix(b"\n"))
            .unwrap_or_else(|| {
                panic!(
                    "a notice to everyone that is not {actor:?} renaming itself: {:?}",
                    String::from_utf8_lossy(bytes)
                )
            });
        *name = String::from_utf8(new.to_vec()).expect("a name is UTF-8");
    }

    /// `NAME: LINE`, with the sender's current name and a line within the limit.
    fn assert_chat_line(&self, actor: MemberId, bytes: &[u8]) {
        let name = &self.connected[&actor];
        let text = bytes
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b": "))
            .unwrap_or_else(|| {
                panic!(
                    "{name}'s line is not `{name}: ...`: {:?}",
                    String::from_utf8_lossy(bytes)
                )
            });
        // Undoing the escapes: a caret before `@`..`_` or `?` stands for one byte, `\xHH` for one
        // byte, `\u{HH}` for two. (An escape the member typed counts fewer bytes than it was:
        // the count is a lower bound, safe here.)
        let text = &text[..text.len() - 1];
        let carets = text
            .windows(2)
            .filter(|w| w[0] == b'^' && (0x3f..=0x5f).contains(&w[1]))
            .count();
        let hex = |b: &u8| b.is_ascii_hexdigit();
        let bytes_escaped = text
            .windows(4)
            .filter(|w| w.starts_with(b"\\x") && w[2..].iter().all(hex))
            .count();
        let characters_escaped = text
            .windows(6)
            .filter(|w| w.starts_with(b"\\u{") && w[3..5].iter().all(hex) && w[5] == b'}')
            .count();
        let shrink = carets + 3 * bytes_escaped + 4 * characters_escaped;
        assert!(
            text.len().saturating_sub(shrink) <= self.rules.max_line,
            "a line over --max-line ({}) was broadcast: {:?}",
            self.rules.max_line,
            String::from_utf8_lossy(bytes)
        );
    }

    /// The room's state against the driver's view and the rules.
    fn check_state(&self) {
        let members: BTreeSet<MemberId> = self.room.members().collect();
        let connected: BTreeSet<MemberId> = self.connected.keys().copied().collect();
        assert_eq!(
            members, connected,
            "the room's members are not those joined and neither closed nor dropped"
        );
        let mut names = BTreeSet::new();
        for member in members {
            let name = self.room.name(member).expect("a member has a name");
            assert!(names.insert(name), "two members are named {name:?}");
            assert!(name_is_valid(name), "an invalid name: {name:?}");
            assert_eq!(name, self.connected[&member], "a rename nobody was told");
            let rule = &self.rules.members[&member];
            assert_eq!(
                name, rule.name,
                "the room's name for {member:?} is not the rules'"
            );
            let held = self.room.partial_line(member).expect("a member");
            assert!(
                held.len() <= self.rules.max_line,
                "{name} holds {} bytes, over --max-line",
                held.len()
            );
            assert_eq!(
                held, rule.line,
                "{name} holds other than its unfinished line"
            );
        }
        assert_eq!(self.rules.members.len(), self.connected.len());
    }
}

/// One line: a single `\n`, at the end, and no control character but tab before it.
fn assert_one_clean_line(bytes: &[u8]) {
    let text = bytes
        .strip_suffix(b"\n")
        .unwrap_or_else(|| panic!("a delivery that does not end a line: {bytes:?}"));
    // No C0 but tab, no DEL, no C1, and nothing that is not UTF-8: nothing a terminal acts on.
    let bad = |c: char| c.is_control() && c != '\t';
    assert!(
        std::str::from_utf8(text).is_ok_and(|text| !text.chars().any(bad)),
        "a delivery with a newline inside or a raw control character: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// The contract's name rule: 1 to 32 bytes of UTF-8, no whitespace or control character, not
/// starting with `*`.
fn name_is_valid(name: &str) -> bool {
    (1..=room::MAX_NAME).contains(&name.len())
        && !name.starts_with('*')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || room::is_format(c))
}

/// A predicted delivery. Error lines are predicted by their first words only: the rest is prose
/// for people, free to change.
#[derive(Debug)]
enum Expect {
    Exactly(Delivery),
    Error(MemberId, &'static str),
}

impl Expect {
    fn to(member: MemberId, text: impl Into<Vec<u8>>) -> Expect {
        Expect::Exactly(Delivery::To {
            member,
            bytes: text.into(),
        })
    }

    fn matches(&self, got: &Delivery) -> bool {
        match self {
            Expect::Exactly(want) => want == got,
            Expect::Error(want, start) => matches!(
                got,
                Delivery::To { member, bytes } if member == want && bytes.starts_with(start.as_bytes())
            ),
        }
    }
}

/// The chat rules of the module doc and the contract, written the plain way: a byte at a time.
struct RoomRules {
    max_line: usize,
    members: BTreeMap<MemberId, RuleMember>,
}

struct RuleMember {
    name: String,
    /// Every byte since the last newline.
    line: Vec<u8>,
}

impl RoomRules {
    fn join(&mut self, member: MemberId, wanted: &str, out: &mut Vec<Expect>) {
        self.leave(member, out);
        let taken = |name: &str| self.members.values().any(|m| m.name == name);
        let name = if taken(wanted) {
            (2..)
                .map(|n| format!("{wanted}-{n}"))
                .find(|name| !taken(name))
                .expect("a free suffix")
        } else {
            wanted.to_owned()
        };
        let count = self.members.len() + 1;
        let plural = if count == 1 { "member" } else { "members" };
        out.push(Expect::to(
            member,
            format!("* welcome {name}; {count} {plural} here; /nick NAME, /who, quit\n"),
        ));
        self.notice(member, format!("* {name} joined\n"), out);
        let line = Vec::new();
        self.members.insert(member, RuleMember { name, line });
    }

    fn read(&mut self, member: MemberId, bytes: &[u8], out: &mut Vec<Expect>) {
        for &byte in bytes {
            let Some(m) = self.members.get_mut(&member) else {
                return;
            };
            if byte == b'\n' {
                let line = std::mem::take(&mut m.line);
                self.line(member, &line, out);
            } else {
                m.line.push(byte);
                if m.line.len() > self.max_line {
                    out.push(Expect::to(member, LINE_TOO_LONG_REPLY));
                    self.depart(member, out);
                }
            }
        }
    }

    fn end(&mut self, member: MemberId, out: &mut Vec<Expect>) {
        let Some(m) = self.members.get_mut(&member) else {
            return;
        };
        let line = std::mem::take(&mut m.line);
        if !line.is_empty() {
            self.line(member, &line, out);
        }
        if self.members.contains_key(&member) {
            self.depart(member, out);
        }
    }

    fn leave(&mut self, member: MemberId, out: &mut Vec<Expect>) {
        if let Some(m) = self.members.remove(&member) {
            self.notice(member, format!("* {} left\n", m.name), out);
        }
    }

    fn depart(&mut self, member: MemberId, out: &mut Vec<Expect>) {
        self.leave(member, out);
        out.push(Expect::Exactly(Delivery::Close { member }));
    }

    /// A broadcast from `member`'s step to the others, if there are any.
    fn notice(&self, member: MemberId, text: String, out: &mut Vec<Expect>) {
        if self.members.keys().any(|m| *m != member) {
            out.push(Expect::Exactly(Delivery::Broadcast {
                except: Some(member),
                bytes: text.into_bytes(),
            }));
        }
    }

    fn line(&mut self, member: MemberId, line: &[u8], out: &mut Vec<Expect>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"quit" || line == b":q" {
            return self.depart(member, out);
        }
        let name = self.members[&member].name.clone();
        let Some(command) = line.strip_prefix(b"/") else {
            let mut text = format!("{name}: ");
            for chunk in line.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match u32::from(c) {
                        0x09 => text.push(c),
                        b @ 0..=0x1f => text.extend(['^', char::from(b'@' + b as u8)]),
                        0x7f => text.push_str("^?"),
                        b @ 0x80..=0x9f => text += &format!("\\u{{{b:x}}}"),
                        _ => text.push(c),
                    }
                }
                for b in chunk.invalid() {
                    text += &format!("\\x{b:02x}");
                }
            }
            text.push('\n');
            let text = text.into_bytes();
            if self.members.len() > 1 {
                out.push(Expect::Exactly(Delivery::Broadcast {
                    except: Some(member),
                    bytes: text,
                }));
            }
            return;
        };
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let split = command.iter().position(blank).unwrap_or(command.len());
        let (word, argument) = command.split_at(split);
        match word.to_ascii_lowercase().as_slice() {
            b"who" => {
                let mut names: Vec<&str> = self.members.values().map(|m| &*m.name).collect();
                names.sort();
                let text = format!("* members: {}\n", names.join(", "));
                out.push(Expect::to(member, text));
            }
            b"quit" => self.depart(member, out),
            b"nick" => {
                let start = argument.iter().position(|b| !blank(b));
                let end = argument.iter().rposition(|b| !blank(b));
                let new = match (start, end) {
                    (Some(start), Some(end)) => &argument[start..=end],
                    _ => &[],
                };
                let new = std::str::from_utf8(new)
                    .ok()
                    .filter(|n| name_is_valid(n) && !room::looks_like_default_name(n));
                let Some(new) = new else {
                    return out.push(Expect::Error(member, "error bad name"));
                };
                if new == name {
                    return;
                }
                if self.members.values().any(|m| m.name == new) {
                    return out.push(Expect::Error(member, "error name taken"));
                }
                out.push(Expect::Exactly(Delivery::Broadcast {
                    except: None,
                    bytes: format!("* {name} is now {new}\n").into_bytes(),
                }));
                self.members.get_mut(&member).expect("a member").name = new.to_owned();
            }
            _ => out.push(Expect::Error(member, "error unknown command")),
        }
    }
}

/// One thing an upload session told its driver, as [`drive_upload`] records it: consecutive
/// [`Step::Body`] slices are joined into one `Body`, so that transcripts of differently cut
/// inputs compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadEvent {
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
pub struct UploadTranscript {
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
pub fn drive_upload(
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
pub fn upload_by_the_rules(
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

/// What [`drive_proxy`] saw: the outcome, and the header bytes consumed over all reads.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyRun {
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
pub fn drive_proxy(input: &[u8], cuts: &[usize]) -> ProxyRun {
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
