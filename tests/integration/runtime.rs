//! The embedded runtime on the kernel path: containers from the busybox fixture, asserted
//! from inside (status files, mounts, cgroup files) and from the host (cgroups, processes,
//! the leak checker). Needs root; each test holds the kernel lock through `TestEnv`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::cgroups::{v2::CgroupV2, CgroupManager};
use berth_runtime::{
    Container, ContainerId, ContainerSpec, ExecSpec, ExitRecord, Limits, Mount, Rootfs, Runtime,
    Signal, Status,
};

use crate::support::{self, eventually, TestEnv};

struct Fixture {
    env: Option<TestEnv>,
    rt: Runtime,
    rootfs: PathBuf,
    _rootfs_dir: tempfile::TempDir,
}

fn setup(name: &str) -> Fixture {
    let env = TestEnv::new(name);
    let rt = Runtime::new(env.root.join("containers")).with_helper(support::berth_bin());
    let (dir, rootfs) = support::images::busybox_rootfs_dir();
    Fixture {
        env: Some(env),
        rt,
        rootfs,
        _rootfs_dir: dir,
    }
}

/// A failed assertion must not leave containers running: delete whatever is left.
impl Drop for Fixture {
    fn drop(&mut self) {
        for c in self.rt.list().unwrap_or_default() {
            let _ = self.rt.delete(c.id().as_str());
        }
    }
}

impl Fixture {
    fn spec(&self, name: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec::new(
            ContainerId::new(format!("bt-{name}")).unwrap(),
            Rootfs::Dir(self.rootfs.clone()),
            args.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// Runs to completion and returns the exit record and the whole log text.
    fn run_to_exit(&self, spec: &ContainerSpec) -> (ExitRecord, String) {
        let c = self
            .rt
            .run(spec)
            .unwrap_or_else(|e| panic!("run {}: {}", spec.id, chain(&e)));
        let exit = c
            .wait(Some(Duration::from_secs(60)))
            .expect("container exits");
        let text = log_text(&c);
        self.rt.delete(spec.id.as_str()).expect("delete");
        (exit, text)
    }

    fn root(&self) -> &Path {
        &self.env.as_ref().expect("env").root
    }

    fn finish(mut self) {
        assert!(
            self.rt.list().unwrap().is_empty(),
            "containers left in the state dir"
        );
        self.env.take().expect("env").finish();
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn log_text(c: &Container) -> String {
    berth_runtime::log::read_log(&c.log_path())
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.log)
        .collect()
}

/// `key: value` of a status-style text.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("{key} missing in:\n{text}"))
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e.path().join("berth").join(id);
        if p.exists() {
            out.push(p);
        }
    }
    out
}

fn libc_rlimit_nofile_hard() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(0)
}

const PROBE: &str = r#"
echo "cmd1=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "nprocs=$(ls /proc | grep -c '^[0-9]')"
echo "hostname=$(hostname)"
echo "id=$(id)"
grep -E '^(CapEff|CapBnd|CapPrm|Seccomp|NoNewPrivs):' /proc/self/status
echo "netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ',')"
echo x > /sys/kernel/berth-probe 2>/dev/null && echo sys=writable || echo sys=ro
echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo procsys=writable || echo procsys=ro
echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null && echo cgmem=writable || echo cgmem=ro
echo max > /sys/fs/cgroup/pids/pids.max 2>/dev/null && echo cgpids=writable || echo cgpids=ro
mkdir /sys/fs/cgroup/memory/sub 2>/dev/null && echo cgmkdir=ok || echo cgmkdir=denied
echo "interrupts=$(wc -c < /proc/interrupts)"
echo "keys=$(wc -c < /proc/keys)"
echo "timer_list=$(wc -c < /proc/timer_list)"
echo "devs=$(ls /dev | tr '\n' ',')"
echo "HOME=$HOME"
mknod /tmp/bt-sda b 8 0 && echo mknod=ok
head -c1 /tmp/bt-sda >/dev/null 2>&1 && echo blockdev=readable || echo blockdev=denied
echo "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
grep 'Max open files' /proc/self/limits
"#;

#[test]
fn docker_default_isolation_seen_from_inside() {
    crate::require_root!();
    let fx = setup("rt-isolation");
    let mut spec = fx.spec("isolation", &["sh", "-c", PROBE]);
    spec.hostname = Some("web-1".into());
    spec.sysctls
        .insert("net.core.somaxconn".into(), "777".into());
    spec.oom_score_adj = Some(321);
    // The hard limit is above what root may set here (no CAP_SYS_RESOURCE): clamped.
    spec.rlimits = vec![berth_runtime::Rlimit {
        name: "nofile".into(),
        soft: 1234,
        hard: u64::MAX,
    }];
    let (exit, out) = fx.run_to_exit(&spec);
    eprintln!("container output:\n{out}");
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("cmd1=sh -c"), "PID 1 is the command:\n{out}");
    let nprocs: u32 = field(&out, "nprocs=").parse().unwrap();
    assert!(nprocs <= 4, "host pids visible ({nprocs}):\n{out}");
    assert_eq!(field(&out, "hostname="), "web-1");
    assert!(
        field(&out, "id=").starts_with("uid=0(root) gid=0(root)"),
        "{out}"
    );
    assert_eq!(field(&out, "CapEff:"), "00000000a80425fb");
    assert_eq!(field(&out, "CapBnd:"), "00000000a80425fb");
    assert_eq!(field(&out, "Seccomp:"), "2");
    assert_eq!(field(&out, "NoNewPrivs:"), "0");
    assert_eq!(
        field(&out, "netdevs="),
        "lo,",
        "a new, empty network namespace"
    );
    for (k, v) in [
        ("sys=", "ro"),
        ("procsys=", "ro"),
        ("cgmem=", "ro"),
        ("cgpids=", "ro"),
        ("cgmkdir=", "denied"),
    ] {
        assert_eq!(field(&out, k), v, "{k}\n{out}");
    }
    // Non-empty on the host, masked (bound to /dev/null) inside.
    for masked in ["interrupts=", "keys=", "timer_list="] {
        assert_eq!(field(&out, masked), "0", "{masked} not masked");
    }
    let devs = field(&out, "devs=");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
        "stdin", "stdout", "stderr",
    ] {
        assert!(devs.split(',').any(|x| x == d), "/dev/{d} missing: {devs}");
    }
    assert_eq!(field(&out, "HOME="), "/root");
    // CAP_MKNOD makes the node, the devices cgroup refuses to open it (as Docker).
    assert_eq!(field(&out, "mknod="), "ok");
    assert_eq!(field(&out, "blockdev="), "denied");
    assert_eq!(field(&out, "somaxconn="), "777");
    assert_eq!(field(&out, "oom_score_adj="), "321");
    let nofile: Vec<&str> = field(&out, "Max open files").split_whitespace().collect();
    assert_eq!(nofile[0], "1234");
    let mut host_hard = libc_rlimit_nofile_hard();
    if host_hard == u64::MAX {
        host_hard = 0;
    }
    if host_hard > 0 {
        assert_eq!(
            nofile[1],
            host_hard.to_string(),
            "hard limit clamped to the caller's"
        );
    }
    fx.finish();
}

#[test]
fn no_new_privileges_only_when_asked() {
    crate::require_root!();
    let fx = setup("rt-nnp");
    let mut spec = fx.spec("nnp", &["grep", "NoNewPrivs", "/proc/self/status"]);
    spec.no_new_privileges = true;
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(field(&out, "NoNewPrivs:"), "1");
    fx.finish();
}

/// `privileged` gives every capability berth itself has (root here lacks
/// CAP_SYS_RESOURCE, so "all" is clamped to the caller's bounding and permitted sets), and
/// asking for a capability berth lacks is an error that names it.
#[test]
fn privileged_gets_every_capability_the_caller_has() {
    crate::require_root!();
    let fx = setup("rt-priv");
    let mut spec = fx.spec("priv", &["grep", "CapEff", "/proc/self/status"]);
    spec.privileged = true;
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mine = |k: &str| u64::from_str_radix(field(&status, k), 16).unwrap();
    let theirs = u64::from_str_radix(field(&out, "CapEff:"), 16).unwrap();
    assert_eq!(theirs, mine("CapBnd:") & mine("CapPrm:"), "{out}");

    let missing = (0..=40u64).find(|n| mine("CapBnd:") & (1 << n) == 0);
    if let Some(n) = missing {
        let name = berth_runtime::capabilities::Capability::all()
            .nth(n as usize)
            .unwrap();
        let mut spec = fx.spec("priv2", &["true"]);
        spec.cap_add = vec![name.to_string()];
        let err = fx.rt.run(&spec).map(|_| ()).unwrap_err();
        assert!(
            chain(&err).contains(&format!("capability {name} was asked for")),
            "{}",
            chain(&err)
        );
    }
    fx.finish();
}

