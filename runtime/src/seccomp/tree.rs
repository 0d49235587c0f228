//! Docker's profile as one classic-BPF filter that finds the syscall by binary search.
//!
//! Takes the allowlist (`allow_rules`: syscall number → alternatives, empty = always) and the
//! syscalls answered with ENOSYS, gives one `sock_filter` program: arch check, then a balanced
//! tree of `jge` over the number ranges that share an outcome, whose leaves return the outcome
//! or run the argument checks of the three conditional syscalls (socket, personality, clone).
//!
//! Why not seccompiler's own output: it tests every allowed number in turn (about 1600
//! instructions for Docker's ~350 names), and the kernel's BPF conversion and JIT at load time
//! cost ~0.5 ms per container, and every syscall of the container walks that list. The tree
//! is ~10× smaller and a syscall costs ~log2(ranges) comparisons. seccompiler stays the
//! reference: a unit test runs both programs through a BPF interpreter on every number and on
//! argument values around each condition, and requires the same action.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};
#[cfg(test)]
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};

// Classic BPF opcodes (`linux/filter.h`).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `seccomp_data` offsets: nr, arch, then six 64-bit args (little endian).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg(index: u8, high: bool) -> u32 {
    16 + 8 * index as u32 + if high { 4 } else { 0 }
}

/// One comparison of an argument against a constant, as in the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cond {
    pub index: u8,
    /// Only the low 32 bits (`Dword`) or all 64 (`Qword`).
    pub qword: bool,
    pub op: Op,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Lt,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// What a syscall number leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allow,
    Errno(u32),
    /// Allowed when any alternative (all of its conditions) holds, else the default errno.
    Check(Vec<Vec<Cond>>),
}

/// Small instruction builder with forward jumps counted in instructions.
fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: usize, jf: usize) -> Option<sock_filter> {
    Some(sock_filter {
        code,
        jt: u8::try_from(jt).ok()?,
        jf: u8::try_from(jf).ok()?,
        k,
    })
}

/// Builds the filter: `x86_64` and `i386` map each ABI's numbers to outcomes; every other
/// number (and every x32 number, `nr | 0x40000000` under the x86_64 audit arch) gets
/// `ERRNO(default_errno)`; another audit arch is killed. `None` only if a subtree outgrows a
/// `ja` (never for a profile of this size).
pub(crate) fn build(
    x86_64: &BTreeMap<u32, Outcome>,
    i386: &BTreeMap<u32, Outcome>,
    default_errno: u32,
) -> Option<BpfProgram> {
    let tree64 = number_tree(x86_64, default_errno)?;
    let tree32 = number_tree(i386, default_errno)?;
    // 0 ld arch; 1 i386? -> 2 : 3; 2 ja i386 block; 3 x86_64? -> 5 : 4; 4 kill;
    // 5 ld nr, x86_64 tree; then ld nr, i386 tree.
    let mut prog = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH_I386, 0, 1)?,
        stmt(JA, u32::try_from(tree64.len() + 3).ok()?),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)?,
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    prog.extend(tree64);
    prog.push(stmt(LD_W_ABS, OFF_NR));
    prog.extend(tree32);
    Some(prog)
}

/// The binary search over one ABI's numbers (the accumulator holds the number on entry).
fn number_tree(rules: &BTreeMap<u32, Outcome>, default_errno: u32) -> Option<Vec<sock_filter>> {
    let default = Outcome::Errno(default_errno);
    // Ranges [lo, next lo) with one outcome each, covering 0..=u32::MAX.
    let mut ranges: Vec<(u32, Outcome)> = Vec::new();
    let mut next = 0u64;
    for (&nr, outcome) in rules {
        if u64::from(nr) > next {
            push_range(&mut ranges, next as u32, &default);
        }
        push_range(&mut ranges, nr, outcome);
        next = u64::from(nr) + 1;
    }
    if next <= u64::from(u32::MAX) {
        push_range(&mut ranges, next as u32, &default);
    }
    subtree(&ranges, default_errno)
}

fn push_range(ranges: &mut Vec<(u32, Outcome)>, lo: u32, outcome: &Outcome) {
    if ranges.last().is_some_and(|(_, o)| o == outcome) {
        return; // same outcome as the range before: extend it
    }
    ranges.push((lo, outcome.clone()));
}

/// Code for `ranges` (the accumulator holds the syscall number on entry).
fn subtree(ranges: &[(u32, Outcome)], default_errno: u32) -> Option<Vec<sock_filter>> {
    if let [(_, outcome)] = ranges {
        return leaf(outcome, default_errno);
    }
    let mid = ranges.len() / 2;
    let left = subtree(&ranges[..mid], default_errno)?;
    let right = subtree(&ranges[mid..], default_errno)?;
    let split = ranges[mid].0;
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match jump(JGE_K, split, left.len(), 0) {
        Some(j) => out.push(j),
        None => {
            // Too far for jt: `jge` falls into a `ja` over the left half.
            out.push(jump(JGE_K, split, 0, 1)?);
            out.push(stmt(JA, u32::try_from(left.len()).ok()?));
        }
    }
    out.extend(left);
    out.extend(right);
    Some(out)
}

