"""Fleet simulator: believable vehicle telemetry and CDC with injected outliers and ground truth."""
