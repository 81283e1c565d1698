"""Batch flattening of nested JSON into relational Parquet tables, with a schema registry and drift policies.

Pure (no Kafka/Redis/HTTP); pyarrow only in :mod:`enrich.flatten.arrow`. See ``enrich flatten --help``.
"""
