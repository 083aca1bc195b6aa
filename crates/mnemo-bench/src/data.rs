//! The benchmark data set, generated deterministically from a seed so every system gets the
//! same bytes.
//!
//! Conversation `i` has `20 + (h(i) mod 181)` items (20–200), alternating user and assistant
//! messages. Message text lengths are log-normal: user messages have a median of 200 bytes,
//! assistant messages 1,500 bytes, both with σ = 0.6 (so p10 ≈ 0.46× and p90 ≈ 2.2× the median),
//! clamped to 16 B – 32 KiB. Text is lowercase ASCII words, by default drawn by Zipf's law
//! from a fixed vocabulary ([`TextModel::Zipf`]): natural-language text repeats a small set of
//! words, which is what a full-text index is built for. [`TextModel::Random`] makes every word
//! of random letters instead, so nearly every word is new: the costliest case for an inverted
//! index, and the data set of the figures recorded before 2026-12-05.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::sync::OnceLock;

/// How message text is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TextModel {
    /// Words drawn from a vocabulary of [`VOCABULARY`] pseudo-words by Zipf's law (exponent
    /// [`ZIPF_EXPONENT`]: the word of rank r has frequency ∝ 1/r, as in English), frequent
    /// words shorter than rare ones.
    Zipf,
    /// Words of 2–8 random letters: apart from the shortest, nearly every word occurs once in
    /// the whole data set.
    Random,
}

impl TextModel {
    /// The model in words, for the report.
    pub fn describe(self) -> String {
        match self {
            TextModel::Zipf => format!(
                "words drawn from a {VOCABULARY}-word vocabulary by Zipf's law, exponent \
                 {ZIPF_EXPONENT}"
            ),
            TextModel::Random => "words of random letters".to_string(),
        }
    }
}

/// Size of the data set.
#[derive(Clone, Copy, Debug)]
pub struct DataSpec {
    /// Number of conversations.
    pub conversations: usize,
    /// Keys per value size in the KV data set.
    pub kv_keys_1k: usize,
    /// Keys of 64 KiB values.
    pub kv_keys_64k: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// How message text is made.
    pub text: TextModel,
}

/// Median user message length, bytes.
pub const USER_MEDIAN: f64 = 200.0;
/// Median assistant message length, bytes.
pub const ASSISTANT_MEDIAN: f64 = 1500.0;
const SIGMA: f64 = 0.6;

fn log_normal(rng: &mut StdRng, median: f64) -> usize {
    // Box-Muller: z ~ N(0, 1); length = median * e^(σ z).
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (median * (SIGMA * z).exp()).clamp(16.0, 32768.0) as usize
}

/// Distinct words of [`TextModel::Zipf`].
pub const VOCABULARY: usize = 50_000;
/// Exponent of [`TextModel::Zipf`]'s rank-frequency law.
pub const ZIPF_EXPONENT: f64 = 1.0;

/// The vocabulary of [`TextModel::Zipf`], most frequent first. The word of rank r (from 0)
/// has `2 + ⌊0.6 log2(r + 1)⌋` letters (2 to 11): its rank in base 26, padded with letters
/// from a hash of the rank (drawn again in the rare case the word already exists).
fn vocabulary() -> &'static [String] {
    static WORDS: OnceLock<Vec<String>> = OnceLock::new();
    WORDS.get_or_init(|| {
        let mut seen = std::collections::HashSet::with_capacity(VOCABULARY);
        (0..VOCABULARY as u64)
            .map(|r| {
                let len = 2 + (0.6 * ((r + 1) as f64).log2()) as usize;
                let mut digits = String::new();
                let mut n = r;
                loop {
                    digits.push(char::from(b'a' + (n % 26) as u8));
                    n /= 26;
                    if n == 0 {
                        break;
                    }
                }
                let mut h = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                loop {
                    let mut w = digits.clone();
                    while w.len() < len {
                        h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 0x5851;
                        w.push(char::from(b'a' + (h % 26) as u8));
                    }
                    if seen.insert(w.clone()) {
                        return w;
                    }
                }
            })
            .collect()
    })
}

/// The text of a user message: log-normal length around [`USER_MEDIAN`].
pub fn user_text(rng: &mut StdRng, model: TextModel) -> String {
    let len = log_normal(rng, USER_MEDIAN);
    text(rng, model, len)
}

