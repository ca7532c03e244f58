"""Autoscale of service groups (Unikraft Cloud's autoscale configurations and step
policies): see ../README.md, "Autoscale"."""

from ember.groups.autoscale.manager import AutoscaleManager
from ember.groups.autoscale.models import (
    AutoscalePolicy,
    AutoscalePolicyStep,
    AutoscaleRecord,
    Decision,
)
from ember.groups.autoscale.requests import AutoscaleConfigRequest, AutoscalePolicyRequest

__all__ = [
    "AutoscaleConfigRequest",
    "AutoscaleManager",
    "AutoscalePolicy",
    "AutoscalePolicyRequest",
    "AutoscalePolicyStep",
    "AutoscaleRecord",
    "Decision",
]
