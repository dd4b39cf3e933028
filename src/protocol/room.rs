//! `chat`: a line-based group-chat room, as a sans-I/O state machine.
//!
//! Unlike the other protocols, a chat member's input produces output for *other* connections, so
//! the room is not a [`Session`](super::Session): it holds every member of one chat service, and
//! turns one member's bytes into [`Delivery`] orders that the driver (the reactor, or a blocking
//! model holding the room behind a lock) carries out in order. Each chat service is its own
//! [`Room`].
//!
//! ## The contract's rules
//!
//! * A member's line goes to every other member as `NAME: LINE\n`. NAME starts as the name the
//!   driver gives at [`Room::join`] (the peer address, `127.0.0.1:53122`, or `unix-N`).
//! * `/nick NAME` renames the member, announced as `* OLD is now NEW`; `/who` answers the asker
//!   only; `quit` or `:q` leaves. Others see `* NAME joined` and `* NAME left` (also when a member
//!   disconnects or is dropped: [`Room::on_end`], [`Room::leave`]).
//! * A name is 1 to 32 bytes of UTF-8 with no whitespace (Unicode's), control or format
//!   characters (category Cf: zero-width, bidi controls, the soft hyphen), not starting with `*`,
//!   and not shaped like a default name (an IP address with a port, `unix-N`, either with a `-N`
//!   suffix). A bad name, a taken name, or a line that starts with `/` and names no command gets
//!   an `error ...` line, and is not broadcast.
//! * A line's trailing `\r` is dropped. Nothing that could act on a terminal reaches the others
//!   raw: C0 control characters except tab, and DEL, arrive in caret notation (`^[` for ESC, `^?`
//!   for DEL, `^@` for NUL, `^M` for an inner `\r`); C1 controls (U+0080 to U+009F) as `\u{9b}`
//!   (CSI is one character in C1), and each byte that is not valid UTF-8 as `\x9b`.
//! * `--max-line` counts every byte since the last newline (a trailing `\r` included). Past it the
//!   member gets `error line too long` and is closed; the over-long line is never broadcast, not
//!   even the part of it that already arrived.
//!
//! ## Choices where the contract is silent
//!
//! * **Greeting**: the new member alone gets one line, `* welcome NAME; N members here; /nick
//!   NAME, /who, quit` (N counts the newcomer; `1 member here` when alone).
//! * **Join names**: the driver's name is taken as given (an IPv6 peer address may pass 32 bytes:
//!   the limit is for `/nick`). If it is already taken (two PROXY-protocol clients behind one
//!   address), `-2`, `-3`, ... is appended until it is free.
//! * **`/nick`** goes to *everyone*, the renamed member included (`Broadcast { except: None }`),
//!   as IRC shows a `NICK` to its sender: it is the confirmation. `/nick` to one's own current
//!   name does nothing. Names are compared byte for byte (`Bob` and `bob` are two names). The
//!   argument may be surrounded by spaces or tabs; `/nick a b` is a bad name.
//! * **Commands**: slash commands match ASCII case-insensitively (`/NICK`, `/Who`), as IRC
//!   clients do; `/quit` is accepted beside `quit` and `:q` (what an IRC user types). `quit` and
//!   `:q` must be the whole line, exactly. `/who` ignores any argument. Error lines name no user
//!   input, so nothing a member types is echoed back unescaped.
//! * **`/who`** answers `* members: a, b, c` — every name, sorted bytewise, so the reply does not
//!   depend on hash order.
//! * **Empty lines** are chat lines too (`NAME: \n`), as `ncat --chat` relays them.
//! * **The escape notation**: caret for C0 and DEL (what `cat -v` and terminals' own echo show),
//!   and for the rest the backslash forms of Rust and Python string literals, `\u{9b}` for a
//!   character and `\x9b` for a byte, so the two cases stay distinguishable. Like caret notation,
//!   an escape is not itself escaped: a member who types `\x9b` or `^[` shows those characters.
//!   Lines are escaped whole (the room holds a line until its newline), so how the input was cut
//!   never changes the result.
//! * **Default-shaped names** are refused with their `-N` suffix too (`10.0.0.1:5-2`, the name a
//!   second client behind that address would get), and so are any parseable socket addresses
//!   (`0.0.0.0:1`), not only live ones: a name must not pass for a peer's address.
//! * **Quitting** sends the quitter nothing more: the others see `* NAME left` and the driver
//!   closes ([`Delivery::Close`]). Bytes after the `quit` line are ignored.
//! * **End of stream** ([`Room::on_end`]): a final partial line is handled as a line (a chat line
//!   is broadcast, a command runs), then the member leaves and gets a [`Delivery::Close`].
//! * **Dropped members** ([`Room::leave`]: output limit, idle timeout, I/O error): a partial line
//!   they held is discarded, not broadcast.
//! * **Nobody to tell**: a broadcast whose only possible recipient is its sender is not emitted.
//!
//! ## Memory and time
//!
//! A member holds its name and, only while a line is split across reads, the part already read
//! (bounded by `--max-line`); an idle member's partial-line buffer is an empty, unallocated `Vec`,
//! and the buffer is given back as soon as its line completes. Held bytes contain no newline, so
//! only new bytes are scanned (with `memchr`): a long line costs linear time. Every broadcast is
//! formatted once, whatever the number of recipients.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Limits, LINE_TOO_LONG_REPLY};

/// What every member still in a room is told at a graceful shutdown, before its connection ends
/// (the drivers send it: the room is not told of shutdowns).
pub(crate) const SHUTDOWN_NOTICE: &[u8] = b"* server shutting down\n";

/// Flow control, for every driver: how long a room waits for a member that holds it back (it is
/// owed more than the low mark while the room waits for its members to drain) before the room
/// goes on without it, and it is dropped once it is owed more than `--output-limit`. One
/// second: long enough for a reader merely descheduled on a loaded machine, short enough that
/// the others see a pause, not a hang.
pub(crate) const PACE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest name `/nick` accepts, in bytes.
pub(crate) const MAX_NAME: usize = 32;

/// The driver's key for one member (a slab index, a connection number: any unique `usize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MemberId(pub usize);

