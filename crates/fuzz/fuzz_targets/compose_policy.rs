//! The compose-policy checker on arbitrary compose models: it never panics, and whatever it
//! refuses it names (service, key, value, the setting that would allow it); a model with a
//! privileged service is never let through under the default policy.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stagely_agent::policy::{Context, PolicyConfig, check};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let config = PolicyConfig::default();
    let eff = config.for_project("shop", "production");
    let state = [PathBuf::from("/var/lib/stagely-agent")];
    let cx = Context {
        allow: &eff,
        checkout: Path::new("/var/lib/stagely-agent/shop/production"),
        agent_state: &state,
    };
    let verdict = check(&model, &cx);
    if let Err(refused) = &verdict {
        assert!(!refused.to_string().is_empty());
    }
    let privileged = model
        .get("services")
        .and_then(Value::as_object)
        .is_some_and(|services| {
            services
                .values()
                .any(|s| s.get("privileged") == Some(&Value::Bool(true)))
        });
    if privileged {
        assert!(verdict.is_err(), "a privileged service passed the default policy");
    }
});
