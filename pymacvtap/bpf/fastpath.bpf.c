// SPDX-License-Identifier: GPL-2.0-or-later
/* pymacvtap's kernel fast path: the engine's unicast decisions (core/port.py).
 *
 * lower_ingress     Port.from_lower, unicast part   (tc ingress of a lower: tcx or clsact)
 * endpoint_ingress  Port.from_endpoint, unicast part (tc ingress of a veth peer or tap)
 * inbox_ingress     drops what reaches the daemon's inbox device, once the daemon's
 *                   sockets there have it (the host stack has no use for it)
 *
 * Everything a program does not decide (group frames, source-mode copies, endpoints
 * the daemon serves, frames it cannot parse) is the daemon's, which decides as the
 * Python data path does.  The program hands it over on the daemon's inbox device
 * (redirected into its ingress, where the daemon's AF_PACKET sockets read it, one per
 * device: pymacvtap/daemon/inbox.py), labelled with a VLAN tag in skb metadata naming
 * the device it came from: so the
 * daemon has no receiving socket on the devices that forward, and a frame the
 * programs forward costs it nothing, not even a socket filter's look.  A frame from
 * a lower goes to the host as well (a copy is handed over); one from an endpoint's
 * device is the daemon's alone.  A unicast frame from the wire for no endpoint goes
 * to the host alone: the program counts it as the engine would.  The tables are
 * written by pymacvtap/bpf/tables.py from the engine; BPF_PROG_TEST_RUN proves the
 * two agree (tests/bpf).  A program's decision is also left in skb->cb[0..2] for
 * those tests.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fastpath.h"

char LICENSE[] SEC("license") = "GPL";

/* Every endpoint, up or down, by (lower, MAC): port.macs with the state beside it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_ENDPOINTS);
	__type(key, struct fp_key);
	__type(value, struct fp_endpoint);
} endpoints SEC(".maps");

/* An endpoint's daemon-side device (peer or tap ifindex) -> a copy of its entry in
 * endpoints: endpoint_ingress finds the sender in one lookup instead of two. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct fp_endpoint);
} devices SEC(".maps");

/* Lowers by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_LOWERS);
	__type(key, __u32);
	__type(value, struct fp_lower);
} lowers SEC(".maps");

/* Source MACs some UP source-mode endpoint listens to (port.sources): their frames
 * are copied by the daemon, so they are all the daemon's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_ENDPOINTS);
	__type(key, struct fp_key);
	__type(value, __u8);
} sources SEC(".maps");

/* The daemon's inbox device (ifindex; 0: none, the frames go on as without programs). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} inbox SEC(".maps");

/* Every device a program runs on (ifindex) -> how its frames are labelled for the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_LOWERS + FP_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct fp_label);
} labels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct fp_stats);
} endpoint_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_MAX_LOWERS);
	__type(key, __u32);
	__type(value, struct fp_stats);
} lower_stats SEC(".maps");

struct verdict {
	__u32 ifindex;  /* where FP_TO_PEER / FP_TO_DEV sends it */
	__u32 reason;   /* enum fp_drop: for FP_DROP, and FP_HOST of an oversize frame */
	struct fp_lower *lower;
	struct fp_endpoint *from;  /* the sending endpoint (endpoint_ingress) */
	struct fp_endpoint *to;    /* the receiving endpoint, if any */
};

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

/* 4 when the device moved the frame's VLAN tag into skb metadata: the daemon
 * puts it back (PACKET_AUXDATA), so the engine sees and counts 4 more bytes. */
static __always_inline __u32 stripped_tag(struct __sk_buff *skb)
{
	return skb->vlan_present ? 4 : 0;
}

/* Frame.segment_size: the largest L3 packet the frame stands for.  For a GSO
 * super-frame, one segment's headers plus gso_size; the headers end where the L4
 * header does (Frame._gso_headers with a partial checksum).  -1: cannot tell. */
