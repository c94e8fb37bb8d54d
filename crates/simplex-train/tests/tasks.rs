//! Task generators against independent brute-force labelers, splits, balance, seeds, errors.

use std::collections::HashSet;

use simplex_train::rng::SplitMix64;
use simplex_train::tasks::{
    augment, by_name, exact_match, generate_splits, token_accuracy, Compose, Example, Match2,
    Match3, Relation, Score, SplitSizes, Task, TrainStream, IGNORE, PAD,
};

/// Draws `k` examples of every bin of `task`.
fn examples(task: &dyn Task, k: usize, seed: u64) -> Vec<Example> {
    let mut rng = SplitMix64::new(seed);
    (0..k * task.bins())
        .map(|i| task.example(i % task.bins(), &mut rng).unwrap())
        .collect()
}

fn well_formed(task: &dyn Task, ex: &Example) {
    assert_eq!(ex.tokens.len(), ex.labels.len());
    assert!(task.seq_len_range().contains(&ex.len()), "{ex:?}");
    for (&t, &l) in ex.tokens.iter().zip(&ex.labels) {
        assert!(t != PAD && (t as usize) < task.vocab_size(), "{ex:?}");
        assert!(l == IGNORE || (l as usize) < task.num_classes(), "{ex:?}");
    }
}

#[test]
fn match3_labels_are_brute_force_triples() {
    for (task, m) in [
        (Match3::default(), 37u32),
        (Match3::new(7, 2..=6).unwrap(), 7),
        (Match3::new(13, 3..=8).unwrap(), 13),
    ] {
        for ex in examples(&task, 20, m as u64) {
            well_formed(&task, &ex);
            let x = &ex.tokens;
            assert!(x.iter().all(|&v| (1..m).contains(&v)));
            for i in 0..x.len() {
                let mut want = 0;
                for j in 0..x.len() {
                    for k in 0..x.len() {
                        if (x[i] + x[j] + x[k]) % m == 0 {
                            want = 1;
                        }
                    }
                }
                assert_eq!(ex.labels[i], want, "i={i} {x:?}");
            }
        }
    }
    // a hand-checked case, M = 7: 1+3+3 = 7, 3+1+3 = 7; 5: 5+1+1 = 7; 6: 6+... needs 1 = 1+0 no,
    // 6 + x + y = 7 or 14: x + y = 1 or 8 -> 5+3 = 8 yes
    let t = Match3::new(7, 1..=4).unwrap();
    assert_eq!(t.label(&[1, 3, 5, 6]), vec![1, 1, 1, 1]);
    assert_eq!(t.label(&[1]), vec![0]); // 3 != 0 mod 7
                                        // pair sums of {2, 4}: 4, 6, 8 = 1; 2 + {4, 6, 1} and 4 + {4, 6, 1} are never 0 mod 7
    assert_eq!(t.label(&[2, 4]), vec![0, 0]);
}

#[test]
fn match2_labels_are_brute_force_pairs() {
    for (task, m) in [
        (Match2::default(), 37u32),
        (Match2::new(5, 1..=6).unwrap(), 5),
    ] {
        for ex in examples(&task, 25, 3) {
            well_formed(&task, &ex);
            let x = &ex.tokens;
            for i in 0..x.len() {
                let want = (0..x.len()).any(|j| (x[i] + x[j]) % m == 0) as u32;
                assert_eq!(ex.labels[i], want, "i={i} {x:?}");
            }
        }
    }
}

#[test]
fn compose_labels_are_brute_force_lookups() {
    for task in [Compose::default(), Compose::new(3, 1..=4).unwrap()] {
        let n = task.num_classes() as u32;
        for ex in examples(&task, 60, 5) {
            well_formed(&task, &ex);
            let t = &ex.tokens;
            assert_eq!(t.iter().filter(|&&v| v > n).count(), 2 * n as usize);
            for i in 0..t.len() {
                if t[i] > n {
                    assert_eq!(ex.labels[i], IGNORE);
                    continue;
                }
                let q = t[i] - 1;
                let mut found = vec![];
                for j in 0..t.len() {
                    for k in 0..t.len() {
                        // j: g entry (q, y); k: f entry (y, w)
                        let (gj, fk) = (
                            t[j] as i64 - 1 - n as i64,
                            t[k] as i64 - 1 - (n + n * n) as i64,
                        );
                        if (0..(n * n) as i64).contains(&gj)
                            && (0..(n * n) as i64).contains(&fk)
                            && gj / n as i64 == q as i64
                            && fk / n as i64 == gj % n as i64
                        {
                            found.push((fk % n as i64) as u32);
                        }
                    }
                }
                assert_eq!(found.len(), 1, "{t:?}");
                assert_eq!(ex.labels[i], found[0], "i={i} {t:?}");
            }
        }
    }
}

