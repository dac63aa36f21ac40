#!/bin/sh
# /init of the pymacvtap test VM (busybox-static, runs as PID 1 from the initramfs).
#
# Configuration, all optional, from the kernel command line (no spaces inside values):
#   pmvt.eth0=10.77.0.21/24   static address of eth0 (pmvt.eth1 ... pmvt.eth7 likewise)
#   pmvt.gw=10.77.0.1         default route
#   pmvt.ping=A,B,C           ping each target (after waiting up to pmvt.wait s for a first reply)
#   pmvt.count=3              pings per target
#   pmvt.wait=30              seconds to wait for a target's first reply
#   pmvt.stay=1               after the work, stay up: answer pings, run commands from the console
# and /pmvt/script (from the per-VM initramfs overlay), sourced with /pmvt/lib.sh loaded.
#
# Markers on the serial console, one per line:
#   PMVT-BOOTED                        userspace is up, network configured
#   PMVT-NET <ifname> <mac> <addr>     an interface was configured
#   PMVT-RESULT <name> ok|fail [text]  one check (pings, the script, pmvt_result in the script)
#   PMVT-MARK <text>                   free-form progress marker (pmvt_mark in the script)
#   PMVT-DONE                          work finished; then power-off, or PMVT-READY in stay mode
#   PMVT-READY                         command loop waits for "PMVT-CMD <id> <shell command>"
#   PMVT-BEGIN <id> / PMVT-END <id> <rc>   around a command's output
#   PMVT-ERROR <text>                  setup problem

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
stty -echo 2>/dev/null

for arg in $(cat /proc/cmdline); do
	case "$arg" in
	pmvt.*=*)
		key=${arg%%=*}
		key=${key#pmvt.}
		case "$key" in
		'' | *[!a-z0-9_]*) continue ;;
		esac
		eval "PMVT_$key=\${arg#*=}"
		;;
	esac
done

for m in $(cat /etc/pmvt/modules); do
	insmod "/lib/modules/$m.ko" || echo "PMVT-ERROR insmod $m"
done

. /pmvt/lib.sh

ip link set lo up
for i in 0 1 2 3 4 5 6 7; do
	eval "addr=\${PMVT_eth$i:-}"
	[ -n "$addr" ] || continue
	if ! ip link set "eth$i" up; then
		echo "PMVT-ERROR no eth$i"
		continue
	fi
	ip addr add "$addr" dev "eth$i" || echo "PMVT-ERROR address $addr on eth$i"
	echo "PMVT-NET eth$i $(cat /sys/class/net/eth$i/address) $addr"
done
if [ -n "${PMVT_gw:-}" ]; then
	ip route add default via "$PMVT_gw" || echo "PMVT-ERROR route via $PMVT_gw"
fi
echo "PMVT-BOOTED"

if [ -n "${PMVT_ping:-}" ]; then
	for target in $(echo "$PMVT_ping" | tr ',' ' '); do
		pmvt_ping "$target" "${PMVT_count:-3}" "${PMVT_wait:-30}"
	done
fi

if [ -f /pmvt/script ]; then
	(. /pmvt/script) </dev/null
	rc=$?
	if [ "$rc" = 0 ]; then
		echo "PMVT-RESULT script ok rc=0"
	else
		echo "PMVT-RESULT script fail rc=$rc"
	fi
fi
echo "PMVT-DONE"

if [ "${PMVT_stay:-0}" != 0 ]; then
	echo "PMVT-READY"
	while IFS= read -r line; do
		case "$line" in
		"PMVT-CMD "*)
			rest=${line#PMVT-CMD }
			id=${rest%% *}
			cmd=${rest#"$id"}
			echo "PMVT-BEGIN $id"
			(eval "$cmd") </dev/null 2>&1
			echo "PMVT-END $id $?"
			;;
		esac
	done
	# The console was closed (QEMU's stdin): nobody can talk to us any more, stay as a ping target.
	while :; do sleep 3600; done
fi
sync
poweroff -f