#[test]
fn users_groups_and_home_come_from_the_rootfs() {
    crate::require_root!();
    let fx = setup("rt-user");
    let etc = fx.rootfs.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:\n",
    )
    .unwrap();
    let probe = "id; echo HOME=$HOME; grep CapEff /proc/self/status; pwd";
    let mut spec = fx.spec("user", &["sh", "-c", probe]);
    spec.user = Some("app".into());
    spec.working_dir = Some("/work/dir".into());
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert!(
        out.contains("uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"),
        "{out}"
    );
    assert_eq!(field(&out, "HOME="), "/home/app");
    assert_eq!(
        field(&out, "CapEff:"),
        "0000000000000000",
        "non-root gets no effective caps"
    );
    assert!(
        out.contains("/work/dir"),
        "working dir created and used:\n{out}"
    );

    let mut spec = fx.spec("user2", &["id"]);
    spec.user = Some("1234:other".into());
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.starts_with("uid=1234 gid=3000(other)"), "{out}");

    let mut spec = fx.spec("user3", &["id"]);
    spec.user = Some("nobody-here".into());
    let err = fx
        .rt
        .run(&spec)
        .expect_err("unknown user must fail the start");
    let msg = chain(&err);
    assert!(msg.contains("unable to find user nobody-here"), "{msg}");
    fx.rt.delete("bt-user3").unwrap();
    fx.finish();
}

#[test]
fn exit_codes_and_signals_propagate() {
    crate::require_root!();
    let fx = setup("rt-exit");
    let (exit, _) = fx.run_to_exit(&fx.spec("exit42", &["sh", "-c", "exit 42"]));
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (42, None, false));

    // A missing command is reported with its cause, like Docker's "executable file not found".
    let err = fx
        .rt
        .run(&fx.spec("nocmd", &["no-such-command"]))
        .expect_err("must fail");
    assert!(
        chain(&err).contains("\"no-such-command\" not found in $PATH"),
        "{}",
        chain(&err)
    );
    fx.rt.delete("bt-nocmd").unwrap();

    // SIGTERM to a process that dies of it: berth's init forwards it, 128 + 15.
    let mut spec = fx.spec("term", &["sleep", "1000"]);
    spec.init = true;
    let c = fx.rt.run(&spec).unwrap();
    let exit = c.stop(Duration::from_secs(20)).unwrap();
    assert_eq!(exit.code, 143, "{exit:?}");
    fx.rt.delete("bt-term").unwrap();

    // A handler that exits with its own code.
    let spec = fx.spec(
        "trap",
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    );
    let c = fx.rt.run(&spec).unwrap();
    eventually(Duration::from_secs(10), || {
        log_text(&c)
            .contains("ready")
            .then_some(())
            .ok_or("not ready".to_string())
    });
    let exit = c.stop(Duration::from_secs(20)).unwrap();
    assert_eq!(exit.code, 7);
    fx.rt.delete("bt-trap").unwrap();

    // Custom stop signal delivered to PID 1.
    let mut spec = fx.spec(
        "usr1",
        &[
            "sh",
            "-c",
            "trap 'exit 9' USR1; echo ready; while true; do sleep 0.05; done",
        ],
    );
    spec.stop_signal = Some("SIGUSR1".into());
    let c = fx.rt.run(&spec).unwrap();
    eventually(Duration::from_secs(10), || {
        log_text(&c)
            .contains("ready")
            .then_some(())
            .ok_or("not ready".to_string())
    });
    assert_eq!(c.stop(Duration::from_secs(20)).unwrap().code, 9);
    fx.rt.delete("bt-usr1").unwrap();
    fx.finish();
}

#[test]
fn stop_skips_the_grace_period_when_pid1_ignores_sigterm() {
    crate::require_root!();
    let fx = setup("rt-stopfast");
    // `sleep` as PID 1 has no SIGTERM handler: the kernel drops the signal, so waiting the
    // grace period would only delay the SIGKILL.
    let c = fx.rt.run(&fx.spec("stopfast", &["sleep", "1000"])).unwrap();
    let t = Instant::now();
    let exit = c.stop(Duration::from_secs(30)).unwrap();
    assert_eq!((exit.code, exit.signal), (137, Some(9)));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "grace period not skipped: {:?}",
        t.elapsed()
    );
    fx.rt.delete("bt-stopfast").unwrap();
    fx.finish();
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    crate::require_root!();
    let fx = setup("rt-pids");
    // The inner shell forks until the limit stops it; the outer one survives (exec, no fork).
    let bomb =
        "sh -c 'for i in $(seq 1 100); do sleep 1000 & done'; echo bomb-over; exec sleep 1000";
    let mut spec = fx.spec("pids", &["sh", "-c", bomb]);
    spec.limits = Limits {
        pids: Some(16),
        ..Default::default()
    };
    let c = fx.rt.run(&spec).unwrap();
    let text = eventually(Duration::from_secs(20), || {
        let t = log_text(&c);
        t.contains("bomb-over")
            .then_some(t)
            .ok_or("bomb still running".to_string())
    });
    assert!(text.contains("can't fork"), "forks did not fail:\n{text}");
    let stats = c.stats().unwrap();
    assert!((10..=16).contains(&stats.pids), "{stats:?}");
    c.stop(Duration::from_secs(5)).unwrap();
    fx.rt.delete("bt-pids").unwrap();
    fx.finish();
}

#[test]
fn memory_past_the_limit_is_oom_killed_as_137() {
    crate::require_root!();
    let fx = setup("rt-oom");
    // dd holds a 256 MiB buffer; the limit is 32 MiB (memsw 64 MiB).
    let mut spec = fx.spec(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=4"],
    );
    spec.limits = Limits {
        memory: Some(32 << 20),
        ..Default::default()
    };
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 137, "{exit:?} {out}");
    assert!(exit.oom_killed, "{exit:?}");
    fx.finish();
}

#[test]
fn pause_freezes_and_unpause_resumes() {
    crate::require_root!();
    let fx = setup("rt-pause");
    let c = fx
        .rt
        .run(&fx.spec(
            "pause",
            &[
                "sh",
                "-c",
                // tmpfs: on a busy ext4 (discard) each truncate can block for long.
                "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/n; done",
            ],
        ))
        .unwrap();
    let counter = Path::new("/proc")
        .join(c.pid().unwrap().to_string())
        .join("root/dev/shm/n");
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    eventually(Duration::from_secs(10), || {
        (!read().is_empty())
            .then_some(())
            .ok_or("no counter".to_string())
    });
    c.pause().unwrap();
    assert_eq!(c.status().unwrap(), Status::Paused);
    let frozen = read();
    // Observe for a while: a frozen counter stays the same (no deadline to poll towards).
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(read(), frozen, "counter moved while paused");
    }
    assert!(matches!(
        c.exec(&ExecSpec::new(["true"])),
        Err(berth_runtime::RuntimeError::Paused { .. })
    ));
    c.unpause().unwrap();
    assert_eq!(c.status().unwrap(), Status::Running);
    eventually(Duration::from_secs(10), || {
        (read() != frozen)
            .then_some(())
            .ok_or("counter stuck".to_string())
    });
    c.stop(Duration::from_secs(5)).unwrap();
    fx.rt.delete("bt-pause").unwrap();
    fx.finish();
}

