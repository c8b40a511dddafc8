/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Bit helpers for log2 histograms. */
#ifndef KPULSE_BITS_BPF_H
#define KPULSE_BITS_BPF_H

#include "vmlinux.h"

/* floor(log2(v)) for v > 0; 0 for v == 0. Branch-free steps, no loop for the verifier. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;
	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

#endif /* KPULSE_BITS_BPF_H */