/// What the driver must do, in the order the room emits them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// `bytes` to every member except `except` (`None`: everyone) — formatted once: the driver
    /// can share one reference-counted buffer among the recipients. Members the driver has been
    /// told to [`Close`](Delivery::Close) are no longer recipients.
    Broadcast {
        /// The member that must not get it (usually the one whose line or action it reports).
        except: Option<MemberId>,
        /// The bytes, one or more whole lines.
        bytes: Vec<u8>,
    },
    /// `bytes` to one member only.
    To {
        /// The recipient.
        member: MemberId,
        /// The bytes, one or more whole lines.
        bytes: Vec<u8>,
    },
    /// The member's conversation is over (`quit`, `:q`, a line too long, end of stream): flush
    /// what is queued to it, then close, and send it no later broadcast. The room has already
    /// removed it and emitted its `* NAME left` broadcast.
    Close {
        /// The member to close.
        member: MemberId,
    },
    /// A question only the chat bus can answer, from a [shared](Room::shared) room (never from
    /// a room of one process).
    Bus(BusRequest),
}

/// What a [shared](Room::shared) room asks of the chat bus (see [`super::bus`]): the
/// decisions that need every instance's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BusRequest {
    /// `/nick`: take `name` for `member` if no instance holds it, and publish `notice` (`* OLD
    /// is now NEW`, for everyone) at that moment; answered by [`Room::renamed`] or
    /// [`Room::rename_refused`]. The member's later lines wait for the answer.
    Rename {
        /// Who asks.
        member: MemberId,
        /// The name it wants (valid, and not its own).
        name: Arc<str>,
        /// The rename notice, for every member of every instance.
        notice: Vec<u8>,
    },
    /// `/who`: list every instance's members to `member` ([`members_line`] formats them).
    Who {
        /// Who asks.
        member: MemberId,
    },
    /// `member` has left (it is no longer in the room): free `name` and publish `notice` (`*
    /// NAME left`) at that moment.
    Release {
        /// Who left.
        member: MemberId,
        /// The name it held.
        name: Arc<str>,
        /// The `left` notice, for the others.
        notice: Vec<u8>,
    },
}

/// One member's state.
#[derive(Debug)]
struct Member {
    /// The current name, shared with [`Room::names`]: one allocation per member, not two
    /// (every member pays for it; `Arc` because the blocking models share the room).
    name: Arc<str>,
    /// The start of the current line, read but not yet ended by a newline. Never holds a
    /// newline, never passes `max_line`; empty and unallocated between lines.
    partial: Vec<u8>,
}

/// One chat service's members: their names and partial lines.
#[derive(Debug)]
pub(crate) struct Room {
    members: HashMap<MemberId, Member>,
    /// Every member's current name, for the uniqueness check.
    names: HashSet<Arc<str>>,
    limits: Limits,
    /// Whether other processes share the room through the chat bus: then names are claimed,
    /// and `/who` answered, by the bus ([`Delivery::Bus`]), and every broadcast is emitted
    /// (members elsewhere may receive it).
    shared: bool,
}

impl Room {
    /// An empty room whose members' lines are bounded by `limits.max_line`.
    pub(crate) fn new(limits: Limits) -> Room {
        Room {
            members: HashMap::new(),
            names: HashSet::new(),
            limits,
            shared: false,
        }
    }

    /// An empty room shared with other processes through the chat bus: the room still decides
    /// and formats everything it can alone, and asks the bus ([`Delivery::Bus`]) what only
    /// every instance's names can tell. Members join with [`Room::join_as`].
    pub(crate) fn shared(limits: Limits) -> Room {
        Room {
            shared: true,
            ..Room::new(limits)
        }
    }

    /// Whether the room is shared through the chat bus.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// Adds `member` to a shared room as `name`, which the bus has claimed for it, with
    /// `count` members in the whole room (the newcomer included): the greeting goes to it, `*
    /// NAME joined` to everyone else, on every instance.
    pub(crate) fn join_as(
        &mut self,
        member: MemberId,
        name: &str,
        count: usize,
        out: &mut Vec<Delivery>,
    ) {
        if self.members.contains_key(&member) {
            self.leave(member, out);
        }
        let name: Arc<str> = name.into();
        self.names.insert(name.clone());
        self.welcome(member, &name, count, out);
        out.push(Delivery::Broadcast {
            except: Some(member),
            bytes: notice(&name, " joined"),
        });
        self.members.insert(
            member,
            Member {
                name,
                partial: Vec::new(),
            },
        );
    }

    /// The bus took the name `member` asked for with `/nick` (its notice is on its way to
    /// everyone): the member has it from now on.
    pub(crate) fn renamed(&mut self, member: MemberId, name: &str) {
        let Some(m) = self.members.get_mut(&member) else {
            return;
        };
        let new: Arc<str> = name.into();
        let old = std::mem::replace(&mut m.name, new.clone());
        self.names.remove(&old);
        self.names.insert(new);
    }

    /// The name `member` asked for with `/nick` is held on another instance.
    pub(crate) fn rename_refused(&mut self, member: MemberId, out: &mut Vec<Delivery>) {
        if self.members.contains_key(&member) {
            reply(member, NAME_TAKEN_REPLY, out);
        }
    }

