"""A Celery app module that fails at import: the local-stack test of a start-up failure."""

raise RuntimeError("broken app for the local-stack test")