static __always_inline int segment_size(struct __sk_buff *skb, __u16 proto)
{
	__u32 len = skb->len;
	__u32 gso_size = skb->gso_size;
	__u32 l3 = ETH_HLEN, l4, headers;
	__u8 b, ipproto;

	if (!gso_size) {
		__u32 size = len - ETH_HLEN;
		if (size >= 4 && (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_))
			size -= 4;
		return size;
	}
	if (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_) {
		__be16 inner;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &inner, 2))
			return -1;
		proto = bpf_ntohs(inner);
		l3 += 4;
	}
	if (proto == ETH_P_IP) {
		if (bpf_skb_load_bytes(skb, l3, &b, 1) || bpf_skb_load_bytes(skb, l3 + 9, &ipproto, 1))
			return -1;
		l4 = l3 + (b & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		if (bpf_skb_load_bytes(skb, l3 + 6, &ipproto, 1))
			return -1;
		l4 = l3 + 40;
	} else {
		return -1;
	}
	if (ipproto == IPPROTO_TCP) {
		if (l4 + 12 >= len || bpf_skb_load_bytes(skb, l4 + 12, &b, 1))
			return -1;
		headers = l4 + (b >> 4) * 4;
	} else if (ipproto == IPPROTO_UDP) {
		headers = l4 + 8;
	} else {
		return -1;
	}
	if (headers + gso_size < len)
		len = headers + gso_size;
	/* A tag the device stripped (rx-vlan offload) is in the daemon's copy, and
	 * Frame.segment_size counts it in a super-frame's headers. */
	return len - ETH_HLEN + stripped_tag(skb);
}

/* Port.from_lower's "len - ETH_HLEN > mtu and segment_size() > mtu": 1 oversize,
 * 0 fits, -1 cannot tell. */
static __always_inline int oversize(struct __sk_buff *skb, __u32 mtu, __u16 proto)
{
	if (skb->len + stripped_tag(skb) - ETH_HLEN <= mtu)
		return 0;
	int seg = segment_size(skb, proto);
	if (seg < 0)
		return -1;
	return (__u32)seg > mtu;
}

/* The Ethernet header, read from the packet directly (a helper call less per frame)
 * when the linear part holds it. */
static __always_inline int load_eth(struct __sk_buff *skb, struct ethhdr *eth)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (data + sizeof(*eth) <= end) {
		__builtin_memcpy(eth, data, sizeof(*eth));
		return 0;
	}
	return bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth));
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int to_endpoint(struct verdict *v, struct fp_endpoint *ep)
{
	v->to = ep;
	v->ifindex = ep->ifindex;
	return ep->peer ? FP_TO_PEER : FP_TO_DEV;
}

/* Port.from_lower -> _receive, for unicast. */
static __always_inline int from_lower(struct __sk_buff *skb, struct verdict *v)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct fp_lower *lower;
	struct fp_endpoint *ep;
	struct ethhdr eth;

	if (load_eth(skb, &eth))
		return FP_PASS; /* a runt: the daemon counts it */
	if (eth.h_dest[0] & 1)
		return FP_PASS; /* group frames: the broadcast queue is the daemon's */

	/* The endpoint the frame is addressed to carries its lower's entry: for the
	 * frames the programs forward that is the only lookup.  On a passthru lower the
	 * one endpoint takes every unicast, whatever its destination. */
	struct fp_key key = { .lower = ifindex };
	__builtin_memcpy(key.mac, eth.h_dest, ETH_ALEN);
	ep = bpf_map_lookup_elem(&endpoints, &key);
	if (ep) {
		lower = &ep->on;
	} else {
		lower = bpf_map_lookup_elem(&lowers, &ifindex);
		if (lower && lower->passthru) {
			__builtin_memcpy(key.mac, lower->passthru_mac, ETH_ALEN);
			ep = bpf_map_lookup_elem(&endpoints, &key);
		}
	}
	if (!lower || !lower->fast)
		return FP_PASS;
	v->lower = lower;
	int over = oversize(skb, lower->mtu, bpf_ntohs(eth.h_proto));
	if (over < 0)
		return FP_PASS;

	__builtin_memcpy(key.mac, eth.h_source, ETH_ALEN);
	if (lower->sources && bpf_map_lookup_elem(&sources, &key))
		return FP_PASS; /* a source-mode endpoint gets a copy (_forward_source) */

	if (!lower->passthru && (!ep || !ep->up || ep->mode == FP_SOURCE)) {
		/* Not ours: the host's (Port._settle's NOT_OURS).  Unless a macnat endpoint
		 * may claim it (frames for the lower's MAC), the daemon need not see it: the
		 * program counts it, an oversize one as the engine's drop, and lets it go on.
		 * The host keeps even an oversize frame, as on the Python data path, where
		 * the daemon drops only its own copy. */
		if (lower->claims)
			return FP_PASS;
		if (over)
			v->reason = FP_OVERSIZE_FROM_LOWER;
		return FP_HOST;
	}
	if (!ep || !ep->fast)
		return FP_PASS;
	if (over) {
		v->reason = FP_OVERSIZE_FROM_LOWER;
		return FP_DROP;
	}
	if (!ep->up) {
		v->reason = FP_PASSTHRU_DOWN; /* the kernel consumes it */
		return FP_DROP;
	}
	return to_endpoint(v, ep);
}

