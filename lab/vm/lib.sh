# Helpers for test scripts run inside the pymacvtap test VM (sourced by /init before /pmvt/script).

# pmvt_result NAME ok|fail [TEXT...]: report one check.
pmvt_result() {
	name=$1
	status=$2
	shift 2
	echo "PMVT-RESULT $name $status $*"
}

# pmvt_mark TEXT...: a progress marker the host can wait for.
pmvt_mark() {
	echo "PMVT-MARK $*"
}

# pmvt_wait_reply TARGET SECONDS: succeed as soon as TARGET answers one ping.
pmvt_wait_reply() {
	end=$(($(cut -d. -f1 /proc/uptime) + $2))
	while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
		ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
	done
	return 1
}

# pmvt_ping TARGET [COUNT [WAIT]]: wait up to WAIT s (30) for a first reply, then send COUNT (3)
# pings; ok when all COUNT are answered. Reports "ping:TARGET ok|fail RECEIVED/COUNT".
pmvt_ping() {
	target=$1
	count=${2:-3}
	if ! pmvt_wait_reply "$target" "${3:-30}"; then
		pmvt_result "ping:$target" fail "0/$count no reply"
		return 1
	fi
	got=$(ping -c "$count" -W 2 -i 0.2 "$target" 2>/dev/null |
		sed -n 's/.* \([0-9][0-9]*\) packets received.*/\1/p')
	if [ "${got:-0}" = "$count" ]; then
		pmvt_result "ping:$target" ok "$got/$count"
		return 0
	fi
	pmvt_result "ping:$target" fail "${got:-0}/$count"
	return 1
}

# pmvt_no_reply TARGET [SECONDS]: ok when TARGET does NOT answer for SECONDS (5) seconds.
# Reports "noreply:TARGET ok|fail".
pmvt_no_reply() {
	if ping -c "${2:-5}" -W 1 -w "${2:-5}" "$1" >/dev/null 2>&1; then
		pmvt_result "noreply:$1" fail "got a reply"
		return 1
	fi
	pmvt_result "noreply:$1" ok
	return 0
}
