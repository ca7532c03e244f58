"""Schema migrations, applied in order; `PRAGMA user_version` records the last one.

Each migration is a tuple of statements run in one transaction. Never edit a
migration that has shipped: append a new one. Each resource table
has the same shape (see `Repository`): an id, a unique name, and the record as
JSON, so adding a field to a record needs no migration.
"""

from __future__ import annotations


def _resource_table(table: str) -> str:
    return (
        f"CREATE TABLE {table} ("
        " id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL UNIQUE,"
        " data TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
        ")"
    )


MIGRATIONS: list[tuple[str, ...]] = [
    # 1: settings kept by the server itself (e.g. the JWT secret's creation time).
    ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    # 2: images, keyed by normalized reference.
    (_resource_table("images"),),
    # 3: instances.
    (_resource_table("instances"),),
    # 4: the built-in registry: manifests per repository, and tags pointing at them.
    (
        "CREATE TABLE registry_manifests ("
        " repository TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,"
        " PRIMARY KEY (repository, digest))",
        "CREATE TABLE registry_tags ("
        " repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,"
        " PRIMARY KEY (repository, tag))",
    ),
    # 5: network leases (ember/network): one address, MAC and TAP per instance.
    (
        "CREATE TABLE network_leases ("
        " instance_id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " ip TEXT NOT NULL UNIQUE,"
        " mac TEXT NOT NULL UNIQUE,"
        " tap TEXT NOT NULL UNIQUE,"
        " download_rate INTEGER,"  # bytes/s, NULL: unlimited
        " upload_rate INTEGER,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        "CREATE INDEX network_leases_name ON network_leases (name)",
    ),
    # 6: volumes, and which instance mounts which volume (one row per pair).
    (
        _resource_table("volumes"),
        "CREATE TABLE volume_attachments ("
        " volume_id TEXT NOT NULL REFERENCES volumes(id),"
        " instance_id TEXT NOT NULL,"
        " data TEXT NOT NULL,"
        " PRIMARY KEY (volume_id, instance_id))",
        "CREATE INDEX volume_attachments_instance ON volume_attachments (instance_id)",
    ),
    # 7: ingresses (ember/ingress): routes from host ports to instances, as JSON records.
    (_resource_table("ingresses"),),
    # 8: named snapshots (ember/snapshots): a name is unique per source instance (several
    # may have none), so not a resource table; one snapshot schedule per instance.
    (
        "CREATE TABLE snapshots ("
        " id TEXT PRIMARY KEY,"
        " instance_id TEXT NOT NULL,"
        " name TEXT,"
        " data TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        "CREATE UNIQUE INDEX snapshots_instance_name ON snapshots (instance_id, name)",
        "CREATE TABLE snapshot_schedules (instance_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
    ),
    # 9: passthrough devices registered by PCI address (ember/devices).
    (_resource_table("devices"),),
    # 10: service groups (ember/groups) and which instance belongs to which (one row per
    # instance: its id and name, the group, its scale-to-zero policy).
    (_resource_table("service_groups"), _resource_table("service_group_members")),
    # 11: uploaded TLS certificates (ember/ingress/certificates.py), served by Caddy.
    (_resource_table("certificates"),),
    # 12: pushes of images to other registries (ember/pushes); a push's name is its id.
    (_resource_table("pushes"),),
    # 13: autoscale of service groups (ember/groups/autoscale): one configuration per group
    # (id and name: the group's id), and the decisions of its loop, in order.
    (
        _resource_table("autoscale_configs"),
        "CREATE TABLE autoscale_decisions ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " group_id TEXT NOT NULL,"
        " data TEXT NOT NULL)",
        "CREATE INDEX autoscale_decisions_group ON autoscale_decisions (group_id, seq)",
    ),
    # 14: calendar schedules of instances (ember/schedules): one row per instance that has
    # any (id and name: the instance's id), its schedules with their next runs as JSON.
    (_resource_table("instance_schedules"),),
    # 15: builds and builders (ember/builds); names are not unique (a builder's is a display
    # name, a build's is its id).
    (
        "CREATE TABLE builders (id TEXT PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        "CREATE TABLE builds (id TEXT PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    ),
]
