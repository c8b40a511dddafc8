/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* errno values BPF programs compare helper results with (vmlinux.h has no macros). */
#ifndef KPULSE_ERRNO_BPF_H
#define KPULSE_ERRNO_BPF_H

#define EEXIST 17 /* bpf_map_update_elem with BPF_NOEXIST: the key is there */

#endif /* KPULSE_ERRNO_BPF_H */
