//! Scrubbing: finds personal data and secrets in message text and replaces each with a typed
//! placeholder (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IP]`, `[URL_CREDENTIALS]`, `[SECRET]`).
//!
//! Detection is by pattern plus a check where the shape alone is ambiguous: card numbers must
//! pass the Luhn check and start like a card, IP addresses must parse, phone numbers must have
//! a plausible count of digits. One pass of a [`RegexSet`] tells which detectors can match a
//! text at all, so text with nothing to scrub costs one scan. Where findings overlap, the
//! more specific kind wins (a secret over an email inside it, credentials in a URL over the
//! email shape of `user:pass@host`).

use regex::{Regex, RegexSet};
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// What a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An API key, token, JWT, private key or a value assigned to a secret-looking name.
    Secret,
    /// `user:password` in a URL.
    UrlCredentials,
    /// An email address.
    Email,
    /// A payment card number.
    Card,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A phone number.
    Phone,
}

impl Kind {
    /// The text that replaces a finding of this kind.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Secret => "[SECRET]",
            Kind::UrlCredentials => "[URL_CREDENTIALS]",
            Kind::Email => "[EMAIL]",
            Kind::Card => "[CARD]",
            Kind::Ip => "[IP]",
            Kind::Phone => "[PHONE]",
        }
    }

    /// Every kind, most specific first (the order overlaps are settled in).
    pub const ALL: [Kind; 6] = [
        Kind::Secret,
        Kind::UrlCredentials,
        Kind::Email,
        Kind::Card,
        Kind::Ip,
        Kind::Phone,
    ];
}

/// One finding: its kind and its byte range in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Where, in bytes.
    pub range: Range<usize>,
}

/// How a detector's match becomes a finding.
#[derive(Clone, Copy)]
enum Check {
    /// The whole match.
    Whole,
    /// Capture group 1 only (the secret after `Bearer ` or `password=`, the credentials
    /// of a URL).
    Group,
    /// A run of digit groups, within which card numbers are looked for (see [`cards_in`]).
    Card,
    /// An address that parses.
    Ipv4,
    Ipv6,
    /// 8 to 15 digits, shortened from the end when the match ran into what follows.
    Phone,
}

struct Detector {
    kind: Kind,
    regex: Regex,
    check: Check,
}

/// The detectors, in the order of [`Kind::ALL`] within each kind.
const PATTERNS: &[(Kind, Check, &str)] = &[
    (
        Kind::Secret,
        Check::Whole,
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    (
        Kind::Secret,
        Check::Whole,
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{8,}",
    ),
    (
        Kind::Secret,
        Check::Whole,
        concat!(
            r"\b(?:",
            r"sk-(?:proj-|ant-(?:api\d\d-)?|live-|svcacct-)?[A-Za-z0-9_-]{20,}",
            r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
            r"|gh[pousr]_[A-Za-z0-9]{36,}",
            r"|github_pat_[A-Za-z0-9_]{22,}",
            r"|glpat-[A-Za-z0-9_-]{20,}",
            r"|xox[abposr]-[A-Za-z0-9-]{10,}",
            r"|AIza[0-9A-Za-z_-]{35}",
            r"|(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",
            r"|mnemo_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}",
            r"|hf_[A-Za-z0-9]{30,}",
            r")"
        ),
    ),
    (
        Kind::Secret,
        Check::Group,
        r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)",
    ),
    (
        Kind::Secret,
        Check::Group,
        concat!(
            r#"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|passw(?:or)?d|pwd"#,
            r#"|access[_-]?token|auth[_-]?token|access[_-]?key|private[_-]?key)"#,
            r#"\s*[:=]\s*["']?([^\s"',;]{6,})"#
        ),
    ),
    (
        Kind::UrlCredentials,
        Check::Group,
        r"(?i)\b[a-z][a-z0-9+.-]{1,15}://([^\s/?#@:]+:[^\s/?#@]+)@",
    ),
    (
        Kind::Email,
        Check::Whole,
        r"(?i)\b[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
    ),
    (
        Kind::Card,
        Check::Card,
        r"\b\d{1,19}(?:[ -]\d{1,19})+\b|\b\d{13,19}\b",
    ),
    (Kind::Ip, Check::Ipv4, r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    (
        Kind::Ip,
        Check::Ipv6,
        r"(?i)(?:\b[0-9a-f]{1,4}|::?)(?::{1,2}[0-9a-f]{1,4}){2,7}(?:::)?",
    ),
    (
        Kind::Ip,
        Check::Ipv6,
        r"(?i)(?:\b[0-9a-f]{1,4}|:)(?::{1,2}[0-9a-f]{0,4}){1,6}:\d{1,3}(?:\.\d{1,3}){3}\b",
    ),
    (
        Kind::Phone,
        Check::Phone,
        r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}\b",
    ),
    (
        Kind::Phone,
        Check::Phone,
        r"(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b",
    ),
];

