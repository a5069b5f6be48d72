// SPDX-License-Identifier: MIT OR GPL-2.0
//
// netcage's sockops program: which process opened each sandbox connection.
//
// At BPF_SOCK_OPS_TCP_CONNECT_CB (inside connect(), in the connecting task, the local port
// chosen, no SYN sent yet) a socket whose network namespace is in `watched` gets an entry in
// `conns`: its addresses and ports (IPv4 as ::ffff:a.b.c.d, so v4-mapped sockets match) →
// the task that connected. netcage looks the entry up when it accepts the redirected
// connection (the peer address and SO_ORIGINAL_DST rebuild the key) and deletes it.
//
// Only UAPI `struct bpf_sock_ops` fields and helpers: no vmlinux.h, no BTF, no CO-RE. Maps
// are legacy `maps` definitions so the object needs no debug info (built without -g, it is
// byte-for-byte reproducible; see scripts/build-ebpf). The layouts below are mirrored in
// src/sandbox/bpf.rs.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

// The legacy map definition aya reads from the `maps` section.
struct map_def {
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 flags;
};

// 48 bytes, no implicit padding.
struct conn_key {
	__u64 netns;     // the socket's netns cookie
	__u8 src[16];    // local address of the connecting socket (IPv4 v4-mapped)
	__u8 dst[16];    // the address connected to (before any redirect)
	__u16 sport;     // host byte order
	__u16 dport;     // host byte order
	__u32 pad;       // zero
};

// 48 bytes.
struct conn_owner {
	__u32 tgid;      // process id (host pid namespace)
	__u32 tid;       // thread id (host pid namespace)
	__u32 uid;
	__u32 gid;
	__u64 cgroup;    // cgroup v2 id of the task
	__u64 ktime;     // bpf_ktime_get_ns() at connect
	char comm[16];   // the thread's name
};

// What to record: {netns cookie, port 0} for every connection made in a namespace (a
// sandbox's), {netns cookie, port} for those to one port (the host's namespace for
// `netcage proxy`: only connections to the proxy). The value is unused.
struct watch_key {
	__u64 netns;
	__u32 port;      // host byte order; 0 = any
	__u32 pad;       // zero
};

struct map_def SEC("maps") watched = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(struct watch_key),
	.value_size = sizeof(__u32),
	.max_entries = 1024,
};

struct map_def SEC("maps") conns = {
	.type = BPF_MAP_TYPE_LRU_HASH,
	.key_size = sizeof(struct conn_key),
	.value_size = sizeof(struct conn_owner),
	.max_entries = 65536,
};

// The verifier takes only 4-byte loads of the address fields: volatile keeps clang from
// merging two of them into one 8-byte load.
#define READ32(field) (*(volatile __u32 *)&(field))

static __always_inline void v4_mapped(__u8 *out, __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr_be, 4);
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

SEC("sockops")
int netcage_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	struct watch_key watch = { .netns = netns, .port = 0, .pad = 0 };
	__u16 dport = (__u16)bpf_ntohl(skops->remote_port);
	if (!bpf_map_lookup_elem(&watched, &watch)) {
		watch.port = dport;
		if (!bpf_map_lookup_elem(&watched, &watch))
			return 1;
	}

	struct conn_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.netns = netns;
	__u32 family = skops->family;
	__u32 remote6[4];
	remote6[0] = READ32(skops->remote_ip6[0]);
	remote6[1] = READ32(skops->remote_ip6[1]);
	remote6[2] = READ32(skops->remote_ip6[2]);
	remote6[3] = READ32(skops->remote_ip6[3]);
	// An AF_INET6 socket connecting to ::ffff:a.b.c.d goes through tcp_v4_connect, which
	// sets the IPv4 fields; its IPv6 source is filled in only after this callback.
	if (family == AF_INET || (family == AF_INET6 && is_v4_mapped(remote6))) {
		v4_mapped(key.src, skops->local_ip4);
		v4_mapped(key.dst, skops->remote_ip4);
	} else if (family == AF_INET6) {
		__u32 local6[4];
		local6[0] = READ32(skops->local_ip6[0]);
		local6[1] = READ32(skops->local_ip6[1]);
		local6[2] = READ32(skops->local_ip6[2]);
		local6[3] = READ32(skops->local_ip6[3]);
		__builtin_memcpy(key.src, local6, 16);
		__builtin_memcpy(key.dst, remote6, 16);
	} else {
		return 1;
	}
	key.sport = (__u16)skops->local_port;
	key.dport = dport;

	struct conn_owner owner;
	__builtin_memset(&owner, 0, sizeof(owner));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	owner.tgid = pid_tgid >> 32;
	owner.tid = (__u32)pid_tgid;
	__u64 uid_gid = bpf_get_current_uid_gid();
	owner.uid = (__u32)uid_gid;
	owner.gid = uid_gid >> 32;
	owner.cgroup = bpf_get_current_cgroup_id();
	owner.ktime = bpf_ktime_get_ns();
	bpf_get_current_comm(owner.comm, sizeof(owner.comm));
	bpf_map_update_elem(&conns, &key, &owner, BPF_ANY);
	return 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
