"""Tests of the control socket: protocol, authorization, server and client."""