fn text(rng: &mut StdRng, model: TextModel, len: usize) -> String {
    let mut s = String::with_capacity(len + 12);
    match model {
        TextModel::Zipf => {
            let words = vocabulary();
            let zipf = Zipf::new(VOCABULARY as f64, ZIPF_EXPONENT).expect("valid Zipf parameters");
            while s.len() < len {
                let rank = (zipf.sample(rng) as usize).clamp(1, VOCABULARY) - 1;
                s.push_str(&words[rank]);
                s.push(' ');
            }
        }
        TextModel::Random => {
            while s.len() < len {
                let w = rng.random_range(2..9);
                for _ in 0..w {
                    s.push(char::from(rng.random_range(b'a'..=b'z')));
                }
                s.push(' ');
            }
        }
    }
    s.truncate(len);
    s
}

/// One message of the data set.
pub struct Message {
    /// `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub text: String,
}

impl Message {
    /// The item as JSON, as a client would send it (string content).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"type": "message", "role": self.role, "content": self.text})
    }
}

impl DataSpec {
    /// The messages of conversation `i`.
    pub fn conversation(&self, i: usize) -> Vec<Message> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let n = rng.random_range(20..=200);
        (0..n)
            .map(|j| {
                let (role, median) = if j % 2 == 0 {
                    ("user", USER_MEDIAN)
                } else {
                    ("assistant", ASSISTANT_MEDIAN)
                };
                let len = log_normal(&mut rng, median);
                Message {
                    role,
                    text: text(&mut rng, self.text, len),
                }
            })
            .collect()
    }

    /// A fresh message for an append (user role, log-normal length).
    pub fn append_message(&self, rng: &mut StdRng) -> Message {
        Message {
            role: "user",
            text: user_text(rng, self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn word_counts(model: TextModel, messages: usize) -> (HashMap<String, usize>, usize) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        let mut total = 0;
        for _ in 0..messages {
            let t = user_text(&mut rng, model);
            // The last word may be cut by the length limit.
            let mut words: Vec<&str> = t.split_whitespace().collect();
            words.pop();
            for w in words {
                *counts.entry(w.to_string()).or_default() += 1;
                total += 1;
            }
        }
        (counts, total)
    }

    #[test]
    fn the_vocabulary_has_distinct_words_short_ones_first() {
        let v = vocabulary();
        assert_eq!(v.len(), VOCABULARY);
        let distinct: std::collections::HashSet<&String> = v.iter().collect();
        assert_eq!(distinct.len(), VOCABULARY);
        assert_eq!(v[0].len(), 2);
        assert_eq!(v[VOCABULARY - 1].len(), 11);
        assert_eq!(
            TextModel::Zipf.describe(),
            "words drawn from a 50000-word vocabulary by Zipf's law, exponent 1"
        );
        assert!(v.windows(2).all(|w| w[0].len() <= w[1].len()));
    }

    #[test]
    fn zipf_text_repeats_its_words_by_rank_and_random_text_does_not() {
        let (zipf, total) = word_counts(TextModel::Zipf, 5_000);
        // Rank 1 has probability 1 / H(50,000) ≈ 0.088 with exponent 1; rank 2 half that.
        let share = |w: &str| zipf.get(w).copied().unwrap_or(0) as f64 / total as f64;
        let (first, second) = (share(&vocabulary()[0]), share(&vocabulary()[1]));
        assert!((0.075..0.10).contains(&first), "rank 1 share {first}");
        assert!((0.035..0.055).contains(&second), "rank 2 share {second}");
        assert!(zipf.len() < total / 4, "{} distinct of {total}", zipf.len());
        let (random, total) = word_counts(TextModel::Random, 5_000);
        // Measured: 78 % distinct (two-letter words repeat; longer ones almost never).
        assert!(
            random.len() > total / 2,
            "{} distinct of {total}",
            random.len()
        );
    }

    #[test]
    fn messages_are_the_same_for_the_same_seed_and_lengths_follow_the_model() {
        let spec = DataSpec {
            conversations: 10,
            kv_keys_1k: 0,
            kv_keys_64k: 0,
            seed: 42,
            text: TextModel::Zipf,
        };
        let a: Vec<String> = spec.conversation(3).into_iter().map(|m| m.text).collect();
        let b: Vec<String> = spec.conversation(3).into_iter().map(|m| m.text).collect();
        assert_eq!(a, b);
        assert!((20..=200).contains(&a.len()));
        let mut rng = StdRng::seed_from_u64(1);
        let mut lens: Vec<usize> = (0..2001)
            .map(|_| user_text(&mut rng, TextModel::Zipf).len())
            .collect();
        lens.sort_unstable();
        let median = lens[1000] as f64;
        assert!((180.0..220.0).contains(&median), "median length {median}");
    }
}
