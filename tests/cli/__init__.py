"""Tests of the command line, one module per part of pymacvtap/cli/."""
