//! Cutting input echoes out of parser messages before they reach a log or a response.

/// serde quotes the offending input in its messages (`invalid type: string "…"`); that input may
/// be a secret value, so quoted literals are cut out. Field names (`unknown field `x``) survive.
pub fn serde_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<(char, bool)> = None;
    for c in text.chars() {
        match open {
            Some((q, _)) if c == q => {
                out.push(c);
                open = None;
            }
            Some((_, keep)) => {
                if keep {
                    out.push(c);
                }
            }
            None if c == '`' || c == '"' => {
                let keep = c == '`'
                    && (out.ends_with("field ")
                        || out.ends_with("one of ")
                        || (out.ends_with(", ") && out.contains("expected one of")));
                out.push(c);
                if !keep {
                    out.push('…');
                }
                open = Some((c, keep));
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn literals_are_cut_from_rejections() {
        let msg =
            super::serde_message("invalid type: integer `123456`, expected a string at line 1 column 9");
        assert_eq!(
            msg,
            "invalid type: integer `…`, expected a string at line 1 column 9"
        );
        let msg = super::serde_message(r#"invalid type: string "hunter2", expected u32"#);
        assert_eq!(msg, r#"invalid type: string "…", expected u32"#);
        let msg = super::serde_message("unknown field `vaule`, expected one of `key`, `value`");
        assert_eq!(msg, "unknown field `vaule`, expected one of `key`, `value`");
    }
}
