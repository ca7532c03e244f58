"""The built-in OCI registry: accept pushes (and serve pulls) of images into Ember."""

from ember.registry.registry import DistributionError, Registry, Upload

__all__ = ["DistributionError", "Registry", "Upload"]
