"""Booting test VMs: a cached kernel and busybox initramfs, QEMU command lines."""
