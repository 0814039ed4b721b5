"""What both pipelines use: storage (fsspec, retries, atomic writes), listing, the settings
base, the model pointer and in-process progress events."""
