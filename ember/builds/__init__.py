"""Builds: images made from source inside builder VMs, on builders with cache disks."""

from ember.builds.manager import BuildManager, BuildSettings
from ember.builds.models import (
    DEFAULT_BUILDER,
    TERMINAL,
    BuilderRecord,
    BuilderStatus,
    BuildEvent,
    BuildRecord,
    BuildStatus,
)
from ember.builds.request import parse_build_form

__all__ = [
    "DEFAULT_BUILDER",
    "TERMINAL",
    "BuildEvent",
    "BuildManager",
    "BuildRecord",
    "BuildSettings",
    "BuildStatus",
    "BuilderRecord",
    "BuilderStatus",
    "parse_build_form",
]
