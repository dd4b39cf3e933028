//! The chat room's properties, for any script of joins, lines and leaves.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::room::{self, Delivery, MemberId, Room};
use crate::protocol::{Limits, LINE_TOO_LONG_REPLY};

use super::plan;

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
            Delivery::Bus(request) => panic!("a room of one process asked the bus {request:?}"),
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
