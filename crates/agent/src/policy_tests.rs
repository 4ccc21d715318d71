use super::*;
use serde_json::json;

fn cx_check(model: Value, allow: &str) -> Result<(), Refused> {
    let config: PolicyConfig = toml::from_str(allow).unwrap();
    config.validate().unwrap();
    let eff = config.for_project("shop", "production");
    let state = [PathBuf::from("/var/lib/stagely-agent")];
    check(
        &model,
        &Context {
            allow: &eff,
            checkout: Path::new("/var/lib/stagely-agent/shop/production"),
            agent_state: &state,
        },
    )
}

fn refused(model: Value) -> Vec<Violation> {
    cx_check(model, "").unwrap_err().0
}

fn svc(body: Value) -> Value {
    json!({"services": {"web": body}})
}

#[test]
fn a_plain_service_passes() {
    let model = svc(json!({
        "image": "nginx",
        "environment": {"SECRET": "v"},
        "cap_add": ["NET_BIND_SERVICE", "CAP_CHOWN"],
        "network_mode": "service:db",
        "security_opt": ["no-new-privileges:true"],
        "volumes": [
            {"type": "bind", "source": "/var/lib/stagely-agent/shop/production/conf", "target": "/c"},
            {"type": "volume", "source": "data", "target": "/d"},
        ],
        "build": {"context": "/var/lib/stagely-agent/shop/production/app", "dockerfile": "Dockerfile"},
    }));
    assert_eq!(cx_check(model, ""), Ok(()));
}