#[test]
fn relation_labels_are_brute_force_compositions() {
    for task in [Relation::default(), Relation::new(3, 1..=5, 4).unwrap()] {
        let n = ((task.vocab_size() - 1) / 2) as u32; // n^2
        for ex in examples(&task, 25, 9) {
            well_formed(&task, &ex);
            let t = &ex.tokens;
            let edges: Vec<u32> = t.iter().copied().filter(|&v| v <= n).collect();
            let distinct: HashSet<u32> = edges.iter().copied().collect();
            assert_eq!(distinct.len(), edges.len(), "edges repeat: {t:?}");
            let items = (n as f64).sqrt() as u32;
            for i in 0..t.len() {
                if t[i] <= n {
                    assert_eq!(ex.labels[i], IGNORE);
                    continue;
                }
                let (a, c) = ((t[i] - 1 - n) / items, (t[i] - 1 - n) % items);
                let mut want = 0;
                for j in 0..t.len() {
                    for k in 0..t.len() {
                        if t[j] <= n && t[k] <= n {
                            let (a1, b1) = ((t[j] - 1) / items, (t[j] - 1) % items);
                            let (b2, c2) = ((t[k] - 1) / items, (t[k] - 1) % items);
                            if a1 == a && b1 == b2 && c2 == c {
                                want = 1;
                            }
                        }
                    }
                }
                assert_eq!(ex.labels[i], want, "i={i} {t:?}");
            }
        }
    }
}

#[test]
fn splits_are_disjoint_balanced_and_seeded() {
    let sizes = SplitSizes {
        train: 203,
        validation: 40,
        test: 41,
    };
    for name in ["match3", "match2", "compose", "relation"] {
        let task = by_name(name).unwrap();
        let s = generate_splits(task.as_ref(), 11, sizes).unwrap();
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (203, 40, 41)
        );
        let mut seen = HashSet::new();
        for ex in s.train.iter().chain(&s.validation).chain(&s.test) {
            well_formed(task.as_ref(), ex);
            assert_eq!(task.label(&ex.tokens), ex.labels);
            let mut key = ex.tokens.clone();
            key.sort();
            assert!(seen.insert(key), "{name}: a base sequence twice: {ex:?}");
        }
        // augmentations keep labels right and the base sequence
        let mut rng = SplitMix64::new(1);
        for ex in &s.train[..20] {
            let a = augment(ex, &mut rng);
            assert_eq!(task.label(&a.tokens), a.labels);
            assert_eq!(a.canonical(), ex.canonical());
        }
        // balance: example i of a split is drawn for bin i % 4
        for split in [&s.train, &s.validation, &s.test] {
            let mut counts = vec![0usize; task.bins()];
            for ex in split {
                counts[task.bin_of(ex)] += 1;
            }
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{name}: bins {counts:?}");
        }
        if task.bins() == 4 {
            let mut c = [0; 4];
            for ex in &s.train {
                let f = ex.positive_fraction();
                c[if f < 0.25 {
                    0
                } else if f < 0.5 {
                    1
                } else if f < 0.75 {
                    2
                } else {
                    3
                }] += 1;
            }
            assert_eq!(c, [51, 51, 51, 50], "{name}");
        }
        assert_eq!(s, generate_splits(task.as_ref(), 11, sizes).unwrap());
        assert_ne!(
            s.train,
            generate_splits(task.as_ref(), 12, sizes).unwrap().train
        );
    }
}

