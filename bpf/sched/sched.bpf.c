// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Scheduler probes, one object so that both share the sched_switch program:
 * - run-queue latency: how long runnable tasks waited for a CPU, per cgroup of the task that
 *   waited (log2 histogram, exact sum and count);
 * - off-CPU time: how long tasks were blocked (from switch-out in a sleeping state to the
 *   wakeup), per cgroup of the task and state class, optionally by kernel + user stack.
 * For every thread, on-CPU + run-queue wait + blocked = wall time.
 *
 * Two ways to measure; user space loads exactly one (bpf_program__set_autoload):
 *
 * 1. sched_info (primary): one tp_btf/sched_switch program, for `prev` only. With
 *    CONFIG_SCHED_INFO the kernel keeps, per task, sched_info.run_delay (total ns spent waiting
 *    on a run queue), pcount (times switched in) and last_arrival (when the current slice
 *    began), all current for `prev` at this tracepoint and all on the run queue's clock. Exactly
 *    one switch-in lies between two switch-outs of a task, so since its previous switch-out at
 *    rq->clock = out:
 *        run-queue wait = delta run_delay,
 *        blocked        = last_arrival - out - delta run_delay  (when it had blocked),
 *    which is wall - on-CPU - run-queue wait, read on the kernel's own clock (no clock read of
 *    ours). Baselines live in task-local storage, which the kernel frees with the task. Agrees
 *    with /proc/<pid>/task/<tid>/schedstat by construction. An interval is reported when the task
 *    next switches out.
 *
 * 2. wakeup (fallback): raw_tp sched_wakeup / sched_wakeup_new / sched_switch (classic runqlat
 *    and offcputime): a wait runs from wakeup (or preemption) to switch-in, a block from
 *    switch-out to wakeup. Timestamps in tid-keyed hashes, removed when consumed and at the
 *    task's final (TASK_DEAD) switch-out. For kernels without SCHED_INFO or task storage.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kpulse/bits.bpf.h"
#include "kpulse/errno.bpf.h"
#include "kpulse/task.bpf.h"
#include "sched/sched.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define KPULSE_TASK_INTERRUPTIBLE 0x0001
#define KPULSE_TASK_UNINTERRUPTIBLE 0x0002
#define KPULSE_TASK_DEAD 0x0080
#define KPULSE_TASK_NOLOAD 0x0400

/* Set by user space between open and load. */
const volatile bool runq_enabled = true;
const volatile bool offcpu_enabled = true;
/* Slots below these have per-CPU histograms (no atomics; sized by user space to a memory
 * budget); the rest share one histogram per slot, updated with atomic adds. */
const volatile __u32 runq_hot_slots = 0;
const volatile __u32 offcpu_hot_slots = 0;
/* Slots each probe has histograms for (its max_cgroups); cgroups beyond go to the overflow. */
const volatile __u32 runq_slots = 4096;
const volatile __u32 offcpu_slots = 4096;
const volatile __u64 offcpu_min_block_ns = 0;   /* shorter blocks are not counted */
const volatile bool stacks_enabled = false;
const volatile bool user_stacks_enabled = false; /* and user stacks too */
const volatile __u64 stack_min_block_ns = 1000000; /* shorter blocks get no stack entry */
/* CLOCK_MONOTONIC when user space opened the object: tasks started since (task->start_time is on
 * the same clock) are counted from zero, so their first wait (fork to first run) is not lost. */
const volatile __u64 task_epoch_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sched_task_state);
} sched_task_states SEC(".maps");

/* cgroup id -> its index in the histogram arrays (see sched.h for the slot life cycle). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* resized by user space: the larger max_cgroups */
	__type(key, __u64);
	__type(value, __u32);
} cgroup_slots SEC(".maps");

/* slot -> the cgroup it belongs to, 0 while free or being retired. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096); /* resized by user space: the larger max_cgroups */
	__type(key, __u32);
	__type(value, __u64);
} slot_owner SEC(".maps");

/* Free slots, filled by user space (lowest on top) before attach. A pop hands a slot to exactly
 * one CPU without an atomic fetch (not available before 5.12, where the wakeup hook runs). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, 4096); /* resized by user space: the larger max_cgroups */
	__type(value, __u32);
} free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY); /* PERCPU_ARRAY with per_cpu (set by user space) */
	__uint(max_entries, 4096);        /* resized by user space */
	__type(key, __u32);
	__type(value, struct sched_hist);
} runq_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); /* resized by user space: runq_hot_slots */
	__type(key, __u32);
	__type(value, struct sched_hist);
} runq_hot_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096 * OFFCPU_STATE_MAX); /* resized by user space */
	__type(key, __u32);
	__type(value, struct sched_hist);
} offcpu_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFCPU_STATE_MAX); /* resized by user space: offcpu_hot_slots x 4 */
	__type(key, __u32);
	__type(value, struct sched_hist);
} offcpu_hot_hists SEC(".maps");