/// Finds and replaces personal data and secrets in text.
pub struct Scrubber {
    any: RegexSet,
    detectors: Vec<Detector>,
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::new()
    }
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("detectors", &self.detectors.len())
            .finish()
    }
}

impl Scrubber {
    /// A scrubber with every detector.
    pub fn new() -> Self {
        // The patterns are constants covered by tests; a failure to compile them is a bug
        // caught before release, not a runtime condition.
        #[allow(clippy::expect_used)]
        let any = RegexSet::new(PATTERNS.iter().map(|p| p.2)).expect("scrub patterns compile");
        #[allow(clippy::expect_used)]
        let detectors = PATTERNS
            .iter()
            .map(|&(kind, check, pattern)| Detector {
                kind,
                check,
                regex: Regex::new(pattern).expect("scrub pattern compiles"),
            })
            .collect();
        Scrubber { any, detectors }
    }

    /// Every finding in `text`, in text order, none overlapping.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let candidates = self.any.matches(text);
        if !candidates.matched_any() {
            return Vec::new();
        }
        let mut found: Vec<Finding> = Vec::new();
        for i in candidates.iter() {
            let d = &self.detectors[i];
            for caps in d.regex.captures_iter(text) {
                let (Some(all), group) = (caps.get(0), caps.get(1)) else {
                    continue;
                };
                let range = match d.check {
                    Check::Whole => Some(all.range()),
                    Check::Group => group.map(|g| g.range()),
                    Check::Card => {
                        for range in cards_in(text, all.range()) {
                            found.push(Finding {
                                kind: d.kind,
                                range,
                            });
                        }
                        None
                    }
                    Check::Ipv4 => all.as_str().parse::<Ipv4Addr>().ok().map(|_| all.range()),
                    Check::Ipv6 => is_ipv6(all.as_str()).then(|| all.range()),
                    Check::Phone => phone_in(text, all.range()),
                };
                if let Some(range) = range {
                    found.push(Finding {
                        kind: d.kind,
                        range,
                    });
                }
            }
        }
        // The most specific kind first; within a kind, the later start first, so that where
        // two phone numbers (or a phone number and a card) touch, the earlier one is cut back
        // to end before the later one rather than swallowing its first digits.
        found.sort_by(|a, b| {
            a.kind
                .cmp(&b.kind)
                .then(b.range.start.cmp(&a.range.start))
                .then(b.range.end.cmp(&a.range.end))
        });
        let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
        'next: for mut f in found {
            // A finding of the same kind wholly inside this one gives way to it.
            let whole = f.clone();
            let inside = |k: &Finding| {
                k.kind == whole.kind
                    && whole.range.start <= k.range.start
                    && k.range.end <= whole.range.end
            };
            for k in kept.iter().filter(|k| !inside(k)) {
                if k.range.start < f.range.end && f.range.start < k.range.end {
                    if k.range.start <= f.range.start {
                        continue 'next;
                    }
                    match trimmed(text, &f, k.range.start) {
                        Some(r) => f.range = r,
                        None => continue 'next,
                    }
                }
            }
            kept.retain(|k| !inside(k));
            kept.push(f);
        }
        kept.sort_by_key(|f| f.range.start);
        kept
    }

    /// `text` with every finding replaced by its kind's placeholder; borrowed when there is
    /// nothing to replace.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let found = self.find(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in &found {
            out.push_str(&text[at..f.range.start]);
            out.push_str(f.kind.placeholder());
            at = f.range.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

