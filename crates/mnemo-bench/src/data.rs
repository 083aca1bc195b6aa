//! The benchmark data set, generated deterministically from a seed so every system gets the
//! same bytes.
//!
//! Conversation `i` has `20 + (h(i) mod 181)` items (20–200), alternating user and assistant
//! messages. Message text lengths are log-normal: user messages have a median of 200 bytes,
//! assistant messages 1,500 bytes, both with σ = 0.6 (so p10 ≈ 0.46× and p90 ≈ 2.2× the median),
//! clamped to 16 B – 32 KiB. Text is lowercase ASCII words.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

fn text(rng: &mut StdRng, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let w = rng.random_range(2..9);
        for _ in 0..w {
            s.push(char::from(rng.random_range(b'a'..=b'z')));
        }
        s.push(' ');
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
                    text: text(&mut rng, len),
                }
            })
            .collect()
    }

    /// A fresh message for an append (user role, log-normal length).
    pub fn append_message(rng: &mut StdRng) -> Message {
        let len = log_normal(rng, USER_MEDIAN);
        Message {
            role: "user",
            text: text(rng, len),
        }
    }
}
