"""Policy files: read from a path, YAML in, a ``PolicySet`` out, or a ``PolicyError`` naming
every problem.

Validation goes on past the first problem, the way a compiler does, so one run of
``watchdog check`` shows everything there is to fix. ``reader.py`` reads YAML nodes as typed
values; ``schema.py`` is the version 1 document.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .._core.errors import PolicyError, PolicyProblem
from .._core.policies import Policy, PolicySet
from .reader import LINE_BREAK, position
from .schema import PolicyFileReader

__all__ = [
    "POLICY_SUFFIXES",
    "check_policies",
    "load_policies",
    "load_policy_text",
    "load_policy_texts",
    "read_policy_files",
]

POLICY_SUFFIXES = (".yaml", ".yml")


def load_policies(path: str | os.PathLike[str]) -> PolicySet:
    """Load a policy file, or every ``*.yaml``/``*.yml`` file directly inside a directory.

    A directory's files are merged in name order. Hidden files are skipped, so a Kubernetes
    ConfigMap mount (with its ``..data`` links) loads as the files it holds.
    """
    policies, problems = check_policies(path)
    if problems:
        raise PolicyError(problems)
    return policies


def check_policies(path: str | os.PathLike[str]) -> tuple[PolicySet, list[PolicyProblem]]:
    """Every problem of the policy files at ``path``, and the policies that are valid.

    A file that cannot be read is one problem; the other files are still read and checked.
    The set is the whole set only when there are no problems: ``watchdog check`` sums up the
    files that have none.
    """
    return _merge(_read_files(path))


def read_policy_files(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text of each policy file at ``path`` (a file or a directory), by file name.

    Raises ``PolicyError`` naming every file that cannot be read.
    """
    files = _read_files(path)
    unread = [problem for problem in files.values() if isinstance(problem, PolicyProblem)]
    if unread:
        raise PolicyError(unread)
    return {name: text for name, text in files.items() if isinstance(text, str)}


def load_policy_texts(files: Mapping[str, str]) -> PolicySet:
    """Load policies from the texts of several files, merged in the order given."""
    policies, problems = _merge(files)
    if problems:
        raise PolicyError(problems)
    return policies


def load_policy_text(text: str, file: str = "<string>") -> PolicySet:
    """Load policies from YAML text; ``file`` names it in error messages."""
    return load_policy_texts({file: text})


def _read_files(path: str | os.PathLike[str]) -> dict[str, str | PolicyProblem]:
    """Each policy file at ``path`` by name: its text, or the problem that kept it unread."""
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix.lower() in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            suffixes = ", ".join(f"*{s}" for s in POLICY_SUFFIXES)
            message = f"no policy files ({suffixes}) in this directory"
            return {str(root): PolicyProblem(str(root), 0, 0, "", message)}
    else:
        files = [root]
    return {str(file): _read_file(file) for file in files}


def _read_file(file: Path) -> str | PolicyProblem:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return PolicyProblem(str(file), 0, 0, "", "no such file")
    except OSError as exc:
        return PolicyProblem(str(file), 0, 0, "", f"cannot read it: {exc.strerror or exc}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(str(file), data, exc)


def _not_utf8(file: str, data: bytes, exc: UnicodeDecodeError) -> PolicyProblem:
    """The first byte that is not UTF-8, located by line and column like any other problem."""
    # Everything before the first bad byte decodes, so lines and columns count as YAML's do.
    lines = LINE_BREAK.split(data[: exc.start].decode("utf-8"))
    rest = LINE_BREAK.split(data[exc.start :].decode("utf-8", errors="replace"), maxsplit=1)[0]
    looks_like = " (it looks like UTF-16)" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
    message = (
        f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason}){looks_like}; "
        "expected the file saved as UTF-8"
    )
    return PolicyProblem(file, len(lines), len(lines[-1]) + 1, "", message, lines[-1] + rest)


def _merge(files: Mapping[str, str | PolicyProblem]) -> tuple[PolicySet, list[PolicyProblem]]:
    problems: list[PolicyProblem] = []
    policies: list[Policy] = []
    read_files: list[str] = []
    first_use: dict[str, str] = {}
    redis_url: tuple[str, str] | None = None  # the first file's, and where it stands
    for file, text in files.items():
        if isinstance(text, PolicyProblem):
            problems.append(text)
            continue
        reader = PolicyFileReader(file, text)
        policies.extend(reader.read())
        read_files.append(file)
        # Names are checked as read, valid policy or not: a duplicate is worth knowing either way.
        for name in reader.names:
            if name.name not in first_use:
                line, column = position(name.node)
                first_use[name.name] = f"{reader.file}:{line}:{column}"
                continue
            reader.problem(
                name.node,
                name.path,
                f"policy name {name.name!r} is already used at {first_use[name.name]}; "
                "expected a unique name",
            )
        if reader.redis_url is not None:
            url, node = reader.redis_url
            line, column = position(node)
            if redis_url is None:
                redis_url = url, f"{reader.file}:{line}:{column}"
            elif url != redis_url[0]:
                reader.problem(
                    node,
                    "defaults.redis_url",
                    f"{url!r} is not the Redis URL set at {redis_url[1]} ({redis_url[0]!r}); "
                    "expected one Redis for every policy file",
                )
        problems.extend(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    shared_at = None if redis_url is None else redis_url[0]
    return PolicySet(tuple(policies), tuple(read_files), redis_url=shared_at), problems