    /// Removes every member at once without a word to anyone (the chat bus is lost: the driver
    /// tells each member and closes it; the other instances reap the names).
    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.names.clear();
    }

    /// Adds `member` as `name` (a `-2`, `-3`, ... suffix is added if `name` is taken): the
    /// greeting goes to it, `* NAME joined` to the others. An id that is already a member leaves
    /// first (a driver bug, handled rather than trusted).
    pub(crate) fn join(&mut self, member: MemberId, name: &str, out: &mut Vec<Delivery>) {
        if self.members.contains_key(&member) {
            self.leave(member, out);
        }
        let name = self.free_name(name);
        self.names.insert(name.clone());
        self.welcome(member, &name, self.members.len() + 1, out);
        self.broadcast(Some(member), notice(&name, " joined"), out);
        self.members.insert(
            member,
            Member {
                name,
                partial: Vec::new(),
            },
        );
    }

    /// Handles bytes from `member`, however the stream was chunked: every complete line is
    /// handled in order; the unterminated tail is held. Nothing happens for a non-member (one
    /// that has left or been closed).
    pub(crate) fn on_input(&mut self, member: MemberId, input: &[u8], out: &mut Vec<Delivery>) {
        let max_line = self.limits.max_line;
        let mut rest = input;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            let Some(m) = self.members.get_mut(&member) else {
                return;
            };
            if m.partial.len() + newline > max_line {
                self.refuse_long_line(member, out);
                return;
            }
            let (line, after) = (&rest[..newline], &rest[newline + 1..]);
            if m.partial.is_empty() {
                self.on_line(member, line, out);
            } else {
                // Give the buffer back: idle members hold none.
                let mut held = std::mem::take(&mut m.partial);
                held.extend_from_slice(line);
                self.on_line(member, &held, out);
            }
            rest = after;
        }
        let Some(m) = self.members.get_mut(&member) else {
            return;
        };
        if m.partial.len() + rest.len() > max_line {
            self.refuse_long_line(member, out);
            return;
        }
        m.partial.extend_from_slice(rest);
    }

    /// The peer will send nothing more: a held partial line is handled as a final line, then the
    /// member leaves (`* NAME left` to the others) and is closed. Gives the name it left under —
    /// which that final line may have changed (`/nick dave` without its newline), so the driver
    /// cannot ask [`name`](Room::name) afterwards. Nothing, and `None`, for a non-member.
    pub(crate) fn on_end(&mut self, member: MemberId, out: &mut Vec<Delivery>) -> Option<Arc<str>> {
        let m = self.members.get_mut(&member)?;
        let mut name = Arc::clone(&m.name);
        let held = std::mem::take(&mut m.partial);
        if !held.is_empty() {
            self.on_line(member, &held, out);
        }
        // The final line may have been `quit`, which has already closed it.
        if let Some(m) = self.members.get(&member) {
            name = Arc::clone(&m.name);
            self.depart(member, out);
        }
        Some(name)
    }

    /// `member` was dropped or disconnected by the driver: `* NAME left` to the others, and any
    /// partial line it held is discarded. No [`Delivery::Close`] (the driver is closing it
    /// already). Nothing for a non-member.
    pub(crate) fn leave(&mut self, member: MemberId, out: &mut Vec<Delivery>) {
        if let Some(m) = self.members.remove(&member) {
            self.names.remove(&m.name);
            let bytes = left_notice(&m.name);
            if self.shared {
                out.push(Delivery::Bus(BusRequest::Release {
                    member,
                    name: m.name,
                    notice: bytes,
                }));
            } else {
                self.broadcast(Some(member), bytes, out);
            }
        }
    }

    /// Every member, in no particular order: the recipients of a broadcast.
    pub(crate) fn members(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.members.keys().copied()
    }

    /// `member`'s current name, if it is a member.
    pub(crate) fn name(&self, member: MemberId) -> Option<&str> {
        self.members.get(&member).map(|m| &*m.name)
    }

    /// The start of `member`'s current line: read, not yet ended by a newline, and what
    /// `--max-line` bounds. No driver needs it; it is public (and hidden) because the fuzzer's
    /// invariant check, outside this crate's tests, must see the one thing the deliveries cannot
    /// show: that the room holds exactly the unfinished tail, and never more than the limit.
    #[doc(hidden)]
    #[cfg(any(test, feature = "fuzzing"))] // Only the property checks look.
    pub(crate) fn partial_line(&self, member: MemberId) -> Option<&[u8]> {
        self.members.get(&member).map(|m| &m.partial[..])
    }

    /// How many members the room has.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room has no member.
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// One complete line from a member (without its `\n`).
    fn on_line(&mut self, member: MemberId, line: &[u8], out: &mut Vec<Delivery>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"quit" || line == b":q" {
            return self.depart(member, out);
        }
        if let Some(command) = line.strip_prefix(b"/") {
            return self.on_command(member, command, out);
        }
        let name = &self.members[&member].name;
        if self.members.len() > 1 || self.shared {
            let mut bytes = Vec::with_capacity(name.len() + 2 + line.len() + 1);
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            push_escaped(line, &mut bytes);
            bytes.push(b'\n');
            out.push(Delivery::Broadcast {
                except: Some(member),
                bytes,
            });
        }
    }

    /// A line that started with `/` (given without it).
    fn on_command(&mut self, member: MemberId, command: &[u8], out: &mut Vec<Delivery>) {
        let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
        let word_end = command.iter().position(is_blank).unwrap_or(command.len());
        let (word, argument) = command.split_at(word_end);
        if word.eq_ignore_ascii_case(b"nick") {
            let start = argument
                .iter()
                .position(|b| !is_blank(b))
                .unwrap_or(argument.len());
            let end = argument
                .iter()
                .rposition(|b| !is_blank(b))
                .map_or(0, |i| i + 1);
            self.nick(member, argument.get(start..end).unwrap_or_default(), out);
        } else if word.eq_ignore_ascii_case(b"who") {
            self.who(member, out);
        } else if word.eq_ignore_ascii_case(b"quit") {
            self.depart(member, out);
        } else {
            reply(
                member,
                b"error unknown command (try /nick NAME, /who, quit)\n",
                out,
            );
        }
    }

    fn nick(&mut self, member: MemberId, new: &[u8], out: &mut Vec<Delivery>) {
        let Some(new) = valid_name(new) else {
            return reply(
                member,
                b"error bad name (1 to 32 bytes; no spaces, control or format characters; not starting with *; not shaped like an address or unix-N)\n",
                out,
            );
        };
        let m = self.members.get_mut(&member).expect("a member");
        if &*m.name == new {
            return;
        }
        if self.names.contains(new) {
            return reply(member, NAME_TAKEN_REPLY, out);
        }
        let new: Arc<str> = new.into();
        if self.shared {
            let notice = format!("* {} is now {new}\n", m.name).into_bytes();
            return out.push(Delivery::Bus(BusRequest::Rename {
                member,
                name: new,
                notice,
            }));
        }
        let old = std::mem::replace(&mut m.name, new.clone());
        self.names.remove(&old);
        self.names.insert(new.clone());
        out.push(Delivery::Broadcast {
            except: None,
            bytes: format!("* {old} is now {new}\n").into_bytes(),
        });
    }

    fn who(&self, member: MemberId, out: &mut Vec<Delivery>) {
        if self.shared {
            return out.push(Delivery::Bus(BusRequest::Who { member }));
        }
        let bytes = members_line(self.names.iter().map(|name| name.as_bytes()));
        out.push(Delivery::To { member, bytes });
    }

    /// The greeting: `* welcome NAME; N members here; /nick NAME, /who, quit`.
    fn welcome(&self, member: MemberId, name: &str, count: usize, out: &mut Vec<Delivery>) {
        let plural = if count == 1 { "member" } else { "members" };
        out.push(Delivery::To {
            member,
            bytes: format!("* welcome {name}; {count} {plural} here; /nick NAME, /who, quit\n")
                .into_bytes(),
        });
    }

    /// The member ends its conversation: it leaves, then is closed.
    fn depart(&mut self, member: MemberId, out: &mut Vec<Delivery>) {
        self.leave(member, out);
        out.push(Delivery::Close { member });
    }

    fn refuse_long_line(&mut self, member: MemberId, out: &mut Vec<Delivery>) {
        reply(member, LINE_TOO_LONG_REPLY, out);
        self.depart(member, out);
    }

    /// Emits a broadcast unless nobody but `except` could receive it (in a shared room, always:
    /// members elsewhere may). `except` must not be in
    /// `members` yet (join) or any more (leave), or be its sender.
    fn broadcast(&self, except: Option<MemberId>, bytes: Vec<u8>, out: &mut Vec<Delivery>) {
        let others = self.members.len().saturating_sub(usize::from(
            except.is_some_and(|m| self.members.contains_key(&m)),
        ));
        if others > 0 || self.shared {
            out.push(Delivery::Broadcast { except, bytes });
        }
    }

    /// `wanted`, or `wanted-2`, `wanted-3`, ... whichever is free first.
    fn free_name(&self, wanted: &str) -> Arc<str> {
        if !self.names.contains(wanted) {
            return wanted.into();
        }
        (2..)
            .map(|n| format!("{wanted}-{n}"))
            .find(|name| !self.names.contains(name.as_str()))
            .expect("a free suffix")
            .into()
    }
}

