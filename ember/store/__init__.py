"""SQLite-backed persistence: the one place state that must survive a restart lives."""

from ember.store.db import Store
from ember.store.repository import Repository, StoredRecord

__all__ = ["Repository", "Store", "StoredRecord"]
