//! Masking secret values out of log lines before they are stored or shown.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// What a masked value is replaced with.
pub const MASK: &str = "********";

/// Values shorter than this are not masked: masking "1" or "no" would shred every log line
/// while protecting nothing (such a value is guessable anyway). Documented in docs/security.md.
pub const MIN_MASKED_CHARS: usize = 3;

/// Replaces every occurrence of any of one deployment's secret values (and of each line of a
/// multi-line value, since logs arrive line by line) with [`MASK`].
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<&str> = Vec::new();
        for value in values {
            for part in std::iter::once(value).chain(value.lines()) {
                let part = part.trim_end_matches('\r');
                if part.chars().count() >= MIN_MASKED_CHARS && !patterns.contains(&part) {
                    patterns.push(part);
                }
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            // Leftmost-longest: a value that contains another is masked whole.
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Masker { matcher }
    }

    pub fn mask(&self, line: &str) -> String {
        let Some(m) = &self.matcher else {
            return line.to_owned();
        };
        let mut out = String::with_capacity(line.len());
        let replaced = m.try_replace_all_with(line, &mut out, |_, _, dst| {
            dst.push_str(MASK);
            true
        });
        // Only an unsupported search configuration can fail; fail closed.
        if replaced.is_err() { MASK.to_owned() } else { out }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_value_and_each_line_of_multiline_values() {
        let m = Masker::new(["s3cr3t-canary", "line-one\nline-two", "ab", ""]);
        assert_eq!(m.mask("token=s3cr3t-canary!"), "token=********!");
        assert_eq!(m.mask("got line-two here"), "got ******** here");
        assert_eq!(
            m.mask("ab stays: too short to mask"),
            "ab stays: too short to mask"
        );
        assert_eq!(m.mask("s3cr3t-canarys3cr3t-canary"), "****************");
    }

    #[test]
    fn no_values_means_no_change() {
        assert_eq!(Masker::new([]).mask("hello"), "hello");
    }
}