/// An exec with a timeout (what healthchecks use) is killed when it runs too long: the
/// call returns 137 soon after the deadline and the process is gone from the container.
#[test]
fn exec_timeout_kills_the_process() {
    crate::require_root!();
    let fx = setup("rt-exectmo");
    let c = fx.rt.run(&fx.spec("exectmo", &["sleep", "1000"])).unwrap();
    let t = std::time::Instant::now();
    let out = c
        .exec(&ExecSpec {
            timeout_ms: Some(300),
            ..ExecSpec::new(["sleep", "77"])
        })
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(out.code, 137, "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let ps = c.exec(&ExecSpec::new(["ps", "-o", "args"])).unwrap();
    assert!(!ps.stdout_str().contains("sleep 77"), "{}", ps.stdout_str());
    c.stop(Duration::from_secs(1)).unwrap();
    fx.rt.delete("bt-exectmo").unwrap();
    fx.finish();
}

#[test]
fn exec_joins_the_same_namespaces_and_security() {
    crate::require_root!();
    let fx = setup("rt-exec");
    let mut spec = fx.spec("exec", &["sleep", "1000"]);
    spec.hostname = Some("exec-host".into());
    spec.env = vec!["FOO=bar".into()];
    let c = fx.rt.run(&spec).unwrap();
    let pid = c.pid().unwrap();
    let script = "for n in pid mnt net uts ipc; do echo $n=$(readlink /proc/self/ns/$n); done; \
                  echo host=$(hostname); echo FOO=$FOO; grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                  echo cmd1=$(tr '\\0' ' ' < /proc/1/cmdline)";
    let out = c
        .exec(&ExecSpec::new(["sh", "-c", script]))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(out.code, 0, "{out:?}");
    let text = out.stdout_str();
    for n in ["pid", "mnt", "net", "uts", "ipc"] {
        let want = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        assert_eq!(
            field(&text, &format!("{n}=")),
            want.to_string_lossy(),
            "{n} namespace differs"
        );
    }
    assert_eq!(field(&text, "host="), "exec-host");
    assert_eq!(field(&text, "FOO="), "bar");
    assert_eq!(field(&text, "CapEff:"), "00000000a80425fb");
    assert_eq!(field(&text, "Seccomp:"), "2");
    assert_eq!(field(&text, "cmd1="), "sleep 1000");

    let out = c
        .exec(&ExecSpec::new(["sh", "-c", "echo err >&2; exit 5"]))
        .unwrap();
    assert_eq!((out.code, out.stderr.as_slice()), (5, &b"err\n"[..]));
    let err = c
        .exec(&ExecSpec::new(["nope-cmd"]))
        .expect_err("missing command");
    assert!(chain(&err).contains("not found"), "{}", chain(&err));

    // The exec'd process is in the container's cgroup.
    let mut e = ExecSpec::new(["sh", "-c", "cat /proc/self/cgroup"]);
    e.user = Some("65534".into());
    let out = c.exec(&e).unwrap();
    assert!(
        out.stdout_str().contains("berth/bt-exec"),
        "{}",
        out.stdout_str()
    );
    c.stop(Duration::from_secs(5)).unwrap();
    fx.rt.delete("bt-exec").unwrap();
    fx.finish();
}

#[test]
fn init_reaps_zombies_and_forwards_signals() {
    crate::require_root!();
    let fx = setup("rt-init");
    // The inner shell starts a short child in the background and exits: the orphan is
    // re-parented to PID 1, which must reap it when it exits.
    let mut spec = fx.spec(
        "init",
        &["sh", "-c", "sh -c 'sleep 0.1 &'; exec sleep 1000"],
    );
    spec.init = true;
    let c = fx.rt.run(&spec).unwrap();
    eventually(Duration::from_secs(10), || {
        let out = c
            .exec(&ExecSpec::new(["ps", "-o", "pid,stat,comm"]))
            .map_err(|e| chain(&e))?;
        let t = out.stdout_str();
        let sleeps = t.lines().filter(|l| l.contains("sleep")).count();
        if t.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| s.starts_with('Z'))
        }) || sleeps != 1
        {
            return Err(format!("not reaped yet:\n{t}"));
        }
        Ok(())
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid().unwrap())).unwrap();
    assert_eq!(
        field(&status, "Seccomp:"),
        "2",
        "PID 1 init is confined too"
    );
    assert_eq!(c.stop(Duration::from_secs(20)).unwrap().code, 143);
    fx.rt.delete("bt-init").unwrap();
    fx.finish();
}

#[test]
fn overlay_rootfs_mounts_and_read_only_root() {
    crate::require_root!();
    let fx = setup("rt-overlay");
    let base = fx.root().join("ov");
    let (upper, work, data) = (base.join("upper"), base.join("work"), base.join("data"));
    for d in [&upper, &work, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("hello"), "from host\n").unwrap();
    let script = "echo hi > /made-here && echo root=rw || echo root=ro; \
                  echo t > /scratch/t && echo tmpfs=rw || echo tmpfs=ro; \
                  cat /data/hello; echo x > /data/new && echo data=rw || echo data=ro";
    let mut spec = fx.spec("overlay", &["sh", "-c", script]);
    spec.rootfs = Rootfs::Overlay {
        lower: vec![fx.rootfs.clone()],
        upper: upper.clone(),
        work,
    };
    spec.mounts = vec![
        Mount::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
            mode: None,
        },
        Mount::Bind {
            source: data.clone(),
            target: "/data".into(),
            read_only: true,
        },
    ];
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(field(&out, "root="), "rw");
    assert_eq!(field(&out, "tmpfs="), "rw");
    assert_eq!(field(&out, "data="), "ro");
    assert!(out.contains("from host"), "{out}");
    assert!(
        upper.join("made-here").exists(),
        "writes land in the upper dir"
    );
    assert!(
        !fx.rootfs.join("made-here").exists(),
        "the lower layer is untouched"
    );

    let mut spec = fx.spec("readonly", &["sh", "-c", script]);
    spec.read_only_rootfs = true;
    spec.mounts = vec![
        Mount::Tmpfs {
            target: "/scratch".into(),
            size: None,
            mode: None,
        },
        Mount::Bind {
            source: data,
            target: "/data".into(),
            read_only: false,
        },
    ];
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(field(&out, "root="), "ro");
    assert_eq!(field(&out, "tmpfs="), "rw");
    assert_eq!(field(&out, "data="), "rw");
    fx.finish();
}

#[test]
fn mount_targets_cannot_escape_through_symlinks() {
    crate::require_root!();
    let fx = setup("rt-symlink");
    let outside = fx.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A hostile image: /evil points at a host path; the mount must land inside the rootfs.
    std::os::unix::fs::symlink(&outside, fx.rootfs.join("evil")).unwrap();
    let src = fx.root().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "m").unwrap();
    let mut spec = fx.spec("symlink", &["ls", "/evil"]);
    spec.mounts = vec![Mount::Bind {
        source: src,
        target: "/evil".into(),
        read_only: true,
    }];
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("marker"), "{out}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "host dir untouched"
    );
    fx.finish();
}

#[test]
fn delete_leaves_nothing_behind() {
    crate::require_root!();
    let fx = setup("rt-delete");
    let c = fx.rt.run(&fx.spec("delete", &["sleep", "1000"])).unwrap();
    let (pid, shim) = (c.pid().unwrap(), c.shim_pid().unwrap());
    let state = c.state_dir().to_path_buf();
    assert!(!cgroup_dirs("bt-delete").is_empty());
    c.delete().unwrap();
    assert!(!state.exists(), "state dir left");
    assert!(
        cgroup_dirs("bt-delete").is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs("bt-delete")
    );
    for p in [pid, shim] {
        let alive =
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "process {p} left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state.to_string_lossy().into_owned()),
        "mount left"
    );
    // Idempotent.
    fx.rt.delete("bt-delete").unwrap();
    fx.finish();
}

/// Not a test by itself: the caller process for `shim_survives_its_caller`, run in a child
/// process of the test binary so it can be SIGKILLed.
#[test]
#[ignore = "helper process for shim_survives_its_caller"]
fn caller_process() {
    let (Ok(root), Ok(rootfs), Ok(out)) = (
        std::env::var("BT_CALLER_ROOT"),
        std::env::var("BT_CALLER_ROOTFS"),
        std::env::var("BT_CALLER_OUT"),
    ) else {
        return;
    };
    let rt = Runtime::new(root).with_helper(support::berth_bin());
    let spec = ContainerSpec::new(
        ContainerId::new("bt-survive").unwrap(),
        Rootfs::Dir(rootfs.into()),
        ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]
            .map(String::from)
            .to_vec(),
    );
    let c = rt.run(&spec).expect("run");
    std::fs::write(&out, c.pid().unwrap().to_string()).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Kills (by pid) and reaps the helper process if the test fails early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shim_survives_its_caller() {
    crate::require_root!();
    let fx = setup("rt-survive");
    let out = fx.root().join("caller-pid");
    let mut caller = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "runtime::caller_process",
                "--test-threads=1",
            ])
            .env("BT_CALLER_ROOT", fx.rt.state_root())
            .env("BT_CALLER_ROOTFS", &fx.rootfs)
            .env("BT_CALLER_OUT", &out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid: i32 = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("caller not started".to_string())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(caller.0.id() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    caller.0.wait().unwrap();

    let rt = Runtime::new(fx.rt.state_root()).with_helper(support::berth_bin());
    let c = rt.get("bt-survive").unwrap();
    assert_eq!(c.pid(), Some(pid));
    assert_eq!(c.status().unwrap(), Status::Running);
    let size = || {
        std::fs::metadata(c.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let before = size();
    eventually(Duration::from_secs(10), || {
        (size() > before)
            .then_some(())
            .ok_or("log not growing".to_string())
    });
    let exit = c.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(exit.code, 137, "sh ignores SIGTERM as PID 1: killed");
    rt.delete("bt-survive").unwrap();
    fx.finish();
}

#[test]
fn cgroup_v2_core_files_work_on_the_unified_hierarchy() {
    crate::require_root!();
    let unified = Path::new("/sys/fs/cgroup/unified");
    let is_v2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup/unified ") && l.contains(" - cgroup2 "));
    let root = if is_v2 {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    if !root.join("cgroup.controllers").exists() {
        eprintln!("SKIPPED cgroup v2 test: no cgroup2 hierarchy mounted");
        return;
    }
    let env = TestEnv::new("rt-cgv2");
    // This host's v2 hierarchy has no memory/cpu/pids controllers (they are bound to v1), so
    // only the core files and the BPF device filter are tested: placement, freeze/thaw,
    // device rules, kill-all, removal.
    /// Kills and removes the test cgroup even when an assertion fails.
    struct Cleanup(CgroupV2);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kill_all();
            let _ = self.0.remove();
        }
    }
    let guard = Cleanup(CgroupV2::at(root, "bt-cgv2"));
    let cg = &guard.0;
    cg.create(&Limits::default(), false).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    cg.add_process(child.id() as i32).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![child.id() as i32]);
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    assert!(cg.stats().unwrap().pids >= 1);
    let limited = CgroupV2::at(
        PathBuf::from(cg.paths()[0].parent().unwrap().parent().unwrap()),
        "bt-cgv2-mem",
    );
    if is_v2
        && !std::fs::read_to_string(unified.join("cgroup.controllers"))
            .unwrap()
            .contains("memory")
    {
        let err = limited
            .create(
                &Limits {
                    memory: Some(1 << 20),
                    ..Default::default()
                },
                false,
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("memory controller is not available"),
            "{err}"
        );
        limited.remove().unwrap();
    }
    // The BPF device filter attached at create: a shell that moves itself into the cgroup can
    // still open /dev/null but not /dev/kmsg (c 1:11), which root can open outside it.
    let procs = cg.paths()[0].join("cgroup.procs");
    let script = format!(
        "echo $$ > {}; echo x > /dev/null && echo null=ok; (exec 3</dev/kmsg) 2>/dev/null && echo kmsg=ok || echo kmsg=denied",
        procs.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("null=ok") && text.contains("kmsg=denied"),
        "{text}"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", "(exec 3</dev/kmsg) && echo kmsg=ok"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kmsg=ok"),
        "kmsg readable outside the cgroup"
    );
    cg.kill_all().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    cg.remove().unwrap();
    assert!(!cg.exists());
    drop(guard);
    env.finish();
}

