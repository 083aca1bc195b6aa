//! The text analyser used for indexing and queries: Unicode words, lowercased; runs of CJK
//! characters (Han, Hiragana, Katakana, Hangul) become overlapping character bigrams, so a
//! two-character Chinese or Japanese query matches inside unsegmented text.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Tokens longer than this (in bytes) are dropped: they are never useful search terms and
/// tantivy limits term length.
const MAX_TOKEN_BYTES: usize = 256;

/// Name under which the analyser is registered in the tantivy index.
pub(crate) const NAME: &str = "mnemo";

/// Whether `c` is written without spaces between words (bigram-tokenised).
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // Hiragana, Katakana
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width Katakana
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0x1100..=0x11FF   // Hangul Jamo
        | 0x3130..=0x318F   // Hangul compatibility Jamo
        | 0x20000..=0x2FA1F // CJK extensions B..F, compatibility supplement
    )
}

/// Splits `text` into tokens (see module docs). Positions count tokens, so bigrams of one CJK
/// run are consecutive and phrase queries work on them.
pub(crate) fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut position = 0usize;
    let mut push = |out: &mut Vec<Token>, from: usize, to: usize, s: String| {
        if s.len() <= MAX_TOKEN_BYTES {
            out.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: s,
                position_length: 1,
            });
            position += 1;
        }
    };
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if is_cjk(c) {
            // Collect the run of CJK characters.
            let mut run: Vec<(usize, char)> = Vec::new();
            while let Some(&(i, c)) = chars.peek() {
                if !is_cjk(c) {
                    break;
                }
                run.push((i, c));
                chars.next();
            }
            let end_of = |k: usize| run[k].0 + run[k].1.len_utf8();
            if run.len() == 1 {
                push(&mut out, run[0].0, end_of(0), lower(&run[0].1.to_string()));
            } else {
                for k in 0..run.len() - 1 {
                    let s: String = [run[k].1, run[k + 1].1].iter().collect();
                    push(&mut out, run[k].0, end_of(k + 1), lower(&s));
                }
            }
        } else if c.is_alphanumeric() {
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if !c.is_alphanumeric() || is_cjk(c) {
                    break;
                }
                end = i + c.len_utf8();
                chars.next();
            }
            push(&mut out, start, end, lower(&text[start..end]));
        } else {
            chars.next();
        }
    }
    out
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// tantivy adapter for [`tokenize`].
#[derive(Clone, Default)]
pub(crate) struct MnemoTokenizer;

/// Token stream over a precomputed token list.
pub(crate) struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

impl Tokenizer for MnemoTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        VecTokenStream {
            tokens: tokenize(text),
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        tokenize(s).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn words_are_lowercased_unicode() {
        assert_eq!(
            texts("Hello, WORLD! Café-Über 42x"),
            ["hello", "world", "café", "über", "42x"]
        );
    }

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(texts("东京大学"), ["东京", "京大", "大学"]);
        assert_eq!(texts("私は東京"), ["私は", "は東", "東京"]);
        assert_eq!(texts("去 GPU加速"), ["去", "gpu", "加速"]);
        let toks = tokenize("a东京大");
        let pos: Vec<usize> = toks.iter().map(|t| t.position).collect();
        assert_eq!(pos, [0, 1, 2]);
        assert_eq!(&"a东京大"[toks[1].offset_from..toks[1].offset_to], "东京");
    }

    #[test]
    fn overlong_tokens_are_dropped() {
        let long = "x".repeat(300);
        assert_eq!(texts(&format!("a {long} b")), ["a", "b"]);
    }
}
