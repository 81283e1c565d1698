"""HTTP API: the latest state of every vehicle and the merged snapshot records, read from Redis."""
