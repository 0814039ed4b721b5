"""Operating emotion-pipeline: Prefect work pools (`pools`) and a readiness check (`doctor`).

Neither module is a flow or a task: they talk to the Prefect API and to AWS on behalf of an
operator, from the ``emotion-pipeline pools`` and ``emotion-pipeline doctor`` subcommands.
"""
