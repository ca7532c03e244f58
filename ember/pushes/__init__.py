"""Pushes: copy an Ember image to another registry."""

from ember.pushes.manager import PushManager
from ember.pushes.models import PushProgress, PushRecord, PushStatus

__all__ = ["PushManager", "PushProgress", "PushRecord", "PushStatus"]
