//! The override writer: for any services and secrets it either refuses with an error or writes
//! YAML that a YAML parser reads back as exactly the values compose must see (`$` doubled against
//! interpolation), each service getting its globals and its own secrets, a service secret beating
//! a global one.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_yaml_ng::Value;
use stagely_agent::override_file::{is_agent_only, render};
use stagely_protocol::{Scope, SecretEntry};

#[derive(Debug, Arbitrary)]
struct Input {
    services: Vec<String>,
    secrets: Vec<(String, String, Option<String>)>,
}

fuzz_target!(|input: Input| {
    let secrets: Vec<SecretEntry> = input
        .secrets
        .iter()
        .map(|(key, value, service)| SecretEntry {
            key: key.clone(),
            value: value.clone(),
            scope: if service.is_some() {
                Scope::Service
            } else {
                Scope::Global
            },
            service: service.clone(),
        })
        .collect();
    let Ok(text) = render(&input.services, &secrets) else {
        return;
    };
    let doc: Value = serde_yaml_ng::from_str(&text).expect("the override is valid YAML");
    for service in &input.services {
        let mut expected: BTreeMap<&str, &str> = BTreeMap::new();
        for s in secrets
            .iter()
            .filter(|s| !is_agent_only(&s.key) && s.service.is_none())
        {
            expected.insert(&s.key, &s.value);
        }
        for s in secrets
            .iter()
            .filter(|s| !is_agent_only(&s.key) && s.service.as_deref() == Some(service.as_str()))
        {
            expected.insert(&s.key, &s.value);
        }
        let env = doc
            .get("services")
            .and_then(|s| s.get(service.as_str()))
            .and_then(|s| s.get("environment"));
        if expected.is_empty() {
            continue;
        }
        let env = env.unwrap_or_else(|| panic!("service {service:?} has no environment"));
        let env = env.as_mapping().expect("environment is a mapping");
        assert_eq!(env.len(), expected.len(), "service {service:?}: {text}");
        for (key, value) in expected {
            let got = env
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{key:?} missing or not a string in {service:?}"));
            assert_eq!(got.replace("$$", "$"), value, "{key:?} in {service:?}");
            assert_eq!(got.matches('$').count(), value.matches('$').count() * 2);
        }
    }
});