/* Stack hash -> frames: each distinct stack once. Our own map rather than a STACK_TRACE map
 * because bpf_get_stackid() only walks the current task, and kernel stacks are taken from the
 * task being switched in (see sched_switch_info). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* resized by user space (1 when stacks are off) */
	__type(key, __u64);
	__type(value, struct stack_frames);
} offcpu_stack_frames SEC(".maps");

/* Where a stack is written before it is hashed (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_frames);
} stack_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* resized by user space (1 when stacks are off) */
	__type(key, struct offcpu_stack_key);
	__type(value, struct offcpu_stack_value);
} offcpu_stacks SEC(".maps");

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

/* Fallback only: tid -> its blocking switch-out. Resized by user space (1 when unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct offcpu_start);
} offcpu_start SEC(".maps");

static __always_inline struct sched_totals *totals(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sched_totals, &zero);
}

static __always_inline __u32 hist_slot(__u64 ns)
{
	__u32 log2 = log2_u64(ns);
	if (log2 <= SCHED_HIST_MIN_LOG2)
		return 0;
	__u32 slot = log2 - SCHED_HIST_MIN_LOG2;
	return slot < SCHED_HIST_SLOTS ? slot : SCHED_HIST_SLOTS - 1;
}

/* Whether `slot` still belongs to `cgroup_id` (a task's cached slot may have been recycled). */
static __always_inline bool slot_owned_by(__u32 slot, __u64 cgroup_id)
{
	__u64 *owner = bpf_map_lookup_elem(&slot_owner, &slot);
	return owner && *owner == cgroup_id;
}

/* The slot of a cgroup in the histogram arrays, claiming a free one the first time;
 * CGROUP_SLOT_NONE when none is free. */
static __always_inline __u32 cgroup_slot(__u64 cgroup_id)
{
	__u32 *slot = bpf_map_lookup_elem(&cgroup_slots, &cgroup_id);
	if (slot)
		return *slot;
	__u32 fresh;
	if (bpf_map_pop_elem(&free_slots, &fresh) != 0)
		return CGROUP_SLOT_NONE;
	__u64 *owner = bpf_map_lookup_elem(&slot_owner, &fresh);
	if (!owner)
		return CGROUP_SLOT_NONE; /* not a slot of ours: drop it */
	*owner = cgroup_id; /* before it is published: a reader of cgroup_slots finds it owned */
	if (bpf_map_update_elem(&cgroup_slots, &cgroup_id, &fresh, BPF_NOEXIST) == 0)
		return fresh;
	/* Another CPU gave this cgroup a slot meanwhile: give ours back. */
	*owner = 0;
	bpf_map_push_elem(&free_slots, &fresh, BPF_ANY);
	slot = bpf_map_lookup_elem(&cgroup_slots, &cgroup_id);
	return slot ? *slot : CGROUP_SLOT_NONE;
}

/* The cached `slot` if it still belongs to `cgroup_id`, else the cgroup's slot afresh. */
static __always_inline __u32 checked_slot(__u32 slot, __u64 cgroup_id)
{
	if (slot != CGROUP_SLOT_NONE && slot_owned_by(slot, cgroup_id))
		return slot;
	return cgroup_slot(cgroup_id);
}

/* Adds `samples` observations totalling `ns` to the histogram at `index`: of the per-CPU array
 * `hot_map` if `hot` (plain adds: only this CPU writes its copy), else of the shared array
 * `map` (atomic adds). Returns false when the index is out of range (the caller keeps the count
 * elsewhere). */
static __always_inline bool hist_add(void *hot_map, void *map, bool hot, __u32 index, __u64 ns,
				     __u64 samples)
{
	/* samples > 1 only after a missed baseline: avoid the division otherwise. */
	__u32 bucket = hist_slot(samples == 1 ? ns : ns / samples);
	struct sched_hist *hist;
	if (hot) {
		hist = bpf_map_lookup_elem(hot_map, &index);
		if (!hist)
			return false;
		hist->slots[bucket] += samples;
		hist->sum_ns += ns;
		return true;
	}
	hist = bpf_map_lookup_elem(map, &index);
	if (!hist)
		return false;
	__sync_fetch_and_add(&hist->slots[bucket], samples);
	__sync_fetch_and_add(&hist->sum_ns, ns);
	return true;
}

