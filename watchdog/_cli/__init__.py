"""The ``watchdog`` command: ``check``, ``serve`` and ``demo``, each importing only what it
needs."""
