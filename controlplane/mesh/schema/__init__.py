"""Pydantic schemas of the Istio kinds the mesh reads, one module per kind (see ``common``)."""
