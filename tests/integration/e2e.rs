//! End-to-end: `berth up`/`down` of whole stacks with real containers, each test in a fresh
//! network namespace with its own state root, one intent per test, leak-checked.

use std::io::Read;
use std::time::Duration;

use crate::require_root;
use crate::support::{self, eventually, TestEnv};

fn ps_json(env: &TestEnv, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = env.compose_ok(dir, &["ps", "-a", "--format", "json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ps json {out:?}: {e}"))
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
    let dir = support::compose_dir("quickstart");

    let (code, _, err) = env.compose(&dir, &["--progress", "json", "up", "-d"]);
    assert_eq!(code, 0, "{err}");
    // compose v2's JSON progress: one object per resource state change.
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let web = format!("Container {}-web-1", env.project);
    assert!(
        events
            .iter()
            .any(|e| e["id"] == web.as_str() && e["status"] == "Done" && e["text"] == "Started"),
        "{err}"
    );
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "running"), "{rows:?}");
    // The random host port, from ps: "127.0.0.1:PORT->8080/tcp".
    let port: u16 = rows
        .iter()
        .find(|r| r["service"] == "web")
        .and_then(|r| r["ports"][0].as_str())
        .and_then(|p| {
            p.strip_prefix("127.0.0.1:")?
                .split("->")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("web's published port: {rows:?}"));

    let web = format!("{}-web-1", env.project);
    eventually(Duration::from_secs(10), || {
        let logs = env.compose_ok(&dir, &["logs", "client"]);
        if logs.contains(&format!("hello from {web}")) {
            Ok(())
        } else {
            Err(format!("client has not reached web by name yet: {logs}"))
        }
    });
    let body = eventually(Duration::from_secs(5), || support::http_get(port));
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
    let dir = support::compose_dir("converge");
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

    env.compose_ok_env(&dir, &[("V", "2")], &["up", "-d"]);
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
    let dir = support::compose_dir("kill");
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
    let logs = env.compose_ok(&dir, &["logs", "--no-color"]);
    assert!(logs.contains("a-1  | alive"), "{logs}");
    // The next `up` starts a new supervisor, which adopts the running container.
    env.compose_ok(&dir, &["up", "-d"]);
    let sup2 = supervisor_pid(&env).expect("a new supervisor");
    assert_ne!(sup2, sup);
    assert_eq!(
        ps_json(&env, &dir)[0]["pid"],
        rows[0]["pid"],
        "not recreated"
    );
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
    let dir = support::compose_dir("vol");
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
    let dir = support::compose_dir("health");
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
    let dir = support::compose_dir("depfail");
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
    let dir = support::compose_dir("restart");
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
    let dir = support::compose_dir("scale");
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
        &std::fs::read_to_string(support::compose_dir("nofile").join("compose.yaml")).unwrap(),
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
    let dir = support::compose_dir("logs");
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
    let dir = support::compose_dir("wait");
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

    let bad = support::compose_dir("wait-bad");
    let (code, _, err) = env.compose(&bad, &["up", "--wait"]);
    assert_ne!(code, 0);
    assert!(err.contains("exited (3) before it became healthy"), "{err}");
    env.compose_ok(&bad, &["down"]);
    env.finish();
}

