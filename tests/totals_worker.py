"""A worker process for the thread-totals tests: supervised runs on one thread of a SQLite
file that another process writes to at the same time.

    python -m tests.totals_worker DATABASE THREAD RUNS

It prints "ready" once set up and starts its runs when a line arrives on standard input, so
that two workers run at the same time however long each took to start.
"""

from __future__ import annotations

import contextlib
import sys

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.errors import GraphRecursionError

from tests.graphs import Bodies, endless, policies
from watchdog import Supervisor

# Three steps a run, well under the limits: only the totals are under test.
POLICIES = """\
- {name: per-run, step_count: {max_steps: 1000}}
- {name: per-thread, step_count: {max_steps: 1000000, scope: thread}}
"""


def main(database: str, thread_id: str, runs: int) -> None:
    with SqliteSaver.from_conn_string(database) as checkpointer:
        checkpointer.setup()  # here, not at the first run, where the other worker writes
        graph = endless(Bodies(), is_async=False).builder.compile(checkpointer=checkpointer)
        app = Supervisor(policies(POLICIES)).attach(graph, name="worker")
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 3}
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(runs):
            with contextlib.suppress(GraphRecursionError):  # the limit: 3 steps ran
                app.invoke({"count": 0}, config)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
