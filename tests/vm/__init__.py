"""Tiny real VMs (QEMU TCG, Debian kernel, busybox initramfs) for pymacvtap tests."""
