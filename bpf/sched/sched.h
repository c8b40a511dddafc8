/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Structs shared by sched.bpf.c and the C++ reader (daemon/bpf/sched_probe.*): the scheduler
 * probes, run-queue latency and off-CPU (blocked) time, which share one sched_switch program.
 */
#ifndef KPULSE_BPF_SCHED_H
#define KPULSE_BPF_SCHED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/*
 * log2 histogram of durations in nanoseconds, starting at 2^SCHED_HIST_MIN_LOG2 ns (~1 us):
 * slot i holds [2^(i+10), 2^(i+11)) ns, slot 0 also everything shorter, the last slot everything
 * from 2^(SLOTS+9) ns (68.7 s) up. Powers of two of nanoseconds need no division on the hot path.
 * The exporter's bucket for slot i is le = 2^(i+11) ns; the last slot only appears in le="+Inf".
 */
#define SCHED_HIST_SLOTS 27
#define SCHED_HIST_MIN_LOG2 10

struct sched_hist {
	__u64 slots[SCHED_HIST_SLOTS];
	__u64 sum_ns; /* exact sum of the recorded durations */
	/* No count field: the count is the sum of the slots, one atomic add fewer per event. */
};

/*
 * Histograms live in arrays indexed by a per-cgroup slot (cgroup_slots: cgroup id -> slot), so
 * the hot path indexes an array instead of hashing a key; the sched_info path caches its task's
 * slot in task storage, so it hashes only when the task's cgroup changes.
 * runq_hists[slot] (a PERCPU_ARRAY with the per_cpu option); offcpu_hists[slot *
 * OFFCPU_STATE_MAX + state]. Slots below runq_hot_slots / offcpu_hot_slots live in per-CPU twins
 * of these arrays instead (runq_hot_hists, offcpu_hot_hists), updated without atomics; the shared
 * arrays then start at slot runq_hot_slots / offcpu_hot_slots (sched_hist_index()).
 *
 * Slots are recycled. Free slots wait in free_slots (a STACK map: the lowest, per-CPU ones are
 * handed out first, and a freed slot is reused first); slot_owner[slot] names the cgroup a slot
 * belongs to (0: none), and a task's cached slot is used only while slot_owner still names the
 * task's cgroup. User space retires the slot of a removed cgroup in two steps, a sweep apart:
 * it unpublishes the slot (cgroup_slots entry deleted, slot_owner 0), then, once every program
 * that could still have been writing to it has returned, harvests and zeroes its histograms and
 * pushes it back onto free_slots.
 */
#define CGROUP_SLOT_NONE 0xffffffffu /* every slot taken: counted in sched_totals instead */

/* Index of `entry` (0, or an offcpu_state) of cgroup slot `slot` in its probe's histogram arrays:
 * the per-CPU array for slots below `hot_slots`, the shared one (from its index 0) above. One
 * definition for the BPF program and the C++ reader. */
static inline __attribute__((always_inline)) __u32
sched_hist_index(__u32 slot, __u32 hot_slots, __u32 entries_per_slot, __u32 entry)
{
	return (slot < hot_slots ? slot : slot - hot_slots) * entries_per_slot + entry;
}

/* Why a task was off-CPU, from the state bits at its switch-out (bit tests, not equality). */
enum offcpu_state {
	OFFCPU_SLEEP = 0, /* TASK_INTERRUPTIBLE (S): sleeps, futexes, sockets, pipes, epoll */
	OFFCPU_DISK = 1,  /* TASK_UNINTERRUPTIBLE without NOLOAD (D): disk I/O, some locks, vfork */
	OFFCPU_IDLE = 2,  /* TASK_IDLE (D | NOLOAD): kernel threads waiting for work */
	OFFCPU_OTHER = 3, /* stopped, traced, parked, ... */
	OFFCPU_STATE_MAX = 4,
	OFFCPU_EXITING = 0xfe,     /* TASK_DEAD: the task's last switch-out */
	OFFCPU_NOT_BLOCKED = 0xff, /* preempted or still runnable: no off-CPU interval */
};

/* A stack as the kernel's stack helpers write it: innermost frame first, zero-padded. */
#define OFFCPU_STACK_DEPTH 127 /* PERF_MAX_STACK_DEPTH */
struct stack_frames {
	__u64 ips[OFFCPU_STACK_DEPTH];
};

/* Blocked time aggregated by where the task blocked (opt-in). Stacks are referred to by a hash
 * of their frames, the key of offcpu_stack_frames; 0 = not captured. */
struct offcpu_stack_key {
	__u64 cgroup_id;
	__u64 kstack; /* kernel stack */
	__u64 ustack; /* user stack */
	__u32 tgid;   /* process, for user-frame symbols and the root frame */
	__u32 state;  /* enum offcpu_state */
};

struct offcpu_stack_value {
	__u64 blocked_ns;
	__u64 count;
};

/*
 * Per-task state of the primary (sched_info) path, in task-local storage: the task's own
 * accounting as of its last switch-out.
 */
struct sched_task_state {
	__u64 run_delay;     /* task->sched_info.run_delay: total ns spent runnable, waiting */
	__u64 pcount;        /* task->sched_info.pcount: times it was switched in */
	__u64 switch_out_ns; /* the run queue's clock (rq->clock) at that switch-out */
	__u64 cgroup_id;     /* its cgroup then: a block is charged where it began */
	__u64 kstack;        /* stacks on: its kernel stack, taken at its switch-in if the block was
				long enough, else 0 */
	__u64 ustack;        /* stacks on: its user stack, taken at that switch-out, else 0 */
	__u32 slot;          /* cgroup_id's slot (or CGROUP_SLOT_NONE): the per-task cache */
	__u32 state;         /* enum offcpu_state at that switch-out */
};

/* Fallback (wakeup) path: a blocked task's switch-out, until its wakeup. */
struct offcpu_start {
	__u64 switch_out_ns;
	__u64 kstack; /* stacks on: both taken at the switch-out */
	__u64 ustack;
	__u32 state;
	__u32 pad;
};

/* Node-wide, one per CPU (PERCPU_ARRAY, key 0): never lost. */
struct sched_totals {
	struct sched_hist runq_overflow; /* waits not in runq_hists (no slot left) */
	__u64 runq_start_drops;          /* fallback: enqueue timestamps the start map could not hold */
	struct sched_hist offcpu_overflow[OFFCPU_STATE_MAX]; /* blocks not in offcpu_hists */
	__u64 offcpu_start_drops; /* fallback: switch-outs the start map could not hold */
	__u64 stack_drops;        /* stack aggregates not recorded (a map full, or no stack taken) */
};

#endif /* KPULSE_BPF_SCHED_H */
