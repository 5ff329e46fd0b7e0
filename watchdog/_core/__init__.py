"""The core: the policy model, the limits, per-run state, the engine, the deadline scheduler.

No LangGraph and no I/O; the clock is injected. Every other layer stands on this one.
"""
