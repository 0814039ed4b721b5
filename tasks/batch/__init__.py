"""The batch-inference flow's units of work: videos under a prefix in, Parquet out."""
