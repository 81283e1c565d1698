"""The `enrich` command line."""
