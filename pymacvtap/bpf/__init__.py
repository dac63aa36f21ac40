"""The kernel fast path: eBPF programs doing the engine's unicast decisions (SPEC 7).

``fastpath.bpf.c`` holds the programs (compiled by ``make bpf``), :mod:`.tables`
computes what their maps must hold from the engine; :mod:`pymacvtap.io.bpf`
loads, fills and attaches them.
"""