/* Per-CPU, so no atomics. */
static __always_inline void overflow_add(struct sched_hist *hist, __u64 ns, __u64 samples)
{
	hist->slots[hist_slot(samples == 1 ? ns : ns / samples)] += samples;
	hist->sum_ns += ns;
}

/* Adds `samples` waits totalling `delay_ns` (one, except after a missed baseline) to the cgroup
 * at `slot`; with per_cpu, runq_hists is per-CPU and this CPU's copy is the one updated. */
static __always_inline void runq_record(__u32 slot, __u64 delay_ns, __u64 samples)
{
	bool hot = slot < runq_hot_slots;
	if (slot < runq_slots && hist_add(&runq_hot_hists, &runq_hists, hot,
					  sched_hist_index(slot, runq_hot_slots, 1, 0), delay_ns,
					  samples))
		return;
	struct sched_totals *t = totals();
	if (t)
		overflow_add(&t->runq_overflow, delay_ns, samples);
}

/* State class of a task being switched out, by bits of its state word (which carries modifier
 * bits such as TASK_FREEZABLE: never compare for equality with a sleep state). */
static __always_inline __u32 offcpu_state_of(bool preempt, unsigned int state)
{
	if (preempt)
		return OFFCPU_NOT_BLOCKED;
	if (state & KPULSE_TASK_UNINTERRUPTIBLE)
		return (state & KPULSE_TASK_NOLOAD) ? OFFCPU_IDLE : OFFCPU_DISK;
	if (state & KPULSE_TASK_INTERRUPTIBLE)
		return OFFCPU_SLEEP;
	if (state & KPULSE_TASK_DEAD)
		return OFFCPU_EXITING;
	if (state == KPULSE_TASK_RUNNING) /* its sleep was cancelled (e.g. a pending signal) */
		return OFFCPU_NOT_BLOCKED;
	return OFFCPU_OTHER;
}

/* Keeps the `bytes` of frames in `frames` (the rest zero, as the helpers leave it) under a hash
 * of them and returns it; 0 when none were taken or the map is full. Distinct stacks with one
 * 64-bit hash would share an entry: improbable enough to accept. */
static __always_inline __u64 keep_stack(struct stack_frames *frames, long bytes)
{
	if (bytes <= 0)
		return 0;
	__u64 hash = 14695981039346656037ULL; /* FNV-1a over frames, not bytes */
	for (int i = 0; i < OFFCPU_STACK_DEPTH; i++) {
		if (i * (long)sizeof(__u64) >= bytes)
			break;
		hash = (hash ^ frames->ips[i]) * 1099511628211ULL;
	}
	/* Whole-word FNV leaves the low bits depending on low input bits only: mix (splitmix64). */
	hash ^= hash >> 30;
	hash *= 0xbf58476d1ce4e5b9ULL;
	hash ^= hash >> 27;
	hash *= 0x94d049bb133111ebULL;
	hash ^= hash >> 31;
	hash |= 1; /* never 0, which means "none" */
	if (bpf_map_lookup_elem(&offcpu_stack_frames, &hash))
		return hash;
	if (bpf_map_update_elem(&offcpu_stack_frames, &hash, frames, BPF_NOEXIST) == 0 ||
	    bpf_map_lookup_elem(&offcpu_stack_frames, &hash)) /* another CPU added it */
		return hash;
	return 0;
}

/* The current task's kernel or user stack (BPF_F_USER_STACK), kept; 0 when stacks are off. */
static __always_inline __u64 current_stack(void *ctx, __u64 flags)
{
	__u32 zero = 0;
	struct stack_frames *frames = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!stacks_enabled || !frames)
		return 0;
	return keep_stack(frames, bpf_get_stack(ctx, frames, sizeof(*frames), flags));
}

/* The kernel stack of a task that is not running: where it called schedule(). */
static __always_inline __u64 task_kernel_stack(struct task_struct *task)
{
	__u32 zero = 0;
	struct stack_frames *frames = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!stacks_enabled || !frames)
		return 0;
	return keep_stack(frames, bpf_get_task_stack(task, frames, sizeof(*frames), 0));
}

