//! Seccomp: Docker's default profile compiled to BPF once, cached, and loaded in the child.
//!
//! Takes the container's [`CapSet`] (the profile has capability-gated groups, as in Docker),
//! gives a [`SeccompProgram`]: one classic-BPF filter that finds the syscall by binary search
//! over number ranges (`tree`; ~10× fewer instructions than a linear list, so loading costs
//! less and every syscall of the container is checked in ~log2(ranges) steps). Unlisted
//! syscalls get EPERM and `clone3` gets ENOSYS (so libcs fall back to `clone`, whose flags a
//! filter can read), as in Docker. The caller compiles (cached per capability set for the life
//! of the process) and writes the bytes to the state dir; the shim, init and exec helpers only
//! read and load them. Neighbours: `capabilities` (the set), `init` / `exec` (loading).
//!
//! `seccompiler` (pure Rust) is the reference compiler: the tests build the same rules with it
//! and check that both programs give the same action for every syscall number and for
//! argument values around each condition. The filter has one tree per ABI, chosen by the
//! audit arch: x86_64, and i386 (`int 0x80` from 32-bit programs) with the same names at
//! their i386 numbers plus the 32-bit-only ones Docker lists, as Docker filters the x86 ABI
//! on an amd64 host (test `runtime::i386_syscalls_are_filtered_like_docker`); as there,
//! i386's `socketcall` is allowed and bypasses the AF_ALG/AF_VSOCK `socket` rule. x32 numbers
//! (`| 0x40000000`) get EPERM (Docker lets them through by the same names; x32 is off in
//! most distribution kernels), and any other audit arch is killed (SIGSYS).

mod docker_profile;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use seccompiler::{sock_filter, BpfProgram};
use tracing::debug;
use tree::{Cond, Op, Outcome};

use crate::capabilities::{CapSet, Capability};

/// Errors from building or loading a seccomp program.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: a jump is out of range")]
    Build,
    #[error("seccomp is only built for x86_64, not {arch}")]
    UnsupportedArch { arch: &'static str },
    #[error("malformed seccomp program: {reason}")]
    Malformed { reason: &'static str },
    #[error("cannot load the seccomp filter")]
    Load(#[source] std::io::Error),
}

/// A compiled seccomp program: filters in installation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    filters: Vec<BpfProgram>,
}

fn cache() -> &'static Mutex<HashMap<u64, Arc<SeccompProgram>>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<SeccompProgram>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Whether [`docker_default`] can build a filter for this machine's architecture.
pub fn check_arch() -> Result<(), SeccompError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(SeccompError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        });
    }
    Ok(())
}

/// Docker's default profile for a container holding `caps`, compiled once per capability set
/// in this process.
pub fn docker_default(caps: CapSet) -> Result<Arc<SeccompProgram>, SeccompError> {
    check_arch()?;
    let mut guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = guard.get(&caps.0) {
        return Ok(p.clone());
    }
    let started = std::time::Instant::now();
    let prog = Arc::new(compile(caps)?);
    debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        caps = format_args!("{:016x}", caps.0),
        "seccomp profile compiled"
    );
    guard.insert(caps.0, prog.clone());
    Ok(prog)
}

