/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Task helpers shared by the scheduler probes, CO-RE across kernel versions. */
#ifndef KPULSE_TASK_BPF_H
#define KPULSE_TASK_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

#define KPULSE_TASK_RUNNING 0x0000

/* task_struct::state was renamed __state (and made unsigned int) in 5.14. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/* The raw state word: test bits, never equality (it carries modifier bits such as TASK_NOLOAD). */
static __always_inline unsigned int task_state(const struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return BPF_CORE_READ(task, __state);
	const struct task_struct___pre514 *old = (const void *)task;
	return (unsigned int)BPF_CORE_READ(old, state);
}

/* task_state() for BTF-typed pointers (tp_btf arguments): a plain load, no helper call. */
static __always_inline unsigned int task_state_btf(const struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return task->__state;
	const struct task_struct___pre514 *old = (const void *)task;
	return (unsigned int)old->state;
}

/* cgroup v2 id of any task (not only current). */
static __always_inline __u64 task_cgroup_id(const struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

#endif /* KPULSE_TASK_BPF_H */
