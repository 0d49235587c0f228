//! End-to-end: `berth up`/`down` of whole stacks with real containers, each test in a fresh
//! network namespace with its own state root, one intent per test, leak-checked.

use std::io::Read;
use std::time::Duration;

use crate::require_root;
use crate::support::{self, eventually, TestEnv};

const QUICKSTART: &str = r#"
services:
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello from $$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
      - "127.0.0.1:PORT:8080"
  client:
    image: busybox
    depends_on: [web]
    command: ["sh", "-c", "while true; do wget -q -O- http://web:8080/ || echo fetch failed; sleep 0.3; done"]
"#;

fn ps_json(env: &TestEnv, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = env.compose_ok(dir, &["ps", "-a", "--format", "json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ps json {out:?}: {e}"))
}

fn http_get(port: u16) -> Result<String, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The thin end-to-end path: two busybox services on the project bridge, the client reaches
/// the web server by service name through berth's DNS, the published port answers on
/// 127.0.0.1, and `down` leaves nothing behind.
#[test]
fn two_services_resolve_by_name_and_down_leaves_nothing() {
    require_root!();
    let env = TestEnv::new("e2e-qs");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let port = support::free_port();
    let dir = env.project_dir("qs", &QUICKSTART.replace("PORT", &port.to_string()));

    env.compose_ok(&dir, &["up", "-d"]);
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "running"), "{rows:?}");

    let web = format!("{}-web-1", env.project);
    eventually(Duration::from_secs(10), || {
        let logs = env.compose_ok(&dir, &["logs", "client"]);
        if logs.contains(&format!("hello from {web}")) {
            Ok(())
        } else {
            Err(format!("client has not reached web by name yet: {logs}"))
        }
    });
    let body = eventually(Duration::from_secs(5), || http_get(port));
    assert!(body.contains(&format!("hello from {web}")), "{body}");

    env.compose_ok(&dir, &["down"]);
    assert!(ps_json(&env, &dir).is_empty());
    env.finish();
}

