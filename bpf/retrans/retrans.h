/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Structs shared by retrans.bpf.c and the C++ reader (daemon/bpf/retrans_probe.*).
 * Defined once, here; the C++ side static_asserts their layout. Fixed-width fields, explicit
 * padding: every byte of a hash key is compared, so no byte may be left uninitialised.
 */
#ifndef KPULSE_BPF_RETRANS_H
#define KPULSE_BPF_RETRANS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* What was retransmitted. Decides the `kind` label. */
enum retrans_kind {
	RETRANS_KIND_SYN = 0,    /* client SYN (socket in SYN_SENT) */
	RETRANS_KIND_SYNACK = 1, /* server SYN-ACK (request socket, or a fast-open child) */
	RETRANS_KIND_DATA = 2,   /* everything else: data, FIN, ... */
	RETRANS_KIND_MAX = 3,
};

/* One TCP flow, as the retransmitting host sees it. IPv4 addresses use the first 4 bytes. */
struct retrans_flow_key {
	__u8 laddr[16];  /* local address, network byte order */
	__u8 raddr[16];  /* remote address, network byte order */
	__u32 netns_ino; /* inode of the socket's network namespace (ns.inum) */
	__u16 lport;     /* host byte order; 0 when folded (ephemeral) or not tracked */
	__u16 rport;     /* host byte order */
	__u8 family;     /* AF_INET (2) or AF_INET6 (10), as the socket reports it */
	__u8 kind;       /* enum retrans_kind */
	__u8 pad[6];
};

struct retrans_flow_value {
	__u64 segments; /* retransmitted segments (the units of Tcp: RetransSegs) */
};

struct retrans_cgroup_key {
	__u64 cgroup_id; /* cgroup v2 id of the socket (inode of its cgroup directory) */
	__u32 kind;      /* enum retrans_kind */
	__u32 pad;
};

struct retrans_cgroup_value {
	__u64 segments;
};

/* Node-wide counters, one per CPU (PERCPU_ARRAY, key 0): never lost, whatever the maps hold. */
struct retrans_totals {
	__u64 segments[RETRANS_KIND_MAX];          /* successful retransmits, in segments */
	__u64 failures[RETRANS_KIND_MAX];          /* attempts the kernel reported failed (6.17+) */
	__u64 cgroup_overflow[RETRANS_KIND_MAX];   /* segments not in the cgroup map (it was full) */
	__u64 flows_created;                       /* flow entries inserted; minus live ones = evicted */
	__u64 flow_update_failures;                /* flow entries that could not be inserted */
};

#endif /* KPULSE_BPF_RETRANS_H */
