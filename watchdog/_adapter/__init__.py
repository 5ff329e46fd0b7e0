"""The LangGraph adapter: supervised graphs, their runs and the cancellation pipeline, and the
supervisor. The only layer that imports ``langgraph`` or ``langchain_core``; it stands on every
layer below it."""
