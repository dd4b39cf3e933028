//! The chat load's "one order" check: does every member see the senders' lines in the same
//! interleaving? Sans-I/O: lines in (member, sender, SEQ), a verdict out.
//!
//! ## Pairwise order fingerprints
//!
//! Storing every member's receipt order to compare them would cost memory per line. Instead each
//! member keeps, for each unordered pair of senders {a, b} (a < b), one order-sensitive 64-bit
//! hash of how it received their lines interleaved. Each member gets a's lines in SEQ order and
//! b's in SEQ order (the caller checks that), so the interleaving is fixed by one number per
//! line of a: how many of b's lines had come before it. That is what is hashed ([`fold`]): when
//! a line of sender `s` arrives, each pair {s, t} with t > s folds in the number of t's lines
//! the member has received so far. Hashing those counts rather than the merged sequence itself
//! is the same information, but it puts a line's updates in one row — the pairs whose first is
//! the line's own sender, side by side in memory, (K − 1) / 2 of them per line on average. (The
//! merged sequence's hash needs K − 1 updates per line, half of them scattered over other
//! rows: measured on this machine at 200 members, 107 ns per line at 64 senders and 9 ns at 10,
//! against 35 ns and 3 ns for the counts.)
//!
//! A member that is itself a sender never receives its own lines, so its pairs with itself are
//! not compared. They are updated all the same: a branch per pair to skip them cost more than
//! the folds it saved (62 ns per line at 64 senders with it). At the end, for each pair, every
//! member that is neither a nor b has received all of a's and b's lines (or it already has an
//! error), so equal hashes mean the same interleaving. Two interleavings that differ in one
//! count always give different hashes (each fold is a bijection of the running hash for a given
//! input, and so is folding the same later inputs); beyond that, a chance collision is about
//! 2⁻⁶⁴ per comparison.
//!
//! Memory is fixed: K (K − 1) / 2 hashes and K counts per member (K = 10: 440 bytes). Only the
//! first [`MAX_ORDERED_SENDERS`] senders' lines take part: at 64 that is 16 KiB per member
//! (32 MiB for 2,048 members) and 31.5 hash updates per line on average (35 ns); past it the memory and
//! the per-line cost grow with K², for little more proof. Lines of later senders are still
//! checked per sender, exactly once and in order.
//!
//! ## Why pairs suffice
//!
//! Every member's lines from one sender are checked to come in SEQ order (exactly once, in the
//! caller), so one sender's lines are ordered the same everywhere. For two lines x, y of
//! different senders, the pair check makes every member that sees both agree on which comes
//! first. Take that as a relation on all the lines: it is total and antisymmetric — a
//! tournament — and a tournament is a total order exactly when it has no cycle of three. A
//! cycle of three lines has at most three senders among it; any member that is none of them
//! sees all three lines, in its own (total, hence acyclic) order, and agrees with the relation
//! on each of the three: so no such cycle exists, and one global order is consistent with what
//! every member saw.
//!
//! That needs, for every three senders, a member that is none of them: always true when some
//! member does not send (K < N), and when everyone sends (K = N) as soon as N ≥ 4. With
//! K = N = 3 each pair has a single witness, the comparison is empty and nothing is proven (the
//! three members could each see a different one of the three cyclic orders); with K = N = 2 no
//! member sees two senders, and there is nothing to prove. With more than
//! [`MAX_ORDERED_SENDERS`] senders the argument holds for the lines of the first ones.
//!
//! ## The verdict
//!
//! A member that already has an error (a wrong, missing or duplicated line, or dropped before
//! the end) holds hashes that differ for that reason alone, so the caller leaves it out: "order
//! differs" is reported only for members whose every line was right. For each pair the hash
//! most witnesses hold is the room's (ties: the smallest hash, so that the verdict does not
//! depend on member numbering), and each member holding another one, for at least one pair, is
//! one member that saw another order.

/// Most senders whose lines take part in the order check (see the module documentation).
pub(crate) const MAX_ORDERED_SENDERS: usize = 64;

