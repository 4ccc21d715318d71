//! Masking secret values out of log lines. Shared by both sides, like the protocol: the agent
//! masks before it sends, the appliance masks again before it stores or streams (defence in
//! depth, and the appliance cannot trust an agent to have done it).

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: masking `1` or `on` would shred every line while
/// protecting nothing.
pub const MIN_MASKED_CHARS: usize = 3;

/// Encoded forms (base64, percent-, JSON-escaped) shorter than this are not masked: the base64
/// of a 3-byte value is 4 characters that turn up in any long base64 text. Values of 6 bytes or
/// more have every encoded form masked.
pub const MIN_ENCODED_CHARS: usize = 8;

/// Replaces every secret value (each line of a multi-line value separately) with [`MASK`], and
/// its common encodings too: base64 and base64url, padded or not and at each of the three
/// alignments inside a longer base64 text; percent-encoding (upper- and lowercase hex, `+` for
/// space); JSON string escaping (minimal, `\/`, and ASCII-only `\uXXXX`). docs/security.md
/// says what it cannot catch.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Matcher,
}

#[derive(Debug, Clone, Default)]
enum Matcher {
    #[default]
    Nothing,
    Values {
        matcher: AhoCorasick,
        /// By pattern id: a base64 core, whose match also takes the base64 character on each
        /// side (they hold the value's edge bits mixed with its neighbours') and any padding.
        base64: Vec<bool>,
    },
    /// The matcher could not be built (absurdly many or long values): hide whole lines rather
    /// than risk showing a secret.
    Everything,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<(String, bool)> = Vec::new();
        for value in values {
            let lines = value
                .split('\n')
                .map(|line| line.strip_suffix('\r').unwrap_or(line));
            let mut pieces: Vec<&str> = vec![value];
            for line in lines {
                if line.chars().count() >= MIN_MASKED_CHARS {
                    patterns.push((line.to_owned(), false));
                }
                pieces.push(line);
            }
            pieces.sort_unstable();
            pieces.dedup();
            for piece in pieces {
                if piece.chars().count() < MIN_MASKED_CHARS {
                    continue;
                }
                encodings(piece, &mut patterns);
            }
        }
        // One entry per text; a text that is also a base64 core keeps the core's extension.
        patterns.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        patterns.dedup_by(|a, b| a.0 == b.0);
        if patterns.is_empty() {
            return Self::default();
        }
        // An NFA builds in time linear in the patterns; the DFA aho-corasick may otherwise pick
        // takes minutes for one 64 KiB value, and scanned no faster here (BENCHMARKS.md).
        let matcher = match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(patterns.iter().map(|p| &p.0))
        {
            Ok(matcher) => Matcher::Values {
                matcher,
                base64: patterns.iter().map(|p| p.1).collect(),
            },
            Err(_) => Matcher::Everything,
        };
        Self { matcher }
    }

    pub fn mask(&self, line: &str) -> String {
        match &self.matcher {
            Matcher::Nothing => line.to_owned(),
            Matcher::Values { matcher, base64 } => {
                let bytes = line.as_bytes();
                let mut out = String::with_capacity(line.len());
                let mut copied = 0;
                for m in matcher.find_iter(line) {
                    let (mut start, mut end) = (m.start(), m.end());
                    if base64.get(m.pattern().as_usize()).copied().unwrap_or(false) {
                        if start > copied && is_base64_char(bytes[start - 1]) {
                            start -= 1;
                        }
                        if end < bytes.len() && is_base64_char(bytes[end]) {
                            end += 1;
                        }
                        while end < bytes.len() && bytes[end] == b'=' {
                            end += 1;
                        }
                    }
                    // A match right after an extended one may begin inside it.
                    let start = start.max(copied);
                    if end <= copied {
                        continue;
                    }
                    out.push_str(&line[copied..start]);
                    out.push_str(MASK);
                    copied = end;
                }
                out.push_str(&line[copied..]);
                out
            }
            Matcher::Everything => format!("{MASK} (line hidden)"),
        }
    }

    /// Mask, then cut to at most `max` bytes: in this order, so a secret that straddles the cut
    /// is still recognised whole. `whole_len` is the line's length before a reading limit
    /// dropped its end (`line.len()` when nothing was dropped); a line missing its end is
    /// marked as cut even when it fits.
    pub fn mask_and_cut(&self, line: &str, max: usize, whole_len: usize) -> String {
        let masked = self.mask(line);
        if masked.len() <= max && whole_len <= line.len() {
            return masked;
        }
        cut(&masked, max, whole_len.max(line.len()))
    }
}

