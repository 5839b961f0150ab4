"""Real servers for tests: any ASGI app under uvicorn on a free port, in a background thread."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import traceback
from types import TracebackType
from typing import Any

import uvicorn

from tests.support.wait import wait_until


class ServerThread:
    """Runs ``app`` under uvicorn on 127.0.0.1 and a port read back from ``:0``."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("log_level", "warning")
        options.setdefault("access_log", False)
        options.setdefault("lifespan", "on")
        # A test server must stop even while a slow handler (the behaviour under test) runs on.
        options.setdefault("timeout_graceful_shutdown", 3)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # As uvicorn.Server.run does (uvloop when installed), keeping the loop to inspect a hang.
        factory = self.server.config.get_loop_factory() or asyncio.new_event_loop
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                self.loop = runner.get_loop()
                runner.run(self.server.serve())
        except BaseException as exc:
            # Raised by stop(), in the test that owns this server: escaping the thread, it would
            # be reported in whichever test runs when the thread ends.
            self.error = exc

    def start(self, timeout: float = 15.0) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout, message="server start")
        if not self.server.started:
            raise RuntimeError("the server failed to start") from self.error
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the server did not stop in time; {self._whereabouts()}")
        if self.error is not None:
            raise RuntimeError("the server's thread failed") from self.error

    def _whereabouts(self) -> str:
        """Where the server's thread is and what its loop still does, to explain a hang.

        The thread's own stack shows a hang outside any task (a blocking call in a callback, or
        the loop's close waiting on its executor); the tasks' stacks show one inside them.
        """
        out = io.StringIO()
        frame = sys._current_frames().get(self.thread.ident or -1)
        out.write("its thread:\n")
        out.write("".join(traceback.format_stack(frame, limit=16)) if frame is not None else "(gone)\n")
        out.write("its tasks:\n")
        if self.loop is not None:
            for task in asyncio.all_tasks(self.loop):
                task.print_stack(limit=8, file=out)
        return out.getvalue()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
