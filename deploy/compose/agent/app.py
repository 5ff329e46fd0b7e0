"""An example agent service supervised in sidecar mode: a FastAPI app that streams a
LangGraph ReAct agent (with a fake chat model, so it needs no API key).

With DEMO_TRAFFIC=1 it also sends itself a steady mix of requests, some of them runaways, so
the dashboards have something to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from watchdog import RunCancelled, Supervisor
from watchdog.starlette import supervised_stream
from watchdog.testing import FakeChatModel

supervisor = Supervisor.connect()  # WATCHDOG_SIDECAR_URL, WATCHDOG_SIDECAR_TOKEN


class Chat(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]


@tool
async def search(query: str) -> str:
    """Search the help centre."""
    await asyncio.sleep(0.05)
    return f"3 articles about {query}"


def call(query: str, call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "search", "args": {"query": query}, "id": call_id}])


def agent(runaway: bool) -> Any:
    answers = (
        [call("same thing", "c")]
        if runaway
        else [
            call("refunds", "c1"),
            call("order status", "c2"),
            AIMessage("Your refund is on its way."),
        ]
    )
    model = FakeChatModel(responses=answers, input_tokens=900, output_tokens=120)

    async def think(state: Chat) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("agent", think)
    builder.add_node("tools", ToolNode([search]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return supervisor.attach(builder.compile(checkpointer=InMemorySaver()), name="support-bot")


async def traffic() -> None:
    while True:
        app = agent(runaway=random.random() < 0.2)  # one request in five runs away
        with contextlib.suppress(RunCancelled):  # and the watchdog stops it
            await app.ainvoke(
                {"messages": [("user", "help")]}, {"configurable": {"thread_id": "demo"}}
            )
        await asyncio.sleep(1)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(traffic()) if os.environ.get("DEMO_TRAFFIC") == "1" else None
    yield
    if task is not None:
        task.cancel()
    supervisor.close()


app = FastAPI(title="example agent", lifespan=lifespan)


@app.get("/chat")
async def chat(q: str) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        config = {"configurable": {"thread_id": str(uuid.uuid4())}}
        async for chunk in supervised_stream(
            agent(runaway=False), {"messages": [("user", q)]}, config
        ):
            for update in chunk.values():
                for message in update.get("messages", []):
                    yield f"data: {message.content or message.type}\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")
