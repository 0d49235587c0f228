//! Loader tests: golden cases, schema coverage and a no-panic property test.
//!
//! Golden cases live in `tests/fixtures/load/<case>/`: compose files (and `.env`, env files,
//! extended/included files), an optional `case.json` with loader options, and either
//! `expected.json` (the project as `berth config --format json` prints it) or
//! `expected-error.txt` (the exact error message). The case directory's absolute path is
//! written `$CASE` in both; `expected.json` adds `x-disabled-services` (services switched
//! off by their profiles) when there are any, which `berth config` does not print. `case.json` keys: `files`, `workdir`, `env`, `profiles`,
//! `project_name`, `project_directory`, `env_files`, `services`, `no_interpolate`, `stdin`
//! (a file of the case fed as standard input).
//!
//! Regenerate the expectations after an intended change with
//! `UPDATE_GOLDEN=1 cargo test --test integration load::` and review the diff.
//!
//! The property test feeds random and compose-shaped documents to the loader and checks it
//! never panics. Run it longer with `PROPTEST_CASES=20000 cargo test --test integration
//! load::loader_never_panics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth::project::{self, decode, LoadError, LoadOptions};
use proptest::prelude::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases_dir() -> PathBuf {
    repo_root().join("tests/fixtures/load")
}

fn options_for(dir: &Path) -> LoadOptions {
    let spec: serde_json::Value = match std::fs::read_to_string(dir.join("case.json")) {
        Ok(t) => serde_json::from_str(&t)
            .unwrap_or_else(|e| panic!("{}: bad case.json: {e}", dir.display())),
        Err(_) => serde_json::json!({}),
    };
    let strs = |key: &str| -> Vec<String> {
        spec.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut environment: BTreeMap<String, String> = BTreeMap::new();
    environment.insert("HOME".into(), "/home/tester".into());
    if let Some(env) = spec.get("env").and_then(|v| v.as_object()) {
        for (k, v) in env {
            environment.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    let working_dir = match spec.get("workdir").and_then(|v| v.as_str()) {
        Some(w) => dir.join(w),
        None => dir.to_path_buf(),
    };
    LoadOptions {
        working_dir,
        files: strs("files").into_iter().map(PathBuf::from).collect(),
        project_directory: spec
            .get("project_directory")
            .and_then(|v| v.as_str())
            .map(|p| dir.join(p)),
        project_name: spec
            .get("project_name")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        env_files: strs("env_files").into_iter().map(|p| dir.join(p)).collect(),
        profiles: strs("profiles"),
        environment,
        interpolate: !spec
            .get("no_interpolate")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        services_named: strs("services"),
        stdin: spec
            .get("stdin")
            .and_then(|v| v.as_str())
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default()),
    }
}

/// The loader's answer for a case, as golden text.
fn actual(dir: &Path) -> Result<String, String> {
    let case = dir.to_string_lossy().into_owned();
    match project::load(&options_for(dir)) {
        Ok(p) => {
            let mut v = serde_json::to_value(&p).map_err(|e| e.to_string())?;
            if !p.disabled_services.is_empty() {
                let names: Vec<String> =
                    p.disabled_services.keys().map(|k| k.to_string()).collect();
                v["x-disabled-services"] = serde_json::json!(names);
            }
            let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            Ok(text.replace(&case, "$CASE") + "\n")
        }
        Err(e) => Err(e.to_string().replace(&case, "$CASE") + "\n"),
    }
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/fixtures/load exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut errors = 0;
    for dir in &dirs {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let ok_file = dir.join("expected.json");
        let err_file = dir.join("expected-error.txt");
        let got = actual(dir);
        if update {
            let _ = std::fs::remove_file(&ok_file);
            let _ = std::fs::remove_file(&err_file);
            match &got {
                Ok(t) => std::fs::write(&ok_file, t).expect("write expected.json"),
                Err(t) => std::fs::write(&err_file, t).expect("write expected-error.txt"),
            }
            continue;
        }
        let expected = match (
            std::fs::read_to_string(&ok_file),
            std::fs::read_to_string(&err_file),
        ) {
            (Ok(t), _) => Ok(t),
            (_, Ok(t)) => {
                errors += 1;
                Err(t)
            }
            _ => {
                failures.push(format!("{name}: no expected.json or expected-error.txt"));
                continue;
            }
        };
        if got != expected {
            let show = |r: &Result<String, String>| match r {
                Ok(t) => format!("ok:\n{t}"),
                Err(t) => format!("error: {t}"),
            };
            failures.push(format!(
                "{name}:\n--- expected {}--- got {}",
                show(&expected),
                show(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
    if !update {
        assert!(
            dirs.len() >= 60,
            "expected at least 60 golden cases, found {}",
            dirs.len()
        );
        assert!(
            errors >= 15,
            "expected at least 15 error cases, found {errors}"
        );
    }
}

/// Load a document given as JSON text (JSON is YAML) through stdin.
fn load_text(text: &str) -> Result<project::Project, LoadError> {
    // A directory that does not exist: no `.env` or relative file can leak in.
    let opts = LoadOptions {
        working_dir: PathBuf::from("/nonexistent/berth-load-test"),
        files: vec![PathBuf::from("-")],
        project_name: Some("schema".into()),
        interpolate: true,
        stdin: Some(text.to_string()),
        environment: [("HOME".to_string(), "/root".to_string())]
            .into_iter()
            .collect(),
        ..LoadOptions::default()
    };
    project::load(&opts)
}

/// (schema pointer, test document, pointer of the object inside the document, the keys
/// berth models there, the keys it refuses).
type SchemaObject = (
    String,
    serde_json::Value,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// Every property of the compose schema is either modelled (loading it with a null value
/// is not an unknown/unsupported-key error) or refused with "`<key>` is not supported yet".
#[test]
fn every_schema_property_is_modelled_or_refused() {
    let schema_path = repo_root().join("../shared/compose-spec/compose-spec.json");
    let Ok(text) = std::fs::read_to_string(&schema_path) else {
        eprintln!("SKIPPED: {} is absent", schema_path.display());
        return;
    };
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is json");
    let svc = |extra: serde_json::Value| {
        let mut base = serde_json::json!({"image": "x"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::json!({
            "services": {"a": base, "b": {"image": "y"}},
            "networks": {"n": {}},
            "volumes": {"v": {}},
            "secrets": {"s": {"file": "./s"}},
            "configs": {"c": {"file": "./c"}}
        })
    };
    let pat = "^[a-zA-Z0-9._-]+$";
    // (schema pointer, document, pointer of the object inside the document, modelled, refused)
    let objects: Vec<SchemaObject> = vec![
        ("/properties".into(), svc(serde_json::json!({})), "", decode::TOP_KEYS, decode::TOP_REFUSED),
        ("/definitions/service/properties".into(), svc(serde_json::json!({})), "/services/a", decode::SERVICE_KEYS, decode::SERVICE_REFUSED),
        (
            "/definitions/service/properties/build/oneOf/1/properties".into(),
            svc(serde_json::json!({"build": {"context": "."}})),
            "/services/a/build",
            decode::BUILD_KEYS,
            decode::BUILD_REFUSED,
        ),
        ("/definitions/healthcheck/properties".into(), svc(serde_json::json!({"healthcheck": {}})), "/services/a/healthcheck", decode::HEALTHCHECK_KEYS, &[]),
        ("/definitions/deployment/properties".into(), svc(serde_json::json!({"deploy": {}})), "/services/a/deploy", decode::DEPLOY_KEYS, decode::DEPLOY_REFUSED),
        (
            "/definitions/deployment/properties/resources/properties".into(),
            svc(serde_json::json!({"deploy": {"resources": {}}})),
            "/services/a/deploy/resources",
            decode::RESOURCES_KEYS,
            &[],
        ),
        (
            "/definitions/deployment/properties/resources/properties/limits/properties".into(),
            svc(serde_json::json!({"deploy": {"resources": {"limits": {}}}})),
            "/services/a/deploy/resources/limits",
            decode::LIMITS_KEYS,
            &[],
        ),
        (
            "/definitions/deployment/properties/resources/properties/reservations/properties".into(),
            svc(serde_json::json!({"deploy": {"resources": {"reservations": {}}}})),
            "/services/a/deploy/resources/reservations",
            decode::RESERVATIONS_KEYS,
            decode::RESERVATIONS_REFUSED,
        ),
        (
            "/definitions/deployment/properties/restart_policy/properties".into(),
            svc(serde_json::json!({"deploy": {"restart_policy": {}}})),
            "/services/a/deploy/restart_policy",
            decode::RESTART_POLICY_KEYS,
            &[],
        ),
        (
            "/definitions/service/properties/ports/items/oneOf/2/properties".into(),
            svc(serde_json::json!({"ports": [{"target": 80}]})),
            "/services/a/ports/0",
            decode::PORT_KEYS,
            &[],
        ),
        (
            "/definitions/service/properties/volumes/items/oneOf/1/properties".into(),
            svc(serde_json::json!({"volumes": [{"type": "volume", "source": "v", "target": "/x"}]})),
            "/services/a/volumes/0",
            decode::MOUNT_KEYS,
            decode::MOUNT_REFUSED,
        ),
        (
            "/definitions/service/properties/volumes/items/oneOf/1/properties/bind/properties".into(),
            svc(serde_json::json!({"volumes": [{"type": "bind", "source": "/s", "target": "/x", "bind": {}}]})),
            "/services/a/volumes/0/bind",
            decode::BIND_KEYS,
            decode::BIND_REFUSED,
        ),
        (
            "/definitions/service/properties/volumes/items/oneOf/1/properties/volume/properties".into(),
            svc(serde_json::json!({"volumes": [{"type": "volume", "source": "v", "target": "/x", "volume": {}}]})),
            "/services/a/volumes/0/volume",
            decode::VOLUME_OPT_KEYS,
            decode::VOLUME_OPT_REFUSED,
        ),
        (
            "/definitions/service/properties/volumes/items/oneOf/1/properties/tmpfs/properties".into(),
            svc(serde_json::json!({"volumes": [{"type": "tmpfs", "target": "/x", "tmpfs": {}}]})),
            "/services/a/volumes/0/tmpfs",
            decode::TMPFS_KEYS,
            &[],
        ),
        (
            format!("/definitions/service/properties/depends_on/oneOf/1/patternProperties/{pat}/properties"),
            svc(serde_json::json!({"depends_on": {"b": {"condition": "service_started"}}})),
            "/services/a/depends_on/b",
            decode::DEPENDS_KEYS,
            &[],
        ),
        (
            format!("/definitions/service/properties/networks/oneOf/1/patternProperties/{pat}/oneOf/0/properties"),
            svc(serde_json::json!({"networks": {"n": {"aliases": ["q"]}}})),
            "/services/a/networks/n",
            decode::SERVICE_NETWORK_KEYS,
            decode::SERVICE_NETWORK_REFUSED,
        ),
        (
            "/definitions/service/properties/logging/properties".into(),
            svc(serde_json::json!({"logging": {}})),
            "/services/a/logging",
            decode::LOGGING_KEYS,
            &[],
        ),
        (
            "/definitions/ulimits/patternProperties/^[a-z]+$/oneOf/1/properties".into(),
            svc(serde_json::json!({"ulimits": {"nofile": {"soft": 1, "hard": 2}}})),
            "/services/a/ulimits/nofile",
            decode::ULIMIT_KEYS,
            &[],
        ),
        (
            "/definitions/service_config_or_secret/items/oneOf/1/properties".into(),
            svc(serde_json::json!({"secrets": [{"source": "s"}]})),
            "/services/a/secrets/0",
            decode::FILE_REF_KEYS,
            &[],
        ),
        (
            "/definitions/env_file/oneOf/1/items/oneOf/1/properties".into(),
            svc(serde_json::json!({"env_file": [{"path": "./nope", "required": false}]})),
            "/services/a/env_file/0",
            decode::ENV_FILE_KEYS,
            &[],
        ),
        ("/definitions/network/properties".into(), svc(serde_json::json!({})), "/networks/n", decode::NETWORK_KEYS, &[]),
        (
            "/definitions/network/properties/ipam/properties".into(),
            serde_json::json!({"services": {"a": {"image": "x"}}, "networks": {"n": {"ipam": {}}}}),
            "/networks/n/ipam",
            decode::IPAM_KEYS,
            &[],
        ),
        (
            "/definitions/network/properties/ipam/properties/config/items/properties".into(),
            serde_json::json!({"services": {"a": {"image": "x"}}, "networks": {"n": {"ipam": {"config": [{"subnet": "10.9.0.0/16"}]}}}}),
            "/networks/n/ipam/config/0",
            decode::IPAM_POOL_KEYS,
            &[],
        ),
        ("/definitions/volume/properties".into(), svc(serde_json::json!({})), "/volumes/v", decode::VOLUME_KEYS, &[]),
        ("/definitions/secret/properties".into(), svc(serde_json::json!({})), "/secrets/s", decode::SECRET_KEYS, decode::SECRET_REFUSED),
        ("/definitions/config/properties".into(), svc(serde_json::json!({})), "/configs/c", decode::CONFIG_KEYS, decode::CONFIG_REFUSED),
    ];
    let mut problems = Vec::new();
    for (schema_ptr, doc, obj_ptr, modelled, refused) in &objects {
        let Some(props) = schema.pointer(schema_ptr).and_then(|p| p.as_object()) else {
            problems.push(format!("schema has no object at {schema_ptr}"));
            continue;
        };
        // The baseline document must load.
        if let Err(e) = load_text(&doc.to_string()) {
            problems.push(format!("{obj_ptr}: baseline document fails: {e}"));
            continue;
        }
        for key in props.keys() {
            let is_modelled = modelled.contains(&key.as_str());
            let is_refused = refused.contains(&key.as_str());
            if is_modelled == is_refused {
                problems.push(format!(
                    "{schema_ptr}: `{key}` is {}",
                    if is_modelled {
                        "both modelled and refused"
                    } else {
                        "neither modelled nor refused"
                    }
                ));
                continue;
            }
            let mut d = doc.clone();
            match d.pointer_mut(obj_ptr).and_then(|o| o.as_object_mut()) {
                Some(o) => {
                    o.insert(key.clone(), serde_json::Value::Null);
                }
                None => {
                    problems.push(format!("test document has no object at {obj_ptr}"));
                    continue;
                }
            }
            let result = load_text(&d.to_string());
            if is_refused {
                match result {
                    Err(LoadError::Unsupported { key: k, .. }) if &k == key => {}
                    other => problems.push(format!(
                        "{obj_ptr}.{key}: expected \"`{key}` is not supported yet\", got {:?}",
                        other.map(|_| "ok")
                    )),
                }
            } else if let Err(e @ (LoadError::Unsupported { .. } | LoadError::UnknownKey { .. })) =
                result
            {
                problems.push(format!(
                    "{obj_ptr}.{key}: modelled but the loader said: {e}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "schema coverage problems:\n{}",
        problems.join("\n")
    );
}

fn compose_doc() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "volumes",
        "depends_on",
        "networks",
        "healthcheck",
        "restart",
        "extends",
        "profiles",
        "deploy",
        "ulimits",
        "env_file",
        "secrets",
        "build",
        "container_name",
        "labels",
        "<<",
        "x-a",
        "bogus",
        "cpus",
        "mem_limit",
        "stop_grace_period",
        "tmpfs",
        "extra_hosts",
        "logging",
    ]);
    let value = prop::sample::select(vec![
        "",
        "null",
        "~",
        "[]",
        "{}",
        "'8080:80'",
        "80",
        "-1",
        "1.5",
        "true",
        "x",
        "${A}",
        "${A:?boom}",
        "${",
        "$$",
        "[a, b]",
        "{a: 1}",
        "[{target: 80}]",
        "['./a:/b:ro']",
        "[a, 'b:c:d:e']",
        "{condition: x}",
        "!reset []",
        "!override [1]",
        "&a {k: v}",
        "*a",
        "'1m30s'",
        "'512q'",
        "{soft: 1}",
        "['CMD']",
        "[{source: s}]",
        "'[::1]:1:2'",
        "{service: a}",
        "{file: nope.yml, service: a}",
        "'a b \"c'",
        "[1, [2]]",
        "{<<: {a: 1}}",
        "!unknown x",
    ]);
    let service = prop::collection::vec((key, value), 0..6).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(k, v)| format!("    {k}: {v}\n"))
            .collect::<String>()
    });
    let services = prop::collection::vec(("[a-c]", service), 0..4).prop_map(|svcs| {
        let mut s = String::from("services:\n");
        for (name, body) in svcs {
            s.push_str(&format!("  {name}:\n{body}"));
        }
        s
    });
    prop_oneof![services, "\\PC{0,200}", "[ -~\n]{0,200}"]
}

proptest! {
    /// No input, however malformed, panics the loader: it returns a project or an error.
    #[test]
    fn loader_never_panics(doc in compose_doc()) {
        let _ = load_text(&doc);
    }
}

/// Bench, not a timed test: load and render a generated 200-service project and print
/// how long it takes (the goal is well under 100 ms in a release build). Run with
/// `cargo test --release --test integration load::bench_200_services -- --ignored --nocapture`.
#[test]
#[ignore = "bench: run explicitly"]
fn bench_200_services() {
    let mut doc = String::from(
        "x-common: &common\n  restart: unless-stopped\n  environment: {TZ: UTC}\nservices:\n",
    );
    for i in 0..200 {
        doc.push_str(&format!(
            "  svc{i}:\n    <<: *common\n    image: registry.example/app{i}:${{TAG:-1.0}}\n    ports: ['{}:80']\n    volumes: ['data{i}:/data', './conf{i}:/etc/app:ro']\n    depends_on: [{}]\n    healthcheck: {{test: [CMD, 'true'], interval: 10s}}\n    environment: [A=1, B=2, 'C=${{HOME}}']\n",
            10000 + i,
            if i == 0 { "db".to_string() } else { format!("svc{}", i - 1) }
        ));
    }
    doc.push_str("  db:\n    image: postgres\nvolumes:\n");
    for i in 0..200 {
        doc.push_str(&format!("  data{i}: {{}}\n"));
    }
    let runs = 20;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        let p = load_text(&doc).expect("the generated project loads");
        assert_eq!(p.services.len(), 201);
        let json = serde_json::to_string(&p).expect("serialises");
        assert!(json.len() > 10_000);
    }
    let per_run = start.elapsed() / runs;
    println!("bench: load + render of 201 services: {per_run:?} per run");
}

/// `berth config` end to end: canonical YAML on stdout and exit 0 for a good project; the
/// error with file:line:col and YAML path on stderr and a non-zero exit for a bad one.
#[test]
fn berth_config_cli() {
    let Some(bin) = option_env!("CARGO_BIN_EXE_berth") else {
        eprintln!("SKIPPED: the berth binary is not built by this test harness");
        return;
    };
    let case = cases_dir().join("seed-wordpress");
    let out = std::process::Command::new(bin)
        .args(["config", "--format", "json"])
        .current_dir(&case)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_PROFILES")
        .output()
        .expect("berth runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["services"]["wordpress"]["ports"][0]["published"], "8000");
    assert_eq!(v["name"], "seed-wordpress");

    let bad = cases_dir().join("err-depends-cycle");
    let out = std::process::Command::new(bin)
        .arg("-f")
        .arg(bad.join("compose.yaml"))
        .args(["config", "-q"])
        .output()
        .expect("berth runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("compose.yaml:4:18: services.a.depends_on.b: dependency cycle: a -> b -> a"),
        "stderr: {stderr}"
    );
}