/// `f` cut to end before byte `at`, if its kind allows and what is left still qualifies
/// (phone numbers only: any other finding cut short is not one any more).
fn trimmed(text: &str, f: &Finding, at: usize) -> Option<Range<usize>> {
    if f.kind != Kind::Phone {
        return None;
    }
    let head = text[f.range.start..at].trim_end_matches(|c: char| !c.is_ascii_digit() && c != ')');
    phone_in(text, f.range.start..f.range.start + head.len())
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// The Luhn checksum holds.
fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The card numbers in a run of digit groups (`range` of `text`). Neighbouring numbers
/// separated by a space (a phone number, then a card) form one run, so every sequence of
/// whole groups is tried, longest first.
fn cards_in(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut start = None;
    for (i, b) in text[range.clone()].bytes().enumerate() {
        let at = range.start + i;
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(at),
            (false, Some(s)) => {
                groups.push(s..at);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        groups.push(s..range.end);
    }
    let mut cards = Vec::new();
    let mut i = 0;
    'from: while i < groups.len() {
        for j in (i..groups.len()).rev() {
            let span = groups[i].start..groups[j].end;
            if is_card(&text[span.clone()]) {
                cards.push(span);
                i = j + 1;
                continue 'from;
            }
        }
        i += 1;
    }
    cards
}

/// The shapes a card number is written in: one group of 13 to 19 digits, or groups of four
/// (the last shorter), or 4-6-5 and 4-6-4 (American Express, Diners).
fn card_grouping(s: &str) -> bool {
    let seps = s
        .bytes()
        .filter(|b| !b.is_ascii_digit())
        .collect::<Vec<u8>>();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let sizes: Vec<usize> = s.split([' ', '-']).map(str::len).collect();
    match sizes.as_slice() {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [.., last] => sizes[..sizes.len() - 1].iter().all(|&n| n == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// 13 to 19 digits, grouped as cards are, starting like a card of a known network, passing
/// the Luhn check.
fn is_card(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || !card_grouping(s) {
        return false;
    }
    let prefix = |n: usize| d[..n].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    // Each network's prefixes and lengths.
    let len = d.len();
    let network = match d[0] {
        4 => matches!(len, 13 | 16 | 19),                     // Visa
        5 => (51..=55).contains(&prefix(2)) && len == 16,     // Mastercard
        2 => (2221..=2720).contains(&prefix(4)) && len == 16, // Mastercard
        3 => match prefix(2) {
            34 | 37 => len == 15,           // American Express
            35 => len >= 16,                // JCB
            30 | 36 | 38 | 39 => len >= 14, // Diners Club
            _ => false,
        },
        6 => matches!(prefix(2), 60 | 62 | 64 | 65) && len >= 16, // Discover, UnionPay
        _ => false,
    };
    network && luhn(&d)
}

/// An IPv6 address with at least three groups (so times like `12:30` are not).
fn is_ipv6(s: &str) -> bool {
    s.matches(':').count() >= 2 && s.parse::<Ipv6Addr>().is_ok()
}

/// A phone number of 8 to 15 digits (E.164 allows 15) at the start of `range`: the match
/// loses its last group while it has too many digits or its last group runs on into a
/// decimal or an address (`+49 30 1234567 10.0.0.1`).
fn phone_in(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let mut end = range.end;
    loop {
        let s = &text[range.start..end];
        let runs_on = text[end..].starts_with('.')
            && text[end + 1..].starts_with(|c: char| c.is_ascii_digit());
        let n = digits(s).len();
        if (8..=15).contains(&n) && !runs_on {
            return Some(range.start..end);
        }
        if n < 8 {
            return None;
        }
        // Drop the last group and the separators before it.
        let cut = s.rfind(|c: char| !c.is_ascii_digit() && c != ')')?;
        end = range.start + s[..cut].trim_end_matches([' ', '.', '-', '(']).len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_each_kind_with_its_placeholder() {
        let s = Scrubber::new();
        let cases = [
            ("mail ann.lee+x@mail.example.co.uk now", "mail [EMAIL] now"),
            ("card 4111 1111 1111 1111.", "card [CARD]."),
            ("card 4111 1111 1111 1112.", "card 4111 1111 1111 1112."),
            ("from 192.168.0.17 ok", "from [IP] ok"),
            ("v6 2001:db8::8a2e:370:7334 ok", "v6 [IP] ok"),
            ("call +44 20 7946 0958 today", "call [PHONE] today"),
            ("call (555) 123-4567", "call [PHONE]"),
            (
                "https://bob:hunter2@db.example.com/x",
                "https://[URL_CREDENTIALS]@db.example.com/x",
            ),
            (
                "key sk-proj-abcdefghijklmnopqrstuvwxyz0123 end",
                "key [SECRET] end",
            ),
            (
                "Authorization: Bearer abcdefghijklmnop1234",
                "Authorization: Bearer [SECRET]",
            ),
            ("password=s3cretpass!", "password=[SECRET]"),
            (
                "at 12:30:45 on 2024-01-15, v1.2.3.4",
                "at 12:30:45 on 2024-01-15, v1.2.3.4",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(s.scrub(input), want, "{input}");
        }
    }

    #[test]
    fn luhn_and_networks() {
        assert!(is_card("4111111111111111"));
        assert!(is_card("378282246310005"));
        assert!(is_card("5555-5555-5555-4444"));
        assert!(!is_card("1234567812345670")); // Luhn-valid, no network
        assert!(!is_card("4111 1111-1111 1111"));
        assert!(!is_card("49 30 4755519 120"));
        assert_eq!(cards_in("7344 340692563475097", 0..20), vec![5..20]);
    }
}
