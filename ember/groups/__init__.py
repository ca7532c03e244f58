"""Service groups: several instances behind published services, balanced by Caddy under
soft and hard limits, scaled to zero and woken by the next request (README.md)."""

from ember.groups.manager import GroupManager, Member, waker_socket
from ember.groups.models import MemberRecord, ScaleToZero, Service, ServiceGroupRecord
from ember.groups.requests import (
    CreateServiceGroupRequest,
    InstanceServiceGroupRequest,
    ScaleToZeroRequest,
)

__all__ = [
    "CreateServiceGroupRequest",
    "GroupManager",
    "InstanceServiceGroupRequest",
    "Member",
    "MemberRecord",
    "ScaleToZero",
    "ScaleToZeroRequest",
    "Service",
    "ServiceGroupRecord",
    "waker_socket",
]
