"""Where recorded runs go: a JSON-lines file, one run a line, appended as each run ends."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .._core.trace import Trace

__all__ = ["TraceFile"]


class TraceFile:
    """Appends each trace to ``path`` as one line. The file is opened for each run, so it
    may be rotated or removed while the process runs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one line at a time from the threads of this process

    def __call__(self, trace: Trace) -> None:
        line = trace.to_json() + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line)
