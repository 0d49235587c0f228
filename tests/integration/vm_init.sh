#!/bin/busybox sh
# PID 1 of the throwaway VM of `vm::cgroup_v2_limits_in_vm` (tests/integration/vm.rs).
#
# The initramfs holds busybox (/bin/busybox), berth, berth-shim and berth-full with their
# shared libs, overlay.ko and the busybox fixture image (/fixture/busybox-oci). The VM has a pure cgroup2
# hierarchy (no v1 mount) with the memory, pids and cpu controllers, and no network device.
# Every result is one `BERTH-VM key=value` line on the serial console; the test parses and
# asserts them. The last line is `BERTH-VM done`, then the VM powers off.

if [ "$1" != stage2 ]; then
	# Stage 1, on the initramfs: containers pivot_root, which the initramfs root (rootfs)
	# does not allow, so move everything onto a tmpfs and switch_root to it.
	/bin/busybox mkdir -p /proc /newroot
	/bin/busybox mount -t proc proc /proc
	/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /newroot
	for d in /bin /lib /lib64 /berth /fixture /modules /init; do
		[ -e "$d" ] && /bin/busybox cp -a "$d" /newroot/
	done
	/bin/busybox umount /proc
	exec /bin/busybox switch_root /newroot /init stage2
fi

/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
say() { echo "BERTH-VM $*"; }

mkdir -p /proc /sys /dev /tmp /run /root /etc /var/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd
echo 'root:x:0:' >/etc/group
echo 127.0.0.1 localhost >/etc/hosts
hostname berth-vm
for m in /modules/*.ko; do
	[ -e "$m" ] && insmod "$m"
done

say kernel="$(uname -r)"
say v1_mounts="$(grep -c ' cgroup ' /proc/mounts)"
say v2_mounts="$(grep -c ' cgroup2 ' /proc/mounts)"
say root_controllers="$(cat /sys/fs/cgroup/cgroup.controllers)"
# berth enables what a limit needs in the root's and berth/'s subtree_control itself.
say root_subtree_before="$(cat /sys/fs/cgroup/cgroup.subtree_control)"

export BERTH_ROOT=/var/lib/berth BERTH_DNS_UPSTREAM=none
B=/berth/berth
CG=/sys/fs/cgroup/berth
# One line of `inspect` JSON.
inspect() { $B container inspect "$1" 2>&1 | tr -d '\n'; }
# Waits up to $1 seconds for the logs of container $2 to contain $3.
wait_log() {
	n=0
	while [ "$n" -lt "$(($1 * 5))" ]; do
		$B container logs "$2" 2>&1 | grep -q "$3" && return 0
		sleep 0.2
		n=$((n + 1))
	done
	return 1
}
# usage_usec from a cpu.stat file.
usage() { awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"; }

t0=$(cut -d' ' -f1 /proc/uptime)
say boot_s="$t0"

$B image load -i /fixture/busybox-oci >/tmp/load.out 2>&1
say load_exit=$?

# 1. Memory: dd holds a 256 MiB buffer under a 32 MiB limit.
$B container run --name oom --memory 32m busybox \
	dd if=/dev/zero of=/dev/null bs=256M count=4 >/tmp/oom.out 2>&1
say oom_exit=$?
say oom_inspect="$(inspect oom)"
$B container rm oom >/dev/null 2>&1
say oom_rm_exit=$?
say oom_dir="$([ -e $CG/oom ] && echo present || echo absent)"

# 2. Pids: the inner shell forks until the limit stops it; the outer one execs.
$B container run -d --name pids --pids-limit 16 busybox sh -c \
	"sh -c 'for i in \$(seq 1 100); do sleep 1000 & done'; echo bomb-over; exec sleep 1000" \
	>/tmp/pids.out 2>&1
say pids_run_exit=$?
wait_log 60 pids bomb-over
say pids_bomb_over=$?
say pids_cant_fork="$($B container logs pids 2>&1 | grep -c "can't fork")"
say pids_max="$(cat $CG/pids/pids.max)"
say pids_current="$(cat $CG/pids/pids.current)"
say pids_procs="$(wc -l <$CG/pids/cgroup.procs)"
$B container rm -f pids >/dev/null 2>&1
say pids_rm_exit=$?
say pids_dir="$([ -e $CG/pids ] && echo present || echo absent)"

# 3. cpu.max, memory.max, pids.max, throttling, then pause/unpause through cgroup.freeze.
$B container run -d --name lim --cpus 0.5 --memory 48m --pids-limit 20 busybox sh -c \
	'i=0; while true; do i=$((i+1)); done' >/tmp/lim.out 2>&1
say lim_run_exit=$?
D=$CG/lim
say lim_cpu_max="$(cat $D/cpu.max)"
say lim_memory_max="$(cat $D/memory.max)"
say lim_pids_max="$(cat $D/pids.max)"
say lim_swap_max="$(cat $D/memory.swap.max)"
say root_subtree_after="$(cat /sys/fs/cgroup/cgroup.subtree_control)"
say berth_subtree="$(cat $CG/cgroup.subtree_control)"
pid=$(inspect lim | grep -o '"Pid": *[0-9]*' | grep -o '[0-9]*$')
say lim_pid_cgroup="$(grep '^0::' /proc/$pid/cgroup)"
# CPU used by the busy loop over 3 s of wall time (two vCPUs: unthrottled it would take one).
u0=$(usage $D)
w0=$(cut -d' ' -f1 /proc/uptime)
sleep 3
u1=$(usage $D)
w1=$(cut -d' ' -f1 /proc/uptime)
say lim_cpu_ratio="$(awk -v u0="$u0" -v u1="$u1" -v w0="$w0" -v w1="$w1" \
	'BEGIN { printf "%.3f", (u1 - u0) / 1e6 / (w1 - w0) }')"
say lim_nr_throttled="$(awk '$1 == "nr_throttled" { print $2 }' $D/cpu.stat)"

$B container pause lim >/tmp/pause.out 2>&1
say pause_exit=$?
say paused_events_frozen="$(awk '$1 == "frozen" { print $2 }' $D/cgroup.events)"
say paused_freeze_file="$(cat $D/cgroup.freeze)"
say paused_status="$($B container ls 2>&1 | grep -w lim | grep -c Paused)"
# CPU time only grows (a counter file read mid-rewrite can read empty).
u0=$(usage $D)
sleep 1
u1=$(usage $D)
say paused_usage_delta=$((u1 - u0))
$B container unpause lim >/tmp/unpause.out 2>&1
say unpause_exit=$?
say unpaused_events_frozen="$(awk '$1 == "frozen" { print $2 }' $D/cgroup.events)"
u0=$(usage $D)
sleep 1
u1=$(usage $D)
say unpaused_usage_delta=$((u1 - u0))
say exec_out="$($B container exec lim echo alive 2>&1)"
$B container rm -f lim >/dev/null 2>&1
say lim_rm_exit=$?
say lim_dir="$([ -e $D ] && echo present || echo absent)"
say berth_dir="$([ -e $CG ] && echo present || echo absent)"
say containers_left="$($B container ls -a -q 2>&1 | wc -l)"
say test_s="$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')"
# On failure the test prints the whole console; give it the details.
for f in /tmp/load.out /tmp/oom.out /tmp/pids.out /tmp/lim.out /tmp/pause.out /tmp/unpause.out; do
	[ -s "$f" ] && sed "s|^|BERTH-VM-LOG ${f#/tmp/}: |" "$f"
done
say done
sync
poweroff -f
