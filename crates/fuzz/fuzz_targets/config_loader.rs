//! The config loaders, appliance (`stagely.toml` + `STAGELY_*` variables) and agent
//! (`agent.toml`): any file either loads into a valid configuration or is refused with an error
//! naming the problem; nothing panics. Input: the file, then optionally a NUL byte and
//! `KEY=VALUE` lines taken as `STAGELY_KEY` variables.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use stagely::config::{Config, Overrides};
use stagely_agent::config::FileConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file_text, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("STAGELY_{k}"), v.to_owned()))
        .collect();
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").expect("a temp file");
    file.write_all(file_text.as_bytes()).expect("written");
    if let Err(e) = Config::load(Some(file.path()), env, &Overrides::default()) {
        assert!(!e.to_string().is_empty());
    }
    if let Ok(agent) = toml::from_str::<FileConfig>(file_text) {
        let _ = agent.policy.validate();
    }
});