#[test]
fn bad_parameters_are_clear_errors() {
    let msg = |e: simplex_train::TrainError| e.to_string();
    let e = msg(Match3::new(1, 30..=35).unwrap_err());
    assert!(e.contains("modulus = 1") && e.contains("at least 2"), "{e}");
    let e = msg(Match2::new(0, 30..=35).unwrap_err());
    assert!(e.contains("modulus = 0"), "{e}");
    #[allow(clippy::reversed_empty_ranges)]
    let e = msg(Match3::new(37, 35..=30).unwrap_err());
    assert!(e.contains("length = 35..=30") && e.contains("empty"), "{e}");
    let e = msg(Match3::new(37, 0..=3).unwrap_err());
    assert!(e.contains("start at 1"), "{e}");
    let e = msg(Compose::new(1, 1..=3).unwrap_err());
    assert!(e.contains("domain = 1"), "{e}");
    let e = msg(Relation::new(3, 1..=10, 2).unwrap_err());
    assert!(e.contains("edges") && e.contains("9"), "{e}");
    let e = msg(Relation::new(3, 1..=3, 0).unwrap_err());
    assert!(e.contains("queries = 0"), "{e}");
    let e = msg(by_name("match4").err().unwrap());
    assert!(e.contains("unknown task") && e.contains("match3"), "{e}");
    // an unreachable bin fails instead of looping: M = 2 has only x = 1, 1+1+1 = 3 is odd
    let t = Match3::new(2, 1..=3).unwrap();
    let e = msg(t.example(3, &mut SplitMix64::new(0)).unwrap_err());
    assert!(e.contains("bin 3") && e.contains("draws"), "{e}");
    let e = msg(t.example(4, &mut SplitMix64::new(0)).unwrap_err());
    assert!(e.contains("4 balance bin"), "{e}");
    // too few distinct base sequences: N = 2 with one query has 4 * 4 * 2 = 32
    let t = Compose::new(2, 1..=1).unwrap();
    let sizes = SplitSizes {
        train: 20,
        validation: 10,
        test: 3,
    };
    let e = msg(generate_splits(&t, 0, sizes).unwrap_err());
    assert!(e.contains("distinct base sequences"), "{e}");
}

#[test]
fn accuracy_and_exact_match() {
    let labels = [1, IGNORE, 0, 1];
    assert_eq!(token_accuracy(&[1, 0, 0, 1], &labels), Some(1.0));
    assert!(exact_match(&[1, 7, 0, 1], &labels));
    assert_eq!(token_accuracy(&[1, 1, 1, 1], &labels), Some(2.0 / 3.0));
    assert!(!exact_match(&[1, 1, 1, 1], &labels));
    assert_eq!(token_accuracy(&[3], &[IGNORE]), None);
    let mut s = Score::default();
    s.add(&[1, 0, 0, 1], &labels);
    s.add(&[0, 0, 0, 1], &labels);
    assert_eq!((s.correct_tokens, s.labeled_tokens), (5, 6));
    assert_eq!((s.exact_sequences, s.sequences), (1, 2));
    assert!((s.token_accuracy() - 5.0 / 6.0).abs() < 1e-12);
    assert_eq!(s.exact_match(), 0.5);
}

#[test]
#[should_panic(expected = "one prediction per label")]
fn accuracy_needs_equal_lengths() {
    token_accuracy(&[1, 2], &[1]);
}

#[test]
fn train_stream_avoids_held_out_and_is_seeded() {
    // compose with N = 2 and one query has only 32 base sequences: the stream must skip the
    // 12 held out ones
    let task = Compose::new(2, 1..=1).unwrap();
    let sizes = SplitSizes {
        train: 0,
        validation: 6,
        test: 6,
    };
    let s = generate_splits(&task, 5, sizes).unwrap();
    let held: HashSet<Vec<u32>> = s
        .validation
        .iter()
        .chain(&s.test)
        .map(Example::canonical)
        .collect();
    let mut a = TrainStream::new(&task, 1, &[&s.validation, &s.test]);
    let mut b = TrainStream::new(&task, 1, &[&s.validation, &s.test]);
    let mut fresh = HashSet::new();
    for _ in 0..300 {
        let ex = a.next_example().unwrap();
        assert_eq!(ex, b.next_example().unwrap());
        assert_eq!(task.label(&ex.tokens), ex.labels);
        assert!(!held.contains(&ex.canonical()));
        fresh.insert(ex.canonical());
    }
    assert_eq!(fresh.len(), 32 - 12);
    // balanced round-robin on a binary task
    let task = Match3::default();
    let mut st = TrainStream::new(&task, 2, &[]);
    for i in 0..40 {
        assert_eq!(task.bin_of(&st.next_example().unwrap()), i % 4);
    }
}
