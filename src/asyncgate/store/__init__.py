"""Run stores: Redis for replicas, embedded SQLite for one node."""
