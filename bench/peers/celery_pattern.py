"""The FastAPI + Celery + Redis pattern of the seed documents, as their tutorials write it.

POST /{path} stores a task with `.delay()` and answers 202; a Celery worker calls the upstream;
GET /tasks/{id} reads the task's state from the Redis result backend. The endpoints are plain
`def` (FastAPI runs them in its thread pool) because `.delay()` blocks.

    uvicorn celery_pattern:app                       # the API
    celery -A celery_pattern:celery worker --loglevel=WARNING  # the worker (default concurrency: one per core)

Configured by BENCH_REDIS_URL and BENCH_UPSTREAM.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
from celery import Celery
from celery.result import AsyncResult
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8000")

celery = Celery("celery_pattern", broker=REDIS_URL, backend=REDIS_URL)
celery.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# One client per worker process, reused across tasks, as a careful user would do.
_client: httpx.Client | None = None


def _upstream() -> httpx.Client:
    global _client
    if _client is None:
        _client = httpx.Client(base_url=UPSTREAM, timeout=httpx.Timeout(300.0, connect=5.0))
    return _client


@celery.task(name="call_upstream")
def call_upstream(method: str, path: str, body: str) -> dict[str, Any]:
    response = _upstream().request(method, path, content=body.encode("latin-1"))
    return {"status_code": response.status_code, "body": response.text}


app = FastAPI()


@app.get("/tasks/{task_id}")
def task_status(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery)
    return {"task_id": task_id, "status": result.status}


@app.post("/{path:path}", status_code=202)
def submit(path: str, body: Annotated[bytes, Body()] = b"") -> JSONResponse:
    task = call_upstream.delay("POST", "/" + path, body.decode("latin-1"))
    return JSONResponse(
        {"task_id": task.id, "status": "queued"}, status_code=202, headers={"Location": f"/tasks/{task.id}"}
    )
