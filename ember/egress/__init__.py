"""Egress: credential brokering and per-instance egress policy (see README.md)."""

from ember.egress.credentials import Credential, CredentialRequest
from ember.egress.flows import Flow
from ember.egress.manager import EgressManager
from ember.egress.models import EgressPlan, EgressRequest, EgressView, plan_egress
from ember.egress.policy import EgressPolicy

__all__ = [
    "Credential",
    "CredentialRequest",
    "EgressManager",
    "EgressPlan",
    "EgressPolicy",
    "EgressRequest",
    "EgressView",
    "Flow",
    "plan_egress",
]
