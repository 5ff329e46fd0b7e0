"""What pods share, kept in Redis: budgets that span every worker of a fleet.

The per-step hot path stays local; only what must be shared (a tenant's budget) goes to
Redis, in one atomic script call per model call.
"""