/// What a member is told when `/nick` asks for a name another member holds.
const NAME_TAKEN_REPLY: &[u8] = b"error name taken\n";

/// `/who`'s answer: `* members: a, b, c`, every name sorted bytewise (so the reply does not
/// depend on hash order, or on which instance holds whom).
pub(crate) fn members_line<'a>(names: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut names: Vec<&[u8]> = names.collect();
    names.sort_unstable();
    let mut bytes = b"* members: ".to_vec();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            bytes.extend_from_slice(b", ");
        }
        bytes.extend_from_slice(name);
    }
    bytes.push(b'\n');
    bytes
}

/// `* NAME left`: what the others are told when a member leaves (the chat bus also announces
/// a dead instance's members with it).
pub(crate) fn left_notice(name: &str) -> Vec<u8> {
    notice(name, " left")
}

/// `* NAME` followed by `what` and a newline.
fn notice(name: &str, what: &str) -> Vec<u8> {
    format!("* {name}{what}\n").into_bytes()
}

fn reply(member: MemberId, bytes: &[u8], out: &mut Vec<Delivery>) {
    out.push(Delivery::To {
        member,
        bytes: bytes.to_vec(),
    });
}

/// Whether `name` is one a member may go by (what `/nick` accepts): how a TLS client
/// certificate's common name becomes a member's first name.
pub(crate) fn is_valid_name(name: &str) -> bool {
    valid_name(name.as_bytes()).is_some()
}

/// `name` if `/nick` may take it: 1 to 32 bytes of UTF-8, no whitespace, control or format
/// character, not starting with `*`, and not shaped like a name the room gives by default.
fn valid_name(name: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(name).ok()?;
    let ok = (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with('*')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_format(c))
        && !looks_like_default_name(name);
    ok.then_some(name)
}

/// Unicode's format characters (general category Cf), as ranges of code points, complete as of
/// Unicode 15.0 to 16.0 (`DerivedGeneralCategory.txt`; checked against Python's `unicodedata`,
/// which adds only U+13439..U+1343F from 15.0). They are invisible or reorder text: with them
/// `bob` and `bob` + U+200B, or a name with a bidi override, look like another member's name.
/// No crate: std has no category lookup, and 21 ranges are smaller than any dependency.
const FORMAT_CHARACTERS: [(u32, u32); 21] = [
    (0x00AD, 0x00AD),   // soft hyphen
    (0x0600, 0x0605),   // Arabic number signs
    (0x061C, 0x061C),   // Arabic letter mark
    (0x06DD, 0x06DD),   // Arabic end of ayah
    (0x070F, 0x070F),   // Syriac abbreviation mark
    (0x0890, 0x0891),   // Arabic pound and piastre marks above
    (0x08E2, 0x08E2),   // Arabic disputed end of ayah
    (0x180E, 0x180E),   // Mongolian vowel separator
    (0x200B, 0x200F),   // zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),   // bidi embeddings and overrides
    (0x2060, 0x2064),   // word joiner, invisible operators
    (0x2066, 0x206F),   // bidi isolates, deprecated format controls
    (0xFEFF, 0xFEFF),   // zero-width no-break space (BOM)
    (0xFFF9, 0xFFFB),   // interlinear annotation controls
    (0x110BD, 0x110BD), // Kaithi number sign
    (0x110CD, 0x110CD), // Kaithi number sign above
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol format controls
    (0xE0001, 0xE0001), // language tag
    (0xE0020, 0xE007F), // tag characters
];

