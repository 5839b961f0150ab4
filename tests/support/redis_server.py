"""A throwaway redis-server on a free port, for tests that need a real Redis."""

from __future__ import annotations

import itertools
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.wait import wait_until

#: Starts that may find their freshly chosen port taken before one is given up.
PORT_ATTEMPTS = 5


class PortTaken(Exception):
    """redis-server could not bind its port: another process took it after it was chosen."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server subprocess; ``appendonly`` turns on the AOF for durability tests."""

    def __init__(self, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        self.binary = binary
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="asyncgate-redis-"))
        #: How a port is chosen, again if another process binds it between choice and start.
        self.choose_port: Callable[[], int] = free_port
        self.port = self.choose_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False
        #: More arguments (cluster mode), and a config file to start from (Sentinel).
        self.extra: list[str] = []
        self.config_file: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # A port is free when chosen and bound by redis-server later: another test worker may
        # take it between the two, so a first start that finds it taken chooses again. A restart
        # keeps its port (clients know it), as does Sentinel (its port is in its config file).
        for _ in range(PORT_ATTEMPTS):
            self._spawn()
            try:
                wait_until(self._answers, timeout=10, message="redis-server answers PING")
                self.started = True
                return
            except PortTaken:
                if self.started or self.config_file is not None:
                    raise
                self.port = self.choose_port()
        raise RuntimeError(f"redis-server found its port taken {PORT_ATTEMPTS} times")

    def _spawn(self) -> None:
        if self.config_file is not None:
            # Sentinel takes its settings from a config file it may rewrite.
            args = [self.binary, str(self.config_file), "--sentinel"]
        else:
            args = [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)),
                *("--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"),
                *("--loglevel", "warning", *self.extra),
            ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            said = self.log.read_text(errors="replace")
            if "Address already in use" in said:
                raise PortTaken(self.port)
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {said[-2000:]}")
        try:
            return self.command(b"PING").startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def command(self, *args: bytes) -> bytes:
        """Send one command in RESP and return the raw reply."""
        request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster_port(taken: set[int]) -> int:
    """A free port, not in ``taken``, whose cluster bus port (port + 10000) is free and valid too.

    The search starts at a random place (from the OS's randomness, which no test seeds), so
    that two test workers making clusters at once do not both choose the same ports.
    """
    first: int = random.SystemRandom().randrange(20000, 45000)
    for candidate in itertools.chain(range(first, 45000), range(20000, first)):
        if candidate in taken:
            continue
        try:
            for port in (candidate, candidate + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return candidate
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real Redis Cluster of three masters, made with redis-cli --cluster create; with
    ``replicas``, that many replicas of each master, and with ``node_timeout_ms`` a failure
    detection that short (a failover in seconds; Redis's default is 15 s)."""

    def __init__(self, nodes: int = 3, replicas: int = 0, node_timeout_ms: int | None = None) -> None:
        self.replicas = replicas
        self.nodes = [RedisServer() for _ in range(nodes * (1 + replicas))]
        taken: set[int] = set()

        def choose() -> int:
            port = cluster_port(taken)
            taken.add(port)
            return port

        for node in self.nodes:
            node.choose_port = choose
            node.port = choose()
            node.extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(node.dir / "nodes.conf")]
            if node_timeout_ms is not None:
                node.extra += ["--cluster-node-timeout", str(node_timeout_ms)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = str(self.replicas)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ready, timeout=30, message="cluster state ok, every replica in sync")

    def _ready(self) -> bool:
        if not all(b"cluster_state:ok" in node.command(b"CLUSTER", b"INFO") for node in self.live()):
            return False
        # A replica that never finished its first sync would not stand for election.
        roles = [node.command(b"INFO", b"replication") for node in self.nodes]
        replicas = [role for role in roles if b"role:slave" in role]
        expected = len(self.nodes) * self.replicas // (1 + self.replicas)
        return len(replicas) == expected and all(b"master_link_status:up" in role for role in replicas)

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now (a failover changes which)."""
        return [node for node in self.live() if b"role:master" in node.command(b"INFO", b"replication")]

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class RedisSentinel:
    """A primary watched by one real Sentinel, reached as redis+sentinel://."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.sentinel = RedisServer()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/asyncgate-primary/0"

    def start(self) -> None:
        self.primary.start()
        config = self.sentinel.dir / "sentinel.conf"
        self.sentinel.config_file = config
        for _ in range(PORT_ATTEMPTS):
            config.write_text(
                f"port {self.sentinel.port}\nbind 127.0.0.1\n"
                f"sentinel monitor asyncgate-primary 127.0.0.1 {self.primary.port} 1\n"
            )
            try:
                self.sentinel.start()
                break
            except PortTaken:
                self.sentinel.port = free_port()  # its port is in the config file, written again
        else:
            raise RuntimeError(f"Sentinel found its port taken {PORT_ATTEMPTS} times")
        wait_until(
            lambda: (
                str(self.primary.port).encode()
                in self.sentinel.command(b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", b"asyncgate-primary")
            ),
            timeout=30,
            message="sentinel knows the primary",
        )

    def cleanup(self) -> None:
        self.sentinel.cleanup()
        self.primary.cleanup()
