"""Units of work of the two pipelines, as Prefect tasks and the plain functions they wrap.

- ``tasks.batch``: the batch-inference flow (settings, planning, the shard task, Parquet sink,
  run summary, Dask placement).
- ``tasks.training``: the retrain flow (settings, labelled data, the split by actor, the clip
  cache, the training loop, evaluation, the registry, its Prefect tasks).
- ``tasks.common``: what both use (storage, listing, the settings base, the model pointer,
  progress events); ``tasks.errors``: the pipeline's typed errors.

``batch`` and ``training`` never import each other; everything here may import
``emotion_model``, nothing here imports ``flows`` or ``cli``.
"""
