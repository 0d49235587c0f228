//! The cgroup v2 driver's limits, for real, in a throwaway qemu VM.
//!
//! This host is cgroup v1 hybrid (memory, cpu and pids are bound to v1), so
//! `runtime::containers_run_on_the_cgroup_v2_driver` can test placement, freeze, kill and
//! cleanup on v2 but no limit. Here a VM boots Debian's stock kernel with a pure cgroup2
//! hierarchy (no v1 mount), and the real `berth container run` (the binaries of this test
//! run, stripped, with their shared libs) runs the busybox fixture image in it; the VM's
//! `/init` (`vm_init.sh`) prints one `BERTH-VM key=value` line per observation on the
//! serial console and powers off, and this test asserts each line.
//!
//! - Kernel: `linux-image-<version>-amd64` (the one `linux-image-amd64` depends on), fetched
//!   once with `apt-get download` into [`CACHE`]; only `vmlinuz` and `overlay.ko` are kept.
//!   Never installed on the host.
//! - qemu (`qemu-system-x86`) and `cpio` come from `scripts/deps.sh`; missing, the test fails
//!   and says what to install.
//! - Accelerator: KVM when the CPU shows hardware virtualisation (`vmx`/`svm`), else TCG
//!   (about 30 s here). This machine's `/dev/kvm` is PVM (`kvm_pvm`), which runs only
//!   PVM-built guest kernels: a stock kernel hangs at boot under it, so TCG it is.
//!   `BERTH_VM_ACCEL=kvm|tcg` overrides.
//! - Safety: `-nodefaults -nic none`: the VM has no network device at all. qemu runs with a
//!   deadline and is killed by PID on every path; every file is in the test's temp dir,
//!   except the kernel cache.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// Where the extracted kernel (`<package>/vmlinuz`, `<package>/overlay.ko`) is kept.
const CACHE: &str = "/var/cache/berth-tests/vm";

/// The VM's init: mounts, checks, result lines, poweroff.
const INIT: &str = include_str!("vm_init.sh");

#[test]
fn cgroup_v2_limits_in_vm() {
    crate::require_root!();
    let qemu = need_tool(
        "qemu-system-x86_64",
        "qemu-system-x86 (bash scripts/deps.sh installs it)",
    );
    need_tool("cpio", "cpio (bash scripts/deps.sh installs it)");
    let t = Instant::now();
    let kernel = kernel();
    let fetched = t.elapsed();
    let tmp = tempfile::Builder::new()
        .prefix("berth-vm-")
        .tempdir()
        .expect("creating the VM's temp dir");
    let initrd = initramfs(tmp.path(), &kernel.overlay_ko);
    // Not a kernel-object test, but two busy vCPUs would slow the timing-sensitive ones;
    // the kernel's download and the initramfs above don't need the lock.
    let built = t.elapsed();
    let _lock = support::kernel_lock();
    let locked = Instant::now();
    let accel = accel();
    let timeout = if accel == "kvm" { 120 } else { 300 };
    let console = boot(
        &qemu,
        &kernel.vmlinuz,
        &initrd,
        &accel,
        tmp.path(),
        Duration::from_secs(timeout),
    );
    let vm = Results::parse(console);
    eprintln!(
        "vm: kernel ready {:.1}s, initramfs {:.1}s, qemu ({accel}) {:.1}s; in the VM: boot {}s, test {}s",
        fetched.as_secs_f64(),
        (built - fetched).as_secs_f64(),
        locked.elapsed().as_secs_f64(),
        vm.get("boot_s"),
        vm.get("test_s"),
    );

    // A pure cgroup2 hierarchy with the controllers; berth enables them itself.
    vm.eq("v1_mounts", "0");
    vm.eq("v2_mounts", "1");
    vm.has_words("root_controllers", &["cpu", "memory", "pids"]);
    vm.eq("root_subtree_before", "");
    vm.eq("root_subtree_after", "cpu memory pids");
    vm.eq("berth_subtree", "cpu memory pids");
    vm.eq("load_exit", "0");

    // --memory 32m, a 256 MiB buffer: OOM-killed, 137, recorded.
    vm.eq("oom_exit", "137");
    let inspect: serde_json::Value = serde_json::from_str(vm.get("oom_inspect"))
        .unwrap_or_else(|e| vm.fail(&format!("oom_inspect is not JSON: {e}")));
    let exit = &inspect[0]["State"]["Exit"];
    if exit["code"] != 137 || exit["signal"] != 9 || exit["oom_killed"] != true {
        vm.fail(&format!("oom exit record: {exit}"));
    }
    vm.eq("oom_rm_exit", "0");
    vm.eq("oom_dir", "absent");

    // --pids-limit 16: the fork bomb stops at the limit.
    vm.eq("pids_run_exit", "0");
    vm.eq("pids_bomb_over", "0");
    vm.eq("pids_max", "16");
    if vm.num("pids_cant_fork") < 1.0 {
        vm.fail("no fork failed in the pids container");
    }
    let current = vm.num("pids_current");
    if !(10.0..=16.0).contains(&current) {
        vm.fail(&format!("pids.current {current} not in 10..=16"));
    }
    vm.eq("pids_rm_exit", "0");
    vm.eq("pids_dir", "absent");

    // --cpus 0.5 --memory 48m --pids-limit 20, read from outside the container.
    vm.eq("lim_run_exit", "0");
    vm.eq("lim_cpu_max", "50000 100000");
    vm.eq("lim_memory_max", &(48u64 << 20).to_string());
    vm.eq("lim_pids_max", "20");
    // Docker's default --memory-swap is twice --memory: as much swap again.
    vm.eq("lim_swap_max", &(48u64 << 20).to_string());
    vm.eq("lim_pid_cgroup", "0::/berth/lim");
    // A busy loop on two vCPUs would take one whole CPU; the quota holds it to half.
    let ratio = vm.num("lim_cpu_ratio");
    if ratio > 0.65 {
        vm.fail(&format!("busy loop used {ratio} CPU under --cpus 0.5"));
    }
    if vm.num("lim_nr_throttled") < 1.0 {
        vm.fail("the busy loop was never throttled under --cpus 0.5");
    }

    // pause/unpause through cgroup.freeze: frozen means the loop gets no CPU time.
    vm.eq("pause_exit", "0");
    vm.eq("paused_events_frozen", "1");
    vm.eq("paused_freeze_file", "1");
    vm.eq("paused_status", "1");
    // A frozen cgroup uses no CPU (a little slack for the freeze settling); the loop,
    // limited to half a CPU, uses ~500 ms per second once thawed.
    if vm.num("paused_usage_delta") > 5_000.0 {
        vm.fail("the frozen container still used CPU");
    }
    vm.eq("unpause_exit", "0");
    vm.eq("unpaused_events_frozen", "0");
    if vm.num("unpaused_usage_delta") < 100_000.0 {
        vm.fail("the loop did not resume after unpause");
    }
    vm.eq("exec_out", "alive");

    // rm -f: the container's cgroup and berth's parent are gone.
    vm.eq("lim_rm_exit", "0");
    vm.eq("lim_dir", "absent");
    vm.eq("berth_dir", "absent");
    vm.eq("containers_left", "0");
}