/// The library fixture API (`berth::fixture::Stack`), as a test suite would use it: `up`
/// returns once web is healthy; the random published port, the service IP, exec and logs
/// are looked up through it; dropping the stack takes the project down, also when the
/// test using it panics.
#[test]
fn library_fixture_api() {
    require_root!();
    let env = TestEnv::new("e2e-lib");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("fixture-web");
    let stack = env.stack(&dir).up().expect("stack up");

    let addr = stack.port("web", 8080).expect("published port");
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    let body = support::http_get(addr.port()).expect("GET through the random published port");
    assert!(
        body.contains(&format!("hello from {}-web-1", env.project)),
        "{body}"
    );
    let ip = stack.ip("web").expect("web's address");
    let out = stack
        .exec(
            "client",
            &["wget", "-q", "-O-", &format!("http://{ip}:8080/")],
        )
        .expect("exec");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from"));
    assert!(stack.logs("web").unwrap().contains("web starting"));
    assert!(stack.port("web", 9999).is_err(), "no such published port");
    let rows = stack.ps().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.state == "running"), "{rows:?}");
    drop(stack);
    assert!(
        ps_json(&env, &dir).is_empty(),
        "dropping the stack is `down`"
    );

    // A panicking test: the stack is dropped while unwinding, and is gone afterwards.
    let (root, project, bin) = (env.root.clone(), env.project.clone(), support::berth_bin());
    let dir2 = dir.clone();
    let panicked = std::thread::spawn(move || {
        // This thread was spawned in the test's network namespace and stays in it.
        let stack = berth::fixture::Stack::builder(&dir2)
            .root(root)
            .project_name(project)
            .berth_binary(bin)
            .dns_upstream("none")
            .up()
            .expect("stack up");
        assert!(stack.port("web", 8080).is_ok());
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    assert!(
        ps_json(&env, &dir).is_empty(),
        "the panicking test's stack is down"
    );
    env.finish();
}

/// `up --abort-on-container-exit --exit-code-from tests`: when the test runner exits 3,
/// the other services are stopped and berth exits 3, with the runner's output shown.
#[test]
fn up_abort_on_container_exit_exit_code_from() {
    require_root!();
    let env = TestEnv::new("e2e-abort");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("abort");
    let (code, out, err) = env.compose(
        &dir,
        &[
            "up",
            "--abort-on-container-exit",
            "--exit-code-from",
            "tests",
        ],
    );
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("tests-1  | tests failed"), "{out}");
    assert!(out.contains("app-1    | app up"), "{out}");
    let rows = ps_json(&env, &dir);
    assert!(
        rows.iter().all(|r| r["state"] == "exited"),
        "all containers are stopped: {rows:?}"
    );
    let (code, _, err) = env.compose(&dir, &["up", "--exit-code-from", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no such service: nope"), "{err}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `run --rm` starts the dependencies, runs the one-off with its own command and env,
/// passes its output and exit code through and removes it; `run -d` prints its name and
/// leaves it running; one-offs are no replicas for `up`.
#[test]
fn run_oneoff() {
    require_root!();
    let env = TestEnv::new("e2e-run");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("run");
    let (code, out, err) = env.compose(
        &dir,
        &[
            "run",
            "--rm",
            "-e",
            "EXTRA=x1",
            "tool",
            "sh",
            "-c",
            "echo $GREETING $EXTRA; nslookup db >/dev/null && echo db-resolves; exit 5",
        ],
    );
    assert_eq!(code, 5, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("hello x1"), "{out}");
    assert!(out.contains("db-resolves"), "{out}");
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.len(), 1, "only db remains (--rm): {rows:?}");
    assert_eq!(rows[0]["service"], "db");

    let name = env.compose_ok(&dir, &["run", "-d", "tool", "sleep", "3600"]);
    let name = name.trim();
    assert!(
        name.starts_with(&format!("{}-tool-run-", env.project)),
        "{name}"
    );
    let rows = ps_json(&env, &dir);
    let oneoff = rows.iter().find(|r| r["name"] == name).expect("listed");
    assert_eq!(oneoff["state"], "running");
    // `up` starts tool's real replica and leaves the one-off alone.
    env.compose_ok(&dir, &["up", "-d"]);
    let rows = ps_json(&env, &dir);
    assert!(rows
        .iter()
        .any(|r| r["name"] == name && r["state"] == "running"));
    assert!(rows
        .iter()
        .any(|r| r["name"] == format!("{}-tool-1", env.project)));
    env.compose_ok(&dir, &["down"]);
    assert!(ps_json(&env, &dir).is_empty());
    env.finish();
}

/// `depends_on: {restart: true}`: an `up` that recreates db restarts web (same container,
/// a new process, its log kept) and leaves api, which doesn't ask for it, alone.
#[test]
fn depends_on_restart_true() {
    require_root!();
    let env = TestEnv::new("e2e-deprestart");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("restart-dep");
    env.compose_ok(&dir, &["up", "-d"]);
    let pid = |rows: &[serde_json::Value], svc: &str| {
        rows.iter()
            .find(|r| r["service"] == svc)
            .and_then(|r| r["pid"].as_i64())
            .unwrap_or_else(|| panic!("{svc} has no pid: {rows:?}"))
    };
    let before = ps_json(&env, &dir);
    env.compose_ok_env(&dir, &[("V", "2")], &["up", "-d"]);
    let after = ps_json(&env, &dir);
    assert_ne!(pid(&after, "db"), pid(&before, "db"), "db is recreated");
    assert_ne!(pid(&after, "web"), pid(&before, "web"), "web is restarted");
    assert_eq!(pid(&after, "api"), pid(&before, "api"), "api is left alone");
    assert!(after.iter().all(|r| r["state"] == "running"), "{after:?}");
    let logs = env.compose_ok(&dir, &["logs", "--no-color", "web"]);
    assert_eq!(logs.matches("web boot").count(), 2, "{logs}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `up` runs the project's supervisor from the small `berth-supervisor` installed beside
/// `berth` (cargo builds it next to the tests' `berth`), and that process serves the
/// project's DNS: the client reaches web by name.
#[test]
fn supervisor_runs_from_the_small_binary() {
    require_root!();
    let env = TestEnv::new("e2e-smallsup");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("quickstart");
    env.compose_ok(&dir, &["up", "-d"]);
    let sup = supervisor_pid(&env).expect("a supervisor runs while the project is up");
    let exe = std::fs::read_link(format!("/proc/{sup}/exe")).expect("supervisor exe");
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some("berth-supervisor"),
        "{exe:?}"
    );
    let web = format!("{}-web-1", env.project);
    eventually(Duration::from_secs(10), || {
        let logs = env.compose_ok(&dir, &["logs", "client"]);
        if logs.contains(&format!("hello from {web}")) {
            Ok(())
        } else {
            Err(format!("client has not reached web by name yet: {logs}"))
        }
    });
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// The stacks in `compose-examples/` come up with the fixture image (through the library
/// API), answer on their published ports, and go away without a trace.
#[test]
fn compose_examples_come_up() {
    require_root!();
    let env = TestEnv::new("e2e-examples");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let examples = support::repo_root().join("compose-examples");
    for (name, service, port, expect) in [
        ("quickstart", "web", 8080, "hello from web"),
        (
            "wordpress-like",
            "wordpress",
            80,
            "wordpress-like front, db at db:3306",
        ),
    ] {
        let stack = env.stack(&examples.join(name)).up().expect(name);
        let addr = stack.port(service, port).expect("published port");
        let body = eventually(Duration::from_secs(5), || support::http_get(addr.port()));
        assert!(body.contains(expect), "{name}: {body}");
        if name == "quickstart" {
            eventually(Duration::from_secs(10), || {
                let logs = stack.logs("client").unwrap();
                if logs.contains("hello from web") {
                    Ok(())
                } else {
                    Err(logs)
                }
            });
        } else {
            // The db-like service answers by name on its port.
            eventually(Duration::from_secs(10), || {
                let out = stack
                    .exec("wordpress", &["sh", "-c", "sleep 0.5 | nc -w 2 db 3306"])
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if text == "db:wordpress" {
                    Ok(())
                } else {
                    Err(format!("{out:?}; db logs: {}", stack.logs("db").unwrap()))
                }
            });
        }
        stack.down().expect("down");
    }
    env.finish();
}

/// Healthchecks are the supervisor's: after `up --wait` returns, it keeps probing, `ps`
/// shows the state, and a failing check turns the container unhealthy (and back).
#[test]
fn supervisor_runs_healthchecks() {
    require_root!();
    let env = TestEnv::new("e2e-healthmon");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("health-monitor");
    env.compose_ok(&dir, &["up", "--wait"]);
    let health = || {
        ps_json(&env, &dir)[0]["health"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(health().as_deref(), Some("healthy"));
    let table = env.compose_ok(&dir, &["ps"]);
    assert!(table.contains("Up (healthy)"), "{table}");

    env.compose_ok(&dir, &["exec", "app", "rm", "/tmp/ok"]);
    eventually(Duration::from_secs(5), || match health() {
        Some(h) if h == "unhealthy" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    env.compose_ok(&dir, &["exec", "app", "touch", "/tmp/ok"]);
    eventually(Duration::from_secs(5), || match health() {
        Some(h) if h == "healthy" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let events = std::fs::read_to_string(
        env.root
            .join("projects")
            .join(&env.project)
            .join("events.jsonl"),
    )
    .unwrap_or_default();
    assert!(events.contains("health_status: unhealthy"), "{events}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `down` stops in reverse dependency order: web (which depends on db) gets its SIGTERM
/// while db is still up and resolvable, so its graceful shutdown can still reach it.
#[test]
fn down_stops_dependents_first() {
    require_root!();
    let env = TestEnv::new("e2e-downorder");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("down-order");
    env.compose_ok(&dir, &["up", "-d"]);
    let data = env
        .root
        .join("volumes")
        .join(format!("{}_out", env.project))
        .join("_data");
    eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(data.join("ready")).map_err(|e| e.to_string())
    });
    env.compose_ok(&dir, &["down", "-t", "5"]);
    let result = std::fs::read_to_string(data.join("result")).unwrap_or_default();
    assert_eq!(result.trim(), "db-alive");
    env.compose_ok(&dir, &["down", "-v"]);
    env.finish();
}

/// Foreground `up` streams logs with the `app-1  | ` prefix; Ctrl-C (SIGINT to berth)
/// stops the containers gracefully and berth exits 130, leaving them stopped, not removed.
#[test]
fn foreground_up_streams_logs_and_stops_on_ctrl_c() {
    require_root!();
    let env = TestEnv::new("e2e-fg");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("foreground");
    let mut up = env
        .berth()
        .current_dir(&dir)
        .args(["-p", &env.project, "up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = up.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let _ = stdout.read_to_string(&mut seen);
        seen
    });
    eventually(Duration::from_secs(10), || {
        let rows = ps_json(&env, &dir);
        if rows.iter().any(|r| r["state"] == "running") {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    // Let the log follower print the first line, then Ctrl-C.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = up.wait().unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("app-1  | app started"), "{seen}");
    assert!(
        seen.contains("app-1  | got SIGTERM"),
        "graceful stop: {seen}"
    );
    let rows = ps_json(&env, &dir);
    assert_eq!(rows.len(), 1, "stopped, not removed: {rows:?}");
    assert_eq!(rows[0]["state"], "exited");
    assert_eq!(rows[0]["exit_code"], 0);
    env.compose_ok(&dir, &["down"]);
    env.finish();
}
