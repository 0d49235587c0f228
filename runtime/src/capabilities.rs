//! Linux capabilities: names, Docker's default set, and applying a set to the current process.
//!
//! Takes `cap_add` / `cap_drop` / `privileged` from the [`ContainerSpec`](crate::ContainerSpec),
//! gives a [`CapSet`] (a bit mask), and applies it in the container init or the exec helper:
//! drop the bounding set with `PR_CAPBSET_DROP`, then `capset(2)` the effective, permitted and
//! inheritable sets and clear the ambient set. Used by `init` and `exec`; `seccomp` reads the
//! set to pick the capability-gated syscall groups, as Docker does.

use std::fmt;
use std::str::FromStr;

use tracing::debug;

/// One capability, numbered as in `linux/capability.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Capability {
    Chown = 0,
    DacOverride = 1,
    DacReadSearch = 2,
    Fowner = 3,
    Fsetid = 4,
    Kill = 5,
    Setgid = 6,
    Setuid = 7,
    Setpcap = 8,
    LinuxImmutable = 9,
    NetBindService = 10,
    NetBroadcast = 11,
    NetAdmin = 12,
    NetRaw = 13,
    IpcLock = 14,
    IpcOwner = 15,
    SysModule = 16,
    SysRawio = 17,
    SysChroot = 18,
    SysPtrace = 19,
    SysPacct = 20,
    SysAdmin = 21,
    SysBoot = 22,
    SysNice = 23,
    SysResource = 24,
    SysTime = 25,
    SysTtyConfig = 26,
    Mknod = 27,
    Lease = 28,
    AuditWrite = 29,
    AuditControl = 30,
    Setfcap = 31,
    MacOverride = 32,
    MacAdmin = 33,
    Syslog = 34,
    WakeAlarm = 35,
    BlockSuspend = 36,
    AuditRead = 37,
    Perfmon = 38,
    Bpf = 39,
    CheckpointRestore = 40,
}

/// All capabilities with their kernel names, in number order.
const ALL: [(Capability, &str); 41] = [
    (Capability::Chown, "CHOWN"),
    (Capability::DacOverride, "DAC_OVERRIDE"),
    (Capability::DacReadSearch, "DAC_READ_SEARCH"),
    (Capability::Fowner, "FOWNER"),
    (Capability::Fsetid, "FSETID"),
    (Capability::Kill, "KILL"),
    (Capability::Setgid, "SETGID"),
    (Capability::Setuid, "SETUID"),
    (Capability::Setpcap, "SETPCAP"),
    (Capability::LinuxImmutable, "LINUX_IMMUTABLE"),
    (Capability::NetBindService, "NET_BIND_SERVICE"),
    (Capability::NetBroadcast, "NET_BROADCAST"),
    (Capability::NetAdmin, "NET_ADMIN"),
    (Capability::NetRaw, "NET_RAW"),
    (Capability::IpcLock, "IPC_LOCK"),
    (Capability::IpcOwner, "IPC_OWNER"),
    (Capability::SysModule, "SYS_MODULE"),
    (Capability::SysRawio, "SYS_RAWIO"),
    (Capability::SysChroot, "SYS_CHROOT"),
    (Capability::SysPtrace, "SYS_PTRACE"),
    (Capability::SysPacct, "SYS_PACCT"),
    (Capability::SysAdmin, "SYS_ADMIN"),
    (Capability::SysBoot, "SYS_BOOT"),
    (Capability::SysNice, "SYS_NICE"),
    (Capability::SysResource, "SYS_RESOURCE"),
    (Capability::SysTime, "SYS_TIME"),
    (Capability::SysTtyConfig, "SYS_TTY_CONFIG"),
    (Capability::Mknod, "MKNOD"),
    (Capability::Lease, "LEASE"),
    (Capability::AuditWrite, "AUDIT_WRITE"),
    (Capability::AuditControl, "AUDIT_CONTROL"),
    (Capability::Setfcap, "SETFCAP"),
    (Capability::MacOverride, "MAC_OVERRIDE"),
    (Capability::MacAdmin, "MAC_ADMIN"),
    (Capability::Syslog, "SYSLOG"),
    (Capability::WakeAlarm, "WAKE_ALARM"),
    (Capability::BlockSuspend, "BLOCK_SUSPEND"),
    (Capability::AuditRead, "AUDIT_READ"),
    (Capability::Perfmon, "PERFMON"),
    (Capability::Bpf, "BPF"),
    (Capability::CheckpointRestore, "CHECKPOINT_RESTORE"),
];

/// Docker's 14 default capabilities (moby `oci/caps/defaults.go`); CapEff `00000000a80425fb`.
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Errors from parsing or applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("unknown capability {name:?}")]
    Unknown { name: String },
    #[error("cannot drop capability {cap} from the bounding set")]
    BoundingDrop {
        cap: Capability,
        #[source]
        source: std::io::Error,
    },
    #[error("capability {cap} was asked for, but berth itself doesn't have it (not in its bounding or permitted set)")]
    Unavailable { cap: Capability },
    #[error("capset failed")]
    Capset(#[source] std::io::Error),
    #[error("cannot clear the ambient capability set")]
    Ambient(#[source] std::io::Error),
}

impl Capability {
    /// The kernel name without the `CAP_` prefix, e.g. `NET_ADMIN`.
    pub fn name(self) -> &'static str {
        ALL[self as usize].1
    }

    /// Every capability this crate knows.
    pub fn all() -> impl Iterator<Item = Capability> {
        ALL.iter().map(|(c, _)| *c)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.name())
    }
}

impl FromStr for Capability {
    type Err = CapabilityError;

