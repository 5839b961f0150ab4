"""The suite's throwaway redis-server: a port another process took first is chosen again."""

from __future__ import annotations

import socket

import pytest

from tests.support.redis_server import PortTaken, RedisSentinel, RedisServer


def bound_socket(port: int = 0) -> socket.socket:
    """A socket holding ``port`` (bound, not listening: a probe's connection is refused at once)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


def test_a_first_start_whose_port_was_taken_meanwhile_chooses_another() -> None:
    server = RedisServer()
    with bound_socket() as thief:
        server.port = thief.getsockname()[1]
        try:
            server.start()
            assert server.port != thief.getsockname()[1]
            assert server.command(b"PING").startswith(b"+PONG")
        finally:
            server.cleanup()


def test_a_restart_keeps_its_port_and_says_it_is_taken() -> None:
    server = RedisServer()
    try:
        server.start()
        port = server.port
        server.stop()
        with bound_socket(port):
            with pytest.raises(PortTaken):
                server.start()
        assert server.port == port
    finally:
        server.cleanup()


def test_a_sentinel_whose_port_was_taken_meanwhile_writes_another_in_its_config() -> None:
    sentinel = RedisSentinel()
    with bound_socket() as thief:
        sentinel.sentinel.port = thief.getsockname()[1]
        try:
            sentinel.start()
            assert sentinel.sentinel.port != thief.getsockname()[1]
            assert sentinel.sentinel.command(b"PING").startswith(b"+PONG")
        finally:
            sentinel.cleanup()
