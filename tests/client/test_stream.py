"""Following a run's live output: ``run.stream()`` (sync and async) and ``asyncgate runs ... --follow``."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import pytest

from asyncgate.client import AsyncClient, Client, RunEvent, RunState
from asyncgate.client._render import OutputPrinter, event_line
from asyncgate.client.cli import main
from tests.e2e.conftest import Gateway

TOKENS = [b"token-0", b"token-1", b"token-2", b"[DONE]"]


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Client]:
    with Client(gateway.url, prefix=gateway.prefix, trust_env=False) as sdk:
        yield sdk


def test_stream_yields_output_as_it_comes_and_ends_with_the_final_state(client: Client) -> None:
    run = client.submit("GET", "/sse-tokens", params={"count": 3, "interval": 0.05, "hold": 1.5})
    events: list[RunEvent] = []
    states_at_last_token = []
    for event in run.stream():
        events.append(event)
        if event.output == b"token-2":
            states_at_last_token.append(run.status().state)
    assert states_at_last_token == [RunState.RUNNING]
    assert [e.event for e in events] == ["queued", "running", "output", "output", "output", "output", "succeeded"]
    assert [e.output for e in events if e.output is not None] == TOKENS
    assert [e.attempt for e in events if e.event == "output"] == [1, 1, 1, 1]
    assert events[-1].is_final and events[-1].state is RunState.SUCCEEDED
    assert all(e.output is None for e in events if e.event != "output")


def test_async_stream_yields_ndjson_lines(gateway: Gateway) -> None:
    async def scenario() -> list[RunEvent]:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as sdk:
            run = await sdk.submit("POST", "/ndjson", params={"count": 3, "interval": 0.01})
            return [event async for event in run.stream()]

    events = asyncio.run(scenario())
    lines = [json.loads(e.output) for e in events if e.output is not None]
    assert lines == [{"token": f"token-{i}", "index": i} for i in range(3)]
    assert events[-1].state is RunState.SUCCEEDED


def test_binary_output_is_bytes(client: Client) -> None:
    run = client.submit("GET", "/stream", params={"size": 1000, "chunk": 300})
    pieces = [e.output for e in run.stream() if e.output is not None]
    assert b"".join(pieces) == run.result().content and len(b"".join(pieces)) == 1000


def shell(gateway: Gateway, capsys: pytest.CaptureFixture[str], command: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["runs", command, "--gateway", gateway.url, "--prefix", gateway.prefix, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_follow_prints_output_as_it_arrives_and_the_end_on_stderr(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = shell(gateway, capsys, "submit", "GET", "/sse-tokens?count=3&interval=0.01", "--follow")
    assert code == 0
    assert out == "token-0\ntoken-1\ntoken-2\n[DONE]\n"
    lines = err.splitlines()
    run_id = lines[0].split()[0]
    assert lines[0].startswith(f"{run_id} queued after ")
    assert lines[-1].startswith(f"{run_id} succeeded (upstream 200) after ") and "\r" not in err


def test_submit_follow_json_prints_each_event_as_a_json_line(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = shell(gateway, capsys, "submit", "GET", "/ndjson?count=2&interval=0.01", "--follow", "--json")
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["queued", "running", "output", "output", "succeeded"]
    assert [json.loads(e["data"])["index"] for e in events if e["event"] == "output"] == [0, 1]
    assert all(e["id"] and e["run_id"] == events[0]["run_id"] for e in events)


def test_submit_follow_of_a_failing_run_exits_1(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = shell(gateway, capsys, "submit", "GET", "/status/502", "--follow")
    assert (code, out) == (1, "")
    assert " failed (upstream 502) after " in err and "upstream_error" in err


def test_events_shows_output_events_on_their_lines(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = shell(gateway, capsys, "submit", "GET", "/sse-tokens?count=2&interval=0.01")
    run_id = out.strip()
    code, out, err = shell(gateway, capsys, "events", "--", run_id)  # an id may start with "-"
    assert (code, err) == (0, "")
    lines = [line.split("  ")[1:] for line in out.splitlines()]
    assert lines == [
        ["queued", "attempt 0"],
        ["running", "attempt 1"],
        ["output", "attempt 1", "#0", '"token-0"'],
        ["output", "attempt 1", "#1", '"token-1"'],
        ["output", "attempt 1", "#2", '"[DONE]"'],
        ["succeeded", "attempt 1", "upstream 200"],
    ]


def event(data: dict[str, object]) -> RunEvent:
    return RunEvent(id="1", event=str(data["event"]), at=None, attempt=1, upstream_status=None, error=None, data=data)


def test_event_line_of_binary_and_dropped_output() -> None:
    binary = event({"event": "output", "seq": 4, "data_base64": "AAEC", "kept": False})
    assert event_line(binary) == "-  output  attempt 1  #4  <3 bytes>\n"
    dropped = event({"event": "output_dropped", "from_seq": 3, "kept_events": 3, "kept_bytes": 21})
    assert event_line(dropped) == "-  output_dropped  attempt 1  output from #3 on not kept (3 events, 21 bytes kept)\n"


def test_output_printer_writes_lines_for_events_and_bytes_for_chunks() -> None:
    stream = io.StringIO()
    printer = OutputPrinter(stream)
    printer.write(event({"event": "output", "format": "chunks", "data": "par"}))
    printer.write(event({"event": "output", "data": "tial"}))
    assert not printer.at_line_start
    printer.finish()
    printer.write(event({"event": "output", "format": "sse", "data": "line"}))
    printer.write(event({"event": "queued"}))
    printer.finish()
    assert stream.getvalue() == "partial\nline\n"


def test_stream_yields_progress_reports_and_the_status_has_the_latest(client: Client) -> None:
    run = client.submit("GET", "/progress-callback", params={"count": 2, "interval": 0.05})
    reports = [e.progress for e in run.stream() if e.progress is not None]
    assert [(r.value, r.message, r.attempt) for r in reports] == [(0.5, "step 1 of 2", 1), (1.0, "step 2 of 2", 1)]
    assert all(r.at is not None for r in reports)
    status = run.status()
    assert status.progress is not None and (status.progress.value, status.progress.message) == (1.0, "step 2 of 2")
    assert status.progress.percent == "100%" and status.progress.attempt == 1


def test_async_stream_yields_progress_in_an_sse_answer(gateway: Gateway) -> None:
    async def scenario() -> list[RunEvent]:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as sdk:
            run = await sdk.submit("GET", "/progress-sse", params={"count": 2, "interval": 0.01})
            return [event async for event in run.stream()]

    events = asyncio.run(scenario())
    assert [e.event for e in events] == ["queued", "running", "output", "progress", "output", "progress", "succeeded"]
    assert [e.progress.percent for e in events if e.progress is not None] == ["50%", "100%"]
    assert all(e.progress is None for e in events if e.event != "progress")


def test_submit_follow_shows_progress_on_stderr_beside_the_output(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = shell(gateway, capsys, "submit", "GET", "/progress-sse?count=2&interval=0.01", "--follow")
    assert code == 0
    assert out == "token-0\ntoken-1\n"
    reports = [line.split(" ", 1)[1] for line in err.splitlines() if "%" in line]
    assert [line.rsplit(" after ", 1)[0] for line in reports] == ["50% token 1 of 2", "100% token 2 of 2"]


def test_event_line_of_progress() -> None:
    report = event({"event": "progress", "progress": 0.425, "message": "step 3\nof 7"})
    assert event_line(report) == "-  progress  attempt 1  42% step 3 of 7\n"
    assert event_line(event({"event": "progress", "progress": None, "message": "warming"})) == (
        "-  progress  attempt 1  warming\n"
    )
