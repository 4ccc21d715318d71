//! The masker: whatever the secrets and the line, no secret value (each line of it, at least
//! `MIN_MASKED_CHARS` long) survives in the masked line. Input: secrets and then the line,
//! separated by NUL bytes (the last part is the line).
//!
//! Values holding the mask's own character are left out of the oracle: `a**` beside a mask
//! (`a***`) is the mask touching text, not a leak of a value that could not be told from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagely_protocol::mask::{MIN_MASKED_CHARS, Masker};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts: Vec<&str> = text.split('\0').collect();
    let line = parts.pop().unwrap_or_default();
    let masker = Masker::new(parts.iter().copied());
    let masked = masker.mask(line);
    for secret in &parts {
        for part in secret.split('\n') {
            let part = part.strip_suffix('\r').unwrap_or(part);
            if part.chars().count() < MIN_MASKED_CHARS || part.contains('*') {
                continue;
            }
            assert!(!masked.contains(part), "{part:?} survives in {masked:?}");
        }
    }
});
