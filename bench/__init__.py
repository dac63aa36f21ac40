"""``make bench``: pymacvtap against kernel macvlan, side by side in one lab (SPEC 7, 8).

Run ``python -m bench.run [--quick] [--json PATH] [--profile]`` from the repository root;
see ``bench/README.md``.
"""
