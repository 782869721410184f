// SPDX-License-Identifier: GPL-2.0
/* A struct_ops object of a type this kernel has (tcp_congestion_ops), so the loader's
 * attach, pin, status and unload paths run on real kernel objects in the tests.
 * Two instances: loading is all or nothing. */
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct sock;

struct tcp_congestion_ops {
	__u32 (*ssthresh)(struct sock *sk);
	void (*cong_avoid)(struct sock *sk, __u32 ack, __u32 acked);
	__u32 (*undo_cwnd)(struct sock *sk);
	char name[16];
};

SEC("struct_ops/fpt_ssthresh")
__u32 BPF_PROG(fpt_ssthresh, struct sock *sk)
{
	return 2;
}

SEC("struct_ops/fpt_cong_avoid")
void BPF_PROG(fpt_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
}

SEC("struct_ops/fpt_undo_cwnd")
__u32 BPF_PROG(fpt_undo_cwnd, struct sock *sk)
{
	return 2;
}

SEC(".struct_ops")
struct tcp_congestion_ops fpoltest_1 = {
	.ssthresh = (void *)fpt_ssthresh,
	.cong_avoid = (void *)fpt_cong_avoid,
	.undo_cwnd = (void *)fpt_undo_cwnd,
	.name = "fpoltest_1",
};

SEC(".struct_ops")
struct tcp_congestion_ops fpoltest_2 = {
	.ssthresh = (void *)fpt_ssthresh,
	.cong_avoid = (void *)fpt_cong_avoid,
	.undo_cwnd = (void *)fpt_undo_cwnd,
	.name = "fpoltest_2",
};
