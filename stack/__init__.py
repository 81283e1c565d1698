"""Native local stack: a real Apache Kafka broker (KRaft) and Redis, started without Docker."""
