"""``python -m tests.transparency``: run LangGraph's tests bare and attached, and compare."""

from __future__ import annotations

from tests.transparency.suite import main

raise SystemExit(main())
