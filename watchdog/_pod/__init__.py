"""The pod: the sidecar server (``watchdog serve``) and a worker's link to it. No LangGraph:
the sidecar starts without importing it. Stands on the core, the policy files and the sinks."""
