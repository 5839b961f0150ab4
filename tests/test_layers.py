"""Imports flow one way: a module imports only from its own layer or the layers below it.

The layer table is the architecture: pure leaves, then the
configuration, the adapters around the outside world, the services that run runs, the HTTP edge,
the app that wires it, and the command line. A new module must be given a place here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import asyncgate

PACKAGE = Path(asyncgate.__file__).parent

#: Lowest first. A module (or package, by its dotted prefix) belongs to exactly one layer.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "leaves",
        frozenset(
            {
                "asyncgate",
                "asyncgate.errors",
                "asyncgate.headers",
                "asyncgate.runs",
                "asyncgate.status",
                "asyncgate.signing",
                "asyncgate.links",
                "asyncgate.preferences",
                "asyncgate.policies",
                "asyncgate.netguard",
                "asyncgate.http1",
                "asyncgate.tasks",
                "asyncgate.logs",
                "asyncgate.collector",
                "asyncgate.wsframes",
                "asyncgate.progress",
                "asyncgate.lifecycle",
            }
        ),
    ),
    ("config", frozenset({"asyncgate.config"})),
    (
        "adapters",
        frozenset(
            {
                "asyncgate.store",
                "asyncgate.metrics",
                "asyncgate.upstream",
                "asyncgate.hookclient",
                "asyncgate.principal",
                "asyncgate.tracing",
                "asyncgate.otel",
            }
        ),
    ),
    (
        "services",
        frozenset(
            {
                "asyncgate.executor",
                "asyncgate.webhooks",
                "asyncgate.replay",
                "asyncgate.output",
                "asyncgate.feeds",
                "asyncgate.waiting",
                "asyncgate.services",
            }
        ),
    ),
    (
        "edge",
        frozenset(
            {
                "asyncgate.intake",
                "asyncgate.proxy",
                "asyncgate.endpoints",
                "asyncgate.eventstream",
                "asyncgate.websocket",
                "asyncgate.openapi",
                "asyncgate.responses",
                "asyncgate.ui",
                "asyncgate.server",
            }
        ),
    ),
    ("app", frozenset({"asyncgate.app"})),
    (
        "cli",
        # configdoc: ``python -m asyncgate.configdoc`` writes the configuration reference.
        frozenset(
            {"asyncgate.cli", "asyncgate.serving", "asyncgate.__main__", "asyncgate.workers", "asyncgate.configdoc"}
        ),
    ),
)
#: The SDK and its command line ship with the gateway but stand apart from it: besides its own
#: modules, it may import only the leaves (the wire's names: states, headers, signatures), and
#: only the command line (``asyncgate runs``) imports it.
CLIENT = "asyncgate.client"
#: What the SDK must import without: the server's own dependencies.
SERVER_ONLY = ("starlette", "uvicorn", "redis", "httptools", "h11", "prometheus_client", "yaml", "tenacity")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The index of the module's layer; None for the SDK; LookupError for a module given none."""
    if module == CLIENT or module.startswith(CLIENT + "."):
        return None
    for index, (_, members) in enumerate(LAYERS):
        if any(module == member or module.startswith(member + ".") for member in members if member != "asyncgate"):
            return index
        if module == "asyncgate" and "asyncgate" in members:
            return index
    raise LookupError(f"{module} has no layer in tests/test_layers.py: give it one")


def imported(module: str, path: Path) -> set[str]:
    """The asyncgate modules ``module`` imports, type-only imports included (they are a dependency too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # ``from asyncgate import endpoints`` imports the module asyncgate.endpoints.
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return {name for name in found if name == "asyncgate" or name.startswith("asyncgate.")}


def _layer_name(index: int | None) -> str:
    return "the SDK" if index is None else LAYERS[index][0]


def upward_imports(module: str, path: Path) -> list[str]:
    own = layer_of(module)
    top = len(LAYERS) - 1
    wrong = []
    for target in sorted(imported(module, path)):
        theirs = layer_of(target)
        if own is None:
            allowed = theirs is None or theirs == 0
        else:
            allowed = own == top if theirs is None else theirs <= own
        if not allowed:
            wrong.append(f"{module} ({_layer_name(own)}) imports {target} ({_layer_name(theirs)})")
    return wrong


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_and_below(module: str) -> None:
    assert upward_imports(module, MODULES[module]) == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    services = tmp_path / "replay.py"
    services.write_text("from asyncgate.intake import classify\nfrom asyncgate import runs, proxy\n")
    assert upward_imports("asyncgate.replay", services) == [
        "asyncgate.replay (services) imports asyncgate.intake (edge)",
        "asyncgate.replay (services) imports asyncgate.proxy (edge)",
    ]
    sdk = tmp_path / "_models.py"
    sdk.write_text("from asyncgate.client._sse import SSEDecoder\nfrom asyncgate.config import Config\n")
    assert upward_imports("asyncgate.client._models", sdk) == [
        "asyncgate.client._models (the SDK) imports asyncgate.config (config)"
    ]


def test_every_module_has_a_layer() -> None:
    assert [
        module
        for module in MODULES
        if module != CLIENT and not module.startswith(CLIENT + ".") and layer_of(module) is None
    ] == []


def test_the_sdk_imports_without_the_servers_dependencies() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {SERVER_ONLY!r}:\n"
        "            raise ImportError(f'the SDK imported {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import asyncgate.client, asyncgate.client.cli, asyncgate.client.webhook\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_runs_command_starts_without_the_server() -> None:
    """``asyncgate runs`` is a client: importing the gateway made its start and exit three times slower."""
    probe = (
        "import sys\n"
        "from asyncgate.cli import main\n"
        "try:\n"
        "    main(['runs', 'status', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(name for name in ('asyncgate.app', 'asyncgate.serving', 'asyncgate.store', 'uvicorn', 'redis')"
        " if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
