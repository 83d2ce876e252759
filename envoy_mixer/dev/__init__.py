"""Local orchestration: ``mixer up``, process management and the demo apps.

Nothing a service image needs lives here; the services never import it.
"""
