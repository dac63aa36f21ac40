"""Configuration errors, each with the errno name the kernel would use."""

from __future__ import annotations


class EngineError(Exception):
    """A refused configuration change.

    ``code`` is the errno name a user of ``ip link`` would see for the same
    mistake (``EADDRINUSE``, ``EINVAL`` ...); the message names the object.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
