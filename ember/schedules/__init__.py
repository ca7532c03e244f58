"""Calendar schedules of instances (Unikraft Cloud's `schedules`): start, stop, standby
or exec at the times of a systemd calendar expression (README.md)."""

from ember.schedules.manager import ScheduleManager
from ember.schedules.models import Schedule, ScheduleAction, ScheduleRequest

__all__ = ["Schedule", "ScheduleAction", "ScheduleManager", "ScheduleRequest"]