/// Cut `line` to at most `max` bytes (on a char boundary), the marker saying `[line cut:
/// {whole_len} bytes]` included.
pub fn cut(line: &str, max: usize, whole_len: usize) -> String {
    let marker = format!("{CUT_MARKER}{whole_len} bytes]");
    let mut end = max.saturating_sub(marker.len()).min(line.len());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &line[..end])
}

/// What a cut line ends with, before its original length: `… [line cut: 1048576 bytes]`.
pub const CUT_MARKER: &str = "… [line cut: ";

/// Push the encoded forms of `piece` that differ from it and are long enough to mask safely.
fn encodings(piece: &str, out: &mut Vec<(String, bool)>) {
    let mut text = |p: String| {
        if p.len() >= MIN_ENCODED_CHARS && p != piece {
            out.push((p, false));
        }
    };
    // JSON string escaping: as serde/Go/JS write it, with `/` escaped (PHP), ASCII-only (Python).
    let json = serde_json::to_string(piece).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    text(json.replace('/', "\\/"));
    text(json_ascii(&json));
    text(json);
    // Percent-encoding: every byte outside the unreserved set, upper- and lowercase hex, and
    // the form encoding's `+` for a space.
    let upper = percent(piece, false);
    text(upper.replace("%20", "+"));
    text(percent(piece, true));
    text(upper);
    // base64, both alphabets: the cores only; a match takes the edge characters with it.
    for url in [false, true] {
        for p in base64_cores(piece.as_bytes(), url) {
            if p.len() >= MIN_ENCODED_CHARS {
                out.push((p, true));
            }
        }
    }
}

