"""What producer and worker share: the job contract, delivery rules, settings, errors, batch
state, storage and Redis connections. No Celery app, no engine, no dev stack."""
