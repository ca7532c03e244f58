"""The member factory: the one place a new member of an autoscaled group is made.

A member is made from the group's stored create arguments: either a create request
without a name (a cold create), or `{"template": <template id>}` (a clone of that
template: Running from its saved state, a fraction of a boot). Either way it joins
the group by `GroupManager.add_instance`, the one membership path.
"""

from __future__ import annotations

import secrets
from typing import Any

from ember.groups.manager import GroupManager
from ember.groups.models import ServiceGroupRecord
from ember.groups.requests import InstanceServiceGroupRequest
from ember.instances import CreateInstanceRequest, InstanceRecord
from ember.templates import Templates

NAME_ROOM = 56  # a group's name (up to 63) + "-" + 6 hex must stay within 63
TEMPLATE = "template"  # the key of `create_args` that makes members clones


def member_name(group: ServiceGroupRecord) -> str:
    return f"{group.name[:NAME_ROOM].rstrip('-')}-{secrets.token_hex(3)}"


async def make_member(
    groups: GroupManager,
    templates: Templates,
    group: ServiceGroupRecord,
    create_args: dict[str, Any],
) -> InstanceRecord:
    """A new Running member of `group` (admission applies to a create and to a clone: it
    raises InsufficientResources when the host cannot take it)."""
    name = member_name(group)
    target = InstanceServiceGroupRequest(uuid=group.id)
    template = create_args.get(TEMPLATE)
    if template is not None:
        return await groups.add_instance(
            name, target, None, lambda: templates.clone(template, name)
        )
    request = CreateInstanceRequest.model_validate({**create_args, "name": name})
    return await groups.create_instance(request, target, None)


__all__ = ["TEMPLATE", "make_member", "member_name"]