/* A block of `ns` that began in the cgroup `cgroup_id` (at `slot`) in `state`. */
static __always_inline void offcpu_record(__u64 cgroup_id, __u32 slot, __u32 tgid, __u32 state,
					  __u64 ns, __u64 kstack, __u64 ustack)
{
	if (state >= OFFCPU_STATE_MAX || ns < offcpu_min_block_ns)
		return;
	struct sched_totals *t = NULL;
	bool hot = slot < offcpu_hot_slots;
	__u32 index = sched_hist_index(slot, offcpu_hot_slots, OFFCPU_STATE_MAX, state);
	if (slot >= offcpu_slots || !hist_add(&offcpu_hot_hists, &offcpu_hists, hot, index, ns, 1)) {
		t = totals();
		if (t)
			overflow_add(&t->offcpu_overflow[state], ns, 1);
	}
	if (!stacks_enabled || ns < stack_min_block_ns)
		return;
	if (kstack == 0) /* no kernel stack (map full, or the walk failed): not aggregated */
		goto drop;
	struct offcpu_stack_key skey = {
		.cgroup_id = cgroup_id,
		.kstack = kstack,
		.ustack = ustack,
		.tgid = tgid,
		.state = state,
	};
	struct offcpu_stack_value *value = bpf_map_lookup_elem(&offcpu_stacks, &skey);
	if (!value) {
		struct offcpu_stack_value zero = {};
		bpf_map_update_elem(&offcpu_stacks, &skey, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&offcpu_stacks, &skey);
	}
	if (value) {
		__sync_fetch_and_add(&value->blocked_ns, ns);
		__sync_fetch_and_add(&value->count, 1);
		return;
	}
drop:
	if (!t)
		t = totals();
	if (t)
		t->stack_drops++;
}

/* ---- 1. sched_info (primary) ---- */

/* Stacks on: the kernel stack of `next`, which is about to run again after a block, if the block
 * is long enough to be aggregated by stack. Its kernel stack is still where it called
 * schedule(). */
static __always_inline void kernel_stack_at_switch_in(struct task_struct *next)
{
	if (next->pid == 0)
		return;
	struct sched_task_state *st = bpf_task_storage_get(&sched_task_states, next, 0, 0);
	if (!st || st->state >= OFFCPU_STATE_MAX)
		return;
	/* It was woken at last_queued (still set: sched_info_arrive() runs after this tracepoint);
	 * without it, the run queue's clock now is an upper bound. */
	__u64 woken = next->sched_info.last_queued ?: next->se.cfs_rq->rq->clock;
	if (woken > st->switch_out_ns && woken - st->switch_out_ns >= stack_min_block_ns)
		st->kstack = task_kernel_stack(next);
}

/* Everything about `prev`, switched out now. */
static __always_inline void switched_out(void *ctx, bool preempt, struct task_struct *prev)
{
	struct sched_task_state *st =
		bpf_task_storage_get(&sched_task_states, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	__u64 run_delay = prev->sched_info.run_delay;
	__u64 pcount = prev->sched_info.pcount;
	/* At sched_switch, current is still prev. The slot is cached per task: a hash lookup only
	 * when the task changed cgroups (or is new), or its slot was recycled. */
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 slot = st->cgroup_id == cgroup_id ? checked_slot(st->slot, cgroup_id)
						: cgroup_slot(cgroup_id);

	/* Fresh storage (pcount 0) has no baseline. A task started before load skips its first
	 * slice; one started since counts from zero (its run_delay and pcount began at fork). */
	bool has_baseline = st->pcount != 0;
	if ((has_baseline || prev->start_time >= task_epoch_ns) && pcount > st->pcount) {
		__u64 waited = run_delay - st->run_delay;
		if (runq_enabled)
			runq_record(slot, waited, pcount - st->pcount);
		if (offcpu_enabled && has_baseline && st->state < OFFCPU_STATE_MAX) {
			__u64 arrival = prev->sched_info.last_arrival;
			__u64 gap = arrival - st->switch_out_ns; /* blocked, then waited */
			/* The block is charged where it began: the cached slot of that cgroup if
			 * it still owns it (the task may have moved, its old cgroup been removed). */
			__u32 block_slot = st->cgroup_id == cgroup_id
						   ? slot
						   : checked_slot(st->slot, st->cgroup_id);
			if ((__s64)gap > 0 && gap > waited)
				offcpu_record(st->cgroup_id, block_slot, prev->tgid, st->state,
					      gap - waited, st->kstack, st->ustack);
		}
	}
	st->run_delay = run_delay;
	st->pcount = pcount;
	st->cgroup_id = cgroup_id;
	st->slot = slot;
	if (!offcpu_enabled)
		return;
	/* The run queue's clock, which sched_info accounts with, updated by __schedule() just before
	 * this tracepoint. Reached through prev's cfs_rq (CONFIG_FAIR_GROUP_SCHED; user space checks
	 * the fields exist) because `runqueues` is not in kallsyms everywhere. */
	st->switch_out_ns = prev->se.cfs_rq->rq->clock;
	st->state = offcpu_state_of(preempt, task_state_btf(prev));
	if (!stacks_enabled)
		return;
	/* The user stack can only be walked now, while prev is current; the kernel one waits for the
	 * switch-in, when the block's length is known (most blocks are too short to want it). */
	st->ustack = user_stacks_enabled && st->state < OFFCPU_STATE_MAX
			     ? current_stack(ctx, BPF_F_USER_STACK)
			     : 0;
	st->kstack = 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_info, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (prev->pid != 0) /* not the idle task */
		switched_out(ctx, preempt, prev);
	if (stacks_enabled)
		kernel_stack_at_switch_in(next);
	return 0;
}

/* ---- 2. wakeup (fallback) ---- */

/* A wait starts. `flags`: BPF_ANY at a preempting switch-out (a new wait from now),
 * BPF_NOEXIST at a wakeup: a task preempted on its way to sleep is woken while it already waits
 * in the run queue (ttwu_runnable fires sched_wakeup too), and its wait began at the preemption. */
static __always_inline void runq_enqueued(const struct task_struct *task, __u64 flags)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	if (tid == 0)
		return;
	__u64 now = bpf_ktime_get_ns();
	long err = bpf_map_update_elem(&runq_start, &tid, &now, flags);
	if (err != 0 && err != -EEXIST) {
		struct sched_totals *t = totals();
		if (t)
			t->runq_start_drops++;
	}
}

