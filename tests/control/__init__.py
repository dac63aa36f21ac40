"""Tests of the control socket: protocol, authorization, server, client and CLI."""
