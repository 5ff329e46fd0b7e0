"""Policy files: YAML in, the core's ``PolicySet`` out, or a ``PolicyError`` naming every
problem. Stands on the core only."""
