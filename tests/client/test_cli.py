"""``asyncgate runs ...`` against a real gateway: output, --json and exit codes."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncgate.client import Result, RunProgress, RunState, RunStatus, _render
from asyncgate.client._render import Progress, answer_excerpt, describe
from asyncgate.client.cli import main
from tests.e2e.conftest import Gateway, Upstream
from tests.support.redis_server import free_port
from tests.support.wait import wait_until

RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{22}$")


#: Commands whose first argument is a run id.
ON_A_RUN = frozenset({"status", "wait", "events", "result", "cancel"})


class Shell:
    """Runs ``asyncgate runs COMMAND --gateway <gateway> ...`` in-process; answers (exit code, stdout, stderr).

    A run id goes last, after ``--``: one in 64 starts with "-" and would otherwise read as an option.
    """

    def __init__(self, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
        self.gateway = gateway
        self.capsys = capsys

    def __call__(self, command: str, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        if command in ON_A_RUN:
            args = (*args[1:], "--", args[0])
        code = main(["runs", command, "--gateway", self.gateway.url, "--prefix", self.gateway.prefix, *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, command: str, *args: str) -> tuple[int, Any]:
        code, out, _ = self(command, *args, "--json")
        return code, json.loads(out)

    def submit(self, *args: str) -> str:
        code, out, err = self("submit", *args)
        assert (code, err) == (0, ""), err
        run_id = out.strip()
        assert RUN_ID.match(run_id), out
        return run_id


@pytest.fixture
def shell(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> Shell:
    return Shell(gateway, capsys)


def test_submit_wait_and_result(shell: Shell, gateway: Gateway, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"param": "hello world"}')
    run_id = shell.submit(
        "POST", "/echo?x=1", "--data", f"@{body}", "-H", "Content-Type: application/json", "-H", "X-Trace:t1"
    )

    code, out, err = shell("wait", run_id, "--timeout", "15")
    assert code == 0
    assert re.fullmatch(rf"{run_id} succeeded \(upstream 200\) after \d+\.\ds\n", out), out
    # Not a terminal: a plain line per state seen, no spinner, no carriage returns; the end is said once, on out.
    assert err.splitlines()[-1].startswith(f"{run_id} running after ") and "\r" not in err
    assert "succeeded" not in err

    code, out, err = shell("result", run_id)
    assert (code, err) == (0, "")
    call = json.loads(out)
    assert (call["method"], call["path"], call["query"], call["body"]) == (
        "POST",
        "/echo",
        "x=1",
        '{"param": "hello world"}',
    )
    headers = dict(call["headers"])
    assert (headers["x-trace"], headers["content-type"]) == ("t1", "application/json")

    code, out, _ = shell("result", run_id, "--include")
    head, _, rest = out.partition("\n\n")
    assert head.splitlines()[0] == "HTTP 200" and "content-type: application/json" in head.splitlines()
    assert json.loads(rest) == call


def test_submit_reads_the_body_from_stdin_and_text(
    shell: Shell, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x00from stdin")))
    piped = shell.submit("PUT", "/echo", "--data", "-")
    text = shell.submit("POST", "/echo", "-d", "plain text")
    assert gateway.wait_final(piped)["status"] == gateway.wait_final(text)["status"] == "succeeded"
    assert gateway.client.get(f"{gateway.prefix}/runs/{piped}/result").json()["body"] == "\x00from stdin"
    assert gateway.client.get(f"{gateway.prefix}/runs/{text}/result").json()["body"] == "plain text"


def test_json_body_is_checked_and_sent_as_json(shell: Shell, gateway: Gateway, tmp_path: Path) -> None:
    run_id = shell.submit("POST", "/echo", "--json-body", '{"param": "hello world"}')
    (tmp_path / "body.json").write_text("[1, 2]")
    from_file = shell.submit("POST", "/echo", "-j", f"@{tmp_path / 'body.json'}", "-H", "Content-Type: text/x-json")
    for run, body, content_type in (
        (run_id, '{"param": "hello world"}', "application/json"),
        (from_file, "[1, 2]", "text/x-json"),
    ):
        assert gateway.wait_final(run)["status"] == "succeeded"
        call = gateway.client.get(f"{gateway.prefix}/runs/{run}/result").json()
        assert (call["body"], dict(call["headers"])["content-type"]) == (body, content_type)


def test_the_gateway_and_the_caller_come_from_the_environment_and_flags_win(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = make_gateway({"access.mode": "header"})
    environ = {"ASYNCGATE_URL": gateway.url, "ASYNCGATE_TOKEN": "cli-user"}
    prefix = ["--prefix", gateway.prefix]
    assert main(["runs", "submit", "POST", "/echo", "-d", "x", *prefix], environ) == 0
    run_id = capsys.readouterr().out.strip()
    assert main(["runs", "wait", *prefix, "--json", "--", run_id], environ) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    # --token and --gateway win over the variables; another caller does not see the run.
    assert main(["runs", "status", *prefix, "--token", "someone-else", "--", run_id], environ) == 4
    assert "run_not_found" in capsys.readouterr().err
    elsewhere = {**environ, "ASYNCGATE_URL": f"http://127.0.0.1:{free_port()}"}
    assert main(["runs", "status", *prefix, "--gateway", gateway.url, "--", run_id], elsewhere) == 0
    assert main(["runs", "status", *prefix, "--", run_id], elsewhere) == 4
    refused = capsys.readouterr().err
    assert refused.startswith("asyncgate: cannot reach the gateway at http://127.0.0.1:"), refused
    # In words, with httpx's name for it; not the exception's repr.
    assert refused.endswith(f"GET {gateway.prefix}/runs/{run_id}: [Errno 111] Connection refused (ConnectError)\n")


def test_events_prints_each_event_to_the_end(shell: Shell) -> None:
    run_id = shell.submit("GET", "/sleep?seconds=0.5")
    code, out, err = shell("events", run_id)
    assert (code, err) == (0, "")
    lines = [line.split("  ") for line in out.splitlines()]
    assert [line[1:] for line in lines] == [
        ["queued", "attempt 0"],
        ["running", "attempt 1"],
        ["succeeded", "attempt 1", "upstream 200"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line[0]) for line in lines), out

    failed = shell.submit("GET", "/status/502")
    code, out, _ = shell("events", failed, "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [event["event"] for event in events] == ["queued", "running", "failed"]
    assert {event["run_id"] for event in events} == {failed} and all(event["id"] for event in events)
    assert events[-1]["upstream_status"] == 502 and events[-1]["error"]["code"] == "upstream_error"


def test_answer_excerpt_shows_the_first_lines() -> None:
    lines = "\n".join(f"line {n}" for n in range(15)) + "\n" + "y" * 300
    text = answer_excerpt(Result(500, httpx.Headers(), lines.encode()))
    assert text.splitlines()[0] == "the upstream answered 500:"
    assert text.splitlines()[1:11] == [f"  line {n}" for n in range(10)]
    assert text.endswith("  ... 6 more lines (asyncgate runs result)\n")
    long = answer_excerpt(Result(502, httpx.Headers(), b"z" * 300))
    assert long == "the upstream answered 502:\n  " + "z" * 197 + "...\n"
    assert answer_excerpt(Result(503, httpx.Headers(), b"")) == "the upstream answered 503 with an empty body\n"
    assert answer_excerpt(Result(500, httpx.Headers(), b"\xff\xfe")) == (
        "the upstream answered 500 with 2 bytes that are not text\n"
    )


def test_wait_shows_each_state_change(shell: Shell) -> None:
    run_id = shell.submit("GET", "/sleep?seconds=1")
    code, out, err = shell("wait", run_id)
    assert code == 0
    # The states on err as they change; the end once, on out.
    assert [line.split()[1] for line in err.splitlines()] == ["queued", "running"]
    seconds = [float(line.split()[-1].rstrip("s")) for line in [*err.splitlines(), out]]
    assert seconds[0] == 0.0 and 1.0 <= seconds[2] - seconds[1] < 2.0, seconds


def test_every_command_speaks_json(shell: Shell, gateway: Gateway) -> None:
    code, submitted = shell.json("submit", "POST", "/echo", "-d", "x", "--idempotency-key", "k1")
    assert code == 0
    run_id = submitted["run_id"]
    assert submitted == {"run_id": run_id, "location": f"{gateway.prefix}/runs/{run_id}", "replayed": False}
    assert shell.json("submit", "POST", "/echo", "-d", "x", "--idempotency-key", "k1")[1]["replayed"] is True

    code, waited = shell.json("wait", run_id)
    assert code == 0 and waited == gateway.run(run_id) and waited["status"] == "succeeded"
    assert shell.json("status", run_id) == (0, gateway.run(run_id))

    code, result = shell.json("result", run_id)
    assert code == 0 and result["status_code"] == 200
    assert ["content-type", "application/json"] in result["headers"]
    assert json.loads(result["body"])["body"] == "x"

    code, listed = shell.json("list", "--limit", "5")
    assert code == 0 and [run["run_id"] for run in listed["runs"]] == [run_id]
    assert listed["next_cursor"] is None


def test_binary_results_in_json_are_base64(shell: Shell) -> None:
    run_id = shell.submit("GET", "/stream?size=300")
    assert shell("wait", run_id)[0] == 0
    code, result = shell.json("result", run_id)
    assert code == 0 and "body" not in result
    assert base64.b64decode(result["body_base64"]) == bytes(range(256)) + bytes(range(44))


def test_binary_result_is_not_written_to_a_terminal(
    shell: Shell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = shell.submit("GET", "/stream?size=300")
    assert shell("wait", run_id)[0] == 0
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    gateway = ["--gateway", shell.gateway.url, "--prefix", shell.gateway.prefix]
    assert main(["runs", "result", *gateway, "--", run_id]) == 2
    assert screen.getvalue() == ""
    assert capsys.readouterr().err == (
        "asyncgate: the answer is 300 bytes that are not text; "
        "write them with -o FILE, or pipe them to another command\n"
    )


def test_result_to_a_file(shell: Shell, tmp_path: Path) -> None:
    run_id = shell.submit("GET", "/stream?size=300")
    shell("wait", run_id)
    target = tmp_path / "out.bin"
    assert shell("result", run_id, "-o", str(target)) == (0, "", "")
    assert target.read_bytes() == bytes(range(256)) + bytes(range(44))


def test_a_failed_run_exits_1(shell: Shell) -> None:
    run_id = shell.submit("GET", "/status/500")
    code, out, err = shell("wait", run_id)
    assert code == 1
    assert out == f"{run_id} failed (upstream 500) after {out.split()[-1]}\n"
    assert f"run {run_id} failed: upstream_error:" in err
    # The upstream's own words, under the gateway's.
    assert err.endswith('the upstream answered 500:\n  {"status":500}\n'), err
    code, out, _ = shell("result", run_id)
    # The body has no final newline; the output does, so the prompt starts on its own line.
    assert (code, out) == (1, '{"status":500}\n')
    code, failed = shell.json("wait", run_id)
    assert code == 1 and failed["error"]["code"] == "upstream_error"


def test_wait_timeout_exits_3(shell: Shell) -> None:
    run_id = shell.submit("GET", "/sleep?seconds=3")
    code, out, err = shell("wait", run_id, "--timeout", "0.5")
    assert code == 3 and out == ""
    assert re.search(rf"run {run_id} is still (queued|running) after 0.5s", err), err
    code, out, _ = shell("wait", run_id, "--timeout", "0.3", "--json")
    assert code == 3 and json.loads(out)["status"] in ("queued", "running")


def test_cancel(shell: Shell, gateway: Gateway) -> None:
    run_id = shell.submit("GET", "/sleep?seconds=60")
    wait_until(lambda: gateway.run(run_id)["status"] == "running", message="running")
    assert shell("cancel", run_id) == (0, f"{run_id} cancelled\n", "")
    code, out, _ = shell("wait", run_id)
    assert code == 1 and out.startswith(f"{run_id} cancelled")
    code, _, err = shell("cancel", run_id)
    assert code == 4 and "run_finished" in err and "HTTP 409" in err


def test_list_prints_a_table(shell: Shell, gateway: Gateway) -> None:
    ids = [shell.submit("GET", f"/echo?n={n}") for n in range(3)]
    for run_id in ids:
        gateway.wait_final(run_id)
    code, out, err = shell("list", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATUS", "UPSTREAM", "METHOD", "PATH", "CREATED"]
    assert [line.split()[:5] for line in lines[1:]] == [
        [ids[2], "succeeded", "200", "GET", "/echo"],
        [ids[1], "succeeded", "200", "GET", "/echo"],
    ]
    assert err.startswith("more runs: --cursor ")
    code, out, _ = shell("list", "--status", "running")
    assert (code, out.splitlines()[1:]) == (0, [])


def test_status_describes_the_run(shell: Shell, gateway: Gateway) -> None:
    run_id = shell.submit("POST", "/status/404")
    gateway.wait_final(run_id)
    code, out, _ = shell("status", run_id)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["run_id"] == run_id
    assert (fields["status"], fields["request"], fields["upstream"]) == ("failed", "POST /status/404", "404")
    assert fields["error"].startswith("upstream_error: ")


def test_gateway_errors_exit_4(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = shell("status", "doesnotexist")
    assert code == 4 and "run_not_found" in err and "HTTP 404" in err
    code = main(["runs", "status", "r1", "--gateway", f"http://127.0.0.1:{free_port()}"])
    assert code == 4 and "cannot reach the gateway" in capsys.readouterr().err


def test_a_run_id_that_starts_with_a_dash_goes_after_a_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["runs", "status", "-AbCdEfGhIjKlMnOpQrStUv", "--gateway", f"http://127.0.0.1:{port}"]) == 2
    assert main(["runs", "status", "--gateway", f"http://127.0.0.1:{port}", "--", "-AbCdEfGhIjKlMnOpQrStUv"]) == 4
    assert "cannot reach the gateway" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["runs", "submit", "GET"],
        ["runs", "submit", "GET", "/x", "-H", "no-colon"],
        ["runs", "submit", "GET", "/x", "--data", "@/nonexistent/file"],
        ["runs", "wait", "r1", "--timeout", "0"],
        ["runs", "list", "--status", "paused"],
        ["runs", "submit", "POST", "/x", "--json-body", "{not json"],
        ["runs", "submit", "POST", "/x", "-d", "x", "--json-body", "{}"],
        ["runs", "submit", "POST", "predict"],
        ["runs", "list", "--limit", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_a_gateway_url_without_its_scheme_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "status", "r1"], {"ASYNCGATE_URL": "127.0.0.1:8080"}) == 2
    assert capsys.readouterr().err == (
        "asyncgate: the gateway's URL must start with http:// or https://, got '127.0.0.1:8080'\n"
    )


def test_an_answer_that_is_not_the_gateways_says_to_check_the_url(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "status", "--gateway", upstream.url, "--", "r1"]) == 4
    assert capsys.readouterr().err.splitlines() == [
        "asyncgate: the gateway refused: http_404: Not Found (HTTP 404)",
        f"asyncgate: that answer is not asyncgate's: is {upstream.url} a gateway, with its API at /_asyncgate "
        "(--gateway, --prefix)?",
    ]


def test_result_to_a_file_that_cannot_be_written(shell: Shell, tmp_path: Path) -> None:
    run_id = shell.submit("GET", "/echo")
    shell("wait", run_id)
    code, out, err = shell("result", run_id, "-o", str(tmp_path / "missing" / "out.json"))
    assert (code, out) == (2, "")
    assert err == f"asyncgate: cannot write {tmp_path / 'missing' / 'out.json'}: No such file or directory\n"


def test_a_url_for_a_path_is_a_usage_error_naming_the_gateway_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "submit", "POST", "http://127.0.0.1:8080/predict"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "asyncgate runs submit: error: argument path: expected a path that starts with /, as in /predict, "
        "got 'http://127.0.0.1:8080/predict' (the gateway's URL is --gateway or $ASYNCGATE_URL)"
    )


def test_as_a_process(gateway: Gateway) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    base = [sys.executable, "-m", "asyncgate", "runs"]
    where = ["--gateway", gateway.url, "--prefix", gateway.prefix]

    def run(command: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*base, command, *where, *args], capture_output=True, env=env, timeout=60)

    submitted = run("submit", "GET", "/status/502")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.decode().strip()
    waited = run("wait", "--json", "--", run_id)
    assert waited.returncode == 1
    assert json.loads(waited.stdout)["upstream_status"] == 502


def _as_in_a_terminal() -> None:
    # A command started in the background (``cmd &`` in a script, pytest-xdist's workers) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler; Ctrl-C in a terminal
    # reaches a process whose SIGINT is the default one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("command", ["wait", "events"])
def test_ctrl_c_leaves_the_run_going_and_says_how_to_follow_it_again(gateway: Gateway, command: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_id = gateway.client.get("/sleep?seconds=60&async=true").json()["run_id"]
    wait_until(lambda: gateway.run(run_id)["status"] == "running", message="running")
    argv = ["runs", command, "--gateway", gateway.url, "--prefix", gateway.prefix, "--", run_id]
    seen: list[bytes] = []
    with subprocess.Popen(
        [sys.executable, "-m", "asyncgate", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=_as_in_a_terminal,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        following, other = (process.stdout, process.stderr) if command == "events" else (process.stderr, None)
        reader = threading.Thread(target=lambda: seen.extend(iter(following.readline, b"")), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any(b"running" in line for line in seen), timeout=20, message="following")
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
        finally:
            process.kill()
        reader.join(5)
        err = (other.read() if other is not None else b"".join(seen)).decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    prefix = f" --prefix {gateway.prefix}" if gateway.prefix != "/_asyncgate" else ""
    again = f"asyncgate runs {command} --gateway {gateway.url}{prefix} -- {run_id}"
    assert err.endswith(
        f"asyncgate: stopped following; run {run_id} goes on at the gateway. Pick it up again with:\n  {again}\n"
    ), err
    assert gateway.run(run_id)["status"] == "running"
    # The command shown picks the run up again: here it ends with the run, cancelled meanwhile.
    gateway.client.delete(f"{gateway.prefix}/runs/{run_id}")
    picked_up = subprocess.run(
        [sys.executable, "-m", "asyncgate", *again.split()[1:]], capture_output=True, env=env, timeout=60
    )
    assert picked_up.returncode == 1 and b"cancelled" in picked_up.stdout, picked_up


# The progress line ------------------------------------------------------------------------------


class Terminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_one_line_with_a_spinner() -> None:
    now = [100.0]
    screen = Terminal()
    progress = Progress(screen, "r1", tty=True, clock=lambda: now[0])
    progress.update(RunState.QUEUED, at=98.0)
    now[0] += 0.5
    progress.tick()
    progress.update(RunState.RUNNING, at=100.4)
    progress.update(RunState.RUNNING)
    progress.close()
    frames = screen.getvalue().split("\r\x1b[2K")
    assert frames == ["", "⠋ r1 queued 2.0s", "⠙ r1 queued 2.5s", "⠙ r1 running 2.5s", ""]


def test_progress_elsewhere_prints_a_line_per_change_and_json_mode_prints_nothing() -> None:
    log = io.StringIO()
    progress = Progress(log, "r1", tty=False, clock=lambda: 50.0)
    changes = [(RunState.QUEUED, 10.0), (RunState.QUEUED, 10.5), (RunState.RUNNING, 11.25), (RunState.QUEUED, None)]
    changes.append((RunState.SUCCEEDED, None))  # the report says how it ended, once
    for state, at in changes:
        progress.update(state, at)
        progress.tick()
    progress.close()
    assert log.getvalue() == "r1 queued after 0.0s\nr1 running after 1.2s\nr1 queued after 40.0s\n"
    quiet = Terminal()
    silent = Progress(quiet, "r1", tty=True, quiet=True)
    silent.update(RunState.RUNNING)
    silent.tick()
    silent.close()
    assert quiet.getvalue() == "" and silent.state is RunState.RUNNING


def test_progress_reports_show_on_the_live_line_while_running_and_as_lines_elsewhere() -> None:
    screen = Terminal()
    live = Progress(screen, "r1", tty=True, clock=lambda: 10.0)
    live.update(RunState.RUNNING, at=9.0)
    live.progress(RunProgress(0.5, "half way"))
    live.update(RunState.SUCCEEDED, at=10.0)
    frames = screen.getvalue().split("\r\x1b[2K")
    assert frames == ["", "⠋ r1 running 1.0s", "⠋ r1 running 50% half way 1.0s", "⠋ r1 succeeded 1.0s"]
    log = io.StringIO()
    lines = Progress(log, "r1", tty=False, clock=lambda: 10.0)
    lines.update(RunState.RUNNING, at=9.0)
    lines.progress(RunProgress(None, "loading"), at=9.5)
    assert log.getvalue() == "r1 running after 0.0s\nr1 loading after 0.5s\n"


def test_status_describes_the_latest_progress() -> None:
    status = RunStatus(
        run_id="r1",
        state=RunState.RUNNING,
        created_at=None,
        started_at=None,
        finished_at=None,
        method="GET",
        path="/p",
        upstream_status=None,
        error=None,
        attempt=1,
        webhook=None,
        progress=RunProgress(0.25, "step 1"),
    )
    assert "progress  25% step 1\n" in describe(status)


def test_the_ascii_spinner_where_the_stream_is_not_utf8() -> None:
    screen = Terminal()
    screen.encoding = "ascii"
    Progress(screen, "r1", tty=True, clock=lambda: 0.0).update(RunState.QUEUED)
    assert screen.getvalue() == f"\r\x1b[2K{_render.ASCII_SPINNER[0]} r1 queued 0.0s"


def test_every_command_can_name_its_caller(make_gateway: Any, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = make_gateway({"access.mode": "header"})
    shell = Shell(gateway, capsys)
    auth = ("-H", "Authorization: Bearer cli-user")
    run_id = shell.submit("POST", "/echo", "-d", "x", *auth)
    code, status = shell.json("wait", run_id, *auth)
    assert (code, status["status"]) == (0, "succeeded")
    code, listed = shell.json("list", *auth)
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    code, _, err = shell("status", run_id)
    assert code == 4
    assert "credentials_required" in err
    code, _, err = shell("status", run_id, "-H", "Authorization: Bearer someone-else")
    assert code == 4
    assert "run_not_found" in err


def test_the_client_command_line_imports_none_of_the_servers_machinery() -> None:
    # The client shares only pure leaves with the gateway (run states, signing, header names, errors).
    script = "import sys, asyncgate.client.cli; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    )
    assert {name for name in loaded if name.startswith("asyncgate.") and not name.startswith("asyncgate.client")} <= {
        "asyncgate.errors",
        "asyncgate.headers",
        "asyncgate.runs",
        "asyncgate.signing",
    }
    # (starlette's data structures come in with signing's SigningSecret: a Secret, not the server.)
    assert not loaded & {"uvicorn", "starlette.applications", "redis", "asyncgate.app", "asyncgate.config"}
