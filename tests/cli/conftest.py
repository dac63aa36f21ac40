"""The control tests' fixtures (a socket directory, fake-service servers), shared, not copied."""

from tests.control.conftest import make_server, running, sockdir

__all__ = ["make_server", "running", "sockdir"]