#[test]
fn each_default_refusal_names_service_key_value_and_setting() {
    let cases = [
        (
            json!({"privileged": true}),
            "privileged",
            "true",
            "allow_privileged = true",
        ),
        (
            json!({"cap_add": ["SYS_ADMIN"]}),
            "cap_add",
            "SYS_ADMIN",
            r#"allow_cap_add = ["SYS_ADMIN"]"#,
        ),
        (
            json!({"cap_add": ["ALL"]}),
            "cap_add",
            "ALL",
            r#"allow_cap_add = ["ALL"]"#,
        ),
        (
            json!({"devices": [{"source": "/dev/fuse", "target": "/dev/fuse"}]}),
            "devices",
            "/dev/fuse",
            r#"allow_devices = ["/dev/fuse"]"#,
        ),
        (
            json!({"pid": "host"}),
            "pid",
            "host",
            r#"allow_shared_namespaces = ["pid"]"#,
        ),
        (
            json!({"ipc": "host"}),
            "ipc",
            "host",
            r#"allow_shared_namespaces = ["ipc"]"#,
        ),
        (
            json!({"network_mode": "host"}),
            "network_mode",
            "host",
            r#"allow_shared_namespaces = ["network"]"#,
        ),
        (
            json!({"userns_mode": "host"}),
            "userns_mode",
            "host",
            r#"allow_shared_namespaces = ["userns"]"#,
        ),
        (
            json!({"network_mode": "container:other"}),
            "network_mode",
            "container:other",
            r#"allow_shared_namespaces = ["network"]"#,
        ),
        (
            json!({"security_opt": ["seccomp:unconfined"]}),
            "security_opt",
            "seccomp:unconfined",
            r#"allow_security_opt = ["seccomp=unconfined"]"#,
        ),
        (
            json!({"security_opt": ["apparmor=unconfined"]}),
            "security_opt",
            "apparmor=unconfined",
            r#"allow_security_opt = ["apparmor=unconfined"]"#,
        ),
        (
            json!({"security_opt": ["label:disable"]}),
            "security_opt",
            "label:disable",
            r#"allow_security_opt = ["label=disable"]"#,
        ),
        (
            json!({"volumes": [{"type": "bind", "source": "/srv/data", "target": "/d"}]}),
            "volumes",
            "/srv/data",
            r#"allow_bind = ["/srv/data"]"#,
        ),
        (
            json!({"build": {"context": "/srv/elsewhere"}}),
            "build.context",
            "/srv/elsewhere",
            r#"allow_read = ["/srv/elsewhere"]"#,
        ),
    ];
    for (body, key, value, setting) in cases {
        let v = refused(svc(body.clone()));
        assert_eq!(v.len(), 1, "{body}: {v:?}");
        let text = v[0].to_string();
        assert!(text.starts_with("service web: "), "{text}");
        assert!(text.contains(&format!("`{key}: {value}`")), "{text}");
        assert!(text.contains(setting), "{text}");
        assert!(text.contains(r#"[policy.project."shop"]"#), "{text}");
    }
}

#[test]
fn protected_paths_and_the_agent_state_are_never_mounted_by_a_broad_allowance() {
    let bind = |src: &str| svc(json!({"volumes": [{"type": "bind", "source": src, "target": "/x"}]}));
    for p in [
        "/",
        "/etc",
        "/etc/passwd",
        "/root",
        "/proc",
        "/sys",
        "/boot",
        "/dev",
        "/var/run/docker.sock",
    ] {
        assert!(cx_check(bind(p), "").is_err(), "{p}");
    }
    // Another project's checkout, or the agent's state: never, whatever is allowed.
    let other = bind("/var/lib/stagely-agent/other/production");
    let v = cx_check(other, "allow_bind = [\"/var/lib\"]").unwrap_err().0;
    assert!(v[0].allow_with.starts_with("nothing"), "{v:?}");
    assert!(
        v[0].to_string()
            .contains("cannot be allowed: the agent's own state"),
        "{v:?}"
    );
    // A broad allowance does not open a protected path inside it...
    assert!(cx_check(bind("/var/lib/docker/volumes"), "allow_bind = [\"/var/lib\"]").is_err());
    // ...one naming it does.
    assert!(
        cx_check(
            bind("/var/lib/docker/volumes"),
            "allow_bind = [\"/var/lib/docker\"]"
        )
        .is_ok()
    );
    assert!(cx_check(bind("/srv/data/sub"), "allow_bind = [\"/srv/data\"]").is_ok());
    assert!(cx_check(bind("/srv/database"), "allow_bind = [\"/srv/data\"]").is_err());
    // `/` is refused as an allowance.
    let broad: PolicyConfig = toml::from_str("allow_bind = [\"/\"]").unwrap();
    assert!(broad.validate().is_err());
}

#[test]
fn top_level_files_volumes_and_networks_are_checked() {
    let v = refused(json!({
        "secrets": {"s": {"file": "/etc/shadow"}},
        "configs": {"c": {"file": "/var/lib/stagely-agent/shop/production/ok.conf"}},
        "volumes": {"v": {"driver_opts": {"type": "none", "o": "bind", "device": "/root"}}},
        "networks": {"n": {"name": "host", "external": true}},
    }));
    let subjects: Vec<&str> = v.iter().map(|v| v.subject.as_str()).collect();
    assert_eq!(subjects, ["secret s", "volume v", "network n"], "{v:?}");
}

#[test]
fn allowances_are_narrow_and_per_project() {
    let model = svc(json!({"privileged": true, "cap_add": ["NET_ADMIN"]}));
    assert!(cx_check(model.clone(), "[project.other]\nallow_privileged = true\n").is_err());
    let only_priv = cx_check(model.clone(), "[project.shop]\nallow_privileged = true\n")
        .unwrap_err()
        .0;
    assert_eq!(only_priv.len(), 1);
    assert_eq!(only_priv[0].key, "cap_add");
    let both =
        "[project.\"shop/production\"]\nallow_privileged = true\nallow_cap_add = [\"cap_net_admin\"]\n";
    assert_eq!(cx_check(model.clone(), both), Ok(()));
    let staging = "[project.\"shop/staging\"]\nallow_privileged = true\nallow_cap_add = [\"NET_ADMIN\"]\n";
    assert!(cx_check(model, staging).is_err());
}

#[test]
fn a_violation_never_quotes_the_environment() {
    let model = svc(json!({"privileged": true, "environment": {"K": "secret-canary"}}));
    let text = Refused(refused(model)).to_string();
    assert!(!text.contains("secret-canary"), "{text}");
}

#[test]
fn paths_resolve_through_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
    assert_eq!(
        resolve(&dir.path().join("link/ssl/x/../y")),
        Path::new("/etc/ssl/y")
    );
    let real = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(resolve(&dir.path().join("missing/a")), real.join("missing/a"));
}

#[test]
fn a_checkout_holding_the_agent_state_does_not_expose_it() {
    let state = [PathBuf::from("/srv/app/work")];
    let eff = PolicyConfig::default().for_project("p", "e");
    let cx = Context {
        allow: &eff,
        checkout: Path::new("/srv/app"),
        agent_state: &state,
    };
    let bind = |src: &str| svc(json!({"volumes": [{"type": "bind", "source": src, "target": "/x"}]}));
    assert!(check(&bind("/srv/app/data"), &cx).is_ok());
    for src in ["/srv/app", "/srv/app/work", "/srv/app/work/p/e"] {
        let v = check(&bind(src), &cx).unwrap_err().0;
        assert_eq!(v[0].allow_with, STATE_NEVER_READ, "{src}");
    }
    // A cloned checkout lives in the state: its own files are fine, its siblings are not.
    let cloned = Context {
        checkout: Path::new("/srv/app/work/p/e"),
        ..cx
    };
    assert!(check(&bind("/srv/app/work/p/e/conf"), &cloned).is_ok());
    assert!(check(&bind("/srv/app/work/q/e"), &cloned).is_err());
}

#[test]
fn a_repo_less_checkout_under_a_protected_path_does_not_open_it() {
    let eff = PolicyConfig::default().for_project("p", "e");
    let cx = Context {
        allow: &eff,
        checkout: Path::new("/etc/myapp"),
        agent_state: &[],
    };
    let bind = svc(json!({"volumes": [{"type": "bind", "source": "/etc/myapp/conf", "target": "/c"}]}));
    let v = check(&bind, &cx).unwrap_err().0;
    assert!(
        v[0].allow_with.contains(r#"allow_bind = ["/etc/myapp/conf"]"#),
        "{v:?}"
    );
}
