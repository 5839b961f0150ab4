"""``asyncgate runs ...``: submit, follow and inspect runs from a shell, over ``asyncgate.client``.

The ``asyncgate`` command (asyncgate/cli.py, the server's ``serve`` and ``check-config``) mounts
these commands with ``add_runs_commands`` and ``run_runs_command``; ``main`` runs them alone.

The gateway is ``--gateway``, else ``$ASYNCGATE_URL``, else http://127.0.0.1:8080; the caller's
token is ``--token``, else ``$ASYNCGATE_TOKEN`` (sent as ``Authorization: Bearer``).

Exit codes: 0 ok, 1 the run failed or was cancelled, 2 usage, 3 wait timed out, 4 the gateway
refused the call or could not be reached, 130 interrupted (Ctrl-C; the run goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from asyncgate.client import (
    APIError,
    AsyncClient,
    AsyncgateClientError,
    AsyncRun,
    Client,
    ProtocolError,
    Result,
    RunEvent,
    RunState,
    RunStatus,
    TransportError,
)
from asyncgate.client._protocol import DEFAULT_PREFIX, DEFAULT_URL, TOKEN_ENV, URL_ENV, connection
from asyncgate.client._render import OutputPrinter, Progress, answer_excerpt, describe, event_line, is_text, table
from asyncgate.headers import CONTENT_TYPE

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_API_ERROR = 4
#: 128 + SIGINT, as a shell reports a command that Ctrl-C stopped.
EXIT_INTERRUPTED = 130

#: How often the live progress line is redrawn on a terminal, in seconds.
FRAME_INTERVAL = 0.1
RUN_ID_HELP = "the run's id, as submit printed it (after -- if it starts with -)"


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


def _json_body(value: str) -> bytes:
    body = _data(value)
    try:
        json.loads(body)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    return body


def _path(value: str) -> str:
    if value.startswith("/"):
        return value
    hint = " (the gateway's URL is --gateway or $ASYNCGATE_URL)" if "://" in value else ""
    raise argparse.ArgumentTypeError(f"expected a path that starts with /, as in /predict, got {value!r}{hint}")


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {value!r}")
    return int(value)


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
    common.add_argument("--gateway", metavar="URL", help=f"the gateway (default ${URL_ENV}, else {DEFAULT_URL})")
    common.add_argument(
        "--token",
        help=f"the caller's token, sent as Authorization: Bearer TOKEN (default ${TOKEN_ENV}); "
        "runs belong to their caller",
    )
    common.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"the gateway's API prefix (default {DEFAULT_PREFIX})")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    common.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header for every request; an Authorization header here replaces the token",
    )

    runs = subparsers.add_parser(
        "runs",
        help="submit, follow and inspect runs",
        description="Submit, follow and inspect runs. The gateway is --gateway, else $ASYNCGATE_URL; the caller's "
        "token is --token, else $ASYNCGATE_TOKEN. A run id that starts with - goes after --, as in: "
        "asyncgate runs wait -- -Xb3... Ctrl-C stops following a run, not the run. Exit status: 0 ok, 1 the run "
        "failed or was cancelled, 2 usage, 3 wait timed out, 4 the gateway refused or was unreachable, 130 Ctrl-C.",
    )
    commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")

    submit = _command(commands, "submit", common, "submit a request as a run; print its id")
    submit.add_argument("method", help="the request's HTTP method, e.g. POST")
    submit.add_argument("path", type=_path, help="path and query on the gateway, e.g. /predict?x=1")
    body = submit.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", type=_data, help="the request body, sent as is: TEXT, @FILE, or - for stdin")
    body.add_argument(
        "-j",
        "--json-body",
        type=_json_body,
        metavar="JSON",
        help="a JSON request body, checked and sent with Content-Type: application/json: TEXT, @FILE, or -",
    )
    submit.add_argument("--webhook", metavar="URL", help="POST the upstream's response here when the run ends")
    submit.add_argument(
        "--webhook-events",
        metavar="EVENTS",
        help="webhook deliveries wanted, comma-separated: start, output, progress, completed (default completed)",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="submitting the same request with the same KEY again gives the same run, not a second one",
    )
    submit.add_argument("--timeout", type=_positive, metavar="SECONDS", help="the run's time limit on the gateway")
    submit.add_argument(
        "--follow",
        action="store_true",
        help="follow the run to its end, printing its output as it arrives (JSON lines of its events with --json); "
        "exit status as wait's",
    )

    for name, text in (("status", "show a run's status"), ("cancel", "cancel a run")):
        command = _command(commands, name, common, text)
        command.add_argument("run_id", help=RUN_ID_HELP)

    wait = _command(commands, "wait", common, "follow a run to its end; non-zero unless it succeeded")
    wait.add_argument("run_id", help=RUN_ID_HELP)
    wait.add_argument("--timeout", type=_positive, metavar="SECONDS", help="give up after this long (exit 3)")

    result = _command(commands, "result", common, "print the upstream's response to a run")
    result.add_argument("run_id", help=RUN_ID_HELP)
    result.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    result.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")

    events = _command(
        commands, "events", common, "print a run's events as they happen, to its end; non-zero unless it succeeded"
    )
    events.add_argument("run_id", help=RUN_ID_HELP)

    listing = _command(commands, "list", common, "list runs, newest first")
    listing.add_argument("--status", choices=[state.value for state in RunState], help="only runs in this state")
    listing.add_argument("--limit", type=_count, default=50, help="runs a page (default 50)")
    listing.add_argument("--cursor", help="the next_cursor of a previous page")


def _command(commands: Any, name: str, common: argparse.ArgumentParser, text: str) -> argparse.ArgumentParser:
    """A ``runs`` command whose one line shows in ``runs --help`` and heads its own ``--help``."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, parents=[common], help=text, description=text[0].upper() + text[1:] + "."
    )
    return parser


