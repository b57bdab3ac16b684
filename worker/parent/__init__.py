"""What runs in a worker node's parent process: the consumer and the node's metrics pusher,
the broker guard against non-Celery queue items, the preflight check, the recorder of killed
jobs and the reconciler."""