/* Port.from_endpoint, for unicast. */
static __always_inline int from_endpoint(struct __sk_buff *skb, struct verdict *v)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct fp_endpoint *ep = bpf_map_lookup_elem(&devices, &ifindex);
	struct fp_endpoint *dest;
	struct fp_lower *lower;
	struct ethhdr eth;

	if (!ep || !ep->fast)
		return FP_PASS;
	v->from = ep;
	lower = &ep->on;
	if (!lower->fast)
		return FP_PASS;
	v->lower = lower;
	if (load_eth(skb, &eth))
		return FP_PASS;
	int over = oversize(skb, ep->mtu, bpf_ntohs(eth.h_proto));
	if (over < 0)
		return FP_PASS;
	if (over) {
		v->reason = FP_OVERSIZE_FROM_ENDPOINT;
		return FP_DROP;
	}
	if (!ep->up) {
		/* A container's netdev that sends is up: the daemon has not read the
		 * RTM_NEWLINK yet.  It catches up before it decides (a VM's port is down by
		 * the daemon's own word, and the VM may go on sending: dropped here). */
		if (ep->peer)
			return FP_PASS;
		v->reason = FP_ENDPOINT_DOWN;
		return FP_DROP;
	}
	if (ep->spoofchk && !mac_equal(eth.h_source, ep->mac)) {
		v->reason = FP_SPOOFED;
		return FP_DROP;
	}
	if (eth.h_dest[0] & 1)
		return FP_PASS; /* bridge peers' copies and the flood are the daemon's */

	if (ep->mode == FP_BRIDGE) {
		struct fp_key peer = { .lower = ep->lower };
		__builtin_memcpy(peer.mac, eth.h_dest, ETH_ALEN);
		dest = bpf_map_lookup_elem(&endpoints, &peer);
		if (dest && dest->up && dest->mode == FP_BRIDGE) {
			/* Bridge peer to bridge peer, never touching the wire. */
			__builtin_memcpy(peer.mac, eth.h_source, ETH_ALEN);
			if (!dest->fast || (lower->sources && bpf_map_lookup_elem(&sources, &peer)))
				return FP_PASS;
			return to_endpoint(v, dest);
		}
	}
	if (!lower->up) {
		v->reason = FP_LOWER_DOWN;
		return FP_DROP;
	}
	v->ifindex = ep->lower; /* to the wire: every other unicast, all of VEPA's */
	return FP_TO_DEV;
}

static __always_inline void count_rx(void *map, __u32 slot, __u32 len)
{
	struct fp_stats *s = bpf_map_lookup_elem(map, &slot);
	if (s) {
		s->rx_packets++;
		s->rx_bytes += len;
	}
}

static __always_inline void count_tx(void *map, __u32 slot, __u32 len)
{
	struct fp_stats *s = bpf_map_lookup_elem(map, &slot);
	if (s) {
		s->tx_packets++;
		s->tx_bytes += len;
	}
}

static __always_inline void count_drop(void *map, __u32 slot, __u32 reason)
{
	struct fp_stats *s = bpf_map_lookup_elem(map, &slot);
	if (s)
		s->drops[reason & (FP_DROP_MAX - 1)]++;
}

static __always_inline void count_not_ours(__u32 slot)
{
	struct fp_stats *s = bpf_map_lookup_elem(&lower_stats, &slot);
	if (s)
		s->not_ours++;
}