/// The allowlist: syscall number → alternatives, each a list of conditions that must all
/// hold (no alternatives = always allowed). `clone3` is listed as allowed; [`compile`] answers
/// it with ENOSYS.
pub(crate) fn allow_rules(caps: CapSet) -> BTreeMap<i64, Vec<Vec<Cond>>> {
    use docker_profile::*;
    let mut rules: BTreeMap<i64, Vec<Vec<Cond>>> = BTreeMap::new();
    for (_, nr) in ALLOW {
        rules.insert(*nr, Vec::new());
    }
    rules.insert(
        SOCKET.1,
        vec![
            vec![Cond::dword(0, Op::Lt, 38)],
            vec![Cond::dword(0, Op::Eq, 39)],
            vec![Cond::dword(0, Op::Gt, 40)],
        ],
    );
    rules.insert(
        PERSONALITY.1,
        PERSONALITY_VALUES
            .iter()
            .map(|v| vec![Cond::dword(0, Op::Eq, *v)])
            .collect(),
    );
    for (cap, group) in CAP_GATED {
        if caps.contains(*cap) {
            for (_, nr) in group.iter() {
                rules.insert(*nr, Vec::new());
            }
        }
    }
    if !caps.contains(Capability::SysAdmin) {
        rules.insert(
            CLONE.1,
            vec![vec![Cond::qword(0, Op::MaskedEq(CLONE_NS_MASK), 0)]],
        );
        rules.insert(CLONE3.1, Vec::new());
    }
    rules
}

/// The same profile as an OCI runtime-spec `linux.seccomp` object, for runc and crun (the
/// start→exit bench gives them the same bundle as berth, and the differential test can).
/// Alternatives become separate entries for the same name (libseccomp ORs them), a rule's
/// conditions become one entry's `args` (ANDed). x86_64 and x86 (i386) are listed, as berth
/// filters both; libseccomp resolves each name per architecture (the 32-bit-only names are
/// added for x86 alone).
/// libseccomp compares all 64 bits of an argument, where berth's filter compares the low 32
/// of the `int` arguments (socket's domain, personality's persona, as the kernel reads
/// them): the two agree for every value below 2^32.
pub fn docker_default_oci(caps: CapSet) -> serde_json::Value {
    use docker_profile::*;
    use serde_json::json;
    let names = x86_64_names();
    let mut allow = Vec::new();
    let mut syscalls = Vec::new();
    for (nr, alts) in allow_rules(caps) {
        let name = names[&nr];
        if nr == CLONE3.1 && !caps.contains(Capability::SysAdmin) {
            syscalls.push(
                json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
            );
            continue;
        }
        if alts.is_empty() {
            allow.push(name);
            continue;
        }
        for alt in alts {
            let args: Vec<serde_json::Value> = alt
                .iter()
                .map(|c| match c.op {
                    Op::Eq => json!({"index": c.index, "value": c.value, "op": "SCMP_CMP_EQ"}),
                    Op::Lt => json!({"index": c.index, "value": c.value, "op": "SCMP_CMP_LT"}),
                    Op::Gt => json!({"index": c.index, "value": c.value, "op": "SCMP_CMP_GT"}),
                    Op::MaskedEq(mask) => json!({
                        "index": c.index, "value": mask, "valueTwo": c.value,
                        "op": "SCMP_CMP_MASKED_EQ"
                    }),
                })
                .collect();
            syscalls.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": args}));
        }
    }
    // The 32-bit-only names (`chown32`, `mmap2`, ...): libseccomp adds them for x86 alone.
    let x86_64_names: std::collections::HashSet<&str> = names.values().copied().collect();
    let i386 = allow_rules_i386(caps);
    for (name, nr) in I386 {
        let unconditional = i386.get(nr).is_some_and(|alts| alts.is_empty());
        if unconditional && !x86_64_names.contains(name) {
            allow.push(name);
        }
    }
    syscalls.insert(0, json!({"names": allow, "action": "SCMP_ACT_ALLOW"}));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": syscalls,
    })
}

/// Every x86_64 number the profile names, to its name.
fn x86_64_names() -> HashMap<i64, &'static str> {
    use docker_profile::*;
    ALLOW
        .iter()
        .chain(CAP_GATED.iter().flat_map(|(_, g)| g.iter()))
        .chain([&SOCKET, &PERSONALITY, &CLONE, &CLONE3])
        .map(|(n, nr)| (*nr, *n))
        .collect()
}