# Commands ---------------------------------------------------------------------------------------


def run_runs_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run the parsed ``runs`` command, with ``environ`` (default ``os.environ``); its exit code."""
    out, err = sys.stdout, sys.stderr
    flags = args.gateway, args.token, list(args.header)
    args.gateway, args.header = connection(args.gateway, args.token, args.header, environ)
    if urlsplit(args.gateway).scheme not in {"http", "https"}:
        print(f"asyncgate: the gateway's URL must start with http:// or https://, got {args.gateway!r}", file=err)
        return EXIT_USAGE
    try:
        return _COMMANDS[args.runs_command](args, out, err)
    except KeyboardInterrupt:
        _interrupted(args, flags, err)
        return EXIT_INTERRUPTED
    except APIError as exc:
        print(f"asyncgate: the gateway refused: {exc.code}: {exc.message} (HTTP {exc.status_code})", file=err)
        if exc.code == f"http_{exc.status_code}":  # the client's code for an answer without the gateway's error body
            print(
                f"asyncgate: that answer is not asyncgate's: is {args.gateway} a gateway, with its API at "
                f"{args.prefix} (--gateway, --prefix)?",
                file=err,
            )
    except TransportError as exc:
        print(f"asyncgate: cannot reach the gateway at {args.gateway}: {exc}", file=err)
    except ProtocolError as exc:
        print(f"asyncgate: unexpected answer from {args.gateway}: {exc}", file=err)
    return EXIT_API_ERROR


def _interrupted(
    args: argparse.Namespace, flags: tuple[str | None, str | None, list[tuple[str, str]]], err: TextIO
) -> None:
    """Ctrl-C: say so on a line of its own and, while following a run, how to pick it up again."""
    if err.isatty():
        err.write("\n")  # the terminal echoed ^C on the current line
    following = args.runs_command in FOLLOWING or getattr(args, "run_id", None) is not None
    if not following:
        print("asyncgate: interrupted", file=err)
        return
    gateway, token, headers = flags
    # A run submitted with --follow is picked up again by following its events.
    command = ["asyncgate", "runs", "events" if args.runs_command == "submit" else args.runs_command]
    if gateway:
        command += ["--gateway", gateway]
    if args.prefix != DEFAULT_PREFIX:
        command += ["--prefix", args.prefix]
    command += ["--", args.run_id]
    again = shlex.join(command) + (" (with the same --token and -H options)" if token or headers else "")
    print(f"asyncgate: stopped following; run {args.run_id} goes on at the gateway. Pick it up again with:", file=err)
    print(f"  {again}", file=err)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.gateway, prefix=args.prefix, headers=args.header, environ={})


def _print_json(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _submit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    headers = list(args.header)
    if args.json_body is not None and not any(name.lower() == CONTENT_TYPE.lower() for name, _ in headers):
        headers.append((CONTENT_TYPE, "application/json"))
    with _client(args) as client:
        run = client.submit(
            args.method,
            args.path,
            content=args.data if args.json_body is None else args.json_body,
            headers=headers,
            webhook=args.webhook,
            webhook_events=args.webhook_events.split(",") if args.webhook_events else None,
            idempotency_key=args.idempotency_key,
            timeout=args.timeout,
        )
    if args.follow:
        args.run_id = run.run_id
        return asyncio.run(_stream(args, out, err))
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
        try:
            Path(args.output).write_bytes(result.content)
        except OSError as exc:
            print(f"asyncgate: cannot write {args.output}: {exc.strerror}", file=err)
            return EXIT_USAGE
    elif out.isatty() and not is_text(result.content):
        # As curl does: raw bytes can leave a terminal in a state its user cannot read.
        print(
            f"asyncgate: the answer is {len(result.content)} bytes that are not text; "
            "write them with -o FILE, or pipe them to another command",
            file=err,
        )
        return EXIT_USAGE
    else:
        _write_bytes(out, result.content)
        if is_text(result.content) and not result.content.endswith(b"\n"):
            out.write("\n")  # so the shell's prompt starts on a line of its own
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


def _events(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    last: RunEvent | None = None
    with _client(args) as client:
        for event in client.attach(args.run_id).events():
            if args.json:
                out.write(json.dumps({"id": event.id, **event.data}, ensure_ascii=False) + "\n")
            else:
                out.write(event_line(event))
            out.flush()
            last = event
    return EXIT_OK if last is not None and last.state is RunState.SUCCEEDED else EXIT_RUN_FAILED


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "submit": _submit,
    "status": _status,
    "wait": _wait,
    "events": _events,
    "result": _result,
    "cancel": _cancel,
    "list": _list,
}
#: Commands that follow a run until it ends: Ctrl-C stops them, not the run.
FOLLOWING = frozenset({"wait", "events"})


# wait -------------------------------------------------------------------------------------------


async def _follow(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with AsyncClient(args.gateway, prefix=args.prefix, headers=args.header, environ={}) as client:
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
        answer = await _failed_answer(run, status) if not args.json else None
    return _report(status, progress.elapsed(), args.json, out, err, answer)


async def _stream(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``submit --follow``: the run's output on ``out`` as it arrives, its progress and end on ``err``."""
    async with AsyncClient(args.gateway, prefix=args.prefix, headers=args.header, environ={}) as client:
        run = client.attach(args.run_id)
        progress = Progress(err, run.run_id, tty=err.isatty(), quiet=args.json)
        printer = OutputPrinter(out)
        final: list[RunEvent] = []

        def show(event: RunEvent) -> None:
            if event.is_final:
                final.append(event)
            if args.json:
                out.write(json.dumps({"id": event.id, **event.data}, ensure_ascii=False) + "\n")
                out.flush()
            elif event.output is not None:
                progress.to_lines()
                printer.write(event)

        try:
            await _watch(run, progress, show)
        finally:
            progress.close()
            printer.finish()
        if args.json:
            return EXIT_OK if final and final[-1].state is RunState.SUCCEEDED else EXIT_RUN_FAILED
        status = await run.status()
        answer = await _failed_answer(run, status)
    return _report(status, progress.elapsed(), False, err, err, answer)


