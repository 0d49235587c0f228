//! End-to-end tests of the compose verbs beyond up/down: start/stop/restart, kill, pause,
//! rm, port, events, wait, ls, cp, top, images. Real containers in a fresh network
//! namespace with their own state root, one intent per test, leak-checked.

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::require_root;
use crate::support::{self, eventually, TestEnv};

const SLEEPER: &str = "services:\n  app:\n    image: busybox\n    command: [sleep, '3600']\n";

fn ps_rows(env: &TestEnv, dir: &Path) -> Vec<serde_json::Value> {
    let out = env.compose_ok(dir, &["ps", "-a", "--format", "json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ps json {out:?}: {e}"))
}

fn row<'a>(rows: &'a [serde_json::Value], service: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["service"] == service)
        .unwrap_or_else(|| panic!("no {service} in {rows:?}"))
}

/// Start a project with `compose`; returns its dir.
fn up(env: &TestEnv, name: &str, compose: &str) -> std::path::PathBuf {
    env.load_busybox();
    let dir = env.project_dir(name, compose);
    env.compose_ok(&dir, &["up", "-d"]);
    dir
}

/// `stop` keeps the container (and its writable layer); `start` runs the same container
/// again; `restart` gives it a new process.
#[test]
fn stop_start_restart_keep_the_container() {
    require_root!();
    let env = TestEnv::new("verbs-start");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "start", SLEEPER);
    env.compose_ok(&dir, &["exec", "app", "sh", "-c", "echo kept > /marker"]);

    env.compose_ok(&dir, &["stop", "-t", "1"]);
    let rows = ps_rows(&env, &dir);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(row(&rows, "app")["state"], "exited");

    env.compose_ok(&dir, &["start"]);
    let rows = ps_rows(&env, &dir);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(row(&rows, "app")["state"], "running");
    let pid = row(&rows, "app")["pid"].as_i64().unwrap();
    let out = env.compose_ok(&dir, &["exec", "app", "cat", "/marker"]);
    assert_eq!(out.trim(), "kept", "the writable layer survives stop/start");

    env.compose_ok(&dir, &["restart", "-t", "1", "app"]);
    let rows = ps_rows(&env, &dir);
    assert_eq!(row(&rows, "app")["state"], "running");
    assert_ne!(
        row(&rows, "app")["pid"].as_i64().unwrap(),
        pid,
        "a new process"
    );

    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `kill -s KILL` gives exit 137, and `restart: always` does not revive a container the
