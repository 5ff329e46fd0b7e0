"""The FastAPI program of ../shared/seeds/shielded-cleanup.txt, supervised.

The user's node streams custom events to a browser; when the client disconnects, Starlette
cancels the request's task through an anyio cancel scope, and ``anyio.CancelScope(shield=
True)`` inside a LangGraph node does not keep the node's async cleanup alive. Under the
watchdog the node's cleanup goes through ``watchdog.cleanup``, runs in a task the supervisor
owns and completes; the run is recorded as cancelled with reason ``client_disconnected``.
The server is a real uvicorn on loopback, the client a real HTTP client that hangs up.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from tests.graphs import policies
from watchdog import Supervisor, cleanup
from watchdog.starlette import supervised_stream
from watchdog.testing import capture_events

finalized = threading.Event()  # the cleanup's side effect


class GraphState(TypedDict):
    session_id: str


async def finalize() -> None:
    print("Finalize (Inside LangGraph)")
    await anyio.sleep(0.05)  # the seed's awaited cleanup, in a task that is being cancelled
    print("Finalize complete (Inside LangGraph)")
    finalized.set()


async def node(state: GraphState, config: RunnableConfig) -> dict[str, Any]:
    async with cleanup(finalize):
        for i in range(100):
            await adispatch_custom_event(
                name="my_custom_chunk", data={"text": f"Node {i}"}, config=config
            )
            await anyio.sleep(0.01)
    return {}


def build_app(supervisor: Supervisor) -> FastAPI:
    workflow = StateGraph(GraphState)
    workflow.add_node("stream_generator", node)
    workflow.add_edge(START, "stream_generator")
    workflow.add_edge("stream_generator", END)
    app_graph = supervisor.attach(workflow.compile(), name="sse")

    async def sse_generator(session_id: str) -> AsyncIterator[str]:
        async for event in supervised_stream(
            app_graph, {"session_id": session_id}, method="astream_events", version="v2"
        ):
            match event:
                case {
                    "event": "on_custom_event",
                    "name": "my_custom_chunk",
                    "data": {"text": chunk_text},
                }:
                    yield f"data: {chunk_text}\n\n"

    app = FastAPI()

    @app.get("/stream")
    async def stream_endpoint() -> StreamingResponse:
        session_id = str(uuid.uuid4())[:6]
        return StreamingResponse(sse_generator(session_id), media_type="text/event-stream")

    return app


@pytest.fixture
def server_url() -> Iterator[tuple[str, Supervisor]]:
    supervisor = Supervisor(policies("- {name: wall, wall_time: {max_seconds: 60}}"))
    config = uvicorn.Config(build_app(supervisor), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/stream", supervisor
    server.should_exit = True
    thread.join(10)
    supervisor.close()


def test_a_client_that_disconnects_cancels_the_run_and_the_cleanup_still_completes(
    server_url: tuple[str, Supervisor],
) -> None:
    url, supervisor = server_url
    finalized.clear()
    with capture_events() as events:
        with httpx.Client(timeout=10) as client, client.stream("GET", url) as response:
            lines = response.iter_lines()
            received = [line for line, _ in zip(lines, range(6), strict=False) if line]
        # The client hung up. The server notices, cancels, and the node's cleanup runs on.
        assert finalized.wait(5), "the node's cleanup did not complete"
        deadline = time.monotonic() + 5
        while not any(e["event"] == "watchdog.run_cancelled" for e in events):
            assert time.monotonic() < deadline, "the run was not recorded as cancelled"
            time.sleep(0.01)
    assert received[:2] == ["data: Node 0", "data: Node 1"]
    (cancelled,) = (e for e in events if e["event"] == "watchdog.run_cancelled")
    assert (cancelled["graph"], cancelled["kind"], cancelled["reason"]) == (
        "sse",
        "manual",
        "client_disconnected",
    )
    assert not [e for e in events if e["event"] == "watchdog.cleanup_abandoned"]
    assert supervisor.runs() == []
