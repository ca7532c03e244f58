"""Snapshots: standby memory compression, named snapshots and forks (see README.md)."""
