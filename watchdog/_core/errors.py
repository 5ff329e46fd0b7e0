"""Exceptions of the public API."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from .findings import Finding

# Everything str.splitlines() breaks on: a problem must print as exactly one line.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    return LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


__all__ = ["PolicyError", "PolicyProblem", "RunCancelled"]


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy file, located the way compilers locate errors."""

    file: str
    line: int  # 1-based; 0 when the problem is the file itself (missing, unreadable)
    column: int  # 1-based
    path: str  # field path such as ``policies[2].wall_time.max_seconds``; "" for the document
    message: str  # what was expected and what was found
    source_line: str | None = None  # the text of the line it stands at, when known

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", one_line(self.file))
        object.__setattr__(self, "path", one_line(self.path))
        object.__setattr__(self, "message", one_line(self.message))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def render(self) -> str:
        """``str(self)``, then its line of the file with a caret under the column, the way
        compilers show an error; ``str(self)`` alone when the line is not known."""
        if self.source_line is None or self.line < 1:
            return str(self)
        number = str(self.line)
        gutter = " " * len(number)
        shown, pad = _shown(self.source_line, self.column)
        source = f"{number} | {shown}" if shown else f"{number} |"
        return f"{self}\n{gutter} |\n{source}\n{gutter} | {pad}^"

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "source_line": self.source_line,
        }


def _shown(line: str, column: int) -> tuple[str, str]:
    """``line`` as a terminal can show it, and the blanks that put a caret under ``column``.

    Control characters are escaped; the blanks copy each tab (so tab stops fall alike on both
    lines), take two cells for a wide character and none for a combining accent.
    """
    shown: list[str] = []
    pad: list[str] = []
    for index, char in enumerate(line):
        if char == "\t" or char.isprintable():
            text = char
            wide = unicodedata.east_asian_width(char) in ("W", "F")
            cells = 0 if unicodedata.combining(char) else 2 if wide else 1
        else:
            text = repr(char)[1:-1]
            cells = len(text)
        shown.append(text)
        if index < column - 1:
            pad.append("\t" if char == "\t" else " " * cells)
    pad.append(" " * (column - 1 - len(line)))  # past the end: a missing ':', end of file
    return "".join(shown), "".join(pad)


class PolicyError(ValueError):
    """Raised for an invalid policy file or directory; lists every problem found.

    ``str(error)`` is one ``file:line:col: path: message`` line per problem. The first
    problem's location is also on the exception as ``file``, ``line``, ``column`` and ``path``.
    """

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        if not problems:
            msg = "PolicyError needs at least one problem"
            raise ValueError(msg)
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        first = self.problems[0]
        self.file = first.file
        self.line = first.line
        self.column = first.column
        self.path = first.path
        super().__init__("\n".join(str(p) for p in self.problems))


class RunCancelled(RuntimeError):
    """A supervised run was cancelled: by a policy, or by ``Supervisor.cancel``.

    Raised to the caller of invoke/stream instead of a bare ``CancelledError``. The last
    completed step stays checkpointed (with a checkpointer), so ``invoke(None, config)``
    resumes from it. A ``RuntimeError``: no retry policy retries it by default, and servers
    that show only the errors they know (LangGraph's Agent Server) show its message.
    """

    def __init__(
        self, finding: Finding, *, run_id: str, thread_id: str | None, graph: str, phase: str
    ) -> None:
        self.finding = finding  # the whole record: also its node, mode and limit key
        self.run_id = run_id
        self.thread_id = thread_id
        self.graph = graph
        self.policy = finding.policy  # None for a manual cancel
        self.kind = finding.kind  # wall_time, step_count, loop, token_budget, rate or manual
        self.reason = finding.reason
        self.observed = finding.observed
        self.limit = finding.limit
        self.step = finding.step
        self.phase = phase  # "drained": stopped at a step boundary; "hard": its task cancelled
        super().__init__(f"run {run_id} of graph {graph!r} cancelled ({self.kind}): {self.reason}")
