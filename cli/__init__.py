"""The ``emotion-pipeline`` command line: parses arguments, runs flows and library calls, and
prints. The top of the dependency graph: ``cli -> flows -> tasks -> emotion_model``."""