/// Fails the test unless `name` is on PATH; returns its path.
fn need_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install {package}"))
}

/// `kvm` where the CPU shows hardware virtualisation, else `tcg`; `BERTH_VM_ACCEL` overrides.
fn accel() -> String {
    if let Ok(a) = std::env::var("BERTH_VM_ACCEL") {
        assert!(
            a == "kvm" || a == "tcg",
            "BERTH_VM_ACCEL must be kvm or tcg, not {a:?}"
        );
        return a;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    if hw && Path::new("/dev/kvm").exists() {
        "kvm".into()
    } else {
        "tcg".into()
    }
}

struct Kernel {
    vmlinuz: PathBuf,
    overlay_ko: PathBuf,
}

/// The cached kernel, fetched (`apt-get download`, `dpkg-deb -x`) when the cache has none.
fn kernel() -> Kernel {
    let cache = Path::new(CACHE);
    let complete = |d: &Path| d.join("vmlinuz").is_file() && d.join("overlay.ko").is_file();
    let kernel_in = |d: PathBuf| Kernel {
        vmlinuz: d.join("vmlinuz"),
        overlay_ko: d.join("overlay.ko"),
    };
    // Any cached kernel will do: no registry look-up when one is there.
    let mut cached: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    cached.retain(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("linux-image-"))
            && complete(d)
    });
    cached.sort();
    if let Some(d) = cached.pop() {
        return kernel_in(d);
    }
    let package = kernel_package();
    std::fs::create_dir_all(cache).unwrap_or_else(|e| panic!("creating {CACHE}: {e}"));
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache)
        .expect("creating a fetch dir in the kernel cache");
    eprintln!("vm: fetching {package} into {CACHE} (once)");
    run(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(work.path()),
        "apt-get download",
    );
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("apt-get download {package} left no .deb"));
    let x = work.path().join("x");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        "dpkg-deb -x",
    );
    let vmlinuz = find_file(&x.join("boot"), &|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    });
    let overlay = find_file(&x.join("lib/modules"), &|p| {
        p.file_name().is_some_and(|n| n == "overlay.ko")
    });
    let (Some(vmlinuz), Some(overlay)) = (vmlinuz, overlay) else {
        panic!("{package} has no vmlinuz or no uncompressed overlay.ko");
    };
    let staged = work.path().join("kernel");
    std::fs::create_dir(&staged).unwrap();
    std::fs::copy(vmlinuz, staged.join("vmlinuz")).unwrap();
    std::fs::copy(overlay, staged.join("overlay.ko")).unwrap();
    let dest = cache.join(&package);
    // A concurrent run may have won the race; its copy is as good as ours.
    if std::fs::rename(&staged, &dest).is_err() && !complete(&dest) {
        panic!("cannot move the kernel into {}", dest.display());
    }
    kernel_in(dest)
}

