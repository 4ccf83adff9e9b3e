"""Deployment modes, registered by name. Add one: a file here and an import line below."""

from peftlab.bench.modes import base, full, merged, mixed, multi, unmerged  # noqa: F401

__all__ = ["base", "full", "merged", "mixed", "multi", "unmerged"]