/// `json` (already escaped) with every non-ASCII char as `\uXXXX` (UTF-16, surrogate pairs).
fn json_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn percent(s: &str, lower: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// For each alignment `bytes` can have inside a longer base64 text (0, 1 or 2 bytes before it,
/// modulo 3), the characters that depend on its bytes alone: those appear whatever surrounds
/// it. Alone, padded or not, its base64 is a core (offset 0) plus one edge character and the
/// padding, which [`Masker::mask`] takes with the core.
fn base64_cores(bytes: &[u8], url: bool) -> Vec<String> {
    let alphabet = if url { URL } else { STD };
    let mut cores = Vec::with_capacity(3);
    for offset in 0..3usize {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(bytes);
        let chars = encode(&shifted, alphabet);
        // Char i holds bits [6i, 6i + 6); the value holds bits [8 * offset, 8 * (offset + len)).
        let first = (8 * offset).div_ceil(6);
        let last = (8 * (offset + bytes.len())) / 6; // exclusive
        if last > first {
            cores.push(chars[first..last].to_owned());
        }
    }
    cores
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Unpadded base64 with the given alphabet.
fn encode(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=n {
            out.push(char::from(alphabet[((v >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_and_each_line_of_multi_line_values() {
        let m = Masker::new(["s3cret", "ab", "first line\r\nsecond line", "s3cret-longer"]);
        assert_eq!(m.mask("x s3cret y"), "x *** y");
        assert_eq!(m.mask("s3cret-longer"), "***");
        assert_eq!(m.mask("ab stays"), "ab stays");
        assert_eq!(m.mask("got: second line!"), "got: ***!");
        assert_eq!(m.mask("first line"), "***");
        assert_eq!(Masker::new([""]).mask("abc"), "abc");
    }

    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    const CANARY: &str = "canary-7f3a/+9e?&\"\\ é-end";

    /// The characters of `canary`'s base64 (via the base64 crate, not ours) that depend on its
    /// bytes alone, at each alignment: none of their 8-character windows may survive masking.
    fn windows_of_encoded_canary() -> Vec<String> {
        let mut out = Vec::new();
        for engine in [&STANDARD, &URL_SAFE] {
            for offset in 0..3usize {
                let mut b = vec![b'\xff'; offset];
                b.extend_from_slice(CANARY.as_bytes());
                let text = engine.encode(&b);
                let core = &text[(8 * offset).div_ceil(6)..8 * (offset + CANARY.len()) / 6];
                for i in 0..=core.len() - 8 {
                    out.push(core[i..i + 8].to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn base64_forms_are_masked_alone_and_inside_longer_base64_at_every_alignment() {
        let m = Masker::new([CANARY]);
        let windows = windows_of_encoded_canary();
        let check = |encoded: &str| {
            let masked = m.mask(encoded);
            assert!(masked.contains(MASK), "not masked: {encoded}");
            for w in &windows {
                assert!(!masked.contains(w.as_str()), "{w} survives in {masked}");
            }
        };
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let alone = engine.encode(CANARY);
            assert_eq!(
                m.mask(&format!("token: {alone} end")),
                "token: *** end",
                "{alone}"
            );
            for before in 0..6usize {
                for after in 0..4usize {
                    let mut b = vec![b'x'; before];
                    b.extend_from_slice(CANARY.as_bytes());
                    b.extend(std::iter::repeat_n(b'y', after));
                    check(&format!("Authorization: Basic {}", engine.encode(&b)));
                }
            }
        }
        // A multi-line value (a PEM key) is usually encoded whole.
        let pem = "-----BEGIN KEY-----\nMIIBVwIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----";
        let m = Masker::new([pem]);
        assert_eq!(m.mask(&STANDARD.encode(pem)), MASK);
    }

    #[test]
    fn percent_and_json_forms_are_masked() {
        let m = Masker::new([CANARY]);
        for encoded in [
            "canary-7f3a%2F%2B9e%3F%26%22%5C%20%C3%A9-end",
            "canary-7f3a%2f%2b9e%3f%26%22%5c%20%c3%a9-end",
            "canary-7f3a%2F%2B9e%3F%26%22%5C+%C3%A9-end",
            r#"canary-7f3a/+9e?&\"\\ é-end"#,
            r#"canary-7f3a\/+9e?&\"\\ é-end"#,
            r#"canary-7f3a/+9e?&\"\\ \u00e9-end"#,
        ] {
            assert_eq!(
                m.mask(&format!("GET /?p={encoded}&x=1")),
                "GET /?p=***&x=1",
                "{encoded}"
            );
        }
        let multi = Masker::new(["line one\nline \"two\""]);
        assert_eq!(multi.mask(r#"{"v":"line one\nline \"two\""}"#), r#"{"v":"***"}"#);
        assert_eq!(multi.mask("v=line%20one%0Aline%20%22two%22"), "v=***");
    }

    #[test]
    fn short_encoded_forms_are_left_alone() {
        // "abc" is masked as itself; its base64 `YWJj` is too short to mask without false hits.
        let m = Masker::new(["abc"]);
        assert_eq!(m.mask("abc YWJj"), "*** YWJj");
    }

    #[test]
    fn masking_comes_before_the_cut() {
        let m = Masker::new([CANARY]);
        let line = format!("{}{CANARY}{}", "a".repeat(90), "b".repeat(100));
        let out = m.mask_and_cut(&line, 100, line.len());
        assert!(out.len() <= 100, "{}", out.len());
        assert!(!out.contains("canary"), "{out}");
        assert!(
            out.ends_with(&format!("{CUT_MARKER}{} bytes]", line.len())),
            "{out}"
        );
        assert_eq!(m.mask_and_cut("short", 100, 5), "short");
        // A line already cut by a reading limit says so even when it fits.
        assert!(m.mask_and_cut("short", 100, 5000).ends_with("5000 bytes]"));
        assert!(cut(&"é".repeat(100), 50, 200).len() <= 50);
        // The masked text may be shorter than the line: that is no cut.
        assert_eq!(
            m.mask_and_cut(&format!("pw {CANARY}"), 100, 3 + CANARY.len()),
            "pw ***"
        );
    }

    #[test]
    fn large_values_build_quickly() {
        let big = "x".repeat(64 * 1024);
        let other: String = (0..64 * 1024)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let started = std::time::Instant::now();
        let m = Masker::new([big.as_str(), other.as_str(), "short"]);
        assert_eq!(m.mask(&format!("<{big}>")), "<***>");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
