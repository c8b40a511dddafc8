// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP retransmits, counted the way the kernel's own MIB counters count them, aggregated in kernel
 * maps (no per-event output): node totals per kind, per cgroup, and per flow (bounded LRU).
 *
 * Hooks (user space enables exactly one variant per event, after probing the kernel):
 *   tp_btf/tcp_retransmit_skb      3 arguments (6.17+: fires on failed attempts too, with err)
 *   tp_btf/tcp_retransmit_skb      2 arguments (older kernels: fires on success only)
 *   tracepoint/tcp/tcp_retransmit_skb   fallback without BTF-typed tracepoints
 *   tp_btf / tracepoint tcp_retransmit_synack  server SYN-ACK retransmits (success only)
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kpulse/errno.bpf.h"
#include "kpulse/sock.bpf.h"
#include "retrans/retrans.h"

#define TCPHDR_SYN 0x02
#define SOCK_BINDPORT_LOCK 8

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space between open and load. */
const volatile bool track_flows = true;       /* flow_labels != none */
const volatile bool flow_remote_only = false; /* flow_labels == remote: no local address/port */
const volatile bool fold_ephemeral = true;    /* the client side's ephemeral port -> 0 */
const volatile __u16 ephemeral_lo = 32768;    /* net.ipv4.ip_local_port_range at load time */
const volatile __u16 ephemeral_hi = 60999;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* resized by user space */
	__type(key, struct retrans_flow_key);
	__type(value, struct retrans_flow_value);
} retrans_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* resized by user space */
	__type(key, struct retrans_cgroup_key);
	__type(value, struct retrans_cgroup_value);
} retrans_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct retrans_totals);
} retrans_totals SEC(".maps");

/* Tracepoint context layouts, declared here rather than taken from vmlinux.h so that the object
 * builds against any kernel's BTF; CO-RE matches them by name (the ___ suffix is ignored). */
struct trace_event_raw_tcp_retransmit_skb___v617 { /* 6.17+: own event, with err */
	const void *skbaddr;
	const void *skaddr;
	int err;
} __attribute__((preserve_access_index));
struct trace_event_raw_tcp_event_sk_skb___old { /* before 6.17: shared event class */
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));
struct trace_event_raw_tcp_retransmit_synack___any {
	const void *skaddr;
	const void *req;
} __attribute__((preserve_access_index));

static __always_inline bool ephemeral(__u16 port)
{
	return port >= ephemeral_lo && port <= ephemeral_hi;
}

/* `owner` is the socket the retransmit belongs to (the listener for a SYN-ACK), `skc` the one
 * whose addresses form the flow (the request socket for a SYN-ACK). */
static __always_inline void fill_flow_addrs(struct retrans_flow_key *key, const struct sock *owner,
					    const struct sock_common *skc)
{
	key->family = BPF_CORE_READ(skc, skc_family);
	key->lport = BPF_CORE_READ(skc, skc_num);
	key->rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (key->family == KPULSE_AF_INET6) {
		BPF_CORE_READ_INTO(&key->laddr, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&key->raddr, skc, skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)key->laddr, skc, skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)key->raddr, skc, skc_daddr);
	}
	/* Fold the port the kernel picked for the client side: ours when we connected, the peer's
	 * when we serve (our port was bound explicitly; accepted sockets inherit the listener's
	 * lock). The peer's range is unknown: ours stands in for it. */
	if (fold_ephemeral) {
		if (ephemeral(key->lport))
			key->lport = 0;
		else if ((BPF_CORE_READ_BITFIELD_PROBED(owner, sk_userlocks) & SOCK_BINDPORT_LOCK) &&
			 ephemeral(key->rport))
			key->rport = 0;
	}
	if (flow_remote_only) {
		__builtin_memset(key->laddr, 0, sizeof(key->laddr));
		key->lport = 0;
	}
}

static __always_inline void add_flow(const struct retrans_flow_key *key, __u64 segments,
				     struct retrans_totals *totals)
{
	struct retrans_flow_value *value = bpf_map_lookup_elem(&retrans_flows, key);
	if (!value) {
		struct retrans_flow_value zero = {};
		long err = bpf_map_update_elem(&retrans_flows, key, &zero, BPF_NOEXIST);
		if (err == 0) {
			totals->flows_created++;
		} else if (err != -EEXIST) { /* another CPU may have inserted it first */
			totals->flow_update_failures++;
			return;
		}
		value = bpf_map_lookup_elem(&retrans_flows, key);
		if (!value) { /* evicted again before we could add: the LRU is far too small */
			totals->flow_update_failures++;
			return;
		}
	}
	__sync_fetch_and_add(&value->segments, segments);
}

