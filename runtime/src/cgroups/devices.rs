//! Device access rules for cgroup v2: a tiny `BPF_PROG_TYPE_CGROUP_DEVICE` program.
//!
//! Takes device rules (type, major, minor, access), gives an eBPF program built by hand (no
//! libbpf, no compiler), loaded with `bpf(BPF_PROG_LOAD)` and attached to a cgroup dir with
//! `bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE)`. v2 has no devices.allow file: without this, a
//! container holding CAP_MKNOD could create and open host block devices. Used by `v2`; v1
//! writes the same rules to `devices.allow` (`v1::DEVICE_ALLOW`).
//!
//! The program reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
//! (`access_type` = access << 16 | type) and returns 1 (allow) at the first matching rule,
//! 0 (deny) otherwise, as runc's devicefilter does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tracing::debug;

/// `BPF_DEVCG_DEV_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    Block = 1,
    Char = 2,
}

/// One rule: `None` matches any major/minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DevType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `BPF_DEVCG_ACC_*` bits: mknod 1, read 2, write 4.
    pub access: u32,
}

const MKNOD: u32 = 1;
const RWM: u32 = 7;

/// Docker's default rules (the same list as v1's `devices.allow`).
pub fn docker_default() -> Vec<DeviceRule> {
    let c = |major, minor| DeviceRule {
        kind: DevType::Char,
        major: Some(major),
        minor,
        access: RWM,
    };
    vec![
        DeviceRule {
            kind: DevType::Char,
            major: None,
            minor: None,
            access: MKNOD,
        },
        DeviceRule {
            kind: DevType::Block,
            major: None,
            minor: None,
            access: MKNOD,
        },
        c(1, Some(3)),
        c(1, Some(5)),
        c(1, Some(7)),
        c(1, Some(8)),
        c(1, Some(9)),
        c(5, Some(0)),
        c(5, Some(2)),
        c(136, None),
        c(10, Some(200)),
    ]
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const MOV64_K: u8 = 0xb7;
const MOV64_X: u8 = 0xbf;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

/// Builds the filter program for `rules`.
pub(crate) fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor (r1 = ctx)
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH64_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check is a JNE to the end of this rule's block (filled in below).
        let mut block: Vec<(Insn, bool)> = vec![(insn(JNE_K, 2, 0, 0, r.kind as i32), true)];
        if r.access & RWM != RWM {
            block.push((insn(MOV64_X, 0, 3, 0, 0), false));
            block.push((
                insn(AND64_K, 0, 0, 0, !(r.access as i32) & RWM as i32),
                false,
            ));
            block.push((insn(JNE_K, 0, 0, 0, 0), true));
        }
        if let Some(m) = r.major {
            block.push((insn(JNE_K, 4, 0, 0, m as i32), true));
        }
        if let Some(m) = r.minor {
            block.push((insn(JNE_K, 5, 0, 0, m as i32), true));
        }
        block.push((insn(MOV64_K, 0, 0, 0, 1), false));
        block.push((insn(EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        for (i, (mut ins, jump)) in block.into_iter().enumerate() {
            if jump {
                ins.off = (len - 1 - i) as i16;
            }
            p.push(ins);
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Errors loading or attaching the program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("cannot load the device filter program (verifier log: {log})")]
    Load {
        log: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open cgroup {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach the device filter to {path}")]
    Attach {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// Loads the program for `rules` and attaches it to the cgroup dir `cgroup`. The attachment
/// lives as long as the cgroup.
pub(crate) fn attach(cgroup: &Path, rules: &[DeviceRule]) -> Result<(), DeviceFilterError> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| -> libc::c_long {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
        attr[4..8].copy_from_slice(&(prog.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        if !log.is_empty() {
            attr[24..28].copy_from_slice(&1u32.to_ne_bytes()); // log_level
            attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
            attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        }
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    // Without a log first: a verbose log that does not fit fails the load with ENOSPC.
    let mut fd = load(&mut []);
    if fd < 0 {
        let mut log = vec![0u8; 1 << 20];
        fd = load(&mut log);
        if fd < 0 {
            let source = std::io::Error::last_os_error();
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(DeviceFilterError::Load { log: tail, source });
        }
    }
    // SAFETY: a new fd from the kernel.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceFilterError::Open {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog_fd.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    if bpf(BPF_PROG_ATTACH, &mut attr) < 0 {
        return Err(DeviceFilterError::Attach {
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    debug!(cgroup = %cgroup.display(), rules = rules.len(), insns = prog.len(), "device filter attached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a context, as the kernel would (only the opcodes we emit).
    fn eval(p: &[Insn], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = ctx[i.off as usize / 4] as u64,
                AND64_K => r[dst] &= i.imm as i64 as u64,
                RSH64_K => r[dst] >>= i.imm,
                MOV64_K => r[dst] = i.imm as i64 as u64,
                MOV64_X => r[dst] = r[src],
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn docker_rules_allow_and_deny_like_devices_allow() {
        let p = program(&docker_default());
        let (c, b) = (DevType::Char as u32, DevType::Block as u32);
        assert_eq!(eval(&p, c, 1, 3, 2 | 4), 1, "rw /dev/null");
        assert_eq!(eval(&p, c, 136, 7, 2), 1, "pts");
        assert_eq!(eval(&p, b, 8, 0, 1), 1, "mknod of a block device");
        assert_eq!(eval(&p, b, 8, 0, 2), 0, "reading a disk");
        assert_eq!(eval(&p, c, 1, 11, 2), 0, "/dev/kmsg");
        assert_eq!(eval(&p, c, 1, 3, 1 | 2), 1, "mknod+read of null");
        assert_eq!(eval(&p, c, 10, 200, 6), 1, "tun");
        assert_eq!(eval(&p, c, 10, 229, 2), 0, "fuse");
    }
}