/// The allowlist for i386 programs (`int 0x80`), keyed by i386 number: the same names as on
/// x86_64 where i386 has them, plus the 32-bit-only ones Docker lists (`chown32`, `mmap2`,
/// `socketcall`, ...). i386 syscalls use only the low 32 bits of each argument, and so do
/// these conditions (clone's flag test reads one word). Like Docker's, this list allows
/// `socketcall`, through which the AF_ALG/AF_VSOCK `socket` rule can be bypassed.
pub(crate) fn allow_rules_i386(caps: CapSet) -> BTreeMap<i64, Vec<Vec<Cond>>> {
    use docker_profile::*;
    let i386: HashMap<&str, i64> = I386.iter().copied().collect();
    let x86_64 = x86_64_names();
    let mut rules = BTreeMap::new();
    for (nr, alts) in allow_rules(caps) {
        let Some(nr32) = x86_64.get(&nr).and_then(|n| i386.get(n)) else {
            continue; // not on i386 (e.g. `newfstatat`, `arch_prctl` is)
        };
        let alts = alts
            .into_iter()
            .map(|conds| {
                conds
                    .into_iter()
                    .map(|c| Cond { qword: false, ..c })
                    .collect()
            })
            .collect();
        rules.insert(*nr32, alts);
    }
    let gated: Vec<&str> = I386_CAP_GATED
        .iter()
        .flat_map(|(_, g)| g.iter().copied())
        .collect();
    for name in NOT_ON_X86_64 {
        let allowed = match I386_CAP_GATED.iter().find(|(_, g)| g.contains(name)) {
            Some((cap, _)) => caps.contains(*cap),
            None => !gated.contains(name),
        };
        if let (true, Some(nr)) = (allowed, i386.get(name)) {
            rules.insert(*nr, Vec::new());
        }
    }
    rules
}

/// Names of the unconditionally allowed syscalls for `caps` (used by the profile test).
#[cfg(test)]
fn allowed_names(caps: CapSet) -> std::collections::BTreeSet<&'static str> {
    use docker_profile::*;
    let mut names: std::collections::BTreeSet<&str> = ALLOW.iter().map(|(n, _)| *n).collect();
    for (cap, group) in CAP_GATED {
        if caps.contains(*cap) {
            names.extend(group.iter().map(|(n, _)| *n));
        }
    }
    names
}

/// Rules to outcomes: no alternatives is Allow; `clone3` without CAP_SYS_ADMIN is ENOSYS.
fn outcomes(
    rules: BTreeMap<i64, Vec<Vec<Cond>>>,
    clone3: i64,
    caps: CapSet,
) -> BTreeMap<u32, Outcome> {
    let mut out: BTreeMap<u32, Outcome> = rules
        .into_iter()
        .map(|(nr, alts)| {
            let o = if alts.is_empty() {
                Outcome::Allow
            } else {
                Outcome::Check(alts)
            };
            (nr as u32, o)
        })
        .collect();
    if !caps.contains(Capability::SysAdmin) {
        out.insert(clone3 as u32, Outcome::Errno(libc::ENOSYS as u32));
    }
    out
}

fn compile(caps: CapSet) -> Result<SeccompProgram, SeccompError> {
    // clone3 is 435 on both.
    let clone3 = docker_profile::CLONE3.1;
    let x86_64 = outcomes(allow_rules(caps), clone3, caps);
    let i386 = outcomes(allow_rules_i386(caps), clone3, caps);
    let filter = tree::build(&x86_64, &i386, libc::EPERM as u32).ok_or(SeccompError::Build)?;
    Ok(SeccompProgram {
        filters: vec![filter],
    })
}

