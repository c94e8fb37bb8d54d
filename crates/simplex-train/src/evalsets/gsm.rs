//! `gsm`: grade-school math word problems from a seeded generator, scored on their worked
//! answers.
//!
//! Seven templates of two to four arithmetic steps (shopping with change, production rates,
//! sharing, ages, travel, savings, an orchard), numbers drawn so that every intermediate value
//! is a whole number. Item `i` of seed `s` depends on `(s, i)` alone, so the first 100 items
//! of a larger set are the 100-item set.
//!
//! ```text
//! context       Lila buys 3 pens at 4 dollars each and 2 books at 9 dollars each. She pays
//!               with a 50 dollar bill. How much change does she get, in dollars?
//!               Answer:
//! continuation   The pens cost 3 * 4 = 12 dollars. The books cost 2 * 9 = 18 dollars.
//!               Together that is 12 + 18 = 30 dollars. The change is 50 - 30 = 20 dollars.
//!               The answer is 20.
//! ```
//! (the continuation is one line; it starts with a space, like the MMLU answers.)

use super::set::{EvalItem, EvalSet};
use crate::rng::SplitMix64;

/// Items of the default `gsm` set.
pub const DEFAULT_COUNT: usize = 500;
/// Seed of the default `gsm` set.
pub const DEFAULT_SEED: u64 = 0;

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The word problem.
    pub question: String,
    /// The worked solution: sentences with `a op b = c` steps, ending "The answer is N."
    pub solution: String,
    /// The final number.
    pub answer: i64,
}

/// Sentences being written, with the arithmetic each step does.
struct Work(Vec<String>);

impl Work {
    /// `a op b`, written "a op b = c" into `sentence` at `{}`; returns c.
    fn step(&mut self, sentence: &str, a: i64, op: char, b: i64) -> i64 {
        let c = match op {
            '+' => a + b,
            '-' => a - b,
            '*' => a * b,
            '/' => a / b,
            _ => unreachable!("ops are + - * /"),
        };
        self.0
            .push(sentence.replacen("{}", &format!("{a} {op} {b} = {c}"), 1));
        c
    }

    fn done(self, question: String, answer: i64) -> Problem {
        let mut solution = self.0.join(" ");
        solution.push_str(&format!(" The answer is {answer}."));
        Problem {
            question,
            solution,
            answer,
        }
    }
}

const PEOPLE: [(&str, &str); 12] = [
    ("Lila", "she"),
    ("Omar", "he"),
    ("Mia", "she"),
    ("Jonas", "he"),
    ("Priya", "she"),
    ("Tom", "he"),
    ("Ana", "she"),
    ("Kofi", "he"),
    ("Rosa", "she"),
    ("Leo", "he"),
    ("Yuki", "she"),
    ("Sam", "he"),
];
const GOODS: [&str; 10] = [
    "pens",
    "books",
    "apples",
    "notebooks",
    "candles",
    "mugs",
    "plates",
    "shirts",
    "kites",
    "lamps",
];

/// Uniform in `lo..=hi`.
fn int(r: &mut SplitMix64, lo: i64, hi: i64) -> i64 {
    lo + r.below((hi - lo + 1) as u64) as i64
}

fn pick<T: Copy>(r: &mut SplitMix64, xs: &[T]) -> T {
    xs[r.below(xs.len() as u64) as usize]
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}

fn shopping(r: &mut SplitMix64) -> Problem {
    let (name, she) = pick(r, &PEOPLE);
    let i = r.below(GOODS.len() as u64) as usize;
    let (g1, g2) = (GOODS[i], GOODS[(i + 1 + r.below(9) as usize) % GOODS.len()]);
    let (a, p, b, q) = (int(r, 2, 9), int(r, 2, 15), int(r, 2, 9), int(r, 1, 12));
    let bill = *[20, 50, 100, 200, 500]
        .iter()
        .find(|&&v| v >= a * p + b * q)
        .expect("at most 243");
    let question = format!(
        "{name} buys {a} {g1} at {p} dollars each and {b} {g2} at {q} dollars each. {} pays with a {bill} dollar bill. How much change does {she} get, in dollars?",
        cap(she)
    );
    let mut w = Work(Vec::new());
    let x = w.step(&format!("The {g1} cost {{}} dollars."), a, '*', p);
    let y = w.step(&format!("The {g2} cost {{}} dollars."), b, '*', q);
    let t = w.step("Together that is {} dollars.", x, '+', y);
    let c = w.step("The change is {} dollars.", bill, '-', t);
    w.done(question, c)
}

