"""Outlier rules: a safe expression language, rule packs in YAML, Prometheus-style alert states."""
