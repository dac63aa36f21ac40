"""Tests of the frontends: one kind of fd adapted to the engine each."""
