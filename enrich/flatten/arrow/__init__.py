"""Every pyarrow call of the flattening engine lives in this package (reading, flattening, Parquet)."""
