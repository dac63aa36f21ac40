/* The fast path's tables: what pymacvtap/bpf/tables.py writes and the programs read.
 *
 * Every layout here has a twin struct format in tables.py; change both together.
 */
#ifndef PYMACVTAP_FASTPATH_H
#define PYMACVTAP_FASTPATH_H

#include <linux/types.h>

#define FP_MAX_ENDPOINTS 4096
#define FP_MAX_LOWERS 256
#define FP_MAX_SLOTS 4096

/* core.modes.Mode, with the kernel's bit values. */
#define FP_PRIVATE 1
#define FP_VEPA 2
#define FP_BRIDGE 4
#define FP_PASSTHRU 8
#define FP_SOURCE 16

/* Drop reasons the programs decide, numbered as tables.DROP_CODES. */
enum fp_drop {
	FP_OVERSIZE_FROM_LOWER = 1,
	FP_PASSTHRU_DOWN = 2,
	FP_OVERSIZE_FROM_ENDPOINT = 3,
	FP_ENDPOINT_DOWN = 4,
	FP_LOWER_DOWN = 5,
	FP_SPOOFED = 6,
	FP_DROP_MAX = 8,
};

/* An endpoint's MAC on one lower: MACs are unique per lower, not per daemon. */
struct fp_key {
	__u32 lower;    /* the lower's ifindex */
	__u8 mac[6];
	__u8 pad[2];
};

struct fp_lower {
	__u32 mtu;
	__u32 slot;     /* index in lower_stats */
	__u8 up;        /* carrier */
	__u8 fast;
	__u8 passthru;  /* passthru_mac names the one endpoint that takes every unicast */
	__u8 sources;   /* 1: some source-mode endpoint listens here (look in sources) */
	__u8 passthru_mac[6];
	__u8 claims;    /* 1: a macnat endpoint may claim frames for the host: all the daemon's */
	__u8 pad2;
};

struct fp_endpoint {
	__u32 ifindex;  /* the daemon-side device: a container's veth peer, a VM's tap */
	__u32 lower;
	__u32 mtu;
	__u32 slot;     /* index in endpoint_stats */
	__u8 mode;
	__u8 up;
	__u8 spoofchk;
	__u8 fast;      /* 0: every frame of this endpoint goes to the daemon */
	__u8 peer;      /* 1: a veth peer (bpf_redirect_peer); 0: a tap (bpf_redirect) */
	__u8 mac[6];
	__u8 pad;
	/* A copy of its lower's entry in lowers: a frame for or from an endpoint costs
	 * one hash lookup, not two.  Written with the endpoint whenever either changes. */
	struct fp_lower on;
};

struct fp_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 drops[FP_DROP_MAX];
	__u64 not_ours;  /* LowerStats.rx_not_ours: frames for no endpoint, left to the host */
};

/* How a frame the daemon must see is labelled on its way to the daemon's inbox device:
 * a VLAN tag pushed in front (802.1Q for a lower, 802.1ad for an endpoint's device),
 * whose TCI is the device's label.  ``queued``: a multi-queue tap, whose receive queue
 * goes in the TCI's top four bits. */
#define FP_LABEL_BITS 12
#define FP_MAX_LABELS (1 << FP_LABEL_BITS)

struct fp_label {
	__u16 id;
	__u8 endpoint;  /* 1: an endpoint's device (802.1ad); 0: a lower (802.1Q) */
	__u8 queued;
};

/* What a program decided; also left in skb->cb[0..2] for BPF_PROG_TEST_RUN. */
enum fp_action {
	FP_PASS = 0,      /* the daemon's (and, from a lower, the host's): not decidable here */
	FP_TO_PEER = 1,   /* bpf_redirect_peer: into a container */
	FP_TO_DEV = 2,    /* bpf_redirect to a device's egress: a tap, the lower, a peer */
	FP_DROP = 3,
	FP_HOST = 4,      /* the host's alone: counted here, never shown to the daemon */
};

#endif
