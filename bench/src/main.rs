//! berth's benchmark driver: `cargo run --release -p berth-bench -- [--runs N] [--json FILE]`
//! (as root; `scripts/bench.sh` builds everything first).
//!
//! Each section times whole commands, interleaving the compared variants (A B A B …) so
//! their ratio holds on a noisy machine, and prints min/median/max in milliseconds against
//! the target the issue tracker set. A section whose feature is not built yet, or whose
//! comparison tool is absent, says so instead of printing a number. The same table is
//! written as JSON. Not part of CI's pass/fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

mod network;

#[derive(Debug, Serialize)]
struct Row {
    section: String,
    case: String,
    runs: usize,
    /// `ms`, `us`, `q/s`, `MB/s` or `MB`.
    unit: String,
    min: f64,
    median: f64,
    max: f64,
    target: String,
}

#[derive(Debug, Serialize)]
struct Note {
    section: String,
    note: String,
}

#[derive(Default, Serialize)]
pub(crate) struct Report {
    rows: Vec<Row>,
    notes: Vec<Note>,
}

impl Report {
    pub(crate) fn note(&mut self, section: &str, note: impl Into<String>) {
        let note = note.into();
        println!("  {section}: {note}");
        self.notes.push(Note {
            section: section.into(),
            note,
        });
    }

    pub(crate) fn row(
        &mut self,
        section: &str,
        case: &str,
        samples: &mut [f64],
        unit: &str,
        target: &str,
    ) {
        samples.sort_by(|a, b| a.total_cmp(b));
        let n = samples.len();
        if n == 0 {
            return;
        }
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        let row = Row {
            section: section.into(),
            case: case.into(),
            runs: n,
            unit: unit.into(),
            min: samples[0],
            median,
            max: samples[n - 1],
            target: target.into(),
        };
        println!(
            "  {:<46} {:>5} {:>9.2} {:>9.2} {:>9.2} {:<5} {}",
            row.case, row.runs, row.min, row.median, row.max, row.unit, row.target
        );
        self.rows.push(row);
    }
}

pub(crate) struct Opts {
    pub(crate) runs: usize,
    json: PathBuf,
    pub(crate) berth: PathBuf,
    /// Sections to run (`--only 4,7`); empty means all.
    only: Vec<u32>,
}

impl Opts {
    /// A `berth` command on state root `root` in project dir `dir`. The bench's stacks
    /// only resolve each other: DNS never forwards to the host resolver.
    pub(crate) fn berth_cmd(&self, root: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.berth);
        c.env("BERTH_ROOT", root)
            .env("BERTH_DNS_UPSTREAM", "none")
            .current_dir(dir)
            .args(args);
        c
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = Opts {
        runs: 10,
        json: PathBuf::from("target/bench.json"),
        berth: PathBuf::from("target/release/berth"),
        only: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => opts.runs = args.next().context("--runs N")?.parse()?,
            "--json" => opts.json = args.next().context("--json FILE")?.into(),
            "--berth" => opts.berth = args.next().context("--berth PATH")?.into(),
            "--only" => {
                for n in args.next().context("--only N[,N…]")?.split(',') {
                    opts.only
                        .push(n.trim().parse().context("--only takes section numbers")?);
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !opts.berth.exists() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            opts.berth.display()
        );
    }
    // Commands run in other directories: make the binary path absolute.
    opts.berth = std::fs::canonicalize(&opts.berth)?;
    // The lock berth's kernel tests hold: a bench and a test run never interleave (the
    // tests' leak checker would see the bench's objects, and timings would mix).
    let _lock = berth_fixtures::kernel_lock_file();
    enter_private_netns()?;
    let work = tempfile::Builder::new().prefix("berth-bench-").tempdir()?;
    let mut report = Report::default();
    let layout = work.path().join("busybox-oci");
    let layout = match berth_fixtures::busybox_oci_layout(&layout) {
        Ok(_) => Some(layout),
        Err(e) => {
            report.note(
                "fixtures",
                format!("cannot build the busybox fixture: {e:#}"),
            );
            None
        }
    };
    println!(
        "  {:<46} {:>5} {:>9} {:>9} {:>9} {:<5} target",
        "case", "runs", "min", "median", "max", "unit"
    );

    let want = |n: u32| opts.only.is_empty() || opts.only.contains(&n);
    let w = work.path();
    if want(1) {
        section_start_exit(&opts, w, layout.as_deref(), &mut report);
    }
    if want(2) {
        section_up_down(&opts, w, layout.as_deref(), &mut report);
    }
    if want(3) {
        section_other_orchestrators(&mut report);
    }
    if want(4) {
        network::section(&opts, w, layout.as_deref(), &mut report);
    }
    if want(5) {
        section_pull(&opts, w, &mut report);
    }
    if want(6) {
        section_config(&opts, w, &mut report)?;
    }
    if want(7) {
        section_rss(&opts, w, layout.as_deref(), &mut report);
    }

    if let Some(dir) = opts.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.json, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", opts.json.display());
    Ok(())
}

/// The bench runs in a network namespace of its own with only `lo` up (made before any
/// thread exists, so every thread and child inherits it): bridges, nft tables and
/// published ports of the measured stacks never touch the host's, and the local registry
/// and published ports are reached on this namespace's loopback.
fn enter_private_netns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET): the bench must run as root")?;
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip")?;
    if !st.success() {
        bail!("`ip link set lo up` failed in the bench's network namespace");
    }
    Ok(())
}