fn rate(r: &mut SplitMix64) -> Problem {
    let (place, things) = pick(
        r,
        &[
            ("A bakery", "loaves of bread"),
            ("A factory", "toys"),
            ("A printer", "posters"),
            ("A workshop", "chairs"),
        ],
    );
    let (k, h, d) = (int(r, 3, 40), int(r, 2, 12), int(r, 2, 9));
    let question = format!(
        "{place} makes {k} {things} every hour. It works {h} hours a day. How many {things} does it make in {d} days?"
    );
    let mut w = Work(Vec::new());
    let x = w.step(&format!("Each day it makes {{}} {things}."), k, '*', h);
    let y = w.step(&format!("In {d} days it makes {{}} {things}."), x, '*', d);
    w.done(question, y)
}

fn sharing(r: &mut SplitMix64) -> Problem {
    let (name, she) = pick(r, &PEOPLE);
    let things = pick(r, &["stickers", "marbles", "cookies", "shells", "cards"]);
    let (each, k, kept) = (int(r, 2, 12), int(r, 2, 8), int(r, 1, 15));
    let n = each * k + kept;
    let question = format!(
        "{name} has {n} {things}. {} keeps {kept} and shares the rest equally among {k} friends. How many {things} does each friend get?",
        cap(she)
    );
    let mut w = Work(Vec::new());
    let x = w.step(
        &format!("After keeping {kept}, {name} has {{}} {things} left."),
        n,
        '-',
        kept,
    );
    let y = w.step(&format!("Each friend gets {{}} {things}."), x, '/', k);
    w.done(question, y)
}

fn ages(r: &mut SplitMix64) -> Problem {
    let i = r.below(PEOPLE.len() as u64) as usize;
    let (a_name, b_name) = (PEOPLE[i].0, PEOPLE[(i + 1 + r.below(11) as usize) % 12].0);
    let (a, k, y) = (int(r, 3, 12), int(r, 2, 4), int(r, 2, 15));
    let question = format!(
        "{a_name} is {a} years old. {b_name} is {k} times as old as {a_name}. What will be the sum of their ages in {y} years?"
    );
    let mut w = Work(Vec::new());
    let b = w.step(&format!("{b_name} is {{}} years old now."), a, '*', k);
    let a2 = w.step(&format!("In {y} years {a_name} will be {{}}."), a, '+', y);
    let b2 = w.step(&format!("{b_name} will be {{}}."), b, '+', y);
    let s = w.step("Together that is {} years.", a2, '+', b2);
    w.done(question, s)
}

fn travel(r: &mut SplitMix64) -> Problem {
    let vehicle = pick(r, &["train", "bus", "car", "boat"]);
    let (s, h, t, g) = (int(r, 20, 90), int(r, 2, 6), int(r, 10, 80), int(r, 1, 5));
    let question = format!(
        "A {vehicle} travels at {s} kilometres per hour for {h} hours, then at {t} kilometres per hour for {g} hours. How many kilometres does it travel in all?"
    );
    let mut w = Work(Vec::new());
    let x = w.step("First it covers {} kilometres.", s, '*', h);
    let y = w.step("Then it covers {} kilometres.", t, '*', g);
    let z = w.step("In all it travels {} kilometres.", x, '+', y);
    w.done(question, z)
}

fn savings(r: &mut SplitMix64) -> Problem {
    let (name, she) = pick(r, &PEOPLE);
    let item = pick(r, &["bike", "game", "jacket", "telescope", "guitar"]);
    let (s, wk) = (int(r, 3, 25), int(r, 4, 20));
    let spent = int(r, 1, s * wk - 1);
    let question = format!(
        "{name} saves {s} dollars every week. After {wk} weeks, {she} spends {spent} dollars on a {item}. How many dollars are left?"
    );
    let mut w = Work(Vec::new());
    let t = w.step(&format!("{name} saves {{}} dollars."), s, '*', wk);
    let left = w.step(
        &format!("After buying the {item}, {{}} dollars are left."),
        t,
        '-',
        spent,
    );
    w.done(question, left)
}

