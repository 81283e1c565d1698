"""Streaming IoT enrichment engine: the pure domain core (no Kafka, Redis or HTTP imports)."""
