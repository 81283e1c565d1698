"""State stores: Redis implementations of the store protocols of enrich/ (in-memory twins live there)."""