/// Whether `c` is a Unicode format character (category Cf). Public (and hidden) for the
/// fuzzer's invariant check, which restates the name rules.
#[doc(hidden)]
pub(crate) fn is_format(c: char) -> bool {
    let c = u32::from(c);
    FORMAT_CHARACTERS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Whether `name` could be a name the room gives a member by default — an IP address with a
/// port (`127.0.0.1:5000`, `[::1]:5000`) or `unix-N`, with or without the `-2`, `-3` suffix of
/// a taken join name — so that no member can take the name a later client would arrive under.
/// Public (and hidden) for the fuzzer's invariant check.
#[doc(hidden)]
pub(crate) fn looks_like_default_name(name: &str) -> bool {
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let shaped = |s: &str| {
        s.parse::<std::net::SocketAddr>().is_ok() || s.strip_prefix("unix-").is_some_and(is_number)
    };
    shaped(name)
        || name
            .rsplit_once('-')
            .is_some_and(|(base, suffix)| is_number(suffix) && shaped(base))
}

/// Appends `line` with every byte that could act on a terminal escaped, so no member can send
/// another an escape sequence:
///
/// * C0 controls other than tab, and DEL, in caret notation (`^[` for ESC, `^?` for DEL);
/// * C1 controls (U+0080 to U+009F, two bytes in UTF-8) as `\u{9b}` (CSI), `\u{9d}` (OSC);
/// * bytes that are not valid UTF-8 as `\x9b`, each (a terminal reading Latin-1 or a lone
///   `0x9B` would take it for CSI).
///
/// Everything else passes unchanged, so plain text in any script arrives as it was sent.
fn push_escaped(line: &[u8], out: &mut Vec<u8>) {
    // Most lines are printable ASCII: one scan, one copy.
    let plain = |b: &u8| (0x20..0x7f).contains(b) || *b == b'\t';
    if line.iter().all(plain) {
        return out.extend_from_slice(line);
    }
    for chunk in line.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut rest = valid;
        while let Some(i) = rest
            .iter()
            .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2)
        {
            out.extend_from_slice(&rest[..i]);
            let b = rest[i];
            match rest.get(i + 1) {
                // Valid UTF-8, so 0xC2 always has its continuation byte.
                Some(&next) if b == 0xc2 && (0x80..0xa0).contains(&next) => {
                    push_hex(out, b"\\u{", next, b"}");
                    rest = &rest[i + 2..];
                    continue;
                }
                _ if b == 0xc2 => out.push(b),
                _ => out.extend_from_slice(&[b'^', b ^ 0x40]),
            }
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
        for &byte in chunk.invalid() {
            push_hex(out, b"\\x", byte, b"");
        }
    }
}