#[test]
fn joins_an_existing_network_namespace() {
    crate::require_root!();
    let fx = setup("rt-netns");
    let name = format!("bt-rtjoin-{}", std::process::id());
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &name]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let del = Del(name.clone());
    ip(&[
        "-n", &name, "link", "add", "btjoin0", "type", "veth", "peer", "name", "btjoin1",
    ]);
    let mut spec = fx.spec("netns", &["cat", "/proc/net/dev"]);
    spec.network = berth_runtime::Network::Join(PathBuf::from("/run/netns").join(&name));
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("btjoin0"), "{out}");
    drop(del);
    fx.finish();
}

/// An OCI bundle for runc/crun on the fixture rootfs with Docker's settings: 14 caps, no NNP,
/// Docker's masked/read-only paths and /proc flags, devices deny-all plus the default nodes,
/// 64 MiB memory, 32 pids, cgroup `berth/<cgroup>`.
fn oci_bundle(
    fx: &Fixture,
    dir: &str,
    args: serde_json::Value,
    cgroup: &str,
    seccomp: serde_json::Value,
) -> PathBuf {
    let bundle = fx.root().join(dir);
    std::fs::create_dir_all(&bundle).unwrap();
    let st = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(st.success());
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let caps: Vec<String> = berth_runtime::capabilities::DOCKER_DEFAULT
        .iter()
        .map(|c| c.to_string())
        .collect();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = args;
    cfg["process"]["noNewPrivileges"] = false.into();
    cfg["process"]["capabilities"] =
        serde_json::json!({ "bounding": caps, "effective": caps, "permitted": caps });
    cfg["root"] = serde_json::json!({ "path": fx.rootfs, "readonly": false });
    cfg["linux"]["cgroupsPath"] = format!("/berth/{cgroup}").into();
    cfg["linux"]["resources"] = serde_json::json!({
        "devices": [{ "allow": false, "access": "rwm" }],
        "memory": { "limit": 64 << 20, "swap": 128 << 20 },
        "pids": { "limit": 32 }
    });
    // Docker mounts /proc nosuid,noexec,nodev; `runc spec`'s template does not.
    for m in cfg["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/proc" {
            m["options"] = serde_json::json!(["nosuid", "noexec", "nodev"]);
        }
    }
    cfg["linux"]["maskedPaths"] = serde_json::json!(berth_runtime::MASKED_PATHS);
    cfg["linux"]["readonlyPaths"] = serde_json::json!(berth_runtime::READONLY_PATHS);
    cfg["linux"]["seccomp"] = seccomp;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    bundle
}

fn remove_cgroup(name: &str) {
    for d in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(d.path().join("berth").join(name));
        let _ = std::fs::remove_dir(d.path().join("berth"));
    }
}

/// The probe both runtimes run in the differential test: security state, cgroup limits and
/// the mount table reduced to (mountpoint, fstype, ro/rw + nosuid/nodev/noexec).
const DIFF_PROBE: &str = r#"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
echo "memlimit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
echo "pidsmax=$(cat /sys/fs/cgroup/pids/pids.max)"
awk '{ split($0, a, " - "); split(a[2], b, " "); n = split($6, o, ","); f = "";
       for (i = 1; i <= n; i++) if (o[i] ~ /^(ro|rw|nosuid|nodev|noexec)$/) f = f "," o[i];
       print "M " $5 " " b[1] " " substr(f, 2) }' /proc/self/mountinfo | sort
exit 3
"#;

#[test]
fn differential_against_runc() {
    crate::require_root!();
    if std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED differential_against_runc: runc is not installed");
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory").is_dir() {
        eprintln!("SKIPPED differential_against_runc: the probe reads cgroup v1 files");
        return;
    }
    let fx = setup("rt-diff");
    let limits = Limits {
        memory: Some(64 << 20),
        pids: Some(32),
        ..Default::default()
    };

    // berth
    let mut spec = fx.spec("diff", &["sh", "-c", DIFF_PROBE]);
    spec.limits = limits.clone();
    let (exit, berth_out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 3, "{berth_out}");

    // runc, same rootfs, Docker's settings written into `runc spec`'s template. Only the
    // seccomp *mode* is compared; a one-rule filter is enough for runc.
    let seccomp = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["acct"], "action": "SCMP_ACT_ERRNO" }]
    });
    let bundle = oci_bundle(
        &fx,
        "bundle",
        serde_json::json!(["sh", "-c", DIFF_PROBE]),
        "bt-diff-runc",
        seccomp,
    );
    let runc_root = fx.root().join("runc-state");
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("bt-diff-runc")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    remove_cgroup("bt-diff-runc");
    let runc_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "runc: {runc_out}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let non_mount = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("M "))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        non_mount(&berth_out),
        non_mount(&runc_out),
        "security state or limits differ"
    );
    let mounts = |t: &str| -> std::collections::BTreeSet<String> {
        t.lines()
            .filter(|l| l.starts_with("M "))
            .map(String::from)
            .collect()
    };
    let (b, r) = (mounts(&berth_out), mounts(&runc_out));
    // The tmpfs at /sys/fs/cgroup: runc 1.1 leaves it writable, berth makes it read-only too.
    let is_cg = |m: &String| m.starts_with("M /sys/fs/cgroup");
    assert!(
        b.contains("M /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec"),
        "{berth_out}"
    );
    let b_main: Vec<_> = b.iter().filter(|m| !is_cg(m)).collect();
    let r_main: Vec<_> = r.iter().filter(|m| !is_cg(m)).collect();
    assert_eq!(
        b_main, r_main,
        "mount tables differ\nberth:\n{berth_out}\nrunc:\n{runc_out}"
    );
    // runc binds every v1 controller, berth the six it manages: same options where both have one.
    for m in b.iter().filter(|m| m.starts_with("M /sys/fs/cgroup/")) {
        assert!(
            r.contains(m),
            "berth cgroup mount {m} not in runc's:\n{runc_out}"
        );
        assert!(m.ends_with(" ro,nosuid,nodev,noexec"), "{m}");
    }
    fx.finish();
}

