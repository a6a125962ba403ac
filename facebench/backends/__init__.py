"""Model backends; each module registers itself in :data:`facebench.models.BACKENDS` on import."""
