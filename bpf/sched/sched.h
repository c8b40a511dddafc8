/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Structs shared by sched.bpf.c and the C++ reader (daemon/bpf/sched_probe.*): the scheduler
 * probes (run-queue latency today; off-CPU time shares the same sched_switch program next).
 */
#ifndef KPULSE_BPF_SCHED_H
#define KPULSE_BPF_SCHED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/*
 * log2 histogram of durations in microseconds: slot i holds [2^i, 2^(i+1)) us, slot 0 also
 * everything under 1 us, the last slot everything from 2^(SLOTS-1) us (67 s) up. The exporter's
 * bucket for slot i is le = 2^(i+1) us; the last slot only appears in le="+Inf".
 */
#define SCHED_HIST_SLOTS 27

struct sched_hist {
	__u64 slots[SCHED_HIST_SLOTS];
	__u64 sum_ns; /* exact sum of the recorded durations */
	__u64 count;  /* number of recorded durations (= sum of slots) */
};

/* Sentinel cpu for histograms aggregated over CPUs (the per_cpu option is off). */
#define SCHED_ALL_CPUS 0xffffffffu

struct runq_key {
	__u64 cgroup_id; /* cgroup v2 id of the task that waited */
	__u32 cpu;       /* CPU whose run queue it waited on, or SCHED_ALL_CPUS */
	__u32 pad;
};

/*
 * Per-task state of the primary (sched_info) path, in task-local storage: the task's own
 * accounting as of its last switch-out.
 */
struct sched_task_state {
	__u64 run_delay; /* task->sched_info.run_delay: total ns spent runnable, waiting */
	__u64 pcount;    /* task->sched_info.pcount: times it was switched in */
};

/* Node-wide, one per CPU (PERCPU_ARRAY, key 0): never lost. */
struct sched_totals {
	struct sched_hist runq_overflow; /* waits not in runq_hists (the map was full) */
	__u64 runq_start_drops;          /* fallback: enqueue timestamps the start map could not hold */
};

#endif /* KPULSE_BPF_SCHED_H */
