"""Prefect flows: orchestration only. Each flow validates its parameters, then calls tasks in
order; the work lives in ``tasks/``."""
