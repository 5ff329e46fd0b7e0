"""Streaming a supervised run from a Starlette or FastAPI endpoint.

When the client of a streaming response goes away, the server cancels the task that is
streaming (or stops reading the stream). ``supervised_stream`` records that as a cancel of
the run with the reason ``client_disconnected``, and the run's cleanup hooks still run to the
end, in tasks the supervisor owns::

    from fastapi.responses import StreamingResponse
    from watchdog.starlette import supervised_stream

    @app.get("/stream")
    async def stream(q: str) -> StreamingResponse:
        chunks = supervised_stream(agent, {"messages": [("user", q)]}, version="v2",
                                   method="astream_events")
        return StreamingResponse(to_sse(chunks), media_type="text/event-stream")

Nothing here imports Starlette: any ASGI server that cancels or closes a response's stream
when its client disconnects works the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from ._adapter.graph import SupervisedGraph, caller_gone

__all__ = ["CLIENT_DISCONNECTED", "supervised_stream"]

CLIENT_DISCONNECTED = "client_disconnected"


async def supervised_stream(
    app: SupervisedGraph,
    input: Any,
    config: Any = None,
    *,
    method: Literal["astream", "astream_events"] = "astream",
    **kwargs: Any,
) -> AsyncIterator[Any]:
    """``app.astream(...)`` (or ``astream_events``) for a streaming HTTP response."""
    stream = getattr(app, method)(input, config, **kwargs)
    try:
        while True:
            # Set only while the run's code runs: the run reads it as it starts.
            token = caller_gone.set(CLIENT_DISCONNECTED)
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return
            finally:
                caller_gone.reset(token)
            yield item
    finally:
        # Close the run's stream now, not whenever it is collected, so the cancel is
        # recorded while the server still waits for this response.
        await stream.aclose()