/// Appends `before`, `byte` as two lowercase hex digits, then `after`.
fn push_hex(out: &mut Vec<u8>, before: &[u8], byte: u8, after: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(before);
    out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
    out.extend_from_slice(after);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const A: MemberId = MemberId(0);
    const B: MemberId = MemberId(1);
    const C: MemberId = MemberId(2);

    /// A tiny driver: carries out deliveries into per-member inboxes.
    struct Net {
        room: Room,
        inbox: BTreeMap<MemberId, Vec<u8>>,
        closed: BTreeSet<MemberId>,
    }

    impl Net {
        fn new(max_line: usize) -> Net {
            Net {
                room: Room::new(Limits {
                    max_line,
                    ..Limits::default()
                }),
                inbox: BTreeMap::new(),
                closed: BTreeSet::new(),
            }
        }

        /// A room with members `a`, `b`, `c` (ids 0, 1, 2) and empty inboxes.
        fn abc(max_line: usize) -> Net {
            let mut net = Net::new(max_line);
            for (id, name) in [(A, "a"), (B, "b"), (C, "c")] {
                net.join(id, name);
            }
            net.clear();
            net
        }

        fn join(&mut self, id: MemberId, name: &str) {
            self.inbox.insert(id, Vec::new());
            let mut out = Vec::new();
            self.room.join(id, name, &mut out);
            self.apply(out);
        }

        fn send(&mut self, id: MemberId, bytes: &[u8]) {
            let mut out = Vec::new();
            self.room.on_input(id, bytes, &mut out);
            self.apply(out);
        }

        fn end(&mut self, id: MemberId) {
            let mut out = Vec::new();
            self.room.on_end(id, &mut out);
            self.apply(out);
        }

        fn apply(&mut self, out: Vec<Delivery>) {
            for delivery in out {
                match delivery {
                    Delivery::Broadcast { except, bytes } => {
                        for (id, inbox) in &mut self.inbox {
                            if Some(*id) != except && !self.closed.contains(id) {
                                inbox.extend_from_slice(&bytes);
                            }
                        }
                    }
                    Delivery::To { member, bytes } => {
                        assert!(!self.closed.contains(&member), "To after Close");
                        self.inbox
                            .get_mut(&member)
                            .unwrap()
                            .extend_from_slice(&bytes);
                    }
                    Delivery::Close { member } => {
                        assert!(self.closed.insert(member), "closed twice");
                        assert_eq!(self.room.name(member), None);
                    }
                    Delivery::Bus(request) => panic!("a room of one process asked {request:?}"),
                }
            }
        }

        /// What `id` has received since the last call.
        fn got(&mut self, id: MemberId) -> String {
            String::from_utf8_lossy(&std::mem::take(self.inbox.get_mut(&id).unwrap())).into()
        }

        fn clear(&mut self) {
            self.inbox.values_mut().for_each(Vec::clear);
        }
    }

    #[test]
    fn join_greets_the_newcomer_and_tells_the_others() {
        let mut net = Net::new(100);
        net.join(A, "127.0.0.1:53122");
        assert_eq!(
            net.got(A),
            "* welcome 127.0.0.1:53122; 1 member here; /nick NAME, /who, quit\n"
        );
        net.join(B, "unix-1");
        assert_eq!(
            net.got(B),
            "* welcome unix-1; 2 members here; /nick NAME, /who, quit\n"
        );
        assert_eq!(net.got(A), "* unix-1 joined\n");
        assert_eq!(net.room.len(), 2);
        assert_eq!(net.room.name(B), Some("unix-1"));
    }

    /// A shared room: what it decides alone comes out as for one process, and what needs
    /// every instance's names comes out as requests to the bus, in the order the room meant.
    #[test]
    fn a_shared_room_asks_the_bus_what_only_every_instance_knows() {
        let mut room = Room::shared(Limits::default());
        assert!(room.is_shared());
        let mut out = Vec::new();
        room.join_as(A, "alice", 3, &mut out);
        assert_eq!(
            out,
            [
                Delivery::To {
                    member: A,
                    bytes: b"* welcome alice; 3 members here; /nick NAME, /who, quit\n".to_vec()
                },
                // Members elsewhere may hear it, though none is here.
                Delivery::Broadcast {
                    except: Some(A),
                    bytes: b"* alice joined\n".to_vec()
                }
            ]
        );
        out.clear();
        room.on_input(A, b"hi\n/who\n/nick bob\n", &mut out);
        assert_eq!(
            out,
            [
                Delivery::Broadcast {
                    except: Some(A),
                    bytes: b"alice: hi\n".to_vec()
                },
                Delivery::Bus(BusRequest::Who { member: A }),
                Delivery::Bus(BusRequest::Rename {
                    member: A,
                    name: "bob".into(),
                    notice: b"* alice is now bob\n".to_vec()
                }),
            ]
        );
        assert_eq!(
            room.name(A),
            Some("alice"),
            "not renamed before the bus says so"
        );
        out.clear();
        room.rename_refused(A, &mut out);
        assert_eq!(
            out,
            [Delivery::To {
                member: A,
                bytes: b"error name taken\n".to_vec()
            }]
        );
        room.renamed(A, "bob");
        assert_eq!(room.name(A), Some("bob"));
        out.clear();
        room.on_input(A, b"quit\n", &mut out);
        assert_eq!(
            out,
            [
                Delivery::Bus(BusRequest::Release {
                    member: A,
                    name: "bob".into(),
                    notice: b"* bob left\n".to_vec()
                }),
                Delivery::Close { member: A }
            ]
        );
        assert!(room.is_empty());
        assert_eq!(
            members_line([&b"b"[..], b"a", b"c"].into_iter()),
            b"* members: a, b, c\n"
        );
    }

    #[test]
    fn a_taken_join_name_gets_a_suffix() {
        let mut net = Net::new(100);
        net.join(A, "10.0.0.1:5");
        net.join(B, "10.0.0.1:5");
        net.join(C, "10.0.0.1:5");
        assert_eq!(net.room.name(B), Some("10.0.0.1:5-2"));
        assert_eq!(net.room.name(C), Some("10.0.0.1:5-3"));
    }

    #[test]
    fn joining_again_under_a_used_id_leaves_first() {
        let mut net = Net::abc(100);
        net.join(A, "again");
        assert_eq!(net.got(B), "* a left\n* again joined\n");
        assert_eq!(net.room.len(), 3);
        assert_eq!(net.room.name(A), Some("again"));
    }

    #[test]
    fn a_line_goes_to_every_other_member_only() {
        let mut net = Net::abc(100);
        net.send(A, b"hello\n");
        assert_eq!(net.got(A), "");
        assert_eq!(net.got(B), "a: hello\n");
        assert_eq!(net.got(C), "a: hello\n");
        net.send(B, b"\n");
        assert_eq!(net.got(A), "b: \n", "an empty line is a line");
    }

    #[test]
    fn a_lone_member_causes_no_broadcast() {
        let mut room = Room::new(Limits::default());
        let mut out = Vec::new();
        room.join(A, "a", &mut out);
        out.clear();
        room.on_input(A, b"anyone?\n", &mut out);
        assert_eq!(out, []);
    }

    #[test]
    fn who_answers_the_asker_only_with_every_name_sorted() {
        let mut net = Net::abc(100);
        net.send(C, b"/who\n");
        assert_eq!(net.got(C), "* members: a, b, c\n");
        assert_eq!(net.got(A) + &net.got(B), "");
        net.send(A, b"/WHO ignored argument\r\n");
        assert_eq!(net.got(A), "* members: a, b, c\n");
    }

    #[test]
    fn nick_is_announced_and_renames() {
        let mut net = Net::abc(100);
        net.send(A, b"/nick  alice \n");
        for id in [A, B, C] {
            assert_eq!(net.got(id), "* a is now alice\n");
        }
        net.send(A, b"hi\n");
        assert_eq!(net.got(B), "alice: hi\n");
        assert_eq!(net.got(C), "alice: hi\n");
        // The old name is free again, the new one taken.
        net.send(B, b"/nick a\n/nick alice\n");
        assert_eq!(net.got(B), "* b is now a\nerror name taken\n");
        assert_eq!(net.got(C), "* b is now a\n");
        assert_eq!(net.got(A), "* b is now a\n");
        // Your own name: nothing.
        net.send(C, b"/nick c\n");
        assert_eq!(net.got(A) + &net.got(B) + &net.got(C), "");
        net.send(C, b"/who\n");
        assert_eq!(net.got(C), "* members: a, alice, c\n");
    }

    #[test]
    fn bad_names_are_refused_and_not_broadcast() {
        let too_long = "x".repeat(33);
        for bad in [
            &b"/nick\n"[..],
            b"/nick \n",
            b"/nick two words\n",
            b"/nick *star\n",
            b"/nick esc\x1bx\n",
            b"/nick del\x7f\n",
            b"/nick nbsp\xc2\xa0x\n",
            b"/nick c1\xc2\x85x\n",
            b"/nick \xff\xfe\n",
            format!("/nick {too_long}\n").as_bytes(),
            // Format characters (Cf): zero-width space, LRM, RLO, an isolate, BOM, soft
            // hyphen, a tag character, a Kaithi sign.
            "/nick bob\u{200b}\n".as_bytes(),
            "/nick \u{200e}bob\n".as_bytes(),
            "/nick bob\u{202e}x\n".as_bytes(),
            "/nick \u{2066}bob\u{2069}\n".as_bytes(),
            "/nick \u{feff}bob\n".as_bytes(),
            "/nick bo\u{ad}b\n".as_bytes(),
            "/nick bob\u{e0041}\n".as_bytes(),
            "/nick \u{110bd}\n".as_bytes(),
            // Shaped like a default name.
            b"/nick 127.0.0.1:5000\n",
            b"/nick [::1]:5000\n",
            b"/nick [fe80::1%2]:1\n",
            b"/nick 10.0.0.1:5-2\n",
            b"/nick unix-1\n",
            b"/nick unix-42-3\n",
        ] {
            let mut net = Net::abc(100);
            net.send(A, bad);
            assert!(net.got(A).starts_with("error bad name"), "{bad:?}");
            assert_eq!(net.got(B), "", "{bad:?}");
            assert_eq!(net.room.name(A), Some("a"));
        }
        // Near misses of a default name are names.
        for fine in [
            "unix-",
            "unix-1a",
            "unix",
            "127.0.0.1",
            "host:80",
            "1.2.3.4:x",
            "a-2",
        ] {
            let mut net = Net::abc(100);
            net.send(A, format!("/nick {fine}\n").as_bytes());
            assert_eq!(net.got(B), format!("* a is now {fine}\n"), "{fine:?}");
        }
        // 32 bytes, multi-byte characters and a `*` inside are fine.
        let mut net = Net::abc(100);
        let name = format!("{}é*", "x".repeat(29));
        assert_eq!(name.len(), 32);
        net.send(A, format!("/nick {name}\n").as_bytes());
        assert_eq!(net.got(B), format!("* a is now {name}\n"));
    }

    #[test]
    fn unknown_commands_get_an_error_and_are_not_broadcast() {
        for line in [&b"/\n"[..], b"/me waves\n", b"/nickname x\n", b"/ who\n"] {
            let mut net = Net::abc(100);
            net.send(A, line);
            assert!(net.got(A).starts_with("error unknown command"), "{line:?}");
            assert_eq!(net.got(B), "");
        }
    }

    #[test]
    fn quit_leaves_and_closes_and_ignores_the_rest() {
        for quit in [
            &b"quit\n"[..],
            b":q\n",
            b"quit\r\n",
            b"/quit\n",
            b"/QUIT bye\n",
        ] {
            let mut net = Net::abc(100);
            let mut input = quit.to_vec();
            input.extend_from_slice(b"after\n");
            net.send(A, &input);
            assert_eq!(net.got(A), "", "{quit:?}");
            assert_eq!(net.got(B), "* a left\n", "{quit:?}");
            assert!(net.closed.contains(&A));
            assert_eq!(net.room.len(), 2);
        }
        // Not quite `quit`: a chat line.
        let mut net = Net::abc(100);
        net.send(A, b"quit now\n QUIT\n");
        assert_eq!(net.got(B), "a: quit now\na:  QUIT\n");
    }

    #[test]
    fn carriage_return_is_dropped_and_controls_are_caret_escaped() {
        let mut net = Net::abc(100);
        net.send(A, b"crlf\r\n");
        assert_eq!(net.got(B), "a: crlf\n");
        net.send(A, b"\x1b[2Jclear\tme\x7f\x00\x01\x1f\r\r\n");
        assert_eq!(net.got(B), "a: ^[[2Jclear\tme^?^@^A^_^M\n");
    }

    #[test]
    fn c1_controls_and_invalid_bytes_are_escaped_and_other_text_passes() {
        let cases: [(&[u8], &str); 9] = [
            (b"csi \xc2\x9b2J", "csi \\u{9b}2J"),
            (b"osc \xc2\x9d0;title\xc2\x9c", "osc \\u{9d}0;title\\u{9c}"),
            (b"\xc2\x80\xc2\x9f", "\\u{80}\\u{9f}"),
            (b"lone \x9b[2J", "lone \\x9b[2J"),
            (b"bad \xff utf-8 \xc3", "bad \\xff utf-8 \\xc3"),
            (b"\xc2", "\\xc2"),
            // Not C1: U+00A0 and U+00E9 start with 0xC2 and 0xC3 too.
            (
                "nbsp\u{a0} caf\u{e9} \u{65e5}\u{672c}".as_bytes(),
                "nbsp\u{a0} caf\u{e9} \u{65e5}\u{672c}",
            ),
            (b"\x1b\xc2\x9b\x9b", "^[\\u{9b}\\x9b"),
            (b"typed \\x9b ^[", "typed \\x9b ^["),
        ];
        for (sent, expected) in cases {
            let mut net = Net::abc(100);
            let mut input = sent.to_vec();
            input.push(b'\n');
            net.send(A, &input);
            let got = std::mem::take(net.inbox.get_mut(&B).unwrap());
            assert_eq!(
                String::from_utf8(got).expect("escaped output is valid UTF-8"),
                format!("a: {expected}\n"),
                "{sent:?}"
            );
        }
    }

    /// Every byte value, alone and after every other, in every split: the output is valid UTF-8
    /// with no C0 (but tab), DEL or C1 in it, and the same however the input was cut.
    #[test]
    fn no_split_and_no_byte_pair_lets_a_control_through() {
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let input = [b'x', first, second, b'y', b'\n'];
                let whole = deliveries(100, &input, &[]);
                for cut in 1..input.len() {
                    assert_eq!(
                        whole,
                        deliveries(100, &input, &[cut]),
                        "{input:?} cut at {cut}"
                    );
                }
                let Some(Delivery::Broadcast { bytes, .. }) = whole.first() else {
                    continue; // `\n` as the first byte: an empty line, or a command.
                };
                let text = std::str::from_utf8(bytes).expect("valid UTF-8");
                let line = text.strip_suffix('\n').unwrap();
                assert!(
                    !line.chars().any(|c| c.is_control() && c != '\t'),
                    "{input:?} gave {line:?}"
                );
            }
        }
    }

    #[test]
    fn the_end_of_stream_gives_the_name_the_member_left_under() {
        let mut room = Room::new(Limits::default());
        let mut out = Vec::new();
        room.join(A, "a", &mut out);
        room.join(B, "b", &mut out);
        room.join(C, "c", &mut out);
        // A rename as the last, unterminated line: it takes effect, then the member leaves.
        room.on_input(A, b"/nick dave", &mut out);
        assert_eq!(room.on_end(A, &mut out).as_deref(), Some("dave"));
        assert_eq!(room.name(A), None);
        // `quit` as the last line has closed it already: the name it had.
        room.on_input(B, b"quit", &mut out);
        assert_eq!(room.on_end(B, &mut out).as_deref(), Some("b"));
        room.on_end(C, &mut out);
        assert_eq!(room.on_end(C, &mut out), None, "no longer a member");
    }

    #[test]
    fn a_line_at_the_limit_passes_one_more_byte_closes() {
        let mut net = Net::abc(4);
        net.send(A, b"abcd\nab\r\n");
        assert_eq!(net.got(B), "a: abcd\na: ab\n");
        net.send(A, b"abcd\r\n");
        assert_eq!(net.got(A), "error line too long\n");
        assert_eq!(net.got(B), "* a left\n");
        assert!(net.closed.contains(&A));
    }

    #[test]
    fn a_long_line_in_small_chunks_is_refused_before_its_newline() {
        let mut net = Net::abc(10);
        for _ in 0..10 {
            net.send(A, b"x");
        }
        assert_eq!(net.got(A) + &net.got(B), "");
        net.send(A, b"y");
        assert_eq!(net.got(A), "error line too long\n");
        assert_eq!(net.got(B), "* a left\n");
        assert!(net.closed.contains(&A));
        net.send(A, b"\n");
        assert_eq!(net.got(B), "", "nothing of the long line is ever broadcast");
    }

    #[test]
    fn partial_lines_are_held_bounded_and_given_back() {
        let mut room = Room::new(Limits {
            max_line: 1000,
            ..Limits::default()
        });
        let mut out = Vec::new();
        room.join(A, "a", &mut out);
        room.join(B, "b", &mut out);
        assert_eq!(room.members[&A].partial.capacity(), 0);
        room.on_input(A, &[b'x'; 600], &mut out);
        assert_eq!(room.members[&A].partial.len(), 600);
        room.on_input(A, b"\nnext", &mut out);
        assert_eq!(room.members[&A].partial, b"next");
        room.on_input(A, b"\n", &mut out);
        assert_eq!(room.members[&A].partial.capacity(), 0, "idle holds nothing");
        out.clear();
        room.on_input(A, &[b'x'; 600], &mut out);
        room.on_input(A, &[b'x'; 401], &mut out);
        assert!(!room.members.contains_key(&A));
        assert_eq!(
            out[0],
            Delivery::To {
                member: A,
                bytes: LINE_TOO_LONG_REPLY.to_vec()
            }
        );
    }

    #[test]
    fn end_of_stream_broadcasts_the_partial_line_then_leaves() {
        let mut net = Net::abc(100);
        net.send(A, b"one\ntwo");
        net.end(A);
        assert_eq!(net.got(B), "a: one\na: two\n* a left\n");
        assert_eq!(net.got(C), "a: one\na: two\n* a left\n");
        assert!(net.closed.contains(&A));
        // A final `quit` without newline closes once.
        net.send(B, b"quit");
        net.end(B);
        assert_eq!(net.got(C), "* b left\n");
        assert!(net.closed.contains(&B));
        // A non-member: nothing.
        net.end(A);
        assert_eq!(net.got(C), "");
    }

    #[test]
    fn a_dropped_member_leaves_without_its_partial_line() {
        let mut net = Net::abc(100);
        net.send(A, b"half a li");
        let mut out = Vec::new();
        net.room.leave(A, &mut out);
        assert_eq!(
            out,
            [Delivery::Broadcast {
                except: Some(A),
                bytes: b"* a left\n".to_vec()
            }]
        );
        out.clear();
        net.room.leave(A, &mut out);
        net.room.on_input(A, b"ne\n", &mut out);
        assert_eq!(out, [], "a non-member is ignored");
        assert_eq!(net.room.len(), 2);
        assert!(!net.room.names.contains("a"), "its name is free again");
    }

    /// Every delivery from `input` sent by `a` (cut at `cuts`) in a room of a, b and c, ending
    /// with `a`'s end of stream.
    fn deliveries(max_line: usize, input: &[u8], cuts: &[usize]) -> Vec<Delivery> {
        let mut room = Room::new(Limits {
            max_line,
            ..Limits::default()
        });
        let mut out = Vec::new();
        for (id, name) in [(A, "a"), (B, "b"), (C, "c")] {
            room.join(id, name, &mut out);
        }
        out.clear();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            room.on_input(A, &input[start..cut], &mut out);
            start = cut;
        }
        room.on_end(A, &mut out);
        out
    }

    /// Pieces that make interesting chat input when strung together.
    fn chat_input() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&[u8]] = &[
            b"\n",
            b"\r",
            b"\r\n",
            b"hello",
            b" ",
            b"/nick ",
            b"b",
            b"zed",
            b"/who",
            b"/",
            b"quit",
            b":q",
            b"\x1b",
            b"\x7f",
            b"\0",
            b"\t",
            "é".as_bytes(),
            b"\xff",
            b"\xc2",
            b"\x9b",
            b"\xc2\x9b",
        ];
        let piece = proptest::sample::select(PIECES);
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// However the input is cut, the room emits exactly the same deliveries, so every
        /// recipient gets the same bytes.
        #[test]
        fn every_split_gives_the_same_deliveries(
            input in chat_input(),
            mut cuts in proptest::collection::vec(0usize..200, 0..12),
            max_line in 1usize..40,
        ) {
            cuts.sort_unstable();
            let whole = deliveries(max_line, &input, &[]);
            let cut = deliveries(max_line, &input, &cuts);
            prop_assert_eq!(whole, cut);
        }

        /// Plain text (no command), however cut: the others get each line, `\r` dropped and
        /// controls escaped, up to the first line over the limit; the sender gets nothing but
        /// `error line too long` then, and is closed.
        #[test]
        fn plain_lines_follow_the_rules(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(0x1b), Just(b'x'), Just(b'\t')],
                0..200,
            ),
            mut cuts in proptest::collection::vec(0usize..200, 0..12),
            max_line in 1usize..30,
        ) {
            cuts.sort_unstable();
            let mut net = Net::abc(max_line);
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                let cut = cut.clamp(start, input.len());
                net.send(A, &input[start..cut]);
                start = cut;
            }
            net.end(A);

            let mut expected = String::new();
            let mut too_long = false;
            let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if lines.last().is_some_and(|last| last.is_empty()) {
                lines.pop();
            }
            for line in lines {
                if line.len() > max_line {
                    too_long = true;
                    break;
                }
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let mut escaped = Vec::new();
                push_escaped(line, &mut escaped);
                expected += &format!("a: {}\n", String::from_utf8(escaped).unwrap());
            }
            expected += "* a left\n";
            prop_assert_eq!(net.got(B), expected);
            let reply = if too_long { "error line too long\n" } else { "" };
            prop_assert_eq!(net.got(A), reply);
            prop_assert!(net.closed.contains(&A));
        }
    }
}
