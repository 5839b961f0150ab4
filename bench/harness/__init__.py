"""The asyncgate benchmark harness: peers, pinning, load generation and the report."""
