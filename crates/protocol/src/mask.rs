//! Masking secret values out of log lines. Shared by both sides, like the protocol: the agent
//! masks before it sends, the appliance masks again before it stores or streams (defence in
//! depth, and the appliance cannot trust an agent to have done it).

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: masking `1` or `on` would shred every line while
/// protecting nothing.
pub const MIN_MASKED_CHARS: usize = 3;

/// Replaces every secret value (each line of a multi-line value separately) with [`MASK`].
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Matcher,
}

#[derive(Debug, Clone, Default)]
enum Matcher {
    #[default]
    Nothing,
    Values(AhoCorasick),
    /// The matcher could not be built (absurdly many or long values): hide whole lines rather
    /// than risk showing a secret.
    Everything,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<&str> = values
            .into_iter()
            .flat_map(|v| v.split('\n'))
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|p| p.chars().count() >= MIN_MASKED_CHARS)
            .collect();
        patterns.sort_unstable();
        patterns.dedup();
        if patterns.is_empty() {
            return Self::default();
        }
        // An NFA builds in time linear in the patterns; the DFA aho-corasick may otherwise pick
        // takes minutes for one 64 KiB value.
        let matcher = match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&patterns)
        {
            Ok(m) => Matcher::Values(m),
            Err(_) => Matcher::Everything,
        };
        Self { matcher }
    }

    pub fn mask(&self, line: &str) -> String {
        match &self.matcher {
            Matcher::Nothing => line.to_owned(),
            Matcher::Values(m) => m.replace_all(line, &vec![MASK; m.patterns_len()]),
            Matcher::Everything => format!("{MASK} (line hidden)"),
        }
    }
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