/// `linux-image-<version>-amd64`, the package `linux-image-amd64` depends on.
fn kernel_package() -> String {
    let lookup = || {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .expect("running apt-cache");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .map(String::from)
    };
    if let Some(p) = lookup() {
        return p;
    }
    // A fresh machine may have no package lists yet.
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    );
    lookup().expect("apt-cache depends linux-image-amd64 names no linux-image-*-amd64")
}

fn find_file(dir: &Path, want: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = find_file(&p, want) {
                return Some(f);
            }
        } else if ft.is_file() && want(&p) {
            return Some(p);
        }
    }
    None
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `dir/initrd` (cpio newc): busybox, the stripped berth binaries and their libs,
/// overlay.ko, the busybox fixture image and `/init`.
fn initramfs(dir: &Path, overlay_ko: &Path) -> PathBuf {
    let tree = dir.join("tree");
    let mkdir = |p: &Path| std::fs::create_dir_all(p).unwrap();
    for d in ["bin", "berth", "modules", "fixture"] {
        mkdir(&tree.join(d));
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("copying /bin/busybox (busybox-static)");
    std::fs::copy(overlay_ko, tree.join("modules/overlay.ko")).unwrap();
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_berth-shim"));
    // `berth image load` runs in berth-full (berth execs it for all but `container`).
    let full = PathBuf::from(env!("CARGO_BIN_EXE_berth-full"));
    let bins = [support::berth_bin(), shim, full];
    for (bin, name) in bins.iter().zip(["berth", "berth-shim", "berth-full"]) {
        // Debug builds carry ~200 MB of debug info; the VM needs none of it.
        run(
            Command::new("strip")
                .arg("-o")
                .arg(tree.join("berth").join(name))
                .arg(bin),
            "strip (binutils)",
        );
    }
    let ldd = Command::new("ldd")
        .args(&bins)
        .output()
        .expect("running ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    for lib in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.ends_with(':'))
    {
        let dest = tree.join(lib.trim_start_matches('/'));
        mkdir(dest.parent().unwrap());
        std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
    }
    copy_dir(
        &support::images::busybox_layout(),
        &tree.join("fixture/busybox-oci"),
    );
    let init = tree.join("init");
    std::fs::write(&init, INIT).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let initrd = dir.join("initrd");
    run(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet > \"$1\"")
            .arg("sh")
            .arg(&initrd)
            .current_dir(&tree),
        "cpio",
    );
    std::fs::remove_dir_all(&tree).ok();
    initrd
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// qemu, killed by PID (and reaped) when dropped before it exited.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots the VM and returns its serial console once it powered off.
fn boot(
    qemu: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    accel: &str,
    dir: &Path,
    timeout: Duration,
) -> String {
    let console = dir.join("console.txt");
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-accel", accel]);
    if accel == "kvm" {
        cmd.args(["-cpu", "host"]);
    }
    cmd.args(["-m", "1024", "-smp", "2", "-display", "none"])
        // No network device at all.
        .args(["-nic", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
        .stdin(Stdio::null());
    // To a file, not a pipe nobody reads until qemu exits (a full pipe would stall it).
    let log_path = dir.join("qemu.log");
    let log = std::fs::File::create(&log_path).expect("creating qemu.log");
    cmd.stdout(log.try_clone().expect("dup qemu.log"))
        .stderr(log);
    // SAFETY: prctl only, between fork and exec. qemu dies with the test even when the
    // test process is SIGKILLed (no Drop runs then).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut vm = Qemu(cmd.spawn().expect("starting qemu"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = vm.0.try_wait().expect("waiting for qemu") {
            break s;
        }
        if Instant::now() > deadline {
            drop(vm);
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            panic!("the VM did not power off within {timeout:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    if !status.success() {
        let err = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("qemu failed ({status}): {err}\nconsole:\n{text}");
    }
    text
}

/// The `BERTH-VM key=value` lines of a console.
struct Results {
    console: String,
    values: BTreeMap<String, String>,
}

impl Results {
    fn parse(console: String) -> Results {
        let values: BTreeMap<String, String> = console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("BERTH-VM "))
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
        let r = Results { console, values };
        if !r.values.contains_key("done") {
            r.fail("the VM's init did not finish");
        }
        r
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- VM console ---\n{}", self.console)
    }

    #[track_caller]
    fn get(&self, key: &str) -> &str {
        match self.values.get(key) {
            Some(v) => v,
            None => self.fail(&format!("no {key}= line")),
        }
    }

    #[track_caller]
    fn eq(&self, key: &str, want: &str) {
        let got = self.get(key);
        if got != want {
            self.fail(&format!("{key}: got {got:?}, want {want:?}"));
        }
    }

    #[track_caller]
    fn num(&self, key: &str) -> f64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| self.fail(&format!("{key}: {v:?} is not a number")))
    }

    #[track_caller]
    fn has_words(&self, key: &str, words: &[&str]) {
        let got = self.get(key);
        for w in words {
            if !got.split_whitespace().any(|g| g == *w) {
                self.fail(&format!("{key}: {got:?} lacks {w}"));
            }
        }
    }
}
