"""The member factory: the one place a new member of an autoscaled group is made.

Today a member is created from the group's stored create arguments (a create
request without a name), joined to the group as it is created. Made from a
template instead, only `make_member` changes: the same name, the same group, the
template's create path in place of `create_instance`.
"""

from __future__ import annotations

import secrets
from typing import Any

from ember.groups.manager import GroupManager
from ember.groups.models import ServiceGroupRecord
from ember.groups.requests import InstanceServiceGroupRequest
from ember.instances import CreateInstanceRequest, InstanceRecord

NAME_ROOM = 56  # a group's name (up to 63) + "-" + 6 hex must stay within 63


def member_name(group: ServiceGroupRecord) -> str:
    return f"{group.name[:NAME_ROOM].rstrip('-')}-{secrets.token_hex(3)}"


async def make_member(
    groups: GroupManager, group: ServiceGroupRecord, create_args: dict[str, Any]
) -> InstanceRecord:
    """A new Running member of `group` (the instance create's admission applies: it
    raises InsufficientResources when the host cannot take it)."""
    request = CreateInstanceRequest.model_validate({**create_args, "name": member_name(group)})
    return await groups.create_instance(request, InstanceServiceGroupRequest(uuid=group.id), None)


__all__ = ["make_member", "member_name"]
