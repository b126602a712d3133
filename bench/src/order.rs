//! The order in which a round runs the subjects.
//!
//! A run leaves work behind that the next one pays for: gVisor's sandbox teardown, a shim's
//! exit, page cache. With the same cyclic order every round (a rotation), each subject would
//! follow the same predecessor in all but one round of `n`, so the subject after the heaviest
//! one would carry its cost in nearly every sample. Rounds instead follow a Williams design (a
//! balanced Latin square): over `n` rounds (`2n` when `n` is odd) every subject runs in every
//! position equally often and directly follows every other subject equally often.

/// The subject indices of `round` for `n` subjects: a permutation of `0..n`.
pub fn round_order(round: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    // First row 0, 1, n-1, 2, n-2, ...; row r adds r (mod n). For odd n, every other block of
    // n rows is mirrored, which balances the pairs the first block leaves uneven.
    let base = (0..n).map(|j| {
        if j == 0 {
            0
        } else if j % 2 == 1 {
            j.div_ceil(2)
        } else {
            n - j / 2
        }
    });
    let r = round % n;
    let mut row: Vec<usize> = base.map(|b| (b + r) % n).collect();
    if !n.is_multiple_of(2) && !(round / n).is_multiple_of(2) {
        row.reverse();
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check_balanced(n: usize) {
        let rounds = if n.is_multiple_of(2) { n } else { 2 * n };
        let mut follows: HashMap<(usize, usize), usize> = HashMap::new();
        let mut position = vec![vec![0usize; n]; n];
        for round in 0..rounds {
            let row = round_order(round, n);
            let mut sorted = row.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "round {round}: {row:?}");
            for (p, &s) in row.iter().enumerate() {
                position[s][p] += 1;
            }
            for w in row.windows(2) {
                *follows.entry((w[0], w[1])).or_default() += 1;
            }
        }
        let per_pair = rounds / n;
        for (a, seen) in position.iter().enumerate() {
            for b in (0..n).filter(|&b| b != a) {
                assert_eq!(
                    follows.get(&(a, b)).copied().unwrap_or(0),
                    per_pair,
                    "n={n}: {b} after {a}"
                );
            }
            assert!(
                seen.iter().all(|&c| c == rounds / n),
                "n={n}: subject {a} positions {seen:?}"
            );
        }
    }

    #[test]
    fn every_subject_follows_every_other_equally_often() {
        for n in 2..=9 {
            check_balanced(n);
        }
    }

    #[test]
    fn a_rotation_would_not_be() {
        // What the harness did before: subject 0 followed subject n-1 in n-1 of n rounds.
        let n = 6;
        let after_last = (0..n)
            .filter(|r| {
                let row: Vec<usize> = (0..n).map(|k| (k + r) % n).collect();
                row.windows(2).any(|w| w == [n - 1, 0])
            })
            .count();
        assert_eq!(after_last, n - 1);
        let balanced = (0..n)
            .filter(|&r| round_order(r, n).windows(2).any(|w| w == [n - 1, 0]))
            .count();
        assert_eq!(balanced, 1);
    }

    #[test]
    fn single_and_empty() {
        assert_eq!(round_order(3, 1), vec![0]);
        assert!(round_order(0, 0).is_empty());
    }
}