/* Hand a frame to the daemon: labelled (a VLAN tag in skb metadata, see fastpath.h),
 * into the ingress of its inbox device.  From a lower the host keeps the frame too (a
 * copy goes, and the label comes off again); from an endpoint's device it is the
 * daemon's alone.  With no inbox or no label (a device the daemon is still setting
 * up) the frame goes on as if no program were there.
 *
 * A frame that goes on to the host's stack is TC_ACT_UNSPEC, not TC_ACT_OK: on both hooks
 * that lets the programs and filters after ours on the device (a user's, on a lower) see
 * it as if ours were not there; TC_ACT_OK would end the device's ingress programs here. */
static __always_inline int to_daemon(struct __sk_buff *skb, const int from_lower)
{
	__u32 zero = 0, ifindex = skb->ingress_ifindex;
	__u32 *target = bpf_map_lookup_elem(&inbox, &zero);
	struct fp_label *label = bpf_map_lookup_elem(&labels, &ifindex);

	if (!target || !*target || !label)
		return TC_ACT_UNSPEC;
	__u16 tci = label->id & (FP_MAX_LABELS - 1);
	if (label->queued && skb->queue_mapping)
		tci |= ((skb->queue_mapping - 1) & 0xf) << FP_LABEL_BITS;
	__be16 proto = bpf_htons(label->endpoint ? ETH_P_8021AD_ : ETH_P_8021Q_);
	if (bpf_skb_vlan_push(skb, proto, tci))
		return TC_ACT_UNSPEC;
	skb->cb[1] = *target;
	if (!from_lower)
		return bpf_redirect(*target, BPF_F_INGRESS);
	bpf_clone_redirect(skb, *target, BPF_F_INGRESS);
	bpf_skb_vlan_pop(skb);
	return TC_ACT_UNSPEC;
}

static __always_inline int act(struct __sk_buff *skb, int action, struct verdict *v,
			       const int from_lower)
{
	skb->cb[0] = action;
	skb->cb[1] = v->ifindex;
	skb->cb[2] = v->reason;
	switch (action) {
	case FP_TO_PEER:
		/* eth_type_trans judged the frame by the device it arrived on (the lower, a
		 * peer with its own address): OTHERHOST.  It is for this endpoint, and the
		 * peer's stack will not look again; macvlan_handle_frame sets it too. */
		bpf_skb_change_type(skb, PACKET_HOST);
		return bpf_redirect_peer(v->ifindex, 0);
	case FP_TO_DEV:
		return bpf_redirect(v->ifindex, 0);
	case FP_DROP:
		return TC_ACT_SHOT;
	case FP_HOST:
		return TC_ACT_UNSPEC;
	}
	return to_daemon(skb, from_lower);
}

SEC("tc")
int lower_ingress(struct __sk_buff *skb)
{
	struct verdict v = {};
	int action = from_lower(skb, &v);
	__u32 len = skb->len + stripped_tag(skb);

	if (action == FP_PASS || !v.lower)
		return act(skb, FP_PASS, &v, 1);
	/* The lower counts every frame it decides, as Port.from_lower does. */
	count_rx(&lower_stats, v.lower->slot, len);
	if (v.reason) /* FP_DROP, or an oversize frame left to the host */
		count_drop(&lower_stats, v.lower->slot, v.reason);
	else if (action == FP_HOST)
		count_not_ours(v.lower->slot);
	else if (v.to)
		count_rx(&endpoint_stats, v.to->slot, len);
	return act(skb, action, &v, 1);
}

SEC("tc")
int endpoint_ingress(struct __sk_buff *skb)
{
	struct verdict v = {};
	int action = from_endpoint(skb, &v);
	__u32 len = skb->len + stripped_tag(skb);

	if (action == FP_PASS || !v.from || !v.lower)
		return act(skb, FP_PASS, &v, 0);
	if (action == FP_DROP) {
		count_drop(&endpoint_stats, v.from->slot, v.reason);
		return act(skb, action, &v, 0);
	}
	count_tx(&endpoint_stats, v.from->slot, len);
	if (v.to)
		count_rx(&endpoint_stats, v.to->slot, len);
	else
		count_tx(&lower_stats, v.lower->slot, len);
	return act(skb, action, &v, 0);
}

/* The daemon's socket on the inbox has seen the frame (AF_PACKET taps come before tc):
 * nothing else in this namespace is to see it. */
SEC("tc")
int inbox_ingress(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}