/// Time one run of a command (output discarded); error when it fails.
pub(crate) fn time_cmd(cmd: &mut Command) -> Result<f64> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

pub(crate) fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A runc/crun bundle of the busybox fixture running `/bin/true`. `docker_like` writes into
/// `runc spec`'s template what `berth container run` does by default, as Docker does: the 14
/// default capabilities, berth's Docker seccomp profile (`docker_default_oci`), no
/// no_new_privs, a writable root, Docker's masked and read-only paths and /proc flags.
/// Without it the template stays as it is (3 capabilities, no seccomp, read-only root): a
/// lighter reference.
fn make_bundle(work: &Path, name: &str, docker_like: bool) -> Result<PathBuf> {
    use berth_runtime::capabilities::{CapSet, DOCKER_DEFAULT};
    let bundle = work.join(name);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let tar = work.join("busybox-rootfs.tar");
    if !tar.exists() {
        berth_fixtures::busybox_rootfs_tar(&tar)?;
    }
    let mut ar = tar::Archive::new(std::fs::File::open(&tar)?);
    ar.set_preserve_permissions(true);
    ar.unpack(&rootfs)?;
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .context("running `runc spec`")?;
    if !st.success() {
        bail!("`runc spec` failed");
    }
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["root"]["path"] = serde_json::json!(rootfs.to_string_lossy());
    if docker_like {
        let caps: Vec<String> = DOCKER_DEFAULT.iter().map(|c| c.to_string()).collect();
        cfg["process"]["capabilities"] =
            serde_json::json!({ "bounding": caps, "effective": caps, "permitted": caps });
        cfg["process"]["noNewPrivileges"] = serde_json::json!(false);
        cfg["root"]["readonly"] = serde_json::json!(false);
        for m in cfg["mounts"].as_array_mut().into_iter().flatten() {
            if m["destination"] == "/proc" {
                m["options"] = serde_json::json!(["nosuid", "noexec", "nodev"]);
            }
        }
        cfg["linux"]["maskedPaths"] = serde_json::json!(berth_runtime::MASKED_PATHS);
        cfg["linux"]["readonlyPaths"] = serde_json::json!(berth_runtime::READONLY_PATHS);
        cfg["linux"]["seccomp"] =
            berth_runtime::seccomp::docker_default_oci(CapSet::docker_default());
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(bundle)
}

const BERTH: &str = "berth (Docker defaults: 14 caps, seccomp)";
const BERTH_IMAGE: &str = "berth from image (overlay root, Docker-like)";
const RUNC: &str = "runc run (same bundle: 14 caps, seccomp)";
const CRUN: &str = "crun run (same bundle: 14 caps, seccomp)";
const CRUN_LEAN: &str = "crun run (runc spec: 3 caps, no seccomp)";

/// 1. Container start→exit of `/bin/true`: berth's runtime vs runc and crun.
fn section_start_exit(opts: &Opts, work: &Path, layout: Option<&Path>, r: &mut Report) {
    let s = "1 start->exit";
    let probe = Command::new(&opts.berth)
        .args(["container", "run", "--help"])
        .output();
    let built = matches!(probe, Ok(ref o) if o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains("--rootfs"));
    if !built {
        r.note(s, "not built yet (`berth container run --rootfs` missing)");
        return;
    }
    let (bundle, lean) = match (
        make_bundle(work, "bundle", true),
        make_bundle(work, "bundle-lean", false),
    ) {
        (Ok(b), Ok(l)) => (b, l),
        (Err(e), _) | (_, Err(e)) => {
            r.note(s, format!("cannot make the bundles: {e:#}"));
            return;
        }
    };
    let rootfs = bundle.join("rootfs");
    let root = work.join("start-root");
    let oci_root = work.join("oci-state");
    let _ = std::fs::create_dir_all(&oci_root);
    type Variant = (&'static str, Box<dyn Fn(usize) -> Command>);
    let mut variants: Vec<Variant> = Vec::new();
    for (label, extra) in [
        (BERTH, None),
        ("berth (seccomp=unconfined)", Some("seccomp=unconfined")),
    ] {
        let (berth, root, rootfs) = (opts.berth.clone(), root.clone(), rootfs.clone());
        variants.push((
            label,
            Box::new(move |_| {
                let mut c = Command::new(&berth);
                c.env("BERTH_ROOT", &root)
                    .args(["container", "run", "--rm", "--rootfs"])
                    .arg(&rootfs);
                if let Some(o) = extra {
                    c.args(["--security-opt", o]);
                }
                c.arg("/bin/true");
                c
            }),
        ));
    }
    // From the busybox image, as Docker runs containers: an overlay root of its layers
    // (compared with the overlay-root floor).
    let loaded = layout.is_some_and(|l| {
        opts.berth_cmd(&root, work, &["image", "load", "-i", &l.to_string_lossy()])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if loaded {
        let (berth, root) = (opts.berth.clone(), root.clone());
        variants.push((
            BERTH_IMAGE,
            Box::new(move |_| {
                let mut c = Command::new(&berth);
                c.env("BERTH_ROOT", &root).args([
                    "container",
                    "run",
                    "--rm",
                    "busybox",
                    "/bin/true",
                ]);
                c
            }),
        ));
    } else {
        r.note(
            s,
            "image variant skipped: cannot load the busybox fixture image",
        );
    }
    // The floor: the same namespaces, root mount, /proc, pivot_root and exec, nothing else
    // (bench/src/bin/berth-floor.rs, built beside this binary).
    let floor = std::env::current_exe()
        .map(|e| e.with_file_name("berth-floor"))
        .unwrap_or_default();
    if floor.is_file() {
        for (label, mode) in [
            ("floor (namespaces + bind root + pivot_root)", "bind"),
            ("floor (namespaces + overlay root + pivot_root)", "overlay"),
        ] {
            let (floor, rootfs) = (floor.clone(), rootfs.clone());
            variants.push((
                label,
                Box::new(move |_| {
                    let mut c = Command::new(&floor);
                    c.arg(mode).arg(&rootfs).arg("/bin/true");
                    c
                }),
            ));
        }
    } else {
        r.note(
            s,
            "floor skipped: berth-floor not built (cargo build --release -p berth-bench)",
        );
    }
    for (rt, label, bundle) in [
        ("runc", RUNC, &bundle),
        ("crun", CRUN, &bundle),
        ("crun", CRUN_LEAN, &lean),
    ] {
        if !have(rt) {
            r.note(s, format!("{rt} skipped: not installed"));
            continue;
        }
        let (bundle, oci_root) = (bundle.clone(), oci_root.join(rt));
        variants.push((
            label,
            Box::new(move |i| {
                let mut c = Command::new(rt);
                c.arg("--root")
                    .arg(&oci_root)
                    .args(["run", "-b"])
                    .arg(&bundle)
                    .arg(format!("bench-{rt}-{i}"));
                c
            }),
        ));
    }
    // Check each variant once; a failing one is reported, not timed.
    let mut working = Vec::new();
    for (label, mk) in variants {
        match time_cmd(&mut mk(usize::MAX)) {
            Ok(_) => working.push((label, mk, Vec::new())),
            Err(e) => r.note(s, format!("{label}: fails here: {e:#}")),
        }
    }
    let n = working.len().max(1);
    for round in 0..opts.runs.max(5) {
        for k in 0..working.len() {
            let idx = (round + k) % n;
            let (_, mk, samples) = &mut working[idx];
            if let Ok(ms) = time_cmd(&mut mk(round)) {
                samples.push(ms);
            }
        }
    }
    let median = |label: &str| -> Option<f64> {
        let (_, _, v) = working.iter().find(|(l, _, _)| *l == label)?;
        let mut v = v.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    };
    let berth = median(BERTH);
    let ratios: Vec<String> = [
        ("crun, same bundle", CRUN),
        ("crun, runc spec template", CRUN_LEAN),
        (
            "floor, bind root",
            "floor (namespaces + bind root + pivot_root)",
        ),
        (
            "floor, overlay root",
            "floor (namespaces + overlay root + pivot_root)",
        ),
    ]
    .iter()
    .filter_map(|(name, label)| Some(format!("{:.2}x {name}", berth? / median(label)?)))
    .collect();
    let image_ratio =
        median(BERTH_IMAGE).zip(median("floor (namespaces + overlay root + pivot_root)"));
    for (label, _, mut samples) in working {
        let target = if label == BERTH {
            "median <= crun's, <= 3x floor"
        } else {
            ""
        };
        r.row(s, label, &mut samples, "ms", target);
    }
    if !ratios.is_empty() {
        r.note(
            s,
            format!("berth (Docker defaults) median = {}", ratios.join(", ")),
        );
    }
    if let Some((image, floor)) = image_ratio {
        r.note(
            s,
            format!(
                "berth from the image median = {:.2}x floor, overlay root",
                image / floor
            ),
        );
    }
}

fn compose_file(n: usize, ignore_term: bool) -> String {
    let mut y = String::from("services:\n");
    for i in 0..n {
        y.push_str(&format!("  s{i}:\n    image: busybox\n"));
        if ignore_term {
            // PID 1 without a SIGTERM handler: the kernel drops SIGTERM.
            y.push_str("    command: [\"sleep\", \"3600\"]\n");
        } else {
            y.push_str(
                "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
            );
        }
    }
    y
}

/// 2. `up -d` / `down` of 1, 10 and 50 busybox services.
fn section_up_down(opts: &Opts, work: &Path, layout: Option<&Path>, r: &mut Report) {
    let s = "2 up/down";
    let root = work.join("updown-root");
    let berth = |args: &[&str], dir: &Path| opts.berth_cmd(&root, dir, args);
    // The busybox image must be loadable into the bench's own state root.
    let Some(layout) = layout else {
        r.note(s, "skipped: no busybox fixture image");
        return;
    };
    let load = berth(&["image", "load", "-i", &layout.to_string_lossy()], work).output();
    if !matches!(load, Ok(ref o) if o.status.success()) {
        r.note(s, "not built yet (`berth image load` failed)");
        return;
    }
    for (n, ignore) in [(1usize, false), (10, false), (50, false), (10, true)] {
        let dir = work.join(format!("p{n}{}", if ignore { "i" } else { "" }));
        let _ = std::fs::create_dir_all(&dir);
        if std::fs::write(dir.join("compose.yaml"), compose_file(n, ignore)).is_err() {
            continue;
        }
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            match time_cmd(&mut berth(&["up", "-d"], &dir)) {
                Ok(ms) => ups.push(ms),
                Err(e) => {
                    let _ = berth(&["down"], &dir).output();
                    r.note(s, format!("not built yet (`berth up -d` failed: {e:#})"));
                    return;
                }
            }
            match time_cmd(&mut berth(&["down"], &dir)) {
                Ok(ms) => downs.push(ms),
                Err(e) => {
                    r.note(s, format!("`berth down` failed: {e:#}"));
                    return;
                }
            }
        }
        let tag = if ignore {
            " (PID 1 ignores SIGTERM)"
        } else {
            ""
        };
        let (up_target, down_target) = match (n, ignore) {
            (10, false) => (
                "< 150 ms (docker-compose ~3.2 s)",
                "< 100 ms (anchors ~10.5 s)",
            ),
            (50, false) => ("< 600 ms", ""),
            (10, true) => ("", "< 300 ms (anchors ~10.5-11.8 s)"),
            _ => ("", ""),
        };
        if !ignore {
            r.row(
                s,
                &format!("berth up -d, {n} services"),
                &mut ups,
                "ms",
                up_target,
            );
        }
        r.row(
            s,
            &format!("berth down, {n} services{tag}"),
            &mut downs,
            "ms",
            down_target,
        );
    }
}

/// 3. Other orchestrators, when present with a working engine (never installed here).
fn section_other_orchestrators(r: &mut Report) {
    let s = "3 other orchestrators";
    let docker_ok = have("docker")
        && Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|st| st.success())
            .unwrap_or(false);
    if !docker_ok {
        r.note(s, "docker compose skipped: no running Docker engine");
    }
    if !have("podman-compose") {
        r.note(s, "podman-compose skipped: not installed");
    }
}

/// A registry server for the bench: Debian's docker-registry on 127.0.0.1, ended by PID.
struct Registry {
    addr: String,
    child: std::process::Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(work: &Path) -> Result<Registry> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = work.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            work.join("registry-data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry")?;
    let reg = Registry { addr, child };
    for _ in 0..100 {
        if std::net::TcpStream::connect(&reg.addr).is_ok() {
            return Ok(reg);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("docker-registry did not listen on {}", reg.addr)
}

/// Section 5: pull and unpack of a ~50 MB multi-layer image from a local registry, berth
/// against `skopeo copy` plus `umoci raw unpack`, interleaved, into fresh directories.
fn section_pull(opts: &Opts, work: &Path, r: &mut Report) {
    let s = "5 pull+unpack";
    if !have("docker-registry") {
        r.note(s, "skipped: docker-registry is not installed");
        return;
    }
    let result = (|| -> Result<()> {
        let layout = work.join("bulky-oci");
        let d = berth_fixtures::bulky_oci_layout(&layout, "docker.io/library/bulky:1", 3, 8)?;
        let reg = start_registry(work)?;
        let remote = format!("{}/bench/bulky:1", reg.addr);
        let root = work.join("pull-src-root");
        let berth = |root: &Path, args: &[&str]| {
            let mut c = Command::new(&opts.berth);
            c.env("BERTH_ROOT", root).args(args);
            c
        };
        time_cmd(&mut berth(
            &root,
            &["image", "load", "-i", &layout.to_string_lossy()],
        ))?;
        time_cmd(&mut berth(&root, &["image", "tag", "bulky:1", &remote]))?;
        time_cmd(&mut berth(&root, &["image", "push", &remote]))?;
        let size: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        r.note(
            s,
            format!(
                "image: {} layers, {:.1} MB of blobs, manifest {}",
                d.layers.len(),
                size as f64 / 1e6,
                &d.manifest[..19]
            ),
        );
        let others = have("skopeo") && have("umoci");
        if !others {
            r.note(s, "skopeo + umoci skipped: not installed");
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for i in 0..opts.runs.clamp(3, 5) {
            let fresh = work.join(format!("pull-root-{i}"));
            let mut pull = berth(&fresh, &["image", "pull", &remote]);
            let mut them = Command::new("sh");
            let dest = work.join(format!("skopeo-{i}"));
            them.arg("-c").arg(format!(
                "skopeo copy -q --src-tls-verify=false docker://{remote} oci:{d}:bulky && umoci raw unpack --image {d}:bulky {d}-rootfs",
                d = dest.display()
            ));
            if i % 2 == 0 {
                ours.push(time_cmd(&mut pull)?);
                if others {
                    theirs.push(time_cmd(&mut them)?);
                }
            } else {
                if others {
                    theirs.push(time_cmd(&mut them)?);
                }
                ours.push(time_cmd(&mut pull)?);
            }
            let _ = std::fs::remove_dir_all(&fresh);
            let _ = std::fs::remove_dir_all(&dest);
            let _ = std::fs::remove_dir_all(work.join(format!("skopeo-{i}-rootfs")));
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (mo, mt) = (
            med(&mut ours.clone()),
            (!theirs.is_empty()).then(|| med(&mut theirs.clone())),
        );
        r.row(
            s,
            "berth image pull (+ unpack)",
            &mut ours,
            "ms",
            "faster than skopeo+umoci",
        );
        if let Some(mt) = mt {
            r.row(s, "skopeo copy + umoci raw unpack", &mut theirs, "ms", "");
            r.note(s, format!("ratio berth / (skopeo+umoci) = {:.2}", mo / mt));
        }
        drop(reg);
        Ok(())
    })();
    if let Err(e) = result {
        r.note(s, format!("failed: {e:#}"));
    }
}

fn config_file(n: usize) -> String {
    let mut y = String::from("services:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  svc{i}:\n    image: busybox:${{TAG:-latest}}\n    command: [\"sleep\", \"{i}\"]\n    environment:\n      - INDEX={i}\n      - NAME=svc{i}\n    ports:\n      - \"{}:80\"\n    volumes:\n      - data{i}:/data\n",
            20000 + i,
        ));
        if i > 0 {
            y.push_str(&format!("    depends_on:\n      - svc{}\n", i - 1));
        }
    }
    y.push_str("volumes:\n");
    for i in 0..n {
        y.push_str(&format!("  data{i}: {{}}\n"));
    }
    y
}

/// 6. `berth config` on a generated 200-service file.
fn section_config(opts: &Opts, work: &Path, r: &mut Report) -> Result<()> {
    let s = "6 config";
    let dir = work.join("config200");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("compose.yaml"), config_file(200))?;
    let run = || {
        let mut c = Command::new(&opts.berth);
        c.current_dir(&dir).arg("config");
        time_cmd(&mut c)
    };
    if let Err(e) = run() {
        r.note(s, format!("not built yet (`berth config` failed: {e:#})"));
        return Ok(());
    }
    let mut samples = Vec::new();
    for _ in 0..opts.runs.max(5) {
        samples.push(run()?);
    }
    r.row(
        s,
        "berth config, 200 services",
        &mut samples,
        "ms",
        "< 100 ms",
    );
    Ok(())
}

/// Memory of one process in kB, from `/proc/PID/smaps_rollup`: RSS counts every page it
/// maps (shared text in full in each process), PSS divides each page among its sharers.
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
}

/// The memory of every process whose command line contains all of `needles`.
fn procs_mem(needles: &[&str]) -> Vec<Mem> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !needles.iter().all(|nd| cmd.contains(nd)) {
            continue;
        }
        let rollup = std::fs::read_to_string(e.path().join("smaps_rollup")).unwrap_or_default();
        let field = |key: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(rss), Some(pss)) = (field("Rss:"), field("Pss:")) {
            out.push(Mem { rss, pss });
        }
    }
    out
}