fn orchard(r: &mut SplitMix64) -> Problem {
    let trees = pick(
        r,
        &["apple trees", "lemon trees", "plum trees", "pear trees"],
    );
    let (rows, per, more) = (int(r, 3, 15), int(r, 4, 20), int(r, 2, 30));
    let died = int(r, 1, rows * per / 2);
    let question = format!(
        "A farmer plants {rows} rows of {per} {trees}. {died} of them die. Then the farmer plants {more} more. How many {trees} are there now?"
    );
    let mut w = Work(Vec::new());
    let n = w.step(&format!("The farmer plants {{}} {trees}."), rows, '*', per);
    let m = w.step(&format!("After {died} die, {{}} are left."), n, '-', died);
    let f = w.step(&format!("With {more} more there are {{}}."), m, '+', more);
    w.done(question, f)
}

/// Problem `index` of `seed`.
pub fn problem(seed: u64, index: usize) -> Problem {
    let mut r = SplitMix64::derived(seed, 0x6753_4d00_0000_0000 ^ index as u64);
    let templates: [fn(&mut SplitMix64) -> Problem; 7] =
        [shopping, rate, sharing, ages, travel, savings, orchard];
    templates[r.below(templates.len() as u64) as usize](&mut r)
}

/// The item of a problem: context = question + "\nAnswer:", continuation = " " + solution.
pub fn item(seed: u64, index: usize) -> EvalItem {
    let p = problem(seed, index);
    EvalItem {
        id: format!("gsm-{seed}-{index}"),
        context: format!("{}\nAnswer:", p.question),
        continuation: format!(" {}", p.solution),
    }
}

/// The set `gsm` of `count` problems of `seed` (the default set: [`DEFAULT_COUNT`],
/// [`DEFAULT_SEED`]).
pub fn generate(count: usize, seed: u64) -> EvalSet {
    EvalSet {
        name: "gsm".into(),
        items: (0..count).map(|i| item(seed, i)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole numbers in `text` (digit runs).
    fn numbers(text: &str) -> Vec<i64> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("digits"))
            .collect()
    }

    /// Checks every `a op b = c` of the solution, that each operand is a number of the question
    /// or an earlier result, and that the answer is the last result.
    fn check(p: &Problem) {
        let given = numbers(&p.question);
        let words: Vec<&str> = p.solution.split_whitespace().collect();
        let mut results = Vec::new();
        for w in words.windows(5) {
            let op = match w[1] {
                "+" | "-" | "*" | "/" if w[3] == "=" => w[1],
                _ => continue,
            };
            let num = |s: &str| -> i64 {
                s.trim_end_matches(['.', ','])
                    .parse()
                    .unwrap_or_else(|_| panic!("{s} in {}", p.solution))
            };
            let (a, b, c) = (num(w[0]), num(w[2]), num(w[4]));
            let want = match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                _ => {
                    assert_eq!(a % b, 0, "{a} / {b} is whole: {}", p.solution);
                    a / b
                }
            };
            assert_eq!(c, want, "{}", p.solution);
            assert!(c >= 0, "{}", p.solution);
            for x in [a, b] {
                assert!(
                    given.contains(&x) || results.contains(&x),
                    "{x} comes from nowhere: {p:?}"
                );
            }
            results.push(c);
        }
        assert!(results.len() >= 2, "{}", p.solution);
        assert_eq!(results.last(), Some(&p.answer), "{}", p.solution);
        assert!(p
            .solution
            .ends_with(&format!("The answer is {}.", p.answer)));
    }

    #[test]
    fn answers_are_arithmetically_right() {
        for seed in [0, 1, 99] {
            for i in 0..400 {
                check(&problem(seed, i));
            }
        }
    }

    #[test]
    fn seeded_prefix_stable_and_varied() {
        let a = generate(50, 0);
        assert_eq!(a, generate(50, 0));
        assert_eq!(a.items[..20], generate(20, 0).items[..]);
        let b = generate(50, 1);
        assert!(a
            .items
            .iter()
            .zip(&b.items)
            .all(|(x, y)| x.context != y.context));
        let set = generate(DEFAULT_COUNT, DEFAULT_SEED);
        let distinct: std::collections::HashSet<_> = set.items.iter().map(|i| &i.context).collect();
        assert_eq!(distinct.len(), DEFAULT_COUNT);
        // every template appears
        for w in [
            "change",
            "every hour",
            "friend",
            "ages",
            "kilometres",
            "saves",
            "farmer",
        ] {
            assert!(set.items.iter().any(|i| i.context.contains(w)), "{w}");
        }
        let it = &set.items[0];
        assert!(it.context.ends_with("\nAnswer:") && it.continuation.starts_with(' '));
    }
}
