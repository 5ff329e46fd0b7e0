"""Where events go: structlog events, and the Prometheus metrics computed from them (one
mapping, used in the agent process and in the sidecar alike). Stands on the core only."""