/// Docker's default profile in OCI form for amd64 and the 14 default caps, from moby's JSON
/// in `../shared` (keep the rules whose `includes` hold, drop those whose `excludes` match).
fn oci_docker_seccomp() -> Option<serde_json::Value> {
    let text =
        std::fs::read_to_string(support::shared_dir()?.join("seccomp/docker-default.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let caps: Vec<String> = berth_runtime::capabilities::DOCKER_DEFAULT
        .iter()
        .map(|c| c.to_string())
        .collect();
    let has_cap = |v: &serde_json::Value| v.as_str().is_some_and(|c| caps.iter().any(|k| k == c));
    let mut rules = Vec::new();
    for r in json["syscalls"].as_array()? {
        let inc = &r["includes"];
        let exc = &r["excludes"];
        let inc_ok = inc["arches"]
            .as_array()
            .is_none_or(|a| a.iter().any(|x| x == "amd64"))
            && inc["caps"].as_array().is_none_or(|a| a.iter().all(has_cap));
        let exc_hit = exc["arches"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "amd64"))
            || exc["caps"]
                .as_array()
                .is_some_and(|a| a.iter().any(has_cap));
        if inc_ok && !exc_hit {
            let mut rule = serde_json::json!({ "names": r["names"], "action": r["action"] });
            for k in ["args", "errnoRet"] {
                if !r[k].is_null() {
                    rule[k] = r[k].clone();
                }
            }
            rules.push(rule);
        }
    }
    Some(serde_json::json!({
        "defaultAction": json["defaultAction"], "defaultErrnoRet": json["defaultErrnoRet"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules
    }))
}

fn summary(name: &str, v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    eprintln!(
        "{name:<28} min {:>7.2}  median {:>7.2}  max {:>7.2}  ms (n={})",
        v[0],
        med,
        v[v.len() - 1],
        v.len()
    );
    med
}

/// Not a timed test: prints start→exit latency of `/bin/true` with the Docker-like spec for
/// berth, `runc run` and `crun run` on the same rootfs, interleaved. Run with
/// `cargo test --test integration runtime::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_start_to_exit() {
    crate::require_root!();
    let fx = setup("rt-bench");
    let n: usize = std::env::var("BT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seccomp = oci_docker_seccomp();
    let oci_seccomp = seccomp.clone().unwrap_or(serde_json::Value::Null);
    if seccomp.is_none() {
        eprintln!("note: ../shared absent: runc/crun run without seccomp");
    }
    let bundle = oci_bundle(
        &fx,
        "bundle",
        serde_json::json!(["/bin/true"]),
        "bt-bench-oci",
        oci_seccomp,
    );
    let runc_root = fx.root().join("runc-state");
    let crun_root = fx.root().join("crun-state");
    let have_crun = std::process::Command::new("crun")
        .arg("--version")
        .output()
        .is_ok();
    let mut spec = fx.spec("bench", &["/bin/true"]);
    spec.limits = Limits {
        memory: Some(64 << 20),
        pids: Some(32),
        cpus: Some(0.5),
        ..Default::default()
    };
    let (mut berth, mut runc, mut crun, mut host) = (vec![], vec![], vec![], vec![]);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    for i in 0..n {
        let mut order = [0, 1, 2, 3];
        order.rotate_left(i % 4);
        for which in order {
            match which {
                0 => {
                    let t = Instant::now();
                    let c = fx.rt.run(&spec).unwrap();
                    let e = c.wait(Some(Duration::from_secs(10))).unwrap();
                    fx.rt.delete("bt-bench").unwrap();
                    berth.push(ms(t));
                    assert_eq!(e.code, 0);
                }
                1 => {
                    let t = Instant::now();
                    let st = std::process::Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["run", "--bundle"])
                        .arg(&bundle)
                        .arg("bt-bench-runc")
                        .stdin(std::process::Stdio::null())
                        .status()
                        .unwrap();
                    runc.push(ms(t));
                    assert!(st.success(), "runc failed");
                }
                2 if have_crun => {
                    // crun 1.8 refuses this hybrid host unless the unified mount is hidden, so
                    // it runs in a private mount namespace without it (as in runtime-eval.md).
                    let script = format!(
                        "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root {} run --bundle {} bt-bench-crun",
                        crun_root.display(), bundle.display()
                    );
                    let t = Instant::now();
                    let st = std::process::Command::new("unshare")
                        .args(["-m", "--propagation", "private", "sh", "-c", &script])
                        .stdin(std::process::Stdio::null())
                        .status()
                        .unwrap();
                    crun.push(ms(t));
                    assert!(st.success(), "crun failed");
                }
                3 => {
                    let t = Instant::now();
                    std::process::Command::new("/bin/true").status().unwrap();
                    host.push(ms(t));
                }
                _ => {}
            }
        }
    }
    remove_cgroup("bt-bench-oci");
    remove_cgroup("bt-bench-runc");
    remove_cgroup("bt-bench-crun");
    summary("host /bin/true", &mut host);
    let b = summary("berth (run+wait+delete)", &mut berth);
    let r = summary("runc run", &mut runc);
    eprintln!("berth/runc median ratio {:.2}", b / r);
    if !crun.is_empty() {
        let c = summary("crun run (in unshare -m)", &mut crun);
        eprintln!("berth/crun median ratio {:.2}", b / c);
    }
    fx.finish();
}

#[test]
fn container_cli_lifecycle() {
    crate::require_root!();
    let fx = setup("rt-cli");
    let env = fx.env.as_ref().expect("env");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let (code, out, err) = env.run(&[
        "container",
        "run",
        "--rootfs",
        &rootfs,
        "--name",
        "bt-cli1",
        "-e",
        "A=1",
        "--memory",
        "64m",
        "sh",
        "-c",
        "echo A=$A; echo oops >&2; exit 3",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(out, "A=1\n");
    assert!(err.contains("oops"), "{err}");

    let (code, out, err) = env.run(&[
        "container",
        "run",
        "-d",
        "--rootfs",
        &rootfs,
        "--name",
        "bt-cli2",
        "--init",
        "sleep",
        "1000",
    ]);
    assert_eq!((code, out.trim()), (0, "bt-cli2"), "{err}");
    let (_, out, _) = env.run(&["container", "ls"]);
    assert!(
        out.contains("bt-cli2") && out.contains("Up") && !out.contains("bt-cli1"),
        "{out}"
    );
    let (_, out, _) = env.run(&["container", "ls", "-a", "-q"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["bt-cli1", "bt-cli2"]);
    let (code, out, _) = env.run(&["container", "exec", "bt-cli2", "hostname"]);
    assert_eq!((code, out.trim()), (0, "bt-cli2"));
    let (code, _, err) = env.run(&["container", "rm", "bt-cli2"]);
    assert_ne!(code, 0, "rm of a running container needs -f");
    assert!(err.contains("container is running"), "{err}");
    let (code, _, err) = env.run(&["container", "stop", "-t", "5", "bt-cli2"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = env.run(&["container", "inspect", "bt-cli2"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["State"]["Exit"]["code"], 143,
        "berth's init forwards SIGTERM to sleep"
    );
    let (code, _, err) = env.run(&["container", "rm", "bt-cli1", "bt-cli2"]);
    assert_eq!(code, 0, "{err}");
    fx.finish();
}

#[test]
fn overlay_with_many_long_layer_paths() {
    crate::require_root!();
    let fx = setup("rt-layers");
    // 150 layers with long paths: ~20 KB of lowerdir, far past the one-page mount data limit.
    let base = fx.root().join("layers");
    let mut lower = vec![fx.rootfs.clone()];
    for i in 0..150 {
        let dir = base.join(format!("sha256-{i:0>64}")).join("diff");
        std::fs::create_dir_all(dir.join("layers")).unwrap();
        std::fs::write(dir.join("layers").join(i.to_string()), "").unwrap();
        std::fs::write(dir.join("layers/shadow"), format!("layer {i}\n")).unwrap();
        lower.push(dir);
    }
    let (upper, work) = (fx.root().join("upper"), fx.root().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut spec = fx.spec(
        "layers",
        &[
            "sh",
            "-c",
            "ls /layers | wc -l; cat /layers/shadow; ls /bin/busybox",
        ],
    );
    spec.rootfs = Rootfs::Overlay { lower, upper, work };
    let (exit, out) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        vec!["151", "layer 149", "/bin/busybox"],
        "top layer wins, every layer visible"
    );
    fx.finish();
}

#[test]
fn tty_container_has_a_terminal_and_logs_its_output() {
    crate::require_root!();
    let fx = setup("rt-tty");
    let mut spec = fx.spec(
        "tty1",
        &[
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo stdio-is-tty; tty; echo to-stderr >&2",
        ],
    );
    spec.tty = true;
    let (exit, text) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{text}");
    assert!(text.contains("stdio-is-tty"), "{text}");
    let tty_line = text
        .lines()
        .find(|l| l.starts_with("/dev/"))
        .unwrap_or_else(|| panic!("no tty line in {text:?}"));
    let n = tty_line.trim().strip_prefix("/dev/pts/");
    assert!(
        n.is_some_and(|n| n.parse::<u32>().is_ok()),
        "tty prints /dev/pts/N of the container's devpts: {tty_line:?}"
    );
    assert!(
        text.contains("to-stderr"),
        "stderr goes through the pty too: {text}"
    );
    // Without a tty the same probe sees pipes.
    let spec = fx.spec(
        "tty2",
        &["sh", "-c", "[ -t 1 ] && echo tty || echo no-tty; tty"],
    );
    let (exit, text) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 1, "`tty` fails without one: {text}");
    assert!(
        text.contains("no-tty") && text.contains("not a tty"),
        "{text}"
    );
    fx.finish();
}

#[test]
fn exec_with_tty_gets_a_terminal() {
    crate::require_root!();
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED exec_with_tty_gets_a_terminal: `script` (util-linux) not installed");
        return;
    }
    let fx = setup("rt-exectty");
    let env = fx.env.as_ref().expect("env");
    let c = fx.rt.run(&fx.spec("xtty", &["sleep", "1000"])).unwrap();
    // `script` gives berth a pty as its terminal, as a user's shell would.
    let script = |cmdline: &str, input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("script")
            .args(["-qec", cmdline, "/dev/null"])
            .env("BERTH_ROOT", &env.root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let berth = support::berth_bin();
    let b = berth.display();
    let (code, out) = script(
        &format!("{b} container exec -t bt-xtty sh -c '[ -t 0 ] && [ -t 1 ] && echo exec-is-tty; tty; exit 7'"),
        "",
    );
    assert_eq!(code, 7, "exit code through the pty: {out:?}");
    assert!(out.contains("exec-is-tty"), "{out:?}");
    assert!(
        out.lines().any(|l| l
            .trim()
            .strip_prefix("/dev/pts/")
            .is_some_and(|n| n.parse::<u32>().is_ok())),
        "{out:?}"
    );
    // Without -t: no terminal, even when berth runs on one.
    let (code, out) = script(
        &format!("{b} container exec bt-xtty sh -c '[ -t 1 ] && echo tty || echo no-tty'"),
        "",
    );
    assert_eq!(code, 0, "{out:?}");
    assert!(out.contains("no-tty"), "{out:?}");
    // -i forwards our input into the pty.
    let (code, out) = script(
        &format!("{b} container exec -it bt-xtty sh -c 'read x; echo got=$x'"),
        "hello\n",
    );
    assert_eq!(code, 0, "{out:?}");
    assert!(out.contains("got=hello"), "{out:?}");
    c.delete().unwrap();
    fx.finish();
}

/// The shell the interactive tests drive: prints its tty and size, echoes each line back as
/// `got:LINE`, prints the size again on `size`, exits 5 on `quit`.
pub(crate) const READ_LOOP: &str = "tty; stty size; while read l; do echo \"got:$l\"; \
     if [ \"$l\" = size ]; then stty size; fi; if [ \"$l\" = quit ]; then exit 5; fi; done";

/// Drives [`READ_LOOP`] on `s`, which starts on a 30x100 terminal: a tty of the container's
/// devpts at that size, typed lines come back, a resize of our terminal reaches the
/// container, the exit code comes back and our terminal is raw meanwhile, restored after.
pub(crate) fn drive_read_loop(s: &mut support::pty::PtySession) {
    let t = Duration::from_secs(30);
    s.expect("/dev/pts/", t);
    s.expect("30 100", t);
    s.type_text("hello\r");
    s.expect("got:hello", t);
    assert_ne!(s.modes(), s.initial, "our terminal is raw while attached");
    s.resize(40, 120);
    // SIGWINCH and the typed line race inside berth; the size is there by the second try.
    eventually(Duration::from_secs(10), || {
        s.type_text("size\r");
        std::thread::sleep(Duration::from_millis(100));
        if s.screen().contains("40 120") {
            Ok(())
        } else {
            Err(s.screen())
        }
    });
    s.type_text("quit\r");
    assert_eq!(
        s.wait(t),
        5,
        "exit code of the shell; screen: {:?}",
        s.screen()
    );
    assert_eq!(s.modes(), s.initial, "our terminal's modes are restored");
    let screen = s.screen();
    assert!(
        screen.lines().any(|l| l
            .trim()
            .strip_prefix("/dev/pts/")
            .is_some_and(|n| n.parse::<u32>().is_ok())),
        "{screen:?}"
    );
}

/// `berth container run -it [extra] --name NAME` of the fixture rootfs running
/// [`READ_LOOP`], on a 30x100 test terminal.
fn run_it_session(fx: &Fixture, name: &str, extra: &[&str]) -> support::pty::PtySession {
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let mut cmd = fx.env.as_ref().expect("env").berth();
    cmd.args(["container", "run", "-it"])
        .args(extra)
        .args(["--name", name, "--rootfs", &rootfs, "sh", "-c", READ_LOOP]);
    support::pty::PtySession::spawn(cmd, 30, 100)
}

/// `container run -it`: an interactive terminal (see [`drive_read_loop`]), and the log still
/// has the session's output.
#[test]
fn container_run_it_is_an_interactive_terminal() {
    crate::require_root!();
    let fx = setup("rt-run-it");
    let mut s = run_it_session(&fx, "bt-it", &[]);
    drive_read_loop(&mut s);
    let c = fx.rt.get("bt-it").unwrap();
    assert!(log_text(&c).contains("got:hello"), "{}", log_text(&c));
    c.delete().unwrap();
    fx.finish();
}

/// SIGTERM to an attached `container run -it` restores the terminal and ends berth; the
/// container lives on under its shim and can be attached again.
#[test]
fn container_outlives_its_attached_terminal() {
    crate::require_root!();
    let fx = setup("rt-run-it-term");
    let mut s = run_it_session(&fx, "bt-itterm", &[]);
    s.expect("/dev/pts/", Duration::from_secs(30));
    assert_ne!(s.modes(), s.initial, "raw while attached");
    s.signal(Signal::SIGTERM);
    assert_eq!(
        s.wait(Duration::from_secs(10)),
        -1,
        "berth ends by the signal"
    );
    assert_eq!(s.modes(), s.initial, "terminal restored on SIGTERM");
    let c = fx.rt.get("bt-itterm").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        matches!(c.status().unwrap(), Status::Running),
        "the container runs on"
    );
    assert!(c.attach().unwrap().is_tty(), "and can be attached again");
    c.delete().unwrap();
    fx.finish();
}

/// `container run -it --rm` on a terminal that hangs up (an ssh disconnect): berth restores
/// the terminal, then stops and removes the container before it ends with SIGHUP.
#[test]
fn container_run_it_rm_is_removed_on_hangup() {
    crate::require_root!();
    let fx = setup("rt-run-it-hup");
    let mut s = run_it_session(&fx, "bt-ithup", &["--rm"]);
    s.expect("/dev/pts/", Duration::from_secs(30));
    s.signal(Signal::SIGHUP);
    assert_eq!(
        s.wait(Duration::from_secs(20)),
        -1,
        "berth ends by the signal"
    );
    assert_eq!(s.modes(), s.initial, "terminal restored on SIGHUP");
    assert!(fx.rt.get("bt-ithup").is_err(), "--rm removed the container");
    fx.finish();
}

/// `container run -it` with stdin not a terminal is refused, as docker does, and creates
/// nothing.
#[test]
fn container_run_it_needs_a_terminal() {
    crate::require_root!();
    let fx = setup("rt-run-it-notty");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let out = fx
        .env
        .as_ref()
        .expect("env")
        .berth()
        .args([
            "container",
            "run",
            "-it",
            "--name",
            "bt-itnotty",
            "--rootfs",
            &rootfs,
            "true",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the input device is not a TTY"), "{err}");
    assert!(fx.rt.get("bt-itnotty").is_err(), "nothing created");
    fx.finish();
}

/// `container run -t` of a command that exits at once (likely before berth connects to
/// its tty): its output still reaches the terminal, its exit code comes back.
#[test]
fn container_run_t_shows_a_quick_exit() {
    crate::require_root!();
    let fx = setup("rt-run-t-quick");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    for i in 0..5 {
        let mut cmd = fx.env.as_ref().expect("env").berth();
        cmd.args([
            "container",
            "run",
            "-t",
            "--rm",
            "--rootfs",
            &rootfs,
            "sh",
            "-c",
            "echo quick-$((40+2)); exit 4",
        ]);
        let mut s = support::pty::PtySession::spawn(cmd, 30, 100);
        assert_eq!(
            s.wait(Duration::from_secs(30)),
            4,
            "run {i}: {:?}",
            s.screen()
        );
        s.expect("quick-42", Duration::from_secs(5));
    }
    fx.finish();
}

/// `container run -i` with piped input: the container's stdin is that stream, EOF ends
/// `cat`, the exit code comes back. Without -i the container's stdin is empty.
#[test]
fn container_run_i_pipes_stdin_into_the_container() {
    crate::require_root!();
    let fx = setup("rt-run-i");
    let env = fx.env.as_ref().expect("env");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let run = |flags: &[&str]| {
        let mut cmd = env.berth();
        cmd.args(["container", "run", "--rm"]).args(flags).args([
            "--rootfs",
            &rootfs,
            "sh",
            "-c",
            "cat; exit 3",
        ]);
        support::pty::run_with_input(cmd, "hi\nthere\n", Duration::from_secs(60))
    };
    let (code, out, err) = run(&["-i"]);
    assert_eq!(code, 3, "stdout: {out:?}\nstderr: {err}");
    assert_eq!(out, "hi\nthere\n", "stderr: {err}");
    let (code, out, err) = run(&[]);
    assert_eq!(code, 3, "stderr: {err}");
    assert_eq!(out, "", "no -i: stdin is not attached");
    fx.finish();
}

/// `container exec -it`: the exec'd shell gets the user's terminal size at start and every
/// resize after; the terminal is restored when it exits.
#[test]
fn exec_tty_follows_terminal_resizes() {
    crate::require_root!();
    let fx = setup("rt-exec-winch");
    let c = fx.rt.run(&fx.spec("xwinch", &["sleep", "1000"])).unwrap();
    let mut cmd = fx.env.as_ref().expect("env").berth();
    cmd.args([
        "container",
        "exec",
        "-it",
        "bt-xwinch",
        "sh",
        "-c",
        READ_LOOP,
    ]);
    let mut s = support::pty::PtySession::spawn(cmd, 30, 100);
    drive_read_loop(&mut s);
    c.delete().unwrap();
    fx.finish();
}

/// The whole runtime on the cgroup2 driver: `BERTH_CGROUP_ROOT` points it at this hybrid
/// host's cgroup2 mount, which has no memory/cpu/pids controllers (they are bound to v1), so
/// limits cannot be tested here; placement, cgroup namespace, freeze, kill and cleanup can.
#[test]
fn containers_run_on_the_cgroup_v2_driver() {
    crate::require_root!();
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !unified.join("cgroup.controllers").is_file() {
        eprintln!(
            "SKIPPED containers_run_on_the_cgroup_v2_driver: no cgroup2 mount at {unified:?}"
        );
        return;
    }
    let fx = setup("rt-v2driver");
    let env = fx.env.as_ref().expect("env");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let berth = |args: &[&str]| {
        let out = env
            .berth()
            .env("BERTH_CGROUP_ROOT", unified)
            .args(args)
            .output()
            .expect("running berth");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = unified.join("berth").join("bt-v2");
    let (code, _, err) = berth(&[
        "container",
        "run",
        "-d",
        "--rootfs",
        &rootfs,
        "--name",
        "bt-v2",
        "sh",
        "-c",
        "sleep 1000 & sleep 1000 & wait",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = berth(&["container", "inspect", "bt-v2"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pid = v[0]["State"]["Pid"].as_i64().expect("pid") as i32;
    // Placed in its own v2 cgroup (and in no v1 one).
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "{pid} not in {procs}"
    );
    let v1: Vec<PathBuf> = cgroup_dirs("bt-v2")
        .into_iter()
        .filter(|d| !d.starts_with(unified))
        .collect();
    assert!(v1.is_empty(), "no v1 cgroup: {v1:?}");
    let host_view = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        host_view.lines().any(|l| l == "0::/berth/bt-v2"),
        "{host_view}"
    );
    // Inside, a cgroup namespace rooted at that cgroup, mounted read-only.
    let (code, out, err) = berth(&[
        "container", "exec", "bt-v2", "sh", "-c",
        "grep '^0::' /proc/self/cgroup; echo 1 > /sys/fs/cgroup/cgroup.freeze && echo cg=writable || echo cg=ro",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0::/\n") && out.contains("cg=ro"), "{out}");
    // pause/unpause through cgroup.freeze.
    let frozen = || {
        std::fs::read_to_string(dir.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1")
    };
    assert_eq!(berth(&["container", "pause", "bt-v2"]).0, 0);
    assert!(frozen(), "cgroup.events says frozen");
    let (_, out, _) = berth(&["container", "ls"]);
    assert!(out.contains("Paused"), "{out}");
    assert_eq!(berth(&["container", "unpause", "bt-v2"]).0, 0);
    assert!(!frozen());
    let (code, out, _) = berth(&["container", "exec", "bt-v2", "echo", "alive"]);
    assert_eq!((code, out.trim()), (0, "alive"));
    // rm -f kills every process of the cgroup (cgroup.kill) and removes it.
    let members = || -> Vec<i32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    eventually(Duration::from_secs(10), || {
        (members().len() >= 3)
            .then_some(())
            .ok_or(format!("sh and two sleeps: {:?}", members()))
    });
    let members = members();
    let (code, _, err) = berth(&["container", "rm", "-f", "bt-v2"]);
    assert_eq!(code, 0, "{err}");
    for p in &members {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {p} of the container survived rm -f");
    }
    assert!(!dir.exists(), "cgroup dir removed");
    // A limit whose controller is absent from the v2 hierarchy is an error, as in Docker.
    for (flag, value, controller) in [
        ("--memory", "64m", "memory"),
        ("--pids-limit", "10", "pids"),
    ] {
        let (code, _, err) = berth(&[
            "container",
            "run",
            "--rm",
            "--rootfs",
            &rootfs,
            "--name",
            "bt-v2lim",
            flag,
            value,
            "true",
        ]);
        assert_ne!(
            code, 0,
            "{flag} must fail without the {controller} controller"
        );
        assert!(
            err.contains(&format!("the {controller} controller is not available"))
                && err.contains("/sys/fs/cgroup/unified"),
            "{err}"
        );
        assert!(!unified.join("berth/bt-v2lim").exists());
        let (_, out, _) = berth(&["container", "ls", "-a", "-q"]);
        assert!(!out.contains("bt-v2lim"), "no state left: {out}");
    }
    // A bad override is named.
    let out = env
        .berth()
        .env("BERTH_CGROUP_ROOT", "/tmp")
        .args(["container", "run", "--rm", "--rootfs", &rootfs, "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("/tmp (from $BERTH_CGROUP_ROOT) is not a cgroup2 mount"),
        "{err}"
    );
    fx.finish();
}

/// A static i386 program (`int 0x80`) under Docker's default profile is filtered like a
/// 64-bit one, by its i386 numbers: `write` and `personality(0xffffffff)` are allowed,
/// `unshare` (CAP_SYS_ADMIN's group) gets EPERM, and the program runs to its end (Docker
/// filters the x86 ABI with the same names on an amd64 host). Unconfined, the same
/// `unshare(CLONE_NEWUSER)` succeeds: the EPERM comes from the filter.
#[test]
fn i386_syscalls_are_filtered_like_docker() {
    crate::require_root!();
    let fx = setup("rt-i386");
    let src = fx.root().join("t32.S");
    // print(msg, len): write(1, msg, len) = i386 syscall 4.
    std::fs::write(
        &src,
        r#"
.macro print msg, len
  mov $4, %eax
  mov $1, %ebx
  lea \msg, %ecx
  mov $\len, %edx
  int $0x80
.endm
.globl _start
_start:
  print start, 6
  mov $136, %eax          # personality(0xffffffff): query
  mov $0xffffffff, %ebx
  int $0x80
  test %eax, %eax
  js 1f
  print pers, 15
1:
  mov $310, %eax          # unshare(CLONE_NEWUSER)
  mov $0x10000000, %ebx
  int $0x80
  cmp $-1, %eax           # -EPERM
  jne 2f
  print eperm, 14
  jmp 3f
2:
  test %eax, %eax
  jne 3f
  print ok, 11
3:
  mov $1, %eax            # exit(0)
  mov $0, %ebx
  int $0x80
start: .ascii "start\n"
pers: .ascii "personality-ok\n"
eperm: .ascii "unshare-eperm\n"
ok: .ascii "unshare-ok\n"
"#,
    )
    .unwrap();
    let obj = fx.root().join("t32.o");
    let bin = fx.rootfs.join("t32");
    let built = std::process::Command::new("as")
        .arg("--32")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("ld")
            .args(["-m", "elf_i386", "-static", "-o"])
            .arg(&bin)
            .arg(&obj)
            .status()
            .is_ok_and(|s| s.success());
    if !built {
        eprintln!(
            "SKIPPED i386_syscalls_are_filtered_like_docker: no 32-bit assembler/linker (binutils)"
        );
        fx.finish();
        return;
    }
    let (exit, text) = fx.run_to_exit(&fx.spec("i386", &["/t32"]));
    assert_eq!((exit.code, exit.signal), (0, None), "{text:?}");
    assert_eq!(text, "start\npersonality-ok\nunshare-eperm\n");
    let mut spec = fx.spec("i386u", &["/t32"]);
    spec.seccomp = berth_runtime::Seccomp::Unconfined;
    let (exit, text) = fx.run_to_exit(&spec);
    assert_eq!(exit.code, 0, "{text}");
    assert_eq!(text, "start\npersonality-ok\nunshare-ok\n");
    fx.finish();
}

/// A container starts with every signal at its default action, whatever berth's caller
/// ignored (a shell's background job ignores SIGINT and SIGQUIT) and whatever berth's own
/// Rust runtime ignores (SIGPIPE): as under Docker, `yes | head -1` ends quietly and a shell
/// as PID 1 can trap SIGINT.
#[test]
fn container_starts_with_default_signal_dispositions() {
    crate::require_root!();
    let fx = setup("rt-sigdfl");
    let env = fx.env.as_ref().expect("env");
    let mut cmd = env.berth();
    cmd.args(["container", "run", "--rm", "--rootfs"])
        .arg(&fx.rootfs)
        .args([
            "sh",
            "-c",
            "grep -E '^Sig(Ign|Blk):' /proc/self/status; yes | head -1; trap 'echo trapped' INT; kill -INT $$",
        ]);
    // SAFETY: signal(2) between fork and exec only changes this child's dispositions.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGPIPE] {
                libc::signal(s, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("SigIgn:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("SigBlk:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("y\n"), "{stdout}");
    assert!(!stderr.contains("Broken pipe"), "yes saw EPIPE: {stderr}");
    assert!(
        stdout.contains("trapped"),
        "PID 1 could not trap SIGINT: {stdout}"
    );
    fx.finish();
}

/// `container run` without a terminal passes SIGTERM/SIGINT/SIGHUP on to the container, as
/// `docker run` does, and ends with the container's exit code; `--rm` still removes it. A
/// PID 1 without a handler, whom the kernel would not deliver the signal to, is killed
/// instead of leaving berth hanging (where `docker run` hangs). What berth's caller ignores
/// (`nohup`) and what PID 1 ignores on purpose kill nothing.
#[test]
fn container_run_passes_signals_on_without_a_terminal() {
    crate::require_root!();
    let fx = setup("rt-sigproxy");
    let env = fx.env.as_ref().expect("env");
    // berth running `script` in container `name`, its SIGHUP ignored when `nohup`, once
    // the container said "ready" and berth catches SIGTERM (so it is forwarding).
    let start = |name: &str, script: &str, nohup: bool| {
        let mut cmd = env.berth();
        cmd.args(["container", "run", "--rm", "--name", name, "--rootfs"])
            .arg(&fx.rootfs)
            .args(["sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if nohup {
            // SAFETY: signal(2) between fork and exec only changes the child.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let log = env.root.join("containers").join(name).join("container.log");
        let status = format!("/proc/{}/status", child.id());
        eventually(Duration::from_secs(10), || {
            let ready = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready"));
            let st = std::fs::read_to_string(&status).unwrap_or_default();
            let cgt = st
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0);
            match ready && cgt & (1 << (libc::SIGTERM - 1)) != 0 {
                true => Ok(()),
                false => Err(format!("ready {ready}, SigCgt {cgt:x}")),
            }
        });
        child
    };
    let signal = |child: &std::process::Child, sig: i32| {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    };
    let finish = |mut child: std::process::Child| {
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("berth still runs 10 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let still_runs = |child: &mut std::process::Child| {
        std::thread::sleep(Duration::from_millis(300));
        child.try_wait().unwrap().is_none()
    };

    let loop_ = "while :; do sleep 0.1; done";
    let b = start(
        "bt-proxy1",
        &format!("trap 'echo got-term; exit 7' TERM; echo ready; {loop_}"),
        false,
    );
    signal(&b, libc::SIGTERM);
    let (code, out, err) = finish(b);
    assert_eq!(code, Some(7), "{out}{err}");
    assert!(out.contains("got-term"), "{out}");

    let b = start(
        "bt-proxy2",
        &format!("trap 'echo got-hup; exit 9' HUP; echo ready; {loop_}"),
        false,
    );
    signal(&b, libc::SIGHUP);
    let (code, out, err) = finish(b);
    assert_eq!(code, Some(9), "{out}{err}");

    // `exec sleep`: PID 1 is sleep, which has no SIGINT handler.
    let b = start("bt-proxy3", "echo ready; exec sleep 60", false);
    signal(&b, libc::SIGINT);
    let (code, out, err) = finish(b);
    assert_eq!(code, Some(137), "{out}{err}");
    assert!(err.contains("no handler for SIGINT"), "{err}");

    // PID 1 ignores SIGHUP on purpose: passed on, nothing killed.
    let mut b = start(
        "bt-proxy4",
        &format!("trap '' HUP; echo ready; {loop_}"),
        false,
    );
    signal(&b, libc::SIGHUP);
    assert!(still_runs(&mut b), "a PID 1 ignoring SIGHUP was killed");
    signal(&b, libc::SIGTERM);
    assert_eq!(finish(b).0, Some(137));

    // berth under nohup: SIGHUP stays ignored, not passed on.
    let mut b = start("bt-proxy5", "echo ready; exec sleep 60", true);
    signal(&b, libc::SIGHUP);
    assert!(still_runs(&mut b), "berth under nohup passed SIGHUP on");
    signal(&b, libc::SIGTERM);
    assert_eq!(finish(b).0, Some(137));

    let (_, ls, _) = env.run(&["container", "ls", "-a", "-q"]);
    assert!(ls.trim().is_empty(), "--rm left containers: {ls}");
    fx.finish();
}

/// `container run -d --rm` (docker habit): berth returns at once and the shim removes the
/// container when it exits: state dir, cgroup (leak checker) and, for an image, the
/// writable layer. A container still running is listed until then.
#[test]
fn container_run_detached_rm_removes_itself_on_exit() {
    crate::require_root!();
    let fx = setup("rt-detrm");
    let env = fx.env.as_ref().expect("env");
    env.load_busybox();
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut all = vec!["container", "run", "-d", "--rm"];
        all.extend_from_slice(args);
        env.ok(&all)
    };
    let a = run(&[
        "--name",
        "bt-detrm1",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "sleep 3",
    ]);
    assert_eq!(a.trim(), "bt-detrm1");
    let b = run(&[
        "--name",
        "bt-detrm2",
        "busybox",
        "sh",
        "-c",
        "echo hi > /written; sleep 3",
    ]);
    assert_eq!(b.trim(), "bt-detrm2");
    let ls = env.ok(&["container", "ls", "-q"]);
    assert!(ls.contains("bt-detrm1") && ls.contains("bt-detrm2"), "{ls}");
    let rw = env.root.join("container-rw").join("bt-detrm2");
    eventually(Duration::from_secs(3), || {
        match rw.join("upper/written").is_file() {
            true => Ok(()),
            false => Err("the writable layer is not in use".to_string()),
        }
    });
    // `container stop` on such a container still succeeds (it waits for the exit record
    // before the shim removes it).
    let (code, out, err) = env.run(&["container", "stop", "-t", "1", "bt-detrm1"]);
    assert_eq!(code, 0, "stop: {out}{err}");
    let gone = |p: PathBuf| match p.exists() {
        false => Ok(()),
        true => Err(format!("{} left", p.display())),
    };
    eventually(Duration::from_secs(15), || {
        match env.ok(&["container", "ls", "-a", "-q"]).trim() {
            "" => Ok(()),
            left => Err(format!("still listed: {left}")),
        }
    });
    for id in ["bt-detrm1", "bt-detrm2"] {
        eventually(Duration::from_secs(5), || {
            gone(env.root.join("containers").join(id))
        });
    }
    eventually(Duration::from_secs(5), || gone(rw.clone()));
    fx.finish();
}

/// `container run --rm` in the foreground, as `docker run --rm` (whose daemon removes the
/// container): berth killed with SIGKILL while the container runs leaves nothing behind once
/// the container exits; an undisturbed run still ends with the container's code and is gone
/// when berth returns.
#[test]
fn container_run_rm_is_removed_even_when_berth_is_killed() {
    crate::require_root!();
    let fx = setup("rt-rmkill");
    let env = fx.env.as_ref().expect("env");
    let rootfs = fx.rootfs.to_string_lossy().into_owned();
    let (code, out, err) = env.run(&[
        "container",
        "run",
        "--rm",
        "--name",
        "bt-rmok",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "echo out; exit 7",
    ]);
    assert_eq!((code, out.as_str()), (7, "out\n"), "{err}");
    assert!(
        !env.root.join("containers/bt-rmok").exists(),
        "removed on return"
    );

    let mut cli = env
        .berth()
        .args([
            "container",
            "run",
            "--rm",
            "--name",
            "bt-rmkill",
            "--rootfs",
            &rootfs,
            "sh",
            "-c",
            "sleep 5",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(5), || {
        match env.ok(&["container", "ls", "-q"]).contains("bt-rmkill") {
            true => Ok(()),
            false => Err("not running yet".to_string()),
        }
    });
    // SIGKILL: berth can neither stop nor remove it.
    cli.kill().unwrap();
    cli.wait().unwrap();
    let ls = env.ok(&["container", "ls", "-q"]);
    assert!(
        ls.contains("bt-rmkill"),
        "still runs after berth died: {ls}"
    );
    eventually(Duration::from_secs(15), || {
        match (
            env.ok(&["container", "ls", "-a", "-q"]).trim(),
            env.root.join("containers/bt-rmkill").exists(),
        ) {
            ("", false) => Ok(()),
            (left, dir) => Err(format!("still listed: {left:?}, state dir left: {dir}")),
        }
    });
    fx.finish();
}
