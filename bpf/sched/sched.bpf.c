// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Scheduler probes. Run-queue latency: how long runnable tasks waited for a CPU, as a log2
 * histogram per cgroup of the task that waited, with an exact sum and count.
 *
 * Two ways to measure; user space loads exactly one (bpf_program__set_autoload):
 *
 * 1. sched_info (primary): one tp_btf/sched_switch program. With CONFIG_SCHED_INFO the kernel
 *    keeps, per task, sched_info.run_delay (total ns spent waiting on a run queue) and pcount
 *    (times switched in), both current for `prev` at this tracepoint. Exactly one switch-in lies
 *    between two switch-outs of a task, so the run_delay delta since its previous switch-out is
 *    the wait before the slice that just ended. Baselines live in task-local storage, which the
 *    kernel frees with the task. Agrees with /proc/<pid>/task/<tid>/schedstat by construction.
 *
 * 2. wakeup (fallback): raw_tp sched_wakeup / sched_wakeup_new / sched_switch (the classic
 *    runqlat): a task becomes runnable at wakeup, or when switched out while still runnable
 *    (preempted); the wait ends at its switch-in. Timestamps in a tid-keyed hash, removed at
 *    switch-in and at sched_process_exit. For kernels without SCHED_INFO or task storage.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kpulse/bits.bpf.h"
#include "kpulse/task.bpf.h"
#include "sched/sched.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space between open and load. */
const volatile bool per_cpu = false; /* key histograms by CPU too */

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sched_task_state);
} sched_task_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* resized by user space */
	__type(key, struct runq_key);
	__type(value, struct sched_hist);
} runq_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sched_totals);
} sched_totals SEC(".maps");

/* Fallback only: tid -> time it became runnable. Resized by user space (1 when unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} runq_start SEC(".maps");

static const struct sched_hist zero_hist;

static __always_inline struct sched_totals *totals(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sched_totals, &zero);
}

/* Adds `samples` waits totalling `delay_ns` (one, except after a missed baseline). */
static __always_inline void runq_record(__u64 cgroup_id, __u64 delay_ns, __u64 samples)
{
	__u32 slot = log2_u64(delay_ns / samples / 1000);
	if (slot >= SCHED_HIST_SLOTS)
		slot = SCHED_HIST_SLOTS - 1;

	struct runq_key key = {
		.cgroup_id = cgroup_id,
		.cpu = per_cpu ? bpf_get_smp_processor_id() : SCHED_ALL_CPUS,
	};
	struct sched_hist *hist = bpf_map_lookup_elem(&runq_hists, &key);
	if (!hist) {
		bpf_map_update_elem(&runq_hists, &key, &zero_hist, BPF_NOEXIST);
		hist = bpf_map_lookup_elem(&runq_hists, &key);
	}
	if (hist) {
		__sync_fetch_and_add(&hist->slots[slot], samples);
		__sync_fetch_and_add(&hist->sum_ns, delay_ns);
		__sync_fetch_and_add(&hist->count, samples);
		return;
	}
	/* Map full: keep the node-wide histogram exact (per-CPU, no atomics needed). */
	struct sched_totals *t = totals();
	if (!t)
		return;
	t->runq_overflow.slots[slot] += samples;
	t->runq_overflow.sum_ns += delay_ns;
	t->runq_overflow.count += samples;
}

/* ---- 1. sched_info (primary) ---- */

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_info, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (prev->pid == 0) /* the idle task */
		return 0;
	struct sched_task_state *state =
		bpf_task_storage_get(&sched_task_states, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!state)
		return 0;
	__u64 run_delay = prev->sched_info.run_delay;
	__u64 pcount = prev->sched_info.pcount;
	/* Fresh storage (pcount 0) has no baseline: the task's first slice since load is skipped. */
	if (state->pcount != 0 && pcount > state->pcount) {
		/* At sched_switch, current is still prev. */
		runq_record(bpf_get_current_cgroup_id(), run_delay - state->run_delay,
			    pcount - state->pcount);
	}
	state->run_delay = run_delay;
	state->pcount = pcount;
	return 0;
}

/* ---- 2. wakeup (fallback) ---- */

static __always_inline void runq_enqueued(const struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	if (tid == 0)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&runq_start, &tid, &now, BPF_ANY) != 0) {
		struct sched_totals *t = totals();
		if (t)
			t->runq_start_drops++;
	}
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw, struct task_struct *task)
{
	runq_enqueued(task);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_raw, struct task_struct *task)
{
	runq_enqueued(task);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	/* Still runnable when switched out: preempted, or its sleep was cancelled (state reset to
	 * TASK_RUNNING before the tracepoint). Test the state bits, never equality with a sleep. */
	if (preempt || task_state(prev) == KPULSE_TASK_RUNNING)
		runq_enqueued(prev);

	__u32 tid = BPF_CORE_READ(next, pid);
	__u64 *since = bpf_map_lookup_elem(&runq_start, &tid);
	if (!since)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 delay = now > *since ? now - *since : 0;
	bpf_map_delete_elem(&runq_start, &tid);
	runq_record(task_cgroup_id(next), delay, 1);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(sched_process_exit_raw, struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	bpf_map_delete_elem(&runq_start, &tid);
	return 0;
}