/// The hash of an empty sequence: FNV-1a's 64-bit offset basis (any constant would do).
const EMPTY: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV's 64-bit prime: odd, so each fold is a bijection on the running hash.
const FOLD_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 2⁶⁴ divided by the golden ratio, odd: spreads a small count over the whole word.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Folds one count (of the pair's second sender's lines, at a line of its first) into a running
/// hash, FNV-1a style on whole words: the count spread over the word by a multiply, then xor,
/// multiply by an odd prime, and a rotation so that the high bits the multiply fills feed the
/// next fold's low ones. Order-sensitive, and for a given count a bijection of the hash.
fn fold(hash: u64, count: u64) -> u64 {
    (hash ^ count.wrapping_mul(GOLDEN_GAMMA))
        .wrapping_mul(FOLD_PRIME)
        .rotate_left(29)
}

/// Every member's pairwise order fingerprints.
#[derive(Debug)]
pub(crate) struct OrderPrints {
    /// Members of the room.
    members: usize,
    /// Senders whose lines take part: the first `ordered` of them.
    ordered: usize,
    /// Pairs of those senders: `ordered (ordered − 1) / 2`.
    pairs: usize,
    /// `prints[r * pairs + pair_index(a, b)]`: member r's hash of how a's and b's lines
    /// interleaved (row a's pairs side by side).
    prints: Vec<u64>,
    /// `received[r * ordered + s]`: lines of sender s member r has received.
    received: Vec<u64>,
}

/// A pair of senders on which two members disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Disagreement {
    /// The pair's senders, `a < b`.
    pub a: usize,
    /// The pair's other sender.
    pub b: usize,
    /// A member that saw their lines in another order than the room's.
    pub member: usize,
    /// A member that saw the room's order.
    pub reference: usize,
}

/// What [`OrderPrints::verdict`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Members that saw another order than the room's for at least one pair, ascending.
    pub differing: Vec<usize>,
    /// The first disagreement found (lowest pair, then lowest member).
    pub first: Option<Disagreement>,
}

impl OrderPrints {
    /// Fingerprints for `members` members of a room whose first `senders` members send.
    pub(crate) fn new(members: usize, senders: usize) -> OrderPrints {
        let ordered = senders.min(MAX_ORDERED_SENDERS).min(members);
        let pairs = ordered * ordered.saturating_sub(1) / 2;
        OrderPrints {
            members,
            ordered,
            pairs,
            prints: vec![EMPTY; members * pairs],
            received: vec![0; members * ordered],
        }
    }

    /// Where pair {a, b}, `a < b < ordered`, is in a member's hashes.
    fn pair_index(&self, a: usize, b: usize) -> usize {
        debug_assert!(a < b && b < self.ordered);
        a * (2 * self.ordered - a - 1) / 2 + (b - a - 1)
    }

    /// Member `r` received the next line of sender `s` (after the per-sender checks: a line
    /// refused as a duplicate or out of order is not recorded).
    pub(crate) fn record(&mut self, r: usize, s: usize) {
        if s >= self.ordered {
            return;
        }
        let ordered = self.ordered;
        let counts = &mut self.received[r * ordered..(r + 1) * ordered];
        counts[s] += 1;
        if s + 1 == ordered {
            return; // the last sender is no pair's first
        }
        // Row s, from pair {s, s + 1} (`pair_index`, written out: `self` is borrowed).
        let row = r * self.pairs + s * (2 * ordered - s - 1) / 2;
        let hashes = &mut self.prints[row..row + ordered - s - 1];
        // Pair {s, r} too, at member r: never compared, and folding it costs less than the
        // branch per pair that would skip it (see the module documentation).
        for (hash, &count) in hashes.iter_mut().zip(&counts[s + 1..]) {
            *hash = fold(*hash, count);
        }
    }

    /// Compares, pair by pair, the hashes of the members `trusted` says to compare (those with
    /// no other error) that are not in the pair.
    pub(crate) fn verdict(&self, trusted: impl Fn(usize) -> bool) -> Verdict {
        let members = self.members;
        let mut differs = vec![false; members];
        let mut first = None;
        let mut witnesses: Vec<(u64, usize)> = Vec::with_capacity(members);
        for a in 0..self.ordered {
            for b in a + 1..self.ordered {
                let pair = self.pair_index(a, b);
                witnesses.clear();
                witnesses.extend(
                    (0..members)
                        .filter(|&r| r != a && r != b && trusted(r))
                        .map(|r| (self.prints[r * self.pairs + pair], r)),
                );
                let Some((room, reference)) = most_common(&mut witnesses) else {
                    continue;
                };
                for &(hash, r) in &witnesses {
                    if hash != room {
                        differs[r] = true;
                        let candidate = Disagreement {
                            a,
                            b,
                            member: r,
                            reference,
                        };
                        if first
                            .map_or(true, |d: Disagreement| (d.a, d.b) == (a, b) && r < d.member)
                        {
                            first = Some(candidate);
                        }
                    }
                }
            }
        }
        Verdict {
            differing: (0..members).filter(|&r| differs[r]).collect(),
            first,
        }
    }
}

