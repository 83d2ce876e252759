"""Demo workloads for ``mixer up`` and docker-compose: ``frontend`` calling ``backend``."""