/* The end of a block: the wakeup of a task that switched out blocked. */
static __always_inline void offcpu_woken(const struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	struct offcpu_start *start = bpf_map_lookup_elem(&offcpu_start, &tid);
	if (!start)
		return;
	__u64 now = bpf_ktime_get_ns();
	struct offcpu_start copy = *start;
	bpf_map_delete_elem(&offcpu_start, &tid);
	if (now <= copy.switch_out_ns)
		return;
	__u64 cgroup_id = task_cgroup_id(task);
	offcpu_record(cgroup_id, cgroup_slot(cgroup_id), BPF_CORE_READ(task, tgid), copy.state,
		      now - copy.switch_out_ns, copy.kstack, copy.ustack);
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw, struct task_struct *task)
{
	if (runq_enabled)
		runq_enqueued(task, BPF_NOEXIST);
	if (offcpu_enabled)
		offcpu_woken(task);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_raw, struct task_struct *task)
{
	if (runq_enabled)
		runq_enqueued(task, BPF_NOEXIST);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 prev_state = offcpu_state_of(preempt, task_state(prev));
	if (prev_state == OFFCPU_EXITING) {
		/* The last event of a task: nothing closes a stamp after it. A wakeup can stamp a task
		 * that is still on its CPU (ttwu of a running task), also one that is exiting; the stamp
		 * would outlive it (sched_process_exit is too early: the task still runs after it). */
		__u32 tid = BPF_CORE_READ(prev, pid);
		bpf_map_delete_elem(&runq_start, &tid);
		bpf_map_delete_elem(&offcpu_start, &tid);
	}
	/* Still runnable when switched out: it waits again from now. */
	if (runq_enabled && prev_state == OFFCPU_NOT_BLOCKED) {
		runq_enqueued(prev, BPF_ANY);
	} else if (runq_enabled && prev_state < OFFCPU_STATE_MAX) {
		/* Blocked: not runnable until its wakeup. A stamp left by a wakeup that found it still on
		 * its CPU would otherwise stand in for that wakeup's (which keeps an existing one). */
		__u32 tid = BPF_CORE_READ(prev, pid);
		bpf_map_delete_elem(&runq_start, &tid);
	}
	if (offcpu_enabled && prev_state < OFFCPU_STATE_MAX) {
		__u32 tid = BPF_CORE_READ(prev, pid);
		struct offcpu_start start = {
			.switch_out_ns = bpf_ktime_get_ns(),
			.state = prev_state,
		};
		/* Both stacks now: after the wakeup the task may already run (on another CPU). */
		start.kstack = current_stack(ctx, 0);
		start.ustack = user_stacks_enabled ? current_stack(ctx, BPF_F_USER_STACK) : 0;
		if (tid != 0 && bpf_map_update_elem(&offcpu_start, &tid, &start, BPF_ANY) != 0) {
			struct sched_totals *t = totals();
			if (t)
				t->offcpu_start_drops++;
		}
	}

	if (!runq_enabled)
		return 0;
	__u32 tid = BPF_CORE_READ(next, pid);
	__u64 *since = bpf_map_lookup_elem(&runq_start, &tid);
	if (!since)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 delay = now > *since ? now - *since : 0;
	bpf_map_delete_elem(&runq_start, &tid);
	runq_record(cgroup_slot(task_cgroup_id(next)), delay, 1);
	return 0;
}