/// The hash most witnesses hold (ties: the smallest) and the lowest-numbered member holding it;
/// `None` without witnesses. Sorts `witnesses`.
fn most_common(witnesses: &mut [(u64, usize)]) -> Option<(u64, usize)> {
    witnesses.sort_unstable();
    let mut best: Option<(usize, u64, usize)> = None; // (count, hash, lowest member)
    for run in witnesses.chunk_by(|x, y| x.0 == y.0) {
        let (hash, lowest) = run[0];
        if best.map_or(true, |(count, _, _)| run.len() > count) {
            best = Some((run.len(), hash, lowest));
        }
    }
    best.map(|(_, hash, lowest)| (hash, lowest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fingerprints of `members` members after each received `lines[r]` (sender, SEQ) in order.
    fn prints(members: usize, senders: usize, lines: &[Vec<(usize, u64)>]) -> OrderPrints {
        let mut order = OrderPrints::new(members, senders);
        for (r, received) in lines.iter().enumerate() {
            for &(s, _seq) in received {
                order.record(r, s);
            }
        }
        order
    }

    /// One interleaving of three senders' lines, `per` each, as member `r` receives it (its own
    /// lines left out).
    fn room_order(r: usize, per: u64) -> Vec<(usize, u64)> {
        let mut lines = Vec::new();
        for seq in 0..per {
            for s in [2, 0, 1] {
                if s != r {
                    lines.push((s, seq));
                }
            }
        }
        lines
    }

    #[test]
    fn the_same_interleaving_everywhere_passes() {
        // Five members, three senders: 0, 1, 2 send, 3 and 4 only listen.
        let lines: Vec<_> = (0..5).map(|r| room_order(r, 20)).collect();
        let order = prints(5, 3, &lines);
        assert_eq!(order.verdict(|_| true), Verdict::default());
    }

    #[test]
    fn two_senders_lines_swapped_at_one_member_fail() {
        let mut lines: Vec<_> = (0..5).map(|r| room_order(r, 20)).collect();
        // Member 4 gets 0's line 7 after 1's line 7 (they are side by side in the room's order).
        let at = lines[4].iter().position(|&l| l == (0, 7)).unwrap();
        assert_eq!(lines[4][at + 1], (1, 7));
        lines[4].swap(at, at + 1);
        let order = prints(5, 3, &lines);
        let verdict = order.verdict(|_| true);
        assert_eq!(verdict.differing, vec![4]);
        assert_eq!(
            verdict.first,
            Some(Disagreement {
                a: 0,
                b: 1,
                member: 4,
                reference: 2
            })
        );
        // A member with another error is not compared.
        assert_eq!(order.verdict(|r| r != 4), Verdict::default());
    }

    #[test]
    fn a_member_in_the_pair_is_not_compared_for_it() {
        let mut lines: Vec<_> = (0..5).map(|r| room_order(r, 5)).collect();
        // Sender 2 sees 0's and 1's lines in another order than the room: it witnesses {0, 1},
        // so that is caught...
        let mut other = lines.clone();
        let at = other[2].iter().position(|&l| l == (0, 3)).unwrap();
        other[2].swap(at, at + 1);
        assert_eq!(prints(5, 3, &other).verdict(|_| true).differing, vec![2]);
        // ...but pairs {0, 2} and {1, 2} are not compared at member 2: lines of its "own"
        // (which the caller refuses) in the middle of its view would change both if they were.
        lines[2].insert(4, (2, 1));
        lines[2].insert(0, (2, 0));
        let order = prints(5, 3, &lines);
        assert_eq!(order.verdict(|_| true), Verdict::default());
        // The same lines at member 3, which witnesses those pairs, are caught.
        lines[3].insert(0, (2, 99));
        assert_eq!(prints(5, 3, &lines).verdict(|_| true).differing, vec![3]);
    }

    #[test]
    fn swapping_lines_of_one_pair_only_shows_in_that_pair() {
        let mut lines: Vec<_> = (0..5).map(|r| room_order(r, 3)).collect();
        // Member 3 gets 2's line 1 after 0's line 1: pair {0, 2} differs, {1, 2} and {0, 1}
        // keep their orders.
        let at = lines[3].iter().position(|&l| l == (2, 1)).unwrap();
        assert_eq!(lines[3][at + 1], (0, 1));
        lines[3].swap(at, at + 1);
        let verdict = prints(5, 3, &lines).verdict(|_| true);
        assert_eq!(verdict.differing, vec![3]);
        let first = verdict.first.unwrap();
        assert_eq!((first.a, first.b, first.member), (0, 2, 3));
    }

    #[test]
    fn the_majority_is_the_rooms_order() {
        // Members 3, 4 and 5 agree; 6 does not: 6 is the one reported, whatever its number.
        let mut lines: Vec<_> = (0..7).map(|r| room_order(r, 4)).collect();
        let at = lines[6].iter().position(|&l| l == (0, 2)).unwrap();
        lines[6].swap(at, at + 1);
        let verdict = prints(7, 3, &lines).verdict(|_| true);
        assert_eq!(verdict.differing, vec![6]);
        // Two against one the other way round: member 3 is the odd one out.
        let mut lines: Vec<_> = (0..7).map(|r| room_order(r, 4)).collect();
        let at = lines[3].iter().position(|&l| l == (0, 2)).unwrap();
        lines[3].swap(at, at + 1);
        assert_eq!(prints(7, 3, &lines).verdict(|_| true).differing, vec![3]);
    }

    #[test]
    fn fewer_than_two_ordered_senders_have_nothing_to_compare() {
        let order = prints(4, 1, &[vec![], vec![(0, 0)], vec![(0, 0)], vec![(0, 0)]]);
        assert_eq!(order.verdict(|_| true), Verdict::default());
        assert_eq!(OrderPrints::new(3, 0).verdict(|_| true), Verdict::default());
    }

    #[test]
    fn only_the_first_senders_are_ordered() {
        let order = OrderPrints::new(2048, 2048);
        assert_eq!(order.ordered, MAX_ORDERED_SENDERS);
        assert_eq!(order.prints.len(), 2048 * 64 * 63 / 2);
        let mut order = OrderPrints::new(100, 100);
        order.record(0, 80); // past the ordered senders: ignored
        assert!(order.prints.iter().all(|&h| h == EMPTY));
    }

    #[test]
    fn pair_indices_cover_every_pair_once() {
        let order = OrderPrints::new(9, 9);
        let mut seen = vec![false; order.pairs];
        for a in 0..9 {
            for b in a + 1..9 {
                let at = order.pair_index(a, b);
                assert!(!seen[at], "{a} {b}");
                seen[at] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn each_pairs_hash_folds_the_count_of_its_second_senders_lines() {
        let (members, senders) = (7, 6);
        let lines: Vec<Vec<(usize, u64)>> = (0..members)
            .map(|r| {
                (0..40u64)
                    .map(|k| ((k * 7 + r as u64) % senders as u64, k))
                    .map(|(s, k)| (s as usize, k))
                    .filter(|&(s, _)| s != r)
                    .collect()
            })
            .collect();
        let order = prints(members, senders, &lines);
        for (r, received) in lines.iter().enumerate() {
            for a in 0..senders {
                for b in a + 1..senders {
                    if a == r || b == r {
                        continue;
                    }
                    // At each line of a, the number of b's lines before it.
                    let mut bs = 0;
                    let mut expected = EMPTY;
                    for &(s, _) in received {
                        if s == b {
                            bs += 1;
                        } else if s == a {
                            expected = fold(expected, bs);
                        }
                    }
                    let at = r * order.pairs + order.pair_index(a, b);
                    assert_eq!(order.prints[at], expected, "member {r}, pair {a} {b}");
                }
            }
        }
    }

    #[test]
    fn folds_are_order_sensitive() {
        assert_ne!(fold(fold(EMPTY, 0), 1), fold(fold(EMPTY, 1), 0));
        assert_ne!(fold(fold(EMPTY, 3), 3), fold(fold(EMPTY, 3), 4));
    }
}