/// A second `up` with no change recreates nothing; a changed environment recreates only
/// that service.
#[test]
fn second_up_converges() {
    require_root!();
    let env = TestEnv::new("e2e-conv");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let compose = |v: &str| {
        format!(
            "services:\n  a:\n    image: busybox\n    command: [sleep, '3600']\n    environment: {{V: '{v}'}}\n  b:\n    image: busybox\n    command: [sleep, '3600']\n"
        )
    };
    let dir = env.project_dir("conv", &compose("1"));
    env.compose_ok(&dir, &["up", "-d"]);
    let pids = |rows: &[serde_json::Value]| -> Vec<(String, i64)> {
        rows.iter()
            .map(|r| {
                (
                    r["service"].as_str().unwrap().to_string(),
                    r["pid"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    };
    let first = pids(&ps_json(&env, &dir));
    env.compose_ok(&dir, &["up", "-d"]);
    assert_eq!(
        pids(&ps_json(&env, &dir)),
        first,
        "unchanged project was recreated"
    );

    support::write_file(&dir, "compose.yaml", &compose("2"));
    env.compose_ok(&dir, &["up", "-d"]);
    let second = pids(&ps_json(&env, &dir));
    assert_eq!(second[1], first[1], "b must not be recreated");
    assert_ne!(second[0].1, first[0].1, "a must be recreated");

    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// Kill -9 the project's supervisor mid-run: `ps` and `down` still work from state, and
/// nothing is left.
#[test]
fn down_after_supervisor_killed() {
    require_root!();
    let env = TestEnv::new("e2e-kill");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "kill",
        "services:\n  a:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let sup = supervisor_pid(&env).expect("a supervisor runs while the project is up");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(Duration::from_secs(5), || {
        if std::path::Path::new(&format!("/proc/{sup}")).exists() {
            Err("supervisor still alive".into())
        } else {
            Ok(())
        }
    });
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["state"], "running");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// The pid of this test's project supervisor, from /proc.
fn supervisor_pid(env: &TestEnv) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("__supervise") && cmd.contains(&env.project) {
            return Some(pid);
        }
    }
    None
}

/// Data a container writes to a named volume survives `down` + `up`, and `down -v`
/// removes the volume.
#[test]
fn named_volume_survives_down_and_goes_with_down_v() {
    require_root!();
    let env = TestEnv::new("e2e-vol");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "vol",
        "services:\n  db:\n    image: busybox\n    volumes: [db_data:/var/lib/db]\n    command: [sh, -c, 'echo boot >> /var/lib/db/boots; exec sleep 3600']\nvolumes:\n  db_data: {}\n",
    );
    let vol_data = env
        .root
        .join("volumes")
        .join(format!("{}_db_data", env.project))
        .join("_data/boots");
    env.compose_ok(&dir, &["up", "-d"]);
    eventually(Duration::from_secs(5), || {
        match std::fs::read_to_string(&vol_data) {
            Ok(s) if s.lines().count() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    env.compose_ok(&dir, &["down"]);
    assert!(vol_data.exists(), "down must keep named volumes");
    env.compose_ok(&dir, &["up", "-d"]);
    eventually(Duration::from_secs(5), || {
        match std::fs::read_to_string(&vol_data) {
            Ok(s) if s.lines().count() == 2 => Ok(()),
            other => Err(format!("second boot not recorded: {other:?}")),
        }
    });
    env.compose_ok(&dir, &["down", "-v"]);
    assert!(!vol_data.exists(), "down -v must remove the volume");
    env.finish();
}

/// `depends_on: condition: service_healthy`: web starts only after db's healthcheck
/// passes; `service_completed_successfully`: migrate must have exited 0 first.
#[test]
fn depends_on_healthy_and_completed() {
    require_root!();
    let env = TestEnv::new("e2e-health");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "health",
        r#"
services:
  db:
    image: busybox
    command: [sh, -c, "sleep 1; touch /tmp/ready; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 200ms
      retries: 30
  migrate:
    image: busybox
    command: [sh, -c, "sleep 0.5; exit 0"]
  web:
    image: busybox
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
    command: [sh, -c, "ping -c1 -W1 db >/dev/null 2>&1; nslookup db >/dev/null 2>&1; exec sleep 3600"]
"#,
    );
    let t = std::time::Instant::now();
    env.compose_ok(&dir, &["up", "-d"]);
    // up returns after db turned healthy (≥ 1 s after its start).
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let rows = ps_json(&env, &dir);
    let state = |svc: &str| {
        rows.iter()
            .find(|r| r["service"] == svc)
            .map(|r| r["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state("web").as_deref(), Some("running"));
    assert_eq!(state("migrate").as_deref(), Some("exited"));
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// A failing `service_completed_successfully` dependency fails `up` with a clear error,
/// and the dependent is never created.
#[test]
fn failed_dependency_stops_up() {
    require_root!();
    let env = TestEnv::new("e2e-depfail");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "depfail",
        "services:\n  migrate:\n    image: busybox\n    command: [sh, -c, 'exit 3']\n  web:\n    image: busybox\n    depends_on:\n      migrate: {condition: service_completed_successfully}\n    command: [sleep, '3600']\n",
    );
    let (code, _out, err) = env.compose(&dir, &["up", "-d"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("service migrate didn't complete successfully: exit 3"),
        "{err}"
    );
    let rows = ps_json(&env, &dir);
    assert!(rows.iter().all(|r| r["service"] != "web"), "{rows:?}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `restart: on-failure:2` restarts a failing container twice, then leaves it exited;
/// `berth stop` keeps an `always` container down.
#[test]
fn restart_policies() {
    require_root!();
    let env = TestEnv::new("e2e-restart");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "restart",
        "services:\n  flaky:\n    image: busybox\n    restart: on-failure:2\n    volumes: [runs:/runs]\n    command: [sh, -c, 'echo run >> /runs/count; exit 1']\n  steady:\n    image: busybox\n    restart: always\n    command: [sleep, '3600']\nvolumes:\n  runs: {}\n",
    );
    let count = env
        .root
        .join("volumes")
        .join(format!("{}_runs", env.project))
        .join("_data/count");
    env.compose_ok(&dir, &["up", "-d"]);
    let runs = || {
        std::fs::read_to_string(&count)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(10), || {
        if runs() == 3 {
            Ok(())
        } else {
            Err(format!("{} runs so far", runs()))
        }
    });
    // Backoff after the second restart would be 400 ms: well past it, still 3 runs.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs(), 3, "on-failure:2 must stop after two restarts");
    let rows = ps_json(&env, &dir);
    let flaky = rows.iter().find(|r| r["service"] == "flaky").unwrap();
    assert_eq!(flaky["state"], "exited");
    assert_eq!(flaky["exit_code"], 1);

    env.compose_ok(&dir, &["stop", "steady"]);
    std::thread::sleep(Duration::from_millis(800));
    let rows = ps_json(&env, &dir);
    let steady = rows.iter().find(|r| r["service"] == "steady").unwrap();
    assert_eq!(
        steady["state"], "exited",
        "a stopped `always` container stays down"
    );
    env.compose_ok(&dir, &["down", "-v"]);
    env.finish();
}

/// `--scale web=3` gives three containers that DNS returns together, and `exec` runs in
/// the chosen replica.
#[test]
fn scale_and_exec() {
    require_root!();
    let env = TestEnv::new("e2e-scale");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "scale",
        "services:\n  web:\n    image: busybox\n    command: [sleep, '3600']\n  client:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d", "--scale", "web=3"]);
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.iter().filter(|r| r["service"] == "web").count(), 3);
    let out = env.compose_ok(&dir, &["exec", "client", "nslookup", "web"]);
    let addrs: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .collect();
    assert_eq!(addrs.len(), 3, "nslookup web: {out}");
    let host = env.compose_ok(&dir, &["exec", "--index", "2", "web", "hostname"]);
    assert_eq!(host.trim(), format!("{}-web-2", env.project));
    let (code, _, _) = env.compose(&dir, &["exec", "web", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `berth -p NAME down -v` works from state alone when the compose file is gone (what a
/// fixture's cleanup after a failure relies on), volumes included.
#[test]
fn down_by_project_name_without_files() {
    require_root!();
    let env = TestEnv::new("e2e-nofile");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "nofile",
        "services:\n  a:\n    image: busybox\n    volumes: [data:/data]\n    command: [sleep, '3600']\nvolumes:\n  data: {}\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    std::fs::remove_dir_all(&dir).unwrap();
    let elsewhere = env.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    env.compose_ok(&elsewhere, &["down", "-v"]);
    let vol = env
        .root
        .join("volumes")
        .join(format!("{}_data", env.project));
    assert!(
        !vol.exists(),
        "down -v by name must remove the project's volumes"
    );
    env.finish();
}

/// `logs --tail N` prints the last N lines per container with compose's prefix, and
/// `logs -f` keeps printing lines written after it started.
#[test]
fn logs_tail_and_follow() {
    require_root!();
    let env = TestEnv::new("e2e-logs");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "logs",
        "services:\n  talker:\n    image: busybox\n    command: [sh, -c, 'for i in 1 2 3 4 5; do echo line-$$i; done; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo after-follow; exec sleep 3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    eventually(Duration::from_secs(5), || {
        let out = env.compose_ok(&dir, &["logs", "--no-color"]);
        if out.contains("line-5") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let tail = env.compose_ok(&dir, &["logs", "--tail", "2", "talker"]);
    assert_eq!(
        tail.lines().collect::<Vec<_>>(),
        vec!["talker-1  | line-4", "talker-1  | line-5"],
        "{tail}"
    );

    let mut follow = env
        .berth()
        .current_dir(&dir)
        .args(["-p", &env.project, "logs", "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("after-follow") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    env.compose_ok(&dir, &["exec", "talker", "touch", "/tmp/go"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let seen = reader.join().unwrap();
    assert!(seen.contains("talker-1  | line-5"), "{seen}");
    assert!(!seen.contains("line-4"), "--tail 1 with -f: {seen}");
    assert!(seen.contains("talker-1  | after-follow"), "{seen}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `up --wait` returns only once services with a healthcheck are healthy, and fails with a
/// clear error when one exits instead.
#[test]
fn up_wait_healthy_or_error() {
    require_root!();
    let env = TestEnv::new("e2e-wait");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "wait",
        "services:\n  db:\n    image: busybox\n    command: [sh, -c, 'sleep 1; touch /tmp/ok; exec sleep 3600']\n    healthcheck: {test: [CMD, test, -f, /tmp/ok], interval: 200ms, retries: 30}\n  web:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    let t = std::time::Instant::now();
    env.compose_ok(&dir, &["up", "--wait"]);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let (code, _, _) = env.compose(&dir, &["exec", "db", "test", "-f", "/tmp/ok"]);
    assert_eq!(code, 0, "db must be healthy when `up --wait` returns");
    env.compose_ok(&dir, &["down"]);

    let bad = env.project_dir(
        "wait-bad",
        "services:\n  db:\n    image: busybox\n    command: [sh, -c, 'sleep 0.3; exit 3']\n    healthcheck: {test: [CMD, 'false'], interval: 100ms, retries: 100}\n",
    );
    let (code, _, err) = env.compose(&bad, &["up", "--wait"]);
    assert_ne!(code, 0);
    assert!(err.contains("exited (3) before it became healthy"), "{err}");
    env.compose_ok(&bad, &["down"]);
    env.finish();
}
