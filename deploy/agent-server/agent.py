"""A support agent served by LangGraph's Agent Server, supervised by the watchdog.

Its chat model is a stand-in that needs no network and no API key: it plays the scenario
the user's message starts with, and reports token usage like a real provider.

- ``weather <city>``: looks the weather up once, then answers (a good run);
- ``repeat``: asks for the same lookup again and again (stopped by ``loop``);
- ``wander``: looks up one city after another, forever (stopped by ``step-count``);
- ``spend``: each answer costs 40,000 tokens (stopped by ``token-budget``);
- ``hang``: calls a tool that never returns (stopped by ``wall-time``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from watchdog.agent_server import supervisor

CITIES = ("Paris", "Lima", "Oslo", "Accra", "Hanoi", "Quito", "Perth", "Riga")


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


@tool
async def slow_lookup(query: str) -> str:
    """A lookup in a system that has stopped answering."""
    await asyncio.Event().wait()
    return query


class ScenarioModel(BaseChatModel):
    """Plays the scenario named by the first word of the user's last message."""

    @property
    def _llm_type(self) -> str:
        return "scenario"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScenarioModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        question = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        scenario, _, rest = str(question.content).partition(" ")
        calls = sum(1 for m in messages if isinstance(m, AIMessage))  # answers so far
        answer, tokens = self._play(scenario, rest, calls)
        answer.usage_metadata = UsageMetadata(
            input_tokens=tokens - 20, output_tokens=20, total_tokens=tokens
        )
        return ChatResult(generations=[ChatGeneration(message=answer)])

    def _play(self, scenario: str, rest: str, calls: int) -> tuple[AIMessage, int]:
        def lookup(name: str, **args: str) -> AIMessage:
            return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call-{calls}"}])

        if scenario == "weather":
            if calls == 0:
                return lookup("get_weather", city=rest or "Paris"), 120
            return AIMessage(f"Here is the weather for {rest or 'Paris'}."), 150
        if scenario == "repeat":
            return lookup("get_weather", city="Paris"), 120
        if scenario == "wander":
            city = next(itertools.islice(itertools.cycle(CITIES), calls, None))
            return lookup("get_weather", city=f"{city} {calls}"), 120
        if scenario == "spend":
            return lookup("get_weather", city=f"{CITIES[calls % len(CITIES)]} {calls}"), 40_000
        if scenario == "hang":
            return lookup("slow_lookup", query=rest or "status"), 120
        return AIMessage("I can help with the weather: try 'weather Paris'."), 60


model = ScenarioModel()


async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
    return {"messages": [await model.ainvoke(state["messages"])]}


def wrap_up(state: MessagesState) -> dict[str, list[BaseMessage]]:
    """Where a run stopped by the wall-time policy goes before it ends (its cleanup_node)."""
    return {"messages": [AIMessage("Sorry: a lookup stopped answering. Please try again.")]}


builder = StateGraph(MessagesState)
builder.add_node("agent", agent)
builder.add_node("tools", ToolNode([get_weather, slow_lookup]))
builder.add_node("wrap_up", wrap_up)
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", tools_condition)
builder.add_edge("tools", "agent")
builder.add_edge("wrap_up", END)

# The server adds its own checkpointer and store to copies of this graph; they stay supervised.
graph = supervisor().attach(builder.compile(), name="support-agent")
