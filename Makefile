# pymacvtap — every target installs what it needs itself (apt + a venv), so the
# two README commands work on a fresh Debian machine as root.

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
APT_PACKAGES := python3 python3-venv python3-pip iproute2 iputils-ping ethtool tcpdump procps kmod \
                util-linux passwd qemu-system-x86 busybox-static iperf3 \
                containernetworking-plugins systemd man-db groff-base libvirt-clients libxml2-utils \
                dnsmasq docker.io podman clang llvm libbpf-dev libbpf1 linux-libc-dev nftables
# Only `make bench` needs these: the user-space switches it measures beside pymacvtap.
BENCH_APT_PACKAGES := vde2 openvswitch-switch
STAMP       := $(VENV)/.installed

BPF_DIR     := pymacvtap/bpf
BPF_OBJ     := $(BPF_DIR)/fastpath.bpf.o

.PHONY: all setup apt-deps bench-apt-deps apt-install bpf test lint typecheck unit demo bench soak install clean

all: test

# apt only runs when a package is missing: repeated `make test` stays fast and offline.
apt-deps:
	@$(MAKE) -s apt-install PACKAGES="$(APT_PACKAGES)"

bench-apt-deps:
	@$(MAKE) -s apt-install PACKAGES="$(BENCH_APT_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "apt: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | apt-deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

setup: apt-deps $(STAMP) bpf

# The kernel fast path's programs, built beside their source so the package carries
# them (package-data) and pymacvtap.io.bpf finds them.
bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_DIR)/fastpath.bpf.c $(BPF_DIR)/fastpath.h | apt-deps
	clang -O2 -g -target bpf -Wall -I/usr/include/$$(uname -m)-linux-gnu \
	    -c $(BPF_DIR)/fastpath.bpf.c -o $@

lint: setup
	$(VENV)/bin/ruff check pymacvtap lab tests bench demo
	$(VENV)/bin/ruff format --check pymacvtap lab tests bench demo
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/core tests/virtio

demo: setup
	$(VPY) -m demo.demo

# The reliability tests (fuzzing, faults, load) and the fast path's equivalence
# property with ten times the counts.
soak: setup
	PYMACVTAP_FUZZ_SCALE=10 $(VENV)/bin/pytest -q -p no:cacheprovider --timeout=1200 \
	    tests/reliability tests/frontends/vhost_user/test_fuzz.py tests/bpf/test_equivalence.py

# Not a test: pymacvtap against kernel macvlan in the same lab, a table and JSON.
bench: setup bench-apt-deps
	$(VPY) -m bench.run $(BENCH_ARGS)

# A world-readable venv under PREFIX with the entry points on PATH, the systemd
# unit, its config file, the man page and bash completion (DESTDIR honoured).
install: apt-deps bpf
	sh packaging/install.sh $(or $(PREFIX),/opt/pymacvtap)

clean:
	rm -rf $(VENV) $(BPF_OBJ) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