fn leaf(outcome: &Outcome, default_errno: u32) -> Option<Vec<sock_filter>> {
    match outcome {
        Outcome::Allow => Some(vec![stmt(RET_K, RET_ALLOW)]),
        Outcome::Errno(e) => Some(vec![stmt(RET_K, RET_ERRNO | (e & 0xffff))]),
        Outcome::Check(alternatives) => {
            // Each alternative jumps to `deny` on the first failed condition and returns
            // ALLOW when all hold; the last `deny` is the default errno.
            let mut out = Vec::new();
            for conds in alternatives {
                let mut block = Vec::new();
                for c in conds {
                    block.extend(cond_code(c)?);
                }
                // `Fail` markers jump to the end of this block (the next alternative).
                let end = block.len() + 1; // after the `ret ALLOW`
                let mut fixed = Vec::with_capacity(end);
                for (i, ins) in block.into_iter().enumerate() {
                    fixed.push(match ins {
                        Ins::Op(s) => s,
                        Ins::FailIfFalse(code, k) => jump(code, k, 0, end - i - 1)?,
                        Ins::FailIfTrue(code, k) => jump(code, k, end - i - 1, 0)?,
                    });
                }
                fixed.push(stmt(RET_K, RET_ALLOW));
                out.extend(fixed);
            }
            out.push(stmt(RET_K, RET_ERRNO | (default_errno & 0xffff)));
            Some(out)
        }
    }
}

/// An instruction of a condition, before the fail jumps are known.
enum Ins {
    Op(sock_filter),
    /// Go on when the jump condition holds, fail otherwise.
    FailIfFalse(u16, u32),
    /// Fail when the jump condition holds, go on otherwise.
    FailIfTrue(u16, u32),
}

/// Code testing one condition on the argument words (clobbers the accumulator).
fn cond_code(c: &Cond) -> Option<Vec<Ins>> {
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let ld = |high| Ins::Op(stmt(LD_W_ABS, off_arg(c.index, high)));
    let mut out = Vec::new();
    match (c.op, c.qword) {
        (Op::Eq, false) => {
            out.push(ld(false));
            out.push(Ins::FailIfFalse(JEQ_K, lo(c.value)));
        }
        (Op::Eq, true) => {
            out.push(ld(true));
            out.push(Ins::FailIfFalse(JEQ_K, hi(c.value)));
            out.push(ld(false));
            out.push(Ins::FailIfFalse(JEQ_K, lo(c.value)));
        }
        (Op::Lt, false) => {
            // a < v  ⇔  !(a >= v)
            out.push(ld(false));
            out.push(Ins::FailIfTrue(JGE_K, lo(c.value)));
        }
        (Op::Gt, false) => {
            out.push(ld(false));
            out.push(Ins::FailIfFalse(JGT_K, lo(c.value)));
        }
        (Op::MaskedEq(mask), qword) => {
            let words: &[bool] = if qword { &[true, false] } else { &[false] };
            for &high in words {
                let (m, v) = if high {
                    (hi(mask), hi(c.value))
                } else {
                    (lo(mask), lo(c.value))
                };
                if m == 0 && v == 0 {
                    continue; // always holds
                }
                out.push(ld(high));
                if v == 0 {
                    // (a & m) == 0  ⇔  no bit of m set
                    out.push(Ins::FailIfTrue(JSET_K, m));
                } else {
                    out.push(Ins::Op(stmt(AND_K, m)));
                    out.push(Ins::FailIfFalse(JEQ_K, v));
                }
            }
        }
        // 64-bit ordering is not in Docker's profile.
        (Op::Lt | Op::Gt, true) => return None,
    }
    Some(out)
}

impl Cond {
    pub(crate) fn dword(index: u8, op: Op, value: u64) -> Self {
        Self {
            index,
            qword: false,
            op,
            value,
        }
    }

    pub(crate) fn qword(index: u8, op: Op, value: u64) -> Self {
        Self {
            index,
            qword: true,
            op,
            value,
        }
    }

    /// The same condition for seccompiler (the reference compiler in tests).
    #[cfg(test)]
    pub(crate) fn to_seccompiler(self) -> SeccompCondition {
        let len = if self.qword {
            SeccompCmpArgLen::Qword
        } else {
            SeccompCmpArgLen::Dword
        };
        let op = match self.op {
            Op::Eq => SeccompCmpOp::Eq,
            Op::Lt => SeccompCmpOp::Lt,
            Op::Gt => SeccompCmpOp::Gt,
            Op::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
        };
        // Only fails for argument indexes above 5; the profile's are 0.
        SeccompCondition::new(self.index, len, op, self.value).expect("valid seccomp condition")
    }
}

/// A classic-BPF interpreter for seccomp programs (tests compare programs with it).
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], data: &[u8; 64]) -> u32 {
    let word = |off: u32| {
        let o = off as usize;
        u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = &prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => a = word(i.k),
            AND_K => a &= i.k,
            RET_K => return i.k,
            JA => pc += i.k as usize,
            JEQ_K | JGT_K | JGE_K | JSET_K => {
                let hit = match i.code {
                    JEQ_K => a == i.k,
                    JGT_K => a > i.k,
                    JGE_K => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += if hit { i.jt } else { i.jf } as usize;
            }
            other => panic!("opcode {other:#x} not interpreted"),
        }
    }
}
