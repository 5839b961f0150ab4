"""``asyncgate runs ...``: submit, follow and inspect runs from a shell, over ``asyncgate.client``.

Exit codes: 0 ok, 1 the run failed or was cancelled, 2 usage, 3 wait timed out, 4 the gateway
refused the call or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from asyncgate.client import APIError, AsyncClient, AsyncRun, Client, ProtocolError, RunState, RunStatus, TransportError
from asyncgate.client._protocol import DEFAULT_PREFIX

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_API_ERROR = 4

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
#: How often the live progress line is redrawn on a terminal, in seconds.
FRAME_INTERVAL = 0.1
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ASCII_SPINNER = "-\\|/"
#: Widest path shown in ``runs list``.
PATH_WIDTH = 40


# Arguments --------------------------------------------------------------------------------------


def _header(value: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {value!r}")
    return name.strip(), rest.strip()


def _data(value: str) -> bytes:
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {value[1:]}: {exc.strerror}") from None
    return value.encode()


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def add_runs_commands(subparsers: Any) -> None:
    """Add ``runs`` and its commands to the ``asyncgate`` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--gateway", default=DEFAULT_GATEWAY, metavar="URL", help=f"default {DEFAULT_GATEWAY}")
    common.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"the gateway's API prefix (default {DEFAULT_PREFIX})")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    common.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header for every request, e.g. -H 'Authorization: Bearer TOKEN' (runs belong to their caller)",
    )

    runs = subparsers.add_parser(
        "runs",
        help="submit, follow and inspect runs",
        description="Submit, follow and inspect runs. A run id that starts with - goes after --, "
        "as in: asyncgate runs wait -- -Xb3...",
    )
    commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", parents=[common], help="submit a request as a run; print its id")
    submit.add_argument("method")
    submit.add_argument("path", help="path and query on the gateway, e.g. /predict?x=1")
    submit.add_argument("-d", "--data", type=_data, help="the request body: TEXT, @FILE, or - for stdin")
    submit.add_argument("--webhook", metavar="URL", help="POST the upstream's response here when the run ends")
    submit.add_argument("--idempotency-key", metavar="KEY")
    submit.add_argument("--timeout", type=_positive, metavar="SECONDS", help="the run's time limit on the gateway")

    for name, text in (("status", "show a run's status"), ("cancel", "cancel a run")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("run_id")

    wait = commands.add_parser("wait", parents=[common], help="follow a run to its end; non-zero unless it succeeded")
    wait.add_argument("run_id")
    wait.add_argument("--timeout", type=_positive, metavar="SECONDS", help="give up after this long (exit 3)")

    result = commands.add_parser("result", parents=[common], help="print the upstream's response to a run")
    result.add_argument("run_id")
    result.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    result.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")

    listing = commands.add_parser("list", parents=[common], help="list runs, newest first")
    listing.add_argument("--status", choices=[state.value for state in RunState])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", help="the next_cursor of a previous page")


# Commands ---------------------------------------------------------------------------------------


def run_runs_command(args: argparse.Namespace) -> int:
    """Run the parsed ``runs`` command; its exit code."""
    out, err = sys.stdout, sys.stderr
    try:
        return _COMMANDS[args.runs_command](args, out, err)
    except APIError as exc:
        print(f"asyncgate: the gateway refused: {exc.code}: {exc.message} (HTTP {exc.status_code})", file=err)
    except TransportError as exc:
        print(f"asyncgate: cannot reach the gateway at {args.gateway}: {exc}", file=err)
    except ProtocolError as exc:
        print(f"asyncgate: unexpected answer from {args.gateway}: {exc}", file=err)
    return EXIT_API_ERROR


def _client(args: argparse.Namespace) -> Client:
    return Client(args.gateway, prefix=args.prefix, headers=dict(args.header))


def _print_json(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _submit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _client(args) as client:
        run = client.submit(
            args.method,
            args.path,
            content=args.data,
            headers=args.header,
            webhook=args.webhook,
            idempotency_key=args.idempotency_key,
            timeout=args.timeout,
        )
    if args.json:
        _print_json(out, {"run_id": run.run_id, "location": run.location, "replayed": run.replayed})
    else:
        print(run.run_id, file=out)
    return EXIT_OK


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _client(args) as client:
        status = client.attach(args.run_id).status()
    if args.json:
        _print_json(out, dict(status.raw))
    else:
        out.write(describe(status))
    return EXIT_OK


def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _client(args) as client:
        status = client.attach(args.run_id).cancel()
    if args.json:
        _print_json(out, dict(status.raw))
    elif status.is_final:
        print(f"{status.run_id} {status.state}", file=out)
    else:
        print(f"{status.run_id} cancelling (still {status.state})", file=out)
    return EXIT_OK


def _result(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _client(args) as client:
        result = client.attach(args.run_id).result()
    succeeded = 200 <= result.status_code < 300
    if args.json:
        try:
            body: dict[str, str] = {"body": result.content.decode()}
        except UnicodeDecodeError:
            body = {"body_base64": base64.b64encode(result.content).decode()}
        _print_json(out, {"status_code": result.status_code, "headers": result.headers.multi_items(), **body})
        return EXIT_OK if succeeded else EXIT_RUN_FAILED
    if args.include:
        out.write(f"HTTP {result.status_code}\n")
        out.writelines(f"{name}: {value}\n" for name, value in result.headers.multi_items())
        out.write("\n")
    if args.output:
        Path(args.output).write_bytes(result.content)
    else:
        _write_bytes(out, result.content)
    return EXIT_OK if succeeded else EXIT_RUN_FAILED


def _write_bytes(out: TextIO, content: bytes) -> None:
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(content.decode(errors="replace"))
        return
    out.flush()
    buffer.write(content)
    buffer.flush()


def _list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _client(args) as client:
        page = client.list_runs(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(out, {"runs": [dict(run.raw) for run in page.runs], "next_cursor": page.next_cursor})
        return EXIT_OK
    out.write(table(page.runs))
    if page.next_cursor:
        print(f"more runs: --cursor {page.next_cursor}", file=err)
    return EXIT_OK


def _wait(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return asyncio.run(_follow(args, out, err))


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "submit": _submit,
    "status": _status,
    "wait": _wait,
    "result": _result,
    "cancel": _cancel,
    "list": _list,
}


# wait -------------------------------------------------------------------------------------------


class Progress:
    """The live line of ``runs wait`` on a terminal (spinner, state, elapsed), or a line per change elsewhere.

    Times count from the run's creation, the moment of its first event, on the wall clock.
    """

    def __init__(
        self,
        stream: TextIO,
        run_id: str,
        *,
        tty: bool,
        quiet: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.run_id = run_id
        self.tty = tty
        self.quiet = quiet
        self.state: RunState | None = None
        self._clock = clock
        self._origin: float | None = None
        self._frame = 0
        encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
        self._spinner = SPINNER if encoding == "utf8" else ASCII_SPINNER

    def elapsed(self, at: float | None = None) -> float:
        """Seconds from the run's creation to ``at`` (default now)."""
        moment = self._clock() if at is None else at
        return max(0.0, moment - (moment if self._origin is None else self._origin))

    def update(self, state: RunState, at: float | None = None) -> None:
        """The run entered ``state`` at ``at`` (epoch seconds, default now)."""
        if self._origin is None:
            self._origin = self._clock() if at is None else at
        if state == self.state:
            return
        self.state = state
        if self.quiet:
            return
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"{self.run_id} {state} after {self.elapsed(at):.1f}s\n")
            self.stream.flush()

    def tick(self) -> None:
        if self.tty and not self.quiet and self.state is not None:
            self._frame += 1
            self._draw()

    def _draw(self) -> None:
        spin = self._spinner[self._frame % len(self._spinner)]
        self.stream.write(f"\r\x1b[2K{spin} {self.run_id} {self.state} {self.elapsed():.1f}s")
        self.stream.flush()

    def close(self) -> None:
        """Clear the live line, so what follows starts on a clean one."""
        if self.tty and not self.quiet and self.state is not None:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


async def _follow(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with AsyncClient(args.gateway, prefix=args.prefix, headers=dict(args.header)) as client:
        run = client.attach(args.run_id)
        progress = Progress(err, run.run_id, tty=err.isatty(), quiet=args.json)
        try:
            async with asyncio.timeout(args.timeout):
                await _watch(run, progress)
        except TimeoutError:
            progress.close()
            last = await run.status()
            if args.json:
                _print_json(out, dict(last.raw))
            print(f"asyncgate: run {run.run_id} is still {last.state} after {args.timeout:g}s", file=err)
            return EXIT_TIMEOUT
        finally:
            progress.close()
        status = await run.status()
    return _report(status, progress.elapsed(), args.json, out, err)


async def _watch(run: AsyncRun, progress: Progress) -> None:
    """Follow the run's events, showing each change, until it is final."""

    async def follow() -> None:
        # The stream starts with the run's history, so a run already final is shown whole.
        async for event in run.events():
            if event.state is not None:
                progress.update(event.state, event.at.timestamp() if event.at else None)

    task = asyncio.create_task(follow())
    try:
        while True:
            # Redraws the spinner while the events stream is quiet; returns as soon as it ends.
            done, _ = await asyncio.wait({task}, timeout=FRAME_INTERVAL)
            if done:
                return task.result()
            progress.tick()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _report(status: RunStatus, elapsed: float, as_json: bool, out: TextIO, err: TextIO) -> int:
    if status.created_at is not None and status.finished_at is not None:
        elapsed = (status.finished_at - status.created_at).total_seconds()
    if as_json:
        _print_json(out, dict(status.raw))
    else:
        upstream = f" (upstream {status.upstream_status})" if status.upstream_status is not None else ""
        print(f"{status.run_id} {status.state}{upstream} after {elapsed:.1f}s", file=out)
    if status.state is RunState.SUCCEEDED:
        return EXIT_OK
    if status.error is not None and not as_json:
        print(f"asyncgate: run {status.run_id} {status.state}: {status.error.code}: {status.error.message}", file=err)
    return EXIT_RUN_FAILED


# Rendering --------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def describe(status: RunStatus) -> str:
    """A run's status as aligned ``name  value`` lines."""
    error = f"{status.error.code}: {status.error.message}" if status.error else "-"
    webhook = status.webhook
    rows = [
        ("run_id", status.run_id),
        ("status", str(status.state)),
        ("request", f"{status.method} {status.path}"),
        ("upstream", "-" if status.upstream_status is None else str(status.upstream_status)),
        ("error", error),
        ("attempt", str(status.attempt)),
        ("created", _when(status.created_at)),
        ("started", _when(status.started_at)),
        ("finished", _when(status.finished_at)),
    ]
    if webhook is not None:
        rows.append(("webhook", f"{webhook.state} after {webhook.attempts} attempt(s) to {webhook.url}"))
    return "".join(f"{name:<10}{value}\n" for name, value in rows)


def table(runs: Sequence[RunStatus]) -> str:
    """Runs as a table with a header row, columns as wide as their widest cell."""
    header = ("RUN ID", "STATUS", "UPSTREAM", "METHOD", "PATH", "CREATED")
    rows = [header] + [
        (
            run.run_id,
            str(run.state),
            "-" if run.upstream_status is None else str(run.upstream_status),
            run.method,
            run.path if len(run.path) <= PATH_WIDTH else run.path[: PATH_WIDTH - 3] + "...",
            _when(run.created_at),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )


# Standalone entry point (``python -m asyncgate.client.cli runs ...``), the same as ``asyncgate runs ...``


def main(argv: Sequence[str] | None = None) -> int:
    """``asyncgate runs ...`` alone, without the server's modules: usage errors return 2 instead of exiting."""
    parser = argparse.ArgumentParser(prog="asyncgate")
    add_runs_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_runs_command(args)


if __name__ == "__main__":
    sys.exit(main())