async def _failed_answer(run: AsyncRun, status: RunStatus) -> Result | None:
    """The upstream's answer to a run that failed with one, to show; None otherwise."""
    if status.state is not RunState.FAILED or status.upstream_status is None:
        return None
    try:
        return await run.result()
    except AsyncgateClientError:
        return None


async def _watch(run: AsyncRun, progress: Progress, on_event: Callable[[RunEvent], None] | None = None) -> None:
    """Follow the run's events, showing each change (and passing each to ``on_event``), until it is final."""

    async def follow() -> None:
        # The stream starts with the run's history, so a run already final is shown whole.
        async for event in run.stream():
            if on_event is not None:
                on_event(event)
            at = event.at.timestamp() if event.at else None
            if event.state is not None:
                progress.update(event.state, at)
            elif (report := event.progress) is not None:
                progress.progress(report, at)

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


def _report(
    status: RunStatus, elapsed: float, as_json: bool, out: TextIO, err: TextIO, answer: Result | None = None
) -> int:
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
    if answer is not None:
        err.write(answer_excerpt(answer))
    return EXIT_RUN_FAILED


# Standalone entry point (``python -m asyncgate.client.cli runs ...``), the same as ``asyncgate runs ...``


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``asyncgate runs ...`` alone, without the server's modules: usage errors return 2 instead of exiting."""
    parser = argparse.ArgumentParser(prog="asyncgate")
    add_runs_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_runs_command(args, environ)


if __name__ == "__main__":
    sys.exit(main())
