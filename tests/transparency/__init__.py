"""The transparency suite: LangGraph's own tests must pass with every graph supervised.

Run it with ``python -m tests.transparency``; see ``suite.py``.
"""