static __always_inline void add_cgroup(__u64 cgroup_id, __u32 kind, __u64 segments,
				       struct retrans_totals *totals)
{
	struct retrans_cgroup_key key = { .cgroup_id = cgroup_id, .kind = kind };
	struct retrans_cgroup_value *value = bpf_map_lookup_elem(&retrans_cgroups, &key);
	if (!value) {
		struct retrans_cgroup_value zero = {};
		bpf_map_update_elem(&retrans_cgroups, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&retrans_cgroups, &key);
		if (!value) { /* map full: the total still has it, the collector shows it as overflow */
			totals->cgroup_overflow[kind] += segments;
			return;
		}
	}
	__sync_fetch_and_add(&value->segments, segments);
}

/* Everything a retransmit updates. `addrs` is the socket, or the request socket of a SYN-ACK. */
static __always_inline void record(const struct sock *sk, const struct sock_common *addrs,
				   __u32 kind, __u64 segments, int err)
{
	__u32 zero = 0;
	struct retrans_totals *totals = bpf_map_lookup_elem(&retrans_totals, &zero);
	if (!totals)
		return;
	if (kind >= RETRANS_KIND_MAX)
		return;
	if (err) { /* 6.17+ reports failed attempts (mostly -EBUSY); the kernel's MIBs skip most */
		totals->failures[kind]++;
		return;
	}
	totals->segments[kind] += segments;
	add_cgroup(sock_cgroup_id(sk), kind, segments, totals);
	if (track_flows) {
		struct retrans_flow_key key;
		__builtin_memset(&key, 0, sizeof(key));
		fill_flow_addrs(&key, sk, addrs);
		key.netns_ino = sock_netns_ino(sk);
		key.kind = kind;
		add_flow(&key, segments, totals);
	}
}

/* tcp_retransmit_skb: SYN if the skb carries SYN (a SYN_SENT socket's SYN; a fast-open server's
 * SYN-ACK otherwise), data otherwise. Segments = tcp_skb_pcount(skb), as RetransSegs adds. */
static __always_inline void on_retransmit_skb(const struct sock *sk, const struct sk_buff *skb,
					      int err)
{
	const struct tcp_skb_cb *cb =
		(const void *)skb + bpf_core_field_offset(struct sk_buff, cb);
	__u16 tcp_flags = BPF_CORE_READ(cb, tcp_flags);
	__u16 segments = BPF_CORE_READ(cb, tcp_gso_segs);
	__u32 kind = RETRANS_KIND_DATA;
	if (tcp_flags & TCPHDR_SYN)
		kind = BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT ? RETRANS_KIND_SYN
										  : RETRANS_KIND_SYNACK;
	record(sk, &sk->__sk_common, kind, segments, err);
}

static __always_inline void on_retransmit_synack(const struct sock *listener,
						 const struct request_sock *req)
{
	record(listener, &req->__req_common, RETRANS_KIND_SYNACK, 1, 0);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retransmit_skb_btf, const struct sock *sk, const struct sk_buff *skb, int err)
{
	on_retransmit_skb(sk, skb, err);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retransmit_skb_btf_noerr, const struct sock *sk, const struct sk_buff *skb)
{
	on_retransmit_skb(sk, skb, 0);
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(retransmit_synack_btf, const struct sock *sk, const struct request_sock *req)
{
	on_retransmit_synack(sk, req);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int retransmit_skb_tp(void *ctx)
{
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb___v617)) {
		const struct trace_event_raw_tcp_retransmit_skb___v617 *args = ctx;
		on_retransmit_skb(args->skaddr, args->skbaddr, args->err);
	} else {
		const struct trace_event_raw_tcp_event_sk_skb___old *args = ctx;
		on_retransmit_skb(args->skaddr, args->skbaddr, 0);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_synack")
int retransmit_synack_tp(const struct trace_event_raw_tcp_retransmit_synack___any *args)
{
	on_retransmit_synack(args->skaddr, args->req);
	return 0;
}
