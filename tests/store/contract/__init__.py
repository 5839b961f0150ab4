"""The store's contract: each role's tests, run over the Redis store and the embedded store."""