    /// Accepts Docker's spellings: `NET_ADMIN`, `CAP_NET_ADMIN`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up);
        ALL.iter()
            .find(|(_, n)| *n == bare)
            .map(|(c, _)| *c)
            .ok_or_else(|| CapabilityError::Unknown {
                name: s.to_string(),
            })
    }
}

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Docker's default set.
    pub fn docker_default() -> Self {
        DOCKER_DEFAULT.iter().copied().collect()
    }

    /// Every known capability (privileged containers).
    pub fn all() -> Self {
        Capability::all().collect()
    }

    /// The capabilities this process can hand on: its bounding ∩ permitted sets (root in
    /// a restricted environment may lack some, e.g. CAP_SYS_RESOURCE). Read once per
    /// process (42 syscalls; a start asked twice, to validate the spec and to compile its
    /// seccomp profile): berth's processes drop capabilities only in a container's init or
    /// exec helper, right before exec, and never ask again after.
    pub fn available() -> Self {
        static AVAILABLE: std::sync::OnceLock<CapSet> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(Self::read_available)
    }

    fn read_available() -> Self {
        // capget and PR_CAPBSET_READ: a few syscalls, where /proc/self/status makes the
        // kernel render some fifty fields.
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: header and two data structs as capget(2) requires for version 3.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut hdr as *mut CapHeader,
                data.as_mut_ptr(),
            )
        };
        let permitted = if rc == 0 {
            u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32)
        } else {
            u64::MAX
        };
        let mut bounding = 0u64;
        for cap in Capability::all() {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
            // 1: in the set; 0: not; -1 (EINVAL): a capability this kernel does not know.
            if r == 1 {
                bounding |= 1u64 << cap as u8;
            }
        }
        CapSet(bounding & permitted)
    }

    /// Only the capabilities in both sets.
    pub fn intersect(self, other: CapSet) -> Self {
        CapSet(self.0 & other.0)
    }

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & (1u64 << cap as u8) != 0
    }

    pub fn insert(&mut self, cap: Capability) {
        self.0 |= 1u64 << cap as u8;
    }

    pub fn remove(&mut self, cap: Capability) {
        self.0 &= !(1u64 << cap as u8);
    }

    /// Docker's rule: start from the defaults (or everything when privileged), add `cap_add`,
    /// then remove `cap_drop`; `ALL` in either list means every capability.
    pub fn resolve(
        privileged: bool,
        cap_add: &[String],
        cap_drop: &[String],
    ) -> Result<Self, CapabilityError> {
        if privileged {
            return Ok(Self::all());
        }
        let mut set = Self::docker_default();
        if cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            set = Self::default();
        }
        for name in cap_add {
            if name.eq_ignore_ascii_case("ALL") {
                set = Self::all();
            } else {
                set.insert(name.parse()?);
            }
        }
        for name in cap_drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
            set.remove(name.parse()?);
        }
        Ok(set)
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapSet::default();
        for c in iter {
            set.insert(c);
        }
        set
    }
}

/// Drops every capability outside `keep` from the bounding set of the calling process.
/// Needs CAP_SETPCAP, so it runs before the user switch.
pub(crate) fn drop_bounding(keep: CapSet) -> Result<(), CapabilityError> {
    // The running kernel may know more capabilities than this table; drop those too.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .unwrap_or(40);
    for n in 0..=last.min(63) {
        if keep.0 & (1u64 << n) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability number.
            if err.raw_os_error() == Some(libc::EINVAL) {
                continue;
            }
            let cap = ALL
                .get(n as usize)
                .map(|c| c.0)
                .unwrap_or(Capability::Chown);
            return Err(CapabilityError::BoundingDrop { cap, source: err });
        }
    }
    debug!(
        mask = format_args!("{:016x}", keep.0),
        "bounding set dropped"
    );
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective and permitted to `set` (inheritable and ambient empty), as runc does for
/// Docker's spec. Runs after the user switch (with PR_SET_KEEPCAPS) so the sets survive it.
pub(crate) fn apply(set: CapSet) -> Result<(), CapabilityError> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = set.0 as u32;
    let hi = (set.0 >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: header and two data structs as capset(2) requires for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(CapabilityError::Capset(std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(CapabilityError::Ambient(std::io::Error::last_os_error()));
    }
    debug!(mask = format_args!("{:016x}", set.0), "capabilities set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The syscalls give what the kernel prints in /proc/self/status (known caps only).
    #[test]
    fn available_matches_proc_status() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        let want = mask("CapBnd:") & mask("CapPrm:") & CapSet::all().0;
        assert_eq!(CapSet::available().0, want);
    }

    #[test]
    fn docker_default_mask_matches_docker() {
        assert_eq!(CapSet::docker_default().0, 0xa80425fb);
    }

    #[test]
    fn add_and_drop_follow_docker_rules() {
        let s = CapSet::resolve(false, &["net_admin".into()], &["CAP_CHOWN".into()]).unwrap();
        assert!(s.contains(Capability::NetAdmin));
        assert!(!s.contains(Capability::Chown));
        let s = CapSet::resolve(false, &["KILL".into()], &["ALL".into()]).unwrap();
        assert_eq!(s, [Capability::Kill].into_iter().collect());
        assert_eq!(CapSet::resolve(true, &[], &[]).unwrap(), CapSet::all());
        assert!(CapSet::resolve(false, &["NOPE".into()], &[]).is_err());
    }

    #[test]
    fn names_round_trip() {
        for c in Capability::all() {
            assert_eq!(c.name().parse::<Capability>().unwrap(), c);
            assert_eq!(ALL[c as usize].0, c);
        }
    }
}
