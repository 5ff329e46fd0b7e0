"""A policy path watched by the hash of its content: for the sidecar and the Agent Server.

Kubernetes swaps a ConfigMap's files through a symlink; mtimes and inotify can miss that, a
content hash cannot. An invalid edit never replaces the last good set, and neither does a
file that cannot be read (a remount, a stale NFS handle): both are reported, and
``watchdog_policy_files_valid`` stays 0 while they last.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from .._core.errors import PolicyError
from .._core.policies import PolicySet
from .._files.loading import load_policy_texts, read_policy_files
from .._sinks import events as _events
from .._sinks.metrics import Metrics

__all__ = ["PolicySource", "digest"]


def digest(files: Mapping[str, str]) -> str:
    """The hash of a policy set's files: their names and their text."""
    hashed = hashlib.sha256()
    for name, text in sorted(files.items()):
        hashed.update(os.path.basename(name).encode() + b"\0" + text.encode() + b"\0")
    return hashed.hexdigest()[:16]


class PolicySource:
    def __init__(self, path: str, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        self.files = read_policy_files(path)
        self.policies: PolicySet = load_policy_texts(self.files)  # PolicyError: do not start
        self.hash = digest(self.files)
        self.error: str | None = None
        self.checked_hash = self.hash
        metrics.policy_files_valid.set(1)

    def check(self, *, force: bool = False) -> bool:
        """Reload when the content changed (or ``force``); True when a new set was loaded."""
        try:
            files = read_policy_files(self.path)
        except PolicyError as error:
            return self._failed(str(error), None)
        except OSError as error:  # PermissionError, ESTALE...: the next poll reads again
            reason = error.strerror or str(error)
            return self._failed(f"{self.path}: cannot read the policies: {reason}", None)
        hashed = digest(files)
        if hashed == self.checked_hash and not force:
            return False
        self.checked_hash = hashed
        if hashed == self.hash and not force:  # back to the set in force
            self._valid()
            return False
        try:
            policies = load_policy_texts(files)
        except PolicyError as error:
            return self._failed(str(error), hashed)
        self.files, self.policies, self.hash = files, policies, hashed
        self._valid()
        self.metrics.policy_reloads.labels("ok").inc()
        _events.emit(
            "policy_loaded",
            source=self.path,
            hash=hashed,
            policies=[p.name for p in policies.policies],
        )
        return True

    def _valid(self) -> None:
        self.error = None
        self.metrics.policy_files_valid.set(1)

    def _failed(self, error: str, hashed: str | None) -> bool:
        # Files that could not be read are read again at the next poll, whatever they hold.
        self.checked_hash = hashed or ""
        self.metrics.policy_files_valid.set(0)
        if error != self.error:  # report each broken edit once, not on every poll
            self.error = error
            self.metrics.policy_reloads.labels("failed").inc()
            _events.emit(
                "policy_reload_failed", source=self.path, hash=hashed, error=error, kept=self.hash
            )
        return False

    def as_dict(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "files": {os.path.basename(name): text for name, text in self.files.items()},
        }
