"""Templates: VMs booted once, saved when ready, cloned in a fraction of a boot (README.md)."""

from ember.templates.manager import Templates
from ember.templates.models import CreateTemplateRequest, Readiness

__all__ = ["CreateTemplateRequest", "Readiness", "Templates"]
