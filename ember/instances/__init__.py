"""Instances: the lifecycle of VMs made from images (see README.md)."""

from ember.instances.manager import InstanceManager
from ember.instances.models import InstanceRecord
from ember.instances.request import CreateInstanceRequest, StartInstanceRequest
from ember.instances.state import State

__all__ = [
    "CreateInstanceRequest",
    "InstanceManager",
    "InstanceRecord",
    "StartInstanceRequest",
    "State",
]
