"""What runs in a worker node's parent process: the consumer, the Pushgateway janitor, the
broker guard against non-Celery queue items."""