/// user killed; `start` brings it back.
#[test]
fn kill_is_not_undone_by_restart_always() {
    require_root!();
    let env = TestEnv::new("verbs-kill");
    let _ns = support::enter_fresh_netns();
    let dir = up(
        &env,
        "kill",
        "services:\n  app:\n    image: busybox\n    restart: always\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["kill", "-s", "KILL", "app"]);
    eventually(Duration::from_secs(5), || {
        let rows = ps_rows(&env, &dir);
        match row(&rows, "app")["state"].as_str() {
            Some("exited") => Ok(()),
            s => Err(format!("state {s:?}")),
        }
    });
    // The supervisor polls every 100 ms with a 100 ms first backoff: well past both.
    std::thread::sleep(Duration::from_millis(1500));
    let rows = ps_rows(&env, &dir);
    assert_eq!(row(&rows, "app")["state"], "exited", "revived: {rows:?}");
    assert_eq!(row(&rows, "app")["exit_code"], 137);

    env.compose_ok(&dir, &["start", "app"]);
    assert_eq!(row(&ps_rows(&env, &dir), "app")["state"], "running");
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `pause` freezes the container (its counter stops), `unpause` resumes it.
#[test]
fn pause_freezes_and_unpause_resumes() {
    require_root!();
    let env = TestEnv::new("verbs-pause");
    let _ns = support::enter_fresh_netns();
    let dir = up(
        &env,
        "pause",
        "services:\n  app:\n    image: busybox\n    command: [sh, -c, 'i=0; while true; do i=$$((i+1)); echo $$i; sleep 0.05; done']\n",
    );
    let count = || env.compose_ok(&dir, &["logs", "app"]).lines().count();
    eventually(Duration::from_secs(5), || {
        if count() > 2 {
            Ok(())
        } else {
            Err("no counting yet".to_string())
        }
    });
    env.compose_ok(&dir, &["pause", "app"]);
    assert_eq!(row(&ps_rows(&env, &dir), "app")["state"], "paused");
    // Lines written before the freeze may still be in flight to the log.
    std::thread::sleep(Duration::from_millis(200));
    let frozen = count();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count(), frozen, "the counter went on while paused");

    env.compose_ok(&dir, &["unpause", "app"]);
    assert_eq!(row(&ps_rows(&env, &dir), "app")["state"], "running");
    eventually(Duration::from_secs(5), || {
        let n = count();
        if n > frozen + 2 {
            Ok(())
        } else {
            Err(format!("{n} lines, {frozen} when frozen"))
        }
    });
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `rm -s -f` stops and removes the running containers: `ps -a` is empty after it.
#[test]
fn rm_stop_force_removes_everything() {
    require_root!();
    let env = TestEnv::new("verbs-rm");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "rm", SLEEPER);
    assert_eq!(ps_rows(&env, &dir).len(), 1);
    env.compose_ok(&dir, &["rm", "-s", "-f"]);
    let rows = ps_rows(&env, &dir);
    assert!(rows.is_empty(), "{rows:?}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `port` prints the random host port of a published container port, and it answers on
/// 127.0.0.1; a port that is not published is an error.
#[test]
fn port_reports_the_random_host_port() {
    require_root!();
    let env = TestEnv::new("verbs-port");
    let _ns = support::enter_fresh_netns();
    let dir = up(
        &env,
        "port",
        "services:\n  web:\n    image: busybox\n    command: [sh, -c, 'mkdir -p /www && echo portcheck > /www/index.html && exec httpd -f -p 8080 -h /www']\n    ports: ['8080']\n",
    );
    let out = env.compose_ok(&dir, &["port", "web", "8080"]);
    let (ip, port) = out.trim().rsplit_once(':').expect("host_ip:port");
    assert_eq!(ip, "0.0.0.0");
    let port: u16 = port.parse().expect("a port number");
    assert_ne!(port, 0);
    let body = eventually(Duration::from_secs(5), || support::http_get(port));
    assert!(body.contains("portcheck"), "{body}");

    let (code, _, err) = env.compose(&dir, &["port", "web", "9999"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("9999"), "{err}");
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `events --json` streams a container's die (with its exit code) when it is stopped and
/// its start when it starts again, with compose's fields.
#[test]
fn events_json_shows_die_and_start() {
    require_root!();
    let env = TestEnv::new("verbs-events");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "events", SLEEPER);
    let mut child = env
        .berth()
        .current_dir(&dir)
        .args(["-p", &env.project, "events", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting berth events");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `events` starts at the end of the log: give it a moment to open it.
    std::thread::sleep(Duration::from_millis(500));
    env.compose_ok(&dir, &["stop", "-t", "1"]);
    env.compose_ok(&dir, &["start"]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<serde_json::Value> = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")));
        }
        let actions: Vec<&str> = seen.iter().filter_map(|e| e["action"].as_str()).collect();
        if actions.contains(&"die") && actions.contains(&"start") {
            break;
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    let _ = reader.join();

    let name = format!("{}-app-1", env.project);
    let die = seen
        .iter()
        .find(|e| e["action"] == "die")
        .unwrap_or_else(|| panic!("no die in {seen:?}"));
    assert_eq!(die["type"], "container");
    assert_eq!(die["id"], name.as_str());
    assert_eq!(die["service"], "app");
    assert!(die["time"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(die["attributes"]["exitCode"].as_str().is_some(), "{die}");
    let die_at = seen.iter().position(|e| e["action"] == "die").unwrap();
    let start_at = seen
        .iter()
        .position(|e| e["action"] == "start")
        .unwrap_or_else(|| panic!("no start in {seen:?}"));
    assert!(die_at < start_at, "die before start: {seen:?}");
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `wait` blocks until the service's container exits and returns its exit code.
#[test]
fn wait_returns_the_exit_code() {
    require_root!();
    let env = TestEnv::new("verbs-wait");
    let _ns = support::enter_fresh_netns();
    let dir = up(
        &env,
        "wait",
        "services:\n  job:\n    image: busybox\n    command: [sh, -c, 'sleep 1; exit 3']\n",
    );
    let t = Instant::now();
    let (code, out, err) = env.compose(&dir, &["wait", "job"]);
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("exited with code 3"), "{out}");
    assert!(t.elapsed() >= Duration::from_millis(300), "did not block");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `ls` lists the running project with `running(N)` and its compose file, as a table and
/// as JSON.
#[test]
fn ls_lists_the_project() {
    require_root!();
    let env = TestEnv::new("verbs-ls");
    let _ns = support::enter_fresh_netns();
    let dir = up(
        &env,
        "ls",
        "services:\n  a:\n    image: busybox\n    command: [sleep, '3600']\n  b:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    let table = env.ok(&["ls"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(&env.project))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("running(2)"), "{line}");
    assert!(table.starts_with("NAME"), "{table}");

    let json: Vec<serde_json::Value> =
        serde_json::from_str(env.ok(&["ls", "--format", "json"]).trim()).unwrap();
    let p = json
        .iter()
        .find(|p| p["Name"] == env.project.as_str())
        .unwrap_or_else(|| panic!("{json:?}"));
    assert_eq!(p["Status"], "running(2)");
    assert!(
        p["ConfigFiles"].as_str().unwrap().ends_with("compose.yaml"),
        "{p}"
    );

    env.compose_ok(&dir, &["stop", "-t", "0"]);
    assert!(
        !env.ok(&["ls", "-q"]).contains(&env.project),
        "stopped: only with -a"
    );
    assert!(env.ok(&["ls", "-a", "-q"]).contains(&env.project));
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `cp` copies a file and a directory into a container and back out, unchanged.
#[test]
fn cp_round_trip() {
    require_root!();
    let env = TestEnv::new("verbs-cp");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "cp", SLEEPER);
    let work = env.root.join("cpwork");
    support::write_file(&work, "in.txt", "round trip\n");
    support::write_file(&work.join("tree/sub"), "deep.txt", "deep\n");
    let host = |p: &str| work.join(p).to_str().unwrap().to_string();

    env.compose_ok(&dir, &["cp", &host("in.txt"), "app:/tmp/in.txt"]);
    let inside = env.compose_ok(&dir, &["exec", "app", "cat", "/tmp/in.txt"]);
    assert_eq!(inside, "round trip\n");
    env.compose_ok(&dir, &["cp", "app:/tmp/in.txt", &host("out.txt")]);
    assert_eq!(
        std::fs::read_to_string(work.join("out.txt")).unwrap(),
        "round trip\n"
    );

    env.compose_ok(&dir, &["cp", &host("tree"), "app:/tmp/tree"]);
    let inside = env.compose_ok(&dir, &["exec", "app", "cat", "/tmp/tree/sub/deep.txt"]);
    assert_eq!(inside, "deep\n");
    env.compose_ok(&dir, &["cp", "app:/tmp/tree", &host("back")]);
    assert_eq!(
        std::fs::read_to_string(work.join("back/sub/deep.txt")).unwrap(),
        "deep\n"
    );
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `cp` never opens a device node or FIFO the container made (berth opens files on the
/// host side, outside the container's device rules): copying into or out of one is refused
/// at once instead of writing to a device or hanging on a FIFO.
#[test]
fn cp_refuses_devices_and_fifos() {
    require_root!();
    let env = TestEnv::new("verbs-cpdev");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "cpdev", SLEEPER);
    let work = env.root.join("cpwork");
    support::write_file(&work, "in.txt", "data\n");
    let host = |p: &str| work.join(p).to_str().unwrap().to_string();
    env.compose_ok(
        &dir,
        &[
            "exec",
            "app",
            "sh",
            "-c",
            "mknod /tmp/dev c 1 3 && mkfifo /tmp/fifo",
        ],
    );
    for (args, what) in [
        (
            vec!["cp".to_string(), host("in.txt"), "app:/tmp/dev".into()],
            "into a device",
        ),
        (
            vec!["cp".to_string(), "app:/tmp/fifo".into(), host("fifo-out")],
            "out of a FIFO",
        ),
        (
            vec!["cp".to_string(), "app:/tmp/dev".into(), host("dev-out")],
            "out of a device",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = env.compose(&dir, &args);
        assert_ne!(code, 0, "cp {what} must fail");
        assert!(err.contains("not a regular file"), "{what}: {err}");
    }
    assert!(!work.join("fifo-out").exists() && !work.join("dev-out").exists());
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// A symlink in the container pointing at a host file's path resolves inside the
/// container: `cp` neither reads nor writes the host's file through it.
#[test]
fn cp_symlink_stays_in_the_container() {
    require_root!();
    let env = TestEnv::new("verbs-cplink");
    let _ns = support::enter_fresh_netns();
    let secret_dir = env.root.join("hostsecret");
    let secret = support::write_file(&secret_dir, "secret.txt", "HOST SECRET\n");
    let sd = secret_dir.to_str().unwrap();
    let dir = up(
        &env,
        "cplink",
        &format!(
            "services:\n  app:\n    image: busybox\n    command: [sh, -c, 'mkdir -p {sd} && echo container-file > {sd}/secret.txt && ln -s {sd}/secret.txt /tmp/link && ln -s ../../../../../..{sd}/secret.txt /tmp/dots && exec sleep 3600']\n"
        ),
    );
    eventually(Duration::from_secs(5), || {
        let (code, _, _) = env.compose(&dir, &["exec", "app", "test", "-L", "/tmp/dots"]);
        if code == 0 {
            Ok(())
        } else {
            Err("links not made yet".to_string())
        }
    });
    let out = env.root.join("out");
    std::fs::create_dir_all(&out).unwrap();

    // Reading through the links gets the container's file.
    for link in ["/tmp/link", "/tmp/dots"] {
        let dest = out.join(link.trim_start_matches("/tmp/"));
        env.compose_ok(
            &dir,
            &["cp", "-L", &format!("app:{link}"), dest.to_str().unwrap()],
        );
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "container-file\n");
    }

    // Writing through them changes the container's file, never the host's.
    let evil = support::write_file(&out, "evil.txt", "overwritten\n");
    for link in ["app:/tmp/link", "app:/tmp/dots"] {
        let _ = env.compose(&dir, &["cp", evil.to_str().unwrap(), link]);
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "HOST SECRET\n",
            "cp to {link} wrote the host's file"
        );
    }
    let inside = env.compose_ok(&dir, &["exec", "app", "cat", &format!("{sd}/secret.txt")]);
    assert_eq!(inside, "overwritten\n");
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `top` shows a header per container and the service's process.
#[test]
fn top_shows_the_process() {
    require_root!();
    let env = TestEnv::new("verbs-top");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "top", SLEEPER);
    let out = env.compose_ok(&dir, &["top"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{}-app-1", env.project).as_str()),
        "{out}"
    );
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    let pid = row(&ps_rows(&env, &dir), "app")["pid"].as_i64().unwrap();
    let proc_line = lines
        .find(|l| l.ends_with("sleep 3600"))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = proc_line.split_whitespace().collect();
    assert_eq!(cols[0], "root");
    assert_eq!(cols[1], pid.to_string(), "host pid of PID 1: {out}");
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `images` lists the busybox image of the project's container, as a table and as JSON.
#[test]
fn images_lists_busybox() {
    require_root!();
    let env = TestEnv::new("verbs-images");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "images", SLEEPER);
    let out = env.compose_ok(&dir, &["images"]);
    assert!(out.starts_with("CONTAINER"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{}-app-1", env.project)))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1..3], ["busybox", "latest"], "{line}");

    let json: Vec<serde_json::Value> =
        serde_json::from_str(env.compose_ok(&dir, &["images", "--format", "json"]).trim()).unwrap();
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["Repository"], "busybox");
    assert!(json[0]["ID"].as_str().unwrap().starts_with("sha256:"));
    assert!(json[0]["Size"].as_u64().unwrap() > 0);
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `create` makes the containers without starting them (`ps -a` shows them created, no
/// process); `start` then runs them; `down` removes them.
#[test]
fn create_then_start() {
    require_root!();
    let env = TestEnv::new("verbs-create");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir("create", SLEEPER);
    env.compose_ok(&dir, &["create"]);
    let rows = ps_rows(&env, &dir);
    assert_eq!(row(&rows, "app")["state"], "created", "{rows:?}");
    assert!(row(&rows, "app")["pid"].is_null(), "{rows:?}");
    let created = env.compose_ok(&dir, &["ps", "-q", "--status", "created"]);
    assert_eq!(created.trim(), format!("{}-app-1", env.project));
    env.compose_ok(&dir, &["start"]);
    let rows = ps_rows(&env, &dir);
    assert_eq!(row(&rows, "app")["state"], "running", "{rows:?}");
    let created = env.compose_ok(&dir, &["ps", "-q", "--filter", "status=created"]);
    assert_eq!(created.trim(), "");
    env.compose_ok(&dir, &["down"]);
    assert!(ps_rows(&env, &dir).is_empty());
    env.finish();
}

/// `down --rmi all` removes the images the services used; plain `down` keeps them.
#[test]
fn down_rmi_all_removes_images() {
    require_root!();
    let env = TestEnv::new("verbs-rmi");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "rmi", SLEEPER);
    env.compose_ok(&dir, &["down"]);
    assert!(
        !env.ok(&["image", "ls", "-q"]).trim().is_empty(),
        "down keeps images"
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let (code, _, err) = env.compose(&dir, &["down", "--rmi", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Image busybox  Removed"), "{err}");
    assert_eq!(env.ok(&["image", "ls", "-q"]).trim(), "", "down --rmi all");
    env.finish();
}

/// `exec -d` returns while the command still runs, and the command outlives the CLI that
/// started it (it finishes its work after `berth` has exited).
#[test]
fn exec_detached_outlives_the_cli() {
    require_root!();
    let env = TestEnv::new("verbs-execd");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "execd", SLEEPER);
    let out = env.compose_ok(
        &dir,
        &[
            "exec",
            "-d",
            "app",
            "sh",
            "-c",
            "sleep 1; echo done > /tmp/detached",
        ],
    );
    assert_eq!(out, "", "nothing is printed for a detached exec");
    let (code, _, _) = env.compose(&dir, &["exec", "app", "test", "-f", "/tmp/detached"]);
    assert_ne!(code, 0, "exec -d must not wait for the command");
    eventually(Duration::from_secs(5), || {
        let (code, out, _) = env.compose(&dir, &["exec", "app", "cat", "/tmp/detached"]);
        if code == 0 && out.trim() == "done" {
            Ok(())
        } else {
            Err(format!("{code} {out}"))
        }
    });
    let (code, _, err) = env.compose(&dir, &["exec", "-d", "app", "/no/such/binary"]);
    assert_ne!(
        code, 0,
        "a command that can't start is an error even with -d"
    );
    assert!(err.contains("/no/such/binary"), "{err}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `pull` fetches every service's image from its registry (a local one here) into the
/// store, `-q` prints nothing, and a pull failure is an error naming the image unless
/// `--ignore-pull-failures`.
#[test]
fn pull_fetches_service_images() {
    require_root!();
    let env = TestEnv::new("verbs-pull");
    let reg = support::registry::Registry::start();
    reg.push_layout(&support::images::busybox_layout(), "fixture/busybox", "v1");
    let image = format!("{}/fixture/busybox:v1", reg.addr);
    let dir = env.project_dir(
        "pull",
        &format!("services:\n  app:\n    image: {image}\n    command: [sleep, '3600']\n"),
    );
    assert_eq!(
        env.ok(&["image", "ls", "-q"]).trim(),
        "",
        "empty store first"
    );
    let out = env.compose_ok(&dir, &["pull", "-q"]);
    assert_eq!(out.trim(), "", "-q prints nothing");
    let ls = env.ok(&["image", "ls"]);
    assert!(ls.contains("fixture/busybox"), "{ls}");

    let missing = env.project_dir(
        "pull-missing",
        &format!(
            "services:\n  app:\n    image: {}/fixture/nope:v1\n    command: [sleep, '1']\n",
            reg.addr
        ),
    );
    let (code, _, err) = env.compose(&missing, &["pull"]);
    assert_ne!(code, 0);
    assert!(err.contains("fixture/nope"), "{err}");
    let (code, _, err) = env.compose(&missing, &["pull", "--ignore-pull-failures"]);
    assert_eq!(code, 0, "{err}");
    drop(reg);
    env.finish();
}

/// `run -T` with piped stdin: the one-off's stdin is that stream (EOF ends `cat`), its
/// output and exit code come back.
#[test]
fn run_pipes_stdin_into_a_one_off() {
    require_root!();
    let env = TestEnv::new("verbs-run-stdin");
    let _ns = support::enter_fresh_netns();
    // On a project that is up (one that is not: `run_on_a_project_that_is_not_up`).
    let dir = up(&env, "runstdin", SLEEPER);
    let cmd = env.compose_cmd(
        &dir,
        &["run", "--rm", "-T", "app", "sh", "-c", "cat; exit 3"],
    );
    let (code, out, err) =
        support::pty::run_with_input(cmd, "hi\nthere\n", Duration::from_secs(60));
    assert_eq!(code, 3, "stdout: {out:?}\nstderr: {err}");
    assert!(
        out.contains("hi\nthere\n"),
        "stdout: {out:?}\nstderr: {err}"
    );
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `run` on a terminal: a tty for the one-off, raw mode, typed input, resizes and the exit
/// code go through, the terminal is restored, and the one-off's log has the session.
#[test]
fn run_on_a_terminal_is_interactive() {
    require_root!();
    let env = TestEnv::new("verbs-run-tty");
    let _ns = support::enter_fresh_netns();
    // On a project that is up (one that is not: `run_on_a_project_that_is_not_up`).
    let dir = up(&env, "runtty", SLEEPER);
    let name = format!("{}-tty-oneoff", env.project);
    let cmd = env.compose_cmd(
        &dir,
        &[
            "run",
            "--name",
            &name,
            "app",
            "sh",
            "-c",
            crate::runtime::READ_LOOP,
        ],
    );
    let mut s = support::pty::PtySession::spawn(cmd, 30, 100);
    crate::runtime::drive_read_loop(&mut s);
    let logs = env.ok(&["container", "logs", &name]);
    assert!(logs.contains("got:hello"), "{logs}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `run` typed on a terminal with stdout redirected to a file (`berth run db pg_dump >
/// dump.sql`): no tty (as docker compose), so the file gets the plain output, no CRLF.
#[test]
fn run_with_redirected_stdout_gets_no_tty() {
    require_root!();
    let env = TestEnv::new("verbs-run-notty");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir("runnotty", SLEEPER);
    let out_path = dir.join("out.txt");
    let file = std::fs::File::create(&out_path).unwrap();
    let cmd = env.compose_cmd(
        &dir,
        &[
            "run",
            "--rm",
            "app",
            "sh",
            "-c",
            "[ -t 1 ] && echo out-is-tty || echo out-is-pipe; exit 3",
        ],
    );
    let mut s = support::pty::PtySession::spawn_with_stdout(cmd, 30, 100, Some(file.into()));
    assert_eq!(s.wait(Duration::from_secs(60)), 3, "{:?}", s.screen());
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(out, "out-is-pipe\n", "screen: {:?}", s.screen());
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `run --rm` on a terminal that hangs up (an ssh disconnect): berth stops and removes the
/// one-off before it ends with SIGHUP, the terminal restored.
#[test]
fn run_rm_removes_the_one_off_on_hangup() {
    require_root!();
    let env = TestEnv::new("verbs-run-hup");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir("runhup", SLEEPER);
    let cmd = env.compose_cmd(
        &dir,
        &["run", "--rm", "app", "sh", "-c", crate::runtime::READ_LOOP],
    );
    let mut s = support::pty::PtySession::spawn(cmd, 30, 100);
    s.expect("/dev/pts/", Duration::from_secs(60));
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(
        s.wait(Duration::from_secs(30)),
        -1,
        "berth ends by the signal"
    );
    assert_eq!(s.modes(), s.initial, "terminal restored");
    assert!(ps_rows(&env, &dir).is_empty(), "--rm removed the one-off");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `exec` on a terminal: a tty at our size, typed input, resizes (SIGWINCH) and the exit
/// code go through; our terminal is restored.
#[test]
fn exec_on_a_terminal_follows_resizes() {
    require_root!();
    let env = TestEnv::new("verbs-exec-tty");
    let _ns = support::enter_fresh_netns();
    let dir = up(&env, "exectty", SLEEPER);
    let cmd = env.compose_cmd(
        &dir,
        &["exec", "app", "sh", "-c", crate::runtime::READ_LOOP],
    );
    let mut s = support::pty::PtySession::spawn(cmd, 30, 100);
    crate::runtime::drive_read_loop(&mut s);
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `run` on a project that was never `up` (as docker compose): it creates the project's
/// network and supervisor itself, the one-off's output and exit code come back, a one-off
/// resolves another running container of its service by name, and `down` leaves nothing.
#[test]
fn run_on_a_project_that_is_not_up() {
    require_root!();
    let env = TestEnv::new("verbs-run-fresh");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("run-fresh");
    let (code, out, err) = env.compose(
        &dir,
        &[
            "run",
            "--rm",
            "app",
            "sh",
            "-c",
            "echo fresh one-off; exit 7",
        ],
    );
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("fresh one-off"),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(ps_rows(&env, &dir).is_empty(), "--rm removed the one-off");

    let peer = format!("{}-peer", env.project);
    let out = env.compose_ok(
        &dir,
        &["run", "-d", "--name", &peer, "app", "sleep", "3600"],
    );
    assert_eq!(out.trim(), peer);
    let lookup = format!("nslookup {peer} >/dev/null && echo peer-resolves");
    let (code, out, err) = env.compose(&dir, &["run", "--rm", "app", "sh", "-c", &lookup]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("peer-resolves"),
        "stdout: {out}\nstderr: {err}"
    );

    env.compose_ok(&dir, &["down", "-t", "0"]);
    assert!(ps_rows(&env, &dir).is_empty());
    env.finish();
}

/// `run --no-deps` on a project that was never `up` starts no dependency but still gets
/// the project's network and named volume (which outlives the one-off).
#[test]
fn run_no_deps_still_creates_networks_and_volumes() {
    require_root!();
    let env = TestEnv::new("verbs-run-nodeps");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = support::compose_dir("run-fresh");
    let (code, out, err) = env.compose(
        &dir,
        &[
            "run",
            "--rm",
            "--no-deps",
            "tool",
            "sh",
            "-c",
            "echo kept > /data/f && ip -4 addr show eth0 | grep -q inet && echo has-net",
        ],
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("has-net"), "stdout: {out}\nstderr: {err}");
    assert!(
        ps_rows(&env, &dir).is_empty(),
        "db was not started (--no-deps)"
    );
    let volumes = env.ok(&["volume", "ls", "-q"]);
    assert!(
        volumes.contains(&format!("{}_data", env.project)),
        "{volumes}"
    );
    let out = env.compose_ok(
        &dir,
        &["run", "--rm", "--no-deps", "tool", "cat", "/data/f"],
    );
    assert_eq!(out.trim(), "kept");
    env.compose_ok(&dir, &["down", "-v"]);
    env.finish();
}

/// `run -d` of a `stdin_open` service: no client is expected to attach, so the one-off's
/// shim does not linger (up to 5 s) for one after the container exits.
#[test]
fn run_detached_does_not_wait_for_an_attach_client() {
    require_root!();
    let env = TestEnv::new("verbs-run-detached-stdin");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "rundstdin",
        "services:\n  app:\n    image: busybox\n    stdin_open: true\n    command: [sleep, '3600']\n",
    );
    let name = env.compose_ok(&dir, &["run", "-d", "app", "sh", "-c", "sleep 0.5"]);
    let name = name.trim();
    let state = env.root.join("containers").join(name).join("state.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state.json"))
            .expect("state.json parses");
    let shim = state["shim_pid"].as_i64().expect("shim_pid");
    eventually(Duration::from_secs(10), || {
        let rows = ps_rows(&env, &dir);
        match rows.iter().find(|r| r["name"] == name) {
            Some(r) if r["state"] == "exited" => Ok(()),
            r => Err(format!("{r:?}")),
        }
    });
    // Gone (or a zombie: this host's PID 1 does not reap) well before the 5 s wait.
    let exited = Instant::now();
    eventually(Duration::from_secs(2), || {
        match std::fs::read_to_string(format!("/proc/{shim}/stat")) {
            Ok(s)
                if !s
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                Err(format!("shim {shim} still runs"))
            }
            _ => Ok(()),
        }
    });
    assert!(exited.elapsed() < Duration::from_secs(2));
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `run -d --rm` (compose habit): berth returns the one-off's name at once; once the one-off
/// exits, the supervisor removes it as `rm` would: gone from `ps -a`, its DNS name no
/// longer answers, and its container, netns pin and writable layer are gone (`down` then
/// has nothing of it left; the leak checker looks).
#[test]
fn run_detached_rm_is_removed_when_it_exits() {
    require_root!();
    let env = TestEnv::new("verbs-run-detached-rm");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "rundrm",
        "services:\n  app:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let name = env.compose_ok(&dir, &["run", "-d", "--rm", "app", "sh", "-c", "sleep 4"]);
    let name = name.trim().to_string();
    assert!(name.contains("-app-run-"), "{name}");
    // Running now, and resolvable from the service's container.
    let rows = ps_rows(&env, &dir);
    assert!(rows.iter().any(|r| r["name"] == name.as_str()), "{rows:?}");
    let lookup = |n: &str| env.compose(&dir, &["exec", "-T", "app", "nslookup", n]).0;
    assert_eq!(lookup(&name), 0, "the one-off resolves while it runs");
    eventually(Duration::from_secs(15), || {
        let rows = ps_rows(&env, &dir);
        match rows.iter().find(|r| r["name"] == name.as_str()) {
            None => Ok(()),
            Some(r) => Err(format!("still listed: {r}")),
        }
    });
    eventually(Duration::from_secs(5), || {
        match env.root.join("containers").join(&name).exists() {
            false => Ok(()),
            true => Err("state dir left".to_string()),
        }
    });
    eventually(Duration::from_secs(5), || match lookup(&name) {
        0 => Err("its DNS name still answers".to_string()),
        _ => Ok(()),
    });
    // The service's own container is untouched.
    let rows = ps_rows(&env, &dir);
    assert!(
        rows.iter()
            .any(|r| r["service"] == "app" && r["state"] == "running"),
        "{rows:?}"
    );
    env.compose_ok(&dir, &["down", "-t", "0"]);
    env.finish();
}

/// `berth` runs `container` commands itself and execs `berth-full` beside it, with the same
/// argv, for every other command: usage still names `berth`, and a `berth` copied without
/// `berth-full` still runs containers' commands and says what is missing for the rest.
#[test]
fn berth_execs_berth_full_for_all_but_container() {
    // A binary copied by this (multi-threaded, forking) test process can be "busy" for a
    // moment: another thread's child may still hold the copy's fd open (ETXTBSY).
    let output = |cmd: &mut std::process::Command| loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => break other.unwrap(),
        }
    };
    let berth = support::berth_bin();
    let out = output(std::process::Command::new(&berth).arg("--version"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
    // The whole CLI's help (the compose verbs), under berth's own name.
    let out = output(std::process::Command::new(&berth).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(help.contains("Usage: berth [OPTIONS] <COMMAND>"), "{help}");
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("up ")),
        "{help}"
    );
    let out = output(std::process::Command::new(&berth).arg("no-such-verb"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unrecognized subcommand 'no-such-verb'"),
        "{err}"
    );
    assert!(err.contains("Usage: berth [OPTIONS] <COMMAND>"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("berth");
    std::fs::copy(&berth, &alone).unwrap();
    let root = dir.path().join("root");
    let out = output(
        std::process::Command::new(&alone)
            .args(["container", "ls", "-a", "--root"])
            .arg(&root),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME"));
    let out = output(
        std::process::Command::new(&alone)
            .arg("--root")
            .arg(&root)
            .arg("ps"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(
        err.contains(&format!(
            "cannot run {}",
            dir.path().join("berth-full").display()
        )) && err.contains("installed beside berth"),
        "{err}"
    );
}