/// 7. RSS (the target's measure) and PSS of the supervisor and shims with 10 services up.
fn section_rss(opts: &Opts, work: &Path, layout: Option<&Path>, r: &mut Report) {
    let s = "7 rss";
    let root = work.join("rss-root");
    let dir = work.join("rss10");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("compose.yaml"), compose_file(10, true)).is_err() {
        return;
    }
    let berth = |args: &[&str]| opts.berth_cmd(&root, &dir, args);
    let Some(layout) = layout else {
        r.note(s, "skipped: no busybox fixture image");
        return;
    };
    let loaded = berth(&["image", "load", "-i", &layout.to_string_lossy()]).output();
    if !matches!(loaded, Ok(ref o) if o.status.success()) {
        r.note(s, "not built yet (`berth image load` failed)");
        return;
    }
    if let Err(e) = time_cmd(&mut berth(&["up", "-d"])) {
        r.note(s, format!("`berth up -d` failed: {e:#}"));
        let _ = berth(&["down"]).output();
        return;
    }
    let root_s = root.to_string_lossy().into_owned();
    let mb = |kb: u64| kb as f64 / 1024.0;
    let (mut sup_rss, mut shim_rss, mut tot_rss, mut tot_pss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut nsup, mut nshim) = (0, 0);
    // A few samples, after the processes settled.
    for _ in 0..opts.runs.clamp(1, 3) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let sup = procs_mem(&["__supervise", "rss10"]);
        let shims = procs_mem(&[berth_runtime::SHIM_MODE, &root_s]);
        (nsup, nshim) = (sup.len(), shims.len());
        let sum = |v: &[Mem], f: fn(&Mem) -> u64| v.iter().map(f).sum::<u64>();
        let (sr, hr) = (sum(&sup, |m| m.rss), sum(&shims, |m| m.rss));
        let pss = sum(&sup, |m| m.pss) + sum(&shims, |m| m.pss);
        sup_rss.push(mb(sr));
        shim_rss.push(mb(hr));
        tot_rss.push(mb(sr + hr));
        tot_pss.push(mb(pss));
    }
    let _ = berth(&["down"]).output();
    if nsup != 1 || nshim != 10 {
        r.note(
            s,
            format!("expected 1 supervisor and 10 shims, found {nsup} and {nshim}"),
        );
    }
    r.row(s, "supervisor RSS", &mut sup_rss, "MB", "");
    r.row(
        s,
        &format!("{nshim} shims RSS (sum)"),
        &mut shim_rss,
        "MB",
        "",
    );
    r.row(
        s,
        "supervisor + shims RSS",
        &mut tot_rss,
        "MB",
        "<= 15 MB (podman 24 MB, docker 279 MB)",
    );
    r.row(
        s,
        "supervisor + shims PSS",
        &mut tot_pss,
        "MB",
        "(shared pages split; target is RSS)",
    );
}
