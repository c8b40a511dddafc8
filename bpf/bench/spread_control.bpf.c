// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Bench-only control for kpulse_cgroup_spread_bench (never loaded by the daemon, not packaged).
 *
 * The per-task half of sched/sched.bpf.c's sched_switch_info (default options: run queue and
 * off-CPU on, stacks off), without anything per cgroup: the same task-storage lookup of `prev`
 * (create), the same sched_info reads (run_delay, pcount, last_arrival, start_time), the same
 * rq->clock read through prev's cfs_rq and the same state-word read, the same stores into a
 * task-state value of the same size. Where kpulse adds the intervals to a cgroup's histograms,
 * this adds them to two fields of the task's own value (so the reads are not optimised away and
 * no memory beyond the task's value is touched). Whatever this costs more when the switching
 * tasks are spread over many cgroups is the kernel's own footprint making the same work colder.
 *
 * Two programs, user space loads one:
 * - sched_switch_control: no cgroup id at all;
 * - sched_switch_control_cgid: also reads prev's cgroup id the way kpulse does
 *   (bpf_get_current_cgroup_id(): current->cgroups->dfl_cgrp->kn->id, one css_set, cgroup and
 *   kernfs_node per cgroup), and keeps it in the task's value, still without any per-cgroup map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kpulse/task.bpf.h"
#include "sched/sched.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u64 task_epoch_ns = 0; /* as in sched.bpf.c: set by user space before load */

/* Laid out like struct sched_task_state; waited_ns / blocked_ns sit where kstack / ustack are
 * (unused there with stacks off), so the task's value has the same size and cache lines. */
struct control_task_state {
	__u64 run_delay;
	__u64 pcount;
	__u64 switch_out_ns;
	__u64 cgroup_id;
	__u64 waited_ns;  /* sum of run-queue waits: the sink kpulse's run-queue histogram is */
	__u64 blocked_ns; /* sum of blocks: the sink kpulse's off-CPU histograms are */
	__u32 slot;       /* unused: kept for the size */
	__u32 state;
};
_Static_assert(sizeof(struct control_task_state) == sizeof(struct sched_task_state),
	       "the control's task value must match kpulse's");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct control_task_state);
} control_task_states SEC(".maps");

/* Blocked state class from the state word: a few bit tests, like kpulse's, not its exact map. */
static __always_inline __u32 control_state(bool preempt, unsigned int state)
{
	if (preempt || state == KPULSE_TASK_RUNNING)
		return OFFCPU_NOT_BLOCKED;
	if (state & 0x0001) /* TASK_INTERRUPTIBLE */
		return OFFCPU_SLEEP;
	if (state & 0x0002) /* TASK_UNINTERRUPTIBLE (NOLOAD: idle) */
		return (state & 0x0400) ? OFFCPU_IDLE : OFFCPU_DISK;
	return (state & 0x0080) ? OFFCPU_EXITING : OFFCPU_OTHER;
}

static __always_inline void control_switched_out(bool preempt, struct task_struct *prev,
						 bool with_cgroup_id)
{
	struct control_task_state *st = bpf_task_storage_get(&control_task_states, prev, 0,
							     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	__u64 run_delay = prev->sched_info.run_delay;
	__u64 pcount = prev->sched_info.pcount;
	bool has_baseline = st->pcount != 0;
	if ((has_baseline || prev->start_time >= task_epoch_ns) && pcount > st->pcount) {
		__u64 waited = run_delay - st->run_delay;
		st->waited_ns += waited;
		if (has_baseline && st->state < OFFCPU_STATE_MAX) {
			__u64 gap = prev->sched_info.last_arrival - st->switch_out_ns;
			if ((__s64)gap > 0 && gap > waited)
				st->blocked_ns += gap - waited;
		}
	}
	st->run_delay = run_delay;
	st->pcount = pcount;
	if (with_cgroup_id)
		st->cgroup_id = bpf_get_current_cgroup_id(); /* current is still prev here */
	st->switch_out_ns = prev->se.cfs_rq->rq->clock;
	st->state = control_state(preempt, task_state_btf(prev));
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_control, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	if (prev->pid != 0)
		control_switched_out(preempt, prev, false);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_control_cgid, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	if (prev->pid != 0)
		control_switched_out(preempt, prev, true);
	return 0;
}
