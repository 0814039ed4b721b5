"""Prefect flows (orchestration only) and the ``emotion-pipeline`` command line."""
