/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Socket helpers shared by probes: who owns a socket, and in which network namespace. */
#ifndef KPULSE_SOCK_BPF_H
#define KPULSE_SOCK_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

#define KPULSE_AF_INET 2
#define KPULSE_AF_INET6 10

/* Before 5.15, sock_cgroup_data was a union whose u64 `val` held the cgroup pointer when its low
 * bit was clear (otherwise it carried net_cls/net_prio data and no cgroup). */
struct sock_cgroup_data___pre515 {
	__u64 val;
} __attribute__((preserve_access_index));
struct sock___pre515 {
	struct sock_cgroup_data___pre515 sk_cgrp_data;
} __attribute__((preserve_access_index));

/* cgroup v2 id of the cgroup that created the socket: the owner, whatever task is current. */
static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
		return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);

	const struct sock___pre515 *old = (const void *)sk;
	__u64 val = BPF_CORE_READ(old, sk_cgrp_data.val);
	if (val & 1)
		return 0;
	struct cgroup *cgrp = (struct cgroup *)(unsigned long)val;
	return BPF_CORE_READ(cgrp, kn, id);
}

/* inode number of the socket's network namespace: what `ls -L -i /proc/PID/ns/net` shows. */
static __always_inline __u32 sock_netns_ino(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

#endif /* KPULSE_SOCK_BPF_H */
