"""The naive baseline: what a hand-written filter does — test every rule against the
request's path in order and keep the strictest decision.

It is generated for the same policy as fpol's check object, from the resolved rules
(only literal `under`/`at` scopes, which is what the benchmark policies use), built with
the same clang flags, loaded the same way, and timed with the same bpf_loop harness.
"""

from __future__ import annotations

import struct

from fpol.compiler import ops
from fpol.compiler.lower import pack
from fpol.compiler.decide import Decision
from fpol.compiler.paths import ANY

PATH_MAX = 1024

TEMPLATE = r"""// SPDX-License-Identifier: GPL-2.0
/* Naive baseline for {name}: {n} rules tested in order for every request. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct rule {{
	__u32 off, len;   /* the rule's path in pool */
	__u32 exact;      /* `at` (1) or `under` (0) */
	__u32 word;       /* decision word if it matches */
	__u64 atoms;      /* bit per atom the rule selects */
}};

const struct rule rules[{nrules}] = {{
{rules}
}};
const __u8 pool[{pool_size}] = {{ {pool} }};

struct request {{
	__u32 atom;
	__u32 len;
	__u8 path[{path_max}];
}};

struct {{
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct request);
}} requests SEC(".maps");

struct state {{
	struct request *req;
	__u32 best;
}};

static __u32 strictness(__u32 word)
{{
	__u32 k = word & 3;
	return k == 1 ? 2 : k == 2 ? 1 : 0;
}}

static long test_rule(__u32 i, void *ctx)
{{
	struct state *st = ctx;
	struct request *req = st->req;
	if (i >= {n})
		return 1;
	const struct rule *r = &rules[i];
	if (!((r->atoms >> (req->atom & 63)) & 1))
		return 0;
	__u32 len = r->len, off = r->off;
	asm volatile("" : "+r"(len));
	asm volatile("" : "+r"(off));
	if (len > req->len || len > 255)
		return 0;
	for (__u32 j = 0; j < 255; j++) {{
		if (j >= len)
			break;
		__u32 p = off + j;
		asm volatile("" : "+r"(p));
		if (p >= {pool_size} || j >= {path_max})
			return 0;
		if (pool[p] != req->path[j])
			return 0;
	}}
	__u32 next = len < {path_max} ? req->path[len & ({path_max} - 1)] : 0;
	if (len != req->len && (r->exact || (next != '/' && len != 1)))
		return 0;
	if (strictness(r->word) > strictness(st->best))
		st->best = r->word;
	return 0;
}}

static long decide_once(__u32 i, void *ctx)
{{
	struct state *st = ctx;
	st->best = 0;
	bpf_loop({n}, test_rule, st, 0);
	return 0;
}}

struct bench {{
	__u64 iterations;
	__u64 ns;
	__u32 word;
	__u32 pad;
}};

SEC("syscall")
int naive_bench(struct bench *ctx)
{{
	__u32 zero = 0;
	struct state st = {{}};
	st.req = bpf_map_lookup_elem(&requests, &zero);
	if (!st.req)
		return 1;
	__u64 n = ctx->iterations;
	if (n > (1 << 20))
		n = 1 << 20;
	__u64 t0 = bpf_ktime_get_ns();
	bpf_loop(n, decide_once, &st, 0);
	ctx->ns = bpf_ktime_get_ns() - t0;
	ctx->word = st.best;
	return 0;
}}
"""


def generate(policy) -> str:
    """C for the naive filter of a policy whose rules use literal under/at scopes only."""
    pool = bytearray()
    rows = []
    for r in policy.rules:
        if len(r.terms) != 1 or r.excepts or r.terms[0].kind not in ("under", "at"):
            raise ValueError(f"the naive baseline takes one under/at scope per rule: {r.text}")
        comps = tuple(p for p in r.terms[0].patterns[0] if p is not ANY)
        path = b"/" + b"/".join(comps)
        off = len(pool)
        pool += path
        if r.action == "deny":
            word = pack(Decision("deny", errno=r.errno), r.index)
        elif r.action == "redirect":
            word = pack(Decision("userspace", mode=r.mode), r.index)
        else:  # allow and audit decide nothing a naive filter would rank above allow
            word = pack(Decision("allow", audit=r.action == "audit"), r.index)
        atoms = sum(1 << ops.ATOMS.index(a) for a in r.atoms)
        rows.append(f"\t{{ {off}, {len(path)}, {int(r.terms[0].kind == 'at')}, 0x{word:08x}, "
                    f"0x{atoms:016x}ull }}, /* {r.text} */")
    return TEMPLATE.format(name=policy.name, n=len(policy.rules), nrules=max(1, len(rows)),
                           rules="\n".join(rows), pool_size=max(1, len(pool)),
                           pool=", ".join(str(b) for b in pool) or "0", path_max=PATH_MAX)


def encode_request(atom: str, path: bytes) -> bytes:
    return struct.pack("<II", ops.ATOMS.index(atom), len(path)) + path.ljust(PATH_MAX, b"\0")
