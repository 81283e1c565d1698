"""I/O shared by every worker: the one Kafka writer, client configs, dependency health (no domain logic)."""
