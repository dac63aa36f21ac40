"""Endpoint frontends: how frames reach an endpoint's user (tap, stream, dgram, vhost-user)."""
