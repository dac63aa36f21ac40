"""Where the CLI finds the endpoint configuration's names until it imports them itself.

The configuration lives in :mod:`pymacvtap.daemon.config`; this alias stays only
for ``pymacvtap/cli.py`` (being split elsewhere) and goes with that work.
"""

from pymacvtap.daemon.config import FRONTENDS, TYPES, ConfigError, EndpointConfig

__all__ = ["FRONTENDS", "TYPES", "ConfigError", "EndpointConfig"]
