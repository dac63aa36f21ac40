"""Fixtures shared by the VM tests."""

from __future__ import annotations

import pytest

from lab.vm.image import VmImage, ensure_vm_image


@pytest.fixture(scope="session")
def image() -> VmImage:
    """The cached kernel and initramfs, built once per run."""
    return ensure_vm_image()
