"""Stopping background tasks without letting a shutdown hang on one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("asyncgate.tasks")

#: The longest a stop waits for a cancelled task to end. A cancel that lands inside a redis-py
#: command can be lost (the task stays "cancelling"), and a gateway must still exit (#22).
STOP_TIMEOUT = 10.0


async def settle(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Wait for cancelled tasks to end, at most ``STOP_TIMEOUT`` s; name any that did not."""
    waiting = list(tasks)
    if not waiting:
        return
    _, pending = await asyncio.wait(waiting, timeout=STOP_TIMEOUT)
    for task in pending:
        logger.warning("%s did not end within %ss of being stopped", task.get_name(), STOP_TIMEOUT)
