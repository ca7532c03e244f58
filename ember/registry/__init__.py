"""The built-in OCI registry: accept pushes (and serve pulls) of images into Ember."""

from ember.registry.registry import DistributionError, Registry, Upload, parse_content_range
from ember.registry.service import RegistryService

__all__ = ["DistributionError", "Registry", "RegistryService", "Upload", "parse_content_range"]