impl SeccompProgram {
    /// Serialises to bytes for the state dir: per filter a u32 instruction count, then
    /// 8-byte `sock_filter`s, native endian (read back on the same host only).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.filters {
            out.extend_from_slice(&(f.len() as u32).to_ne_bytes());
            for i in f {
                out.extend_from_slice(&i.code.to_ne_bytes());
                out.push(i.jt);
                out.push(i.jf);
                out.extend_from_slice(&i.k.to_ne_bytes());
            }
        }
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(mut b: &[u8]) -> Result<Self, SeccompError> {
        let mut filters = Vec::new();
        while !b.is_empty() {
            if b.len() < 4 {
                return Err(SeccompError::Malformed {
                    reason: "truncated length",
                });
            }
            let n = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            b = &b[4..];
            if n == 0 || n > u16::MAX as usize || b.len() < n * 8 {
                return Err(SeccompError::Malformed {
                    reason: "bad instruction count",
                });
            }
            let f = b[..n * 8]
                .chunks_exact(8)
                .map(|c| sock_filter {
                    code: u16::from_ne_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect();
            filters.push(f);
            b = &b[n * 8..];
        }
        // A confined container always has a filter: no bytes (a writer that gave up) must
        // not read as "nothing to enforce".
        if filters.is_empty() {
            return Err(SeccompError::Malformed {
                reason: "no filter",
            });
        }
        Ok(Self { filters })
    }

    /// Installs the filters on the calling (single-threaded) process. Unlike
    /// `seccompiler::apply_filter` this does not set no_new_privs: Docker leaves it off, so the
    /// caller must still hold CAP_SYS_ADMIN here unless it set NNP itself (`seccomp(2)`).
    pub(crate) fn load(&self) -> Result<(), SeccompError> {
        for f in &self.filters {
            let prog = libc::sock_fprog {
                len: f.len() as u16,
                filter: f.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: the kernel copies the program; `prog` points into `f`, alive here.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(SeccompError::Load(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn compiles_and_round_trips() {
        let p = docker_default(CapSet::docker_default()).unwrap();
        assert_eq!(p.filters.len(), 1);
        assert!(
            p.filters[0].len() < 600,
            "{} instructions",
            p.filters[0].len()
        );
        assert_eq!(SeccompProgram::from_bytes(&p.to_bytes()).unwrap(), *p);
    }

    /// A caller that gave up closes the program pipe empty or part-way: that must never read
    /// as a program (an empty one would start the container unconfined).
    #[test]
    fn empty_or_cut_bytes_are_no_program() {
        let bytes = docker_default(CapSet::docker_default()).unwrap().to_bytes();
        for cut in [0, 3, 4, 12, bytes.len() - 1] {
            assert!(
                SeccompProgram::from_bytes(&bytes[..cut]).is_err(),
                "{cut} of {} bytes read as a program",
                bytes.len()
            );
        }
    }

    /// The same rules through seccompiler (a linear filter, plus a one-rule ENOSYS filter for
    /// clone3 since seccompiler has one match action per filter). seccompiler knows no i386:
    /// the i386 rules are built as an x86_64 filter, to be run with the x86_64 audit arch.
    fn reference(caps: CapSet, rules: BTreeMap<i64, Vec<Vec<Cond>>>) -> Vec<BpfProgram> {
        use seccompiler::{SeccompAction, SeccompFilter, SeccompRule, TargetArch};
        let rules: BTreeMap<i64, Vec<SeccompRule>> = rules
            .into_iter()
            .map(|(nr, alts)| {
                let alts = alts
                    .into_iter()
                    .map(|c| SeccompRule::new(c.into_iter().map(Cond::to_seccompiler).collect()))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                (nr, alts)
            })
            .collect();
        let arch = TargetArch::x86_64;
        let allow = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let mut out = vec![BpfProgram::try_from(allow).unwrap()];
        if !caps.contains(Capability::SysAdmin) {
            let clone3 = SeccompFilter::new(
                BTreeMap::from([(docker_profile::CLONE3.1, Vec::new())]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .unwrap();
            out.push(BpfProgram::try_from(clone3).unwrap());
        }
        out
    }

    /// The action the kernel takes with several filters: the one with the highest precedence.
    fn verdict(filters: &[BpfProgram], data: &[u8; 64]) -> u32 {
        let rank = |a: u32| match a & 0xffff_0000 {
            0x8000_0000 => 0, // KILL_PROCESS
            0x0000_0000 => 1, // KILL_THREAD
            0x0003_0000 => 2, // TRAP
            0x0005_0000 => 3, // ERRNO
            _ => 4,
        };
        filters
            .iter()
            .map(|f| tree::run(f, data))
            .min_by_key(|a| rank(*a))
            .unwrap()
    }

    fn data(arch: u32, nr: u32, arg0: u64) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&nr.to_ne_bytes());
        d[4..8].copy_from_slice(&arch.to_ne_bytes());
        d[16..24].copy_from_slice(&arg0.to_ne_bytes());
        d
    }

    #[test]
    fn tree_filter_agrees_with_seccompiler() {
        const X86_64: u32 = 0xc000_003e;
        const I386: u32 = 0x4000_0003;
        let mut sys_admin = CapSet::docker_default();
        sys_admin.0 |= 1 << Capability::SysAdmin as u64;
        // Values around every constant of the conditions, with and without high bits.
        let mut args = vec![0u64, 1, u32::MAX as u64, u64::MAX, 1 << 32, 0x7E02_0000];
        for c in [37u64, 38, 39, 40, 41, 8, 131072, 131080, 4294967295] {
            for v in [c.wrapping_sub(1), c, c + 1] {
                args.extend([v, v | (1 << 32), v | (1 << 63)]);
            }
        }
        for bit in 0..64 {
            args.push(1u64 << bit);
        }
        for caps in [CapSet::docker_default(), sys_admin, CapSet::all()] {
            let ours = compile(caps).unwrap();
            let theirs64 = reference(caps, allow_rules(caps));
            let theirs32 = reference(caps, allow_rules_i386(caps));
            let mut checked = 0;
            // (audit arch, reference, socket/clone/personality numbers, i386 arguments).
            for (arch, theirs, conditional, narrow) in [
                (X86_64, &theirs64, [41u32, 56, 135], false),
                (I386, &theirs32, [359u32, 120, 136], true),
            ] {
                let nrs = (0u32..=600)
                    .chain((0..=600).map(|n| n | 0x4000_0000))
                    .chain([u32::MAX, 0x8000_0000, 1000, 0x3fff_ffff]);
                for nr in nrs {
                    let list: &[u64] = if conditional.contains(&nr) {
                        &args
                    } else {
                        &[0, u64::MAX]
                    };
                    for &a in list {
                        // An i386 call may carry garbage in the high half of an argument
                        // (`int 0x80` from a 64-bit task); the kernel and the filter use
                        // only the low half.
                        let got = verdict(&ours.filters, &data(arch, nr, a));
                        let low = if narrow { a & 0xffff_ffff } else { a };
                        assert_eq!(
                            got,
                            verdict(theirs, &data(X86_64, nr, low)),
                            "caps {:x} arch {arch:#x} nr {nr} arg0 {a:#x}",
                            caps.0
                        );
                        if narrow {
                            let zero_high = verdict(&ours.filters, &data(arch, nr, low));
                            assert_eq!(got, zero_high, "high half of {a:#x} counted");
                        }
                        checked += 1;
                    }
                }
            }
            assert!(checked > 2000);
            // The outcomes the test relies on are really there.
            let d = |nr, a| verdict(&ours.filters, &data(X86_64, nr, a));
            assert_eq!(d(0, 0), tree::RET_ALLOW, "read");
            assert_eq!(d(41, 40), tree::RET_ERRNO | 1, "AF_VSOCK socket");
            assert_eq!(d(41, 2), tree::RET_ALLOW, "AF_INET socket");
            let d32 = |nr, a| verdict(&ours.filters, &data(I386, nr, a));
            assert_eq!(d32(4, 0), tree::RET_ALLOW, "i386 write");
            assert_eq!(d32(102, 0), tree::RET_ALLOW, "i386 socketcall");
            assert_eq!(d32(359, 40), tree::RET_ERRNO | 1, "i386 AF_VSOCK socket");
            assert_eq!(d32(1000, 0), tree::RET_ERRNO | 1, "unknown i386 number");
            const AARCH64: u32 = 0xc000_00b7;
            assert_eq!(
                verdict(&ours.filters, &data(AARCH64, 0, 0)),
                tree::RET_KILL_PROCESS,
                "another arch"
            );
            if caps.contains(Capability::SysAdmin) {
                assert_eq!(d(435, 0), tree::RET_ALLOW, "clone3 with SYS_ADMIN");
                assert_eq!(d32(310, 0), tree::RET_ALLOW, "i386 unshare with SYS_ADMIN");
            } else {
                assert_eq!(d32(310, 0), tree::RET_ERRNO | 1, "i386 unshare");
                assert_eq!(
                    d32(435, 0),
                    tree::RET_ERRNO | libc::ENOSYS as u32,
                    "i386 clone3"
                );
                assert_eq!(
                    d32(120, 0x1000_0000),
                    tree::RET_ERRNO | 1,
                    "i386 clone(CLONE_NEWUSER)"
                );
                assert_eq!(d32(120, 0x11), tree::RET_ALLOW, "i386 clone(SIGCHLD)");
                assert_eq!(d(435, 0), tree::RET_ERRNO | libc::ENOSYS as u32, "clone3");
                assert_eq!(
                    d(56, 0x1000_0000),
                    tree::RET_ERRNO | 1,
                    "clone(CLONE_NEWUSER)"
                );
            }
        }
    }

    #[test]
    fn numbers_are_unique_per_name() {
        let mut seen = HashMap::new();
        for (n, nr) in docker_profile::ALLOW {
            assert_eq!(*seen.entry(*nr).or_insert(*n), *n, "number {nr} twice");
        }
    }

    /// The allowlist for `caps` computed from moby's JSON, for amd64: rules with the ALLOW action
    /// and no argument filter whose `includes` hold and whose `excludes` do not.
    fn json_allowed(json: &serde_json::Value, caps: CapSet) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let holds = |cond: &serde_json::Value| -> bool {
            let arch_ok = cond["arches"]
                .as_array()
                .map(|a| a.iter().any(|x| x == "amd64"))
                .unwrap_or(true);
            let caps_ok = cond["caps"]
                .as_array()
                .map(|a| {
                    a.iter().all(|c| {
                        c.as_str()
                            .and_then(|c| c.parse::<Capability>().ok())
                            .is_some_and(|c| caps.contains(c))
                    })
                })
                .unwrap_or(true);
            arch_ok && caps_ok
        };
        for r in json["syscalls"].as_array().unwrap() {
            let has_excl = r["excludes"].as_object().is_some_and(|o| !o.is_empty());
            let excluded = has_excl && {
                // An exclude matches when every listed condition kind matches.
                let e = &r["excludes"];
                let arch_hit = e["arches"]
                    .as_array()
                    .map(|a| a.iter().any(|x| x == "amd64"));
                let caps_hit = e["caps"].as_array().map(|a| {
                    a.iter().any(|c| {
                        c.as_str()
                            .and_then(|c| c.parse::<Capability>().ok())
                            .is_some_and(|c| caps.contains(c))
                    })
                });
                arch_hit.unwrap_or(false) || caps_hit.unwrap_or(false)
            };
            if r["action"] != "SCMP_ACT_ALLOW"
                || r["args"].as_array().is_some_and(|a| !a.is_empty())
                || excluded
                || !holds(&r["includes"])
            {
                continue;
            }
            for n in r["names"].as_array().unwrap() {
                out.insert(n.as_str().unwrap().to_string());
            }
        }
        out
    }

    /// moby's profile from `../shared` (beside the project), when it is there.
    fn moby_json() -> Option<serde_json::Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/seccomp/docker-default.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("SKIP: {} not present", path.display());
            return None;
        };
        Some(serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn profile_matches_moby_json_for_x86_64() {
        let Some(json) = moby_json() else { return };
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        let not_x86: BTreeSet<&str> = docker_profile::NOT_ON_X86_64.iter().copied().collect();
        let all_known: BTreeSet<&str> = allowed_names(CapSet::all())
            .into_iter()
            .chain([docker_profile::SOCKET.0, docker_profile::PERSONALITY.0])
            .collect();
        // Every name in the JSON is either in our x86_64 tables or known not to exist there.
        for r in json["syscalls"].as_array().unwrap() {
            for n in r["names"].as_array().unwrap() {
                let n = n.as_str().unwrap();
                assert!(
                    all_known.contains(n) || not_x86.contains(n),
                    "{n} unaccounted for"
                );
            }
        }
        for caps in [CapSet::docker_default(), CapSet::all(), CapSet::default()] {
            let want: BTreeSet<String> = json_allowed(&json, caps)
                .into_iter()
                .filter(|n| !not_x86.contains(n.as_str()))
                .collect();
            let got: BTreeSet<String> = allowed_names(caps).into_iter().map(String::from).collect();
            assert_eq!(got, want, "allowlist differs for caps {:016x}", caps.0);
        }
    }

    /// The i386 table against the installed kernel headers (linux-libc-dev): every number
    /// matches, and every profile name the headers know is in the table. Names newer than
    /// the headers must be unified numbers (424 and up, as on x86_64).
    #[test]
    fn i386_numbers_match_the_kernel_headers() {
        use docker_profile::*;
        let path = "/usr/include/x86_64-linux-gnu/asm/unistd_32.h";
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("SKIP: {path} not present");
            return;
        };
        let header: HashMap<&str, i64> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("#define __NR_")?.split_whitespace();
                Some((w.next()?, w.next()?.parse().ok()?))
            })
            .collect();
        assert!(
            header.len() > 400,
            "{path} parsed to {} names",
            header.len()
        );
        let x86_64: HashMap<&str, i64> = ALLOW
            .iter()
            .chain(CAP_GATED.iter().flat_map(|(_, g)| g.iter()))
            .copied()
            .collect();
        let table: HashMap<&str, i64> = I386.iter().copied().collect();
        for (name, nr) in I386 {
            match header.get(name) {
                Some(h) => assert_eq!(h, nr, "{name}"),
                None => assert!(*nr >= 424 && x86_64.get(name) == Some(nr), "{name} {nr}"),
            }
        }
        let names = x86_64
            .keys()
            .copied()
            .chain(NOT_ON_X86_64.iter().copied())
            .chain([SOCKET.0, PERSONALITY.0, CLONE.0, CLONE3.0]);
        for name in names {
            if header.contains_key(name) {
                assert!(table.contains_key(name), "{name} missing from I386");
            }
        }
    }

    /// For i386, the names Docker's JSON allows unconditionally on an amd64 host, as far as
    /// i386 has them, are exactly the ones allowed without conditions by i386 number.
    #[test]
    fn i386_allowlist_matches_moby_json() {
        let Some(json) = moby_json() else { return };
        let by_nr: HashMap<i64, &str> = docker_profile::I386
            .iter()
            .map(|(n, nr)| (*nr, *n))
            .collect();
        let i386: BTreeSet<&str> = by_nr.values().copied().collect();
        for caps in [CapSet::docker_default(), CapSet::all(), CapSet::default()] {
            let want: BTreeSet<String> = json_allowed(&json, caps)
                .into_iter()
                .filter(|n| i386.contains(n.as_str()))
                .collect();
            let got: BTreeSet<String> =
                outcomes(allow_rules_i386(caps), docker_profile::CLONE3.1, caps)
                    .into_iter()
                    .filter(|(_, o)| *o == Outcome::Allow)
                    .map(|(nr, _)| by_nr[&i64::from(nr)].to_string())
                    .collect();
            assert_eq!(got, want, "i386 allowlist differs for caps {:016x}", caps.0);
        }
    }

    /// The OCI export read back (names through the profile's tables, args back to conditions)
    /// gives the same verdict as the compiled filter for every number and the probed values.
    #[test]
    fn oci_export_reads_back_to_the_same_filter() {
        use docker_profile::*;
        let mut sys_admin = CapSet::docker_default();
        sys_admin.insert(Capability::SysAdmin);
        let mut by_name: HashMap<&str, i64> = ALLOW.iter().copied().collect();
        by_name.extend([SOCKET, PERSONALITY, CLONE, CLONE3]);
        for (_, group) in CAP_GATED {
            by_name.extend(group.iter().copied());
        }
        for caps in [CapSet::docker_default(), sys_admin] {
            let oci = docker_default_oci(caps);
            assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
            assert_eq!(oci["defaultErrnoRet"], libc::EPERM);
            let mut outcomes: BTreeMap<u32, Outcome> = BTreeMap::new();
            for rule in oci["syscalls"].as_array().unwrap() {
                let names = rule["names"].as_array().unwrap();
                for name in names {
                    let Some(nr) = by_name.get(name.as_str().unwrap()) else {
                        // 32-bit only (`chown32`, ...): no x86_64 number.
                        assert!(I386.iter().any(|(n, _)| n == name), "{name}");
                        continue;
                    };
                    let nr = *nr as u32;
                    let outcome = match (rule["action"].as_str().unwrap(), rule.get("args")) {
                        ("SCMP_ACT_ERRNO", _) => {
                            Outcome::Errno(rule["errnoRet"].as_u64().unwrap() as u32)
                        }
                        ("SCMP_ACT_ALLOW", None) => Outcome::Allow,
                        ("SCMP_ACT_ALLOW", Some(args)) => {
                            let alt: Vec<Cond> = args
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|a| {
                                    let index = a["index"].as_u64().unwrap() as u8;
                                    let value = a["value"].as_u64().unwrap();
                                    let op = match a["op"].as_str().unwrap() {
                                        "SCMP_CMP_EQ" => Op::Eq,
                                        "SCMP_CMP_LT" => Op::Lt,
                                        "SCMP_CMP_GT" => Op::Gt,
                                        "SCMP_CMP_MASKED_EQ" => {
                                            let two = a["valueTwo"].as_u64().unwrap();
                                            return Cond::qword(index, Op::MaskedEq(value), two);
                                        }
                                        other => panic!("op {other}"),
                                    };
                                    Cond::dword(index, op, value)
                                })
                                .collect();
                            match outcomes.entry(nr).or_insert(Outcome::Check(Vec::new())) {
                                Outcome::Check(alts) => alts.push(alt),
                                o => panic!("{name} listed twice: {o:?}"),
                            }
                            continue;
                        }
                        (a, _) => panic!("action {a}"),
                    };
                    assert!(outcomes.insert(nr, outcome).is_none(), "{name} twice");
                }
            }
            let back = tree::build(&outcomes, &BTreeMap::new(), libc::EPERM as u32).unwrap();
            let ours = compile(caps).unwrap();
            // Below 2^32 only: there libseccomp's 64-bit comparisons and berth's 32-bit ones
            // agree (see `docker_default_oci`).
            for nr in 0u32..=600 {
                for a in [
                    0u64,
                    2,
                    8,
                    38,
                    40,
                    41,
                    131080,
                    0x1000_0000,
                    0x10_0000,
                    0xffff_ffff,
                ] {
                    let d = data(0xc000_003e, nr, a);
                    assert_eq!(
                        tree::run(&back, &d),
                        verdict(&ours.filters, &d),
                        "caps {:x} nr {nr} arg0 {a:#x}",
                        caps.0
                    );
                }
            }
        }
    }
}
