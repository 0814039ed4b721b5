"""Units of work of the pipeline: listing, inference, Parquet sinks and training helpers."""
