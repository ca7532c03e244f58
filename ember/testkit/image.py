"""Build OCI images in memory, from files on this host: no registry or internet needed.

An image is a list of layers (each a mapping of path -> `Entry`, or an already
packed `PackedLayer`) plus a config. `busybox_layer()` gives a small working
userland from Debian's `busybox-static`; `hello_binary()` compiles the test
workload (`hello.c`); `debian_systemd_layer()` packs a debootstrapped Debian
with systemd (built once per machine, then cached).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "echo", "cat", "env", "sleep", "ls", "id", "pwd", "true", "false", "mkdir", "rm",
    "touch", "sha256sum", "head", "dd", "wc", "kill", "ps", "uname", "hostname", "grep", "test",
    "nc", "ping", "nslookup", "httpd", "ip",
)  # fmt: skip
HELLO_SOURCE = Path(__file__).with_name("hello.c")
HTTPS_GET_SOURCE = Path(__file__).with_name("https_get.c")
CACHE_DIR = Path("/var/cache/ember-testkit")
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# On top of debootstrap's minbase: systemd as /sbin/init, and udev, without which
# no device unit ever appears (the serial getty would wait 90 s for ttyS0).
DEBIAN_SYSTEMD_PACKAGES = ("systemd", "systemd-sysv", "udev")
# Bump when `_trim_debian_root` or what the layer holds changes: it keys the cache.
DEBIAN_RECIPE_VERSION = 1
# Left out of the Debian layer: what the kernel, systemd or Ember provide at boot
# (device nodes, /run, /tmp, hostname, resolv.conf) and what only apt or people
# read (package lists and caches, docs, translations): 127 MB of tar are left of 240.
DEBIAN_TRIM = (
    "dev", "run", "tmp", "var/cache/apt", "var/lib/apt/lists",
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One tar entry: a file (`data`), a directory, a symlink or a hard link."""

    data: bytes | None = None
    mode: int = 0o644
    kind: str = "file"  # file | dir | symlink | hardlink
    target: str = ""
    uid: int = 0
    gid: int = 0


Layer = dict[str, Entry]


@dataclass(frozen=True)
class PackedLayer:
    """A layer already packed: its gzip blob and the digest of the uncompressed tar."""

    blob: bytes
    diff_id: str


def file(data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(data.encode() if isinstance(data, str) else data, mode, "file", uid=uid, gid=gid)


def directory(mode: int = 0o755) -> Entry:
    return Entry(None, mode, "dir")


def symlink(target: str) -> Entry:
    return Entry(None, 0o777, "symlink", target)


def hardlink(target: str) -> Entry:
    return Entry(None, 0o644, "hardlink", target)


def whiteout(path: str) -> tuple[str, Entry]:
    """The entry that deletes `path` from lower layers."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/.wh.{name}".lstrip("/"), file(b"")


def opaque(directory_path: str) -> tuple[str, Entry]:
    """The entry that hides everything lower layers put in `directory_path`."""
    return f"{directory_path.strip('/')}/.wh..wh..opq", file(b"")


def busybox_layer() -> Layer:
    layer: Layer = {
        "bin": directory(),
        "bin/busybox": file(BUSYBOX.read_bytes(), 0o755),
        "etc": directory(),
        "etc/passwd": file("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
        "etc/group": file("root:x:0:\nnogroup:x:65534:\n"),
        "root": directory(0o700),
        "tmp": directory(0o1777),
    }
    layer.update({f"bin/{applet}": symlink("busybox") for applet in BUSYBOX_APPLETS})
    return layer


def hello_binary(cache_dir: Path = CACHE_DIR) -> bytes:
    """`hello.c` compiled statically; cached by source hash."""
    return static_binary(HELLO_SOURCE, cache_dir=cache_dir)


def https_get_binary(cache_dir: Path = CACHE_DIR) -> bytes:
    """`https_get.c` (a certificate-verifying HTTPS client) linked statically with
    Debian's libssl-dev; cached by source hash."""
    return static_binary(HTTPS_GET_SOURCE, "-lssl", "-lcrypto", cache_dir=cache_dir)


def static_binary(source_path: Path, *libs: str, cache_dir: Path = CACHE_DIR) -> bytes:
    """A C source compiled with `gcc -static` (and `libs`); cached by source hash."""
    source = source_path.read_bytes()
    out = cache_dir / f"{source_path.stem}-{hashlib.sha256(source).hexdigest()[:16]}"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".{os.getpid()}")
        subprocess.run(
            ["gcc", "-static", "-O2", "-o", str(tmp), str(source_path), *libs],
            check=True,
            capture_output=True,
        )
        tmp.replace(out)
    return out.read_bytes()


def layer_tar(layer: Layer) -> bytes:
    """A gzip-compressed tar of `layer`, deterministic (fixed mtimes, sorted paths)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Hard links after everything else: their targets must already be in the archive.
        for path in sorted(layer, key=lambda p: (layer[p].kind == "hardlink", p)):
            entry = layer[path]
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = (
                entry.mode,
                entry.uid,
                entry.gid,
                1_700_000_000,
            )
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target
                tar.addfile(info)
            else:
                data = entry.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class BuiltImage:
    """A manifest (or index) and every blob it needs."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    @property
    def size(self) -> int:
        return sum(len(blob) for blob in self.blobs.values())


def build_image(
    layers: Sequence[Layer | PackedLayer],
    *,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    env: dict[str, str] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    architecture: str = "amd64",
    history: bool = False,
) -> BuiltImage:
    """`history`: one config history entry per layer, as image builders write (buildah
    refuses to build on an image whose layers have none)."""
    blobs: dict[str, bytes] = {}
    layer_descriptors: list[dict[str, Any]] = []
    diff_ids = []
    for layer in layers:
        if not isinstance(layer, PackedLayer):
            packed = layer_tar(layer)
            layer = PackedLayer(packed, _digest(gzip.decompress(packed)))
        compressed = layer.blob
        diff_ids.append(layer.diff_id)
        blobs[_digest(compressed)] = compressed
        layer_descriptors.append(
            {"mediaType": OCI_LAYER_GZIP, "digest": _digest(compressed), "size": len(compressed)}
        )
    settings: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in (env or {}).items()]}
    if cmd is not None:
        settings["Cmd"] = cmd
    if entrypoint is not None:
        settings["Entrypoint"] = entrypoint
    if working_dir:
        settings["WorkingDir"] = working_dir
    if user:
        settings["User"] = user
    image_config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if history:
        image_config["history"] = [{"created_by": "ember.testkit"} for _ in diff_ids]
    config = json.dumps(image_config, sort_keys=True).encode()
    blobs[_digest(config)] = config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": layer_descriptors,
        },
        sort_keys=True,
    ).encode()
    return BuiltImage(manifest, OCI_MANIFEST, blobs)


def build_index(images: dict[str, BuiltImage]) -> BuiltImage:
    """A multi-platform index over `images`, keyed by architecture."""
    blobs: dict[str, bytes] = {}
    entries = []
    for arch, image in images.items():
        blobs.update(image.blobs)
        blobs[image.digest] = image.manifest
        entries.append(
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, sort_keys=True
    ).encode()
    return BuiltImage(index, OCI_INDEX, blobs)


def hello_image(**config: Any) -> BuiltImage:
    """busybox plus the `hello` workload; runs `/hello` unless told otherwise."""
    app: Layer = {"hello": file(hello_binary(), 0o755)}
    config.setdefault("cmd", ["/hello"])
    return build_image([busybox_layer(), app], **config)


def https_client_image(trusted_ca: bytes | None = None, **config: Any) -> BuiltImage:
    """`hello_image` plus `/https-get` (a static, certificate-verifying HTTPS client), and
    `trusted_ca` (PEM) as the image's trust store when given."""
    app: Layer = {
        "hello": file(hello_binary(), 0o755),
        "https-get": file(https_get_binary(), 0o755),
    }
    if trusted_ca is not None:
        app |= {"etc/ssl": directory(), "etc/ssl/certs": directory(),
                "etc/ssl/certs/ca-certificates.crt": file(trusted_ca)}  # fmt: skip
    config.setdefault("cmd", ["/hello"])
    return build_image([busybox_layer(), app], **config)


def multilayer_layers() -> list[Layer]:
    """busybox, then an app layer, then one that edits it with whiteouts and an opaque dir."""
    return [
        busybox_layer(),
        {
            "app": directory(),
            "app/config": file("v1"),
            "app/old": file("remove me"),
            "cache": directory(),
            "cache/a": file("a"),
            "cache/b": file("b"),
        },
        {
            **dict([whiteout("app/old"), opaque("cache")]),
            "app/config": file("v2", 0o640, uid=1000, gid=1000),
            "app/link": symlink("config"),
            "app/hard": hardlink("bin/busybox"),
            "cache/fresh": file("fresh"),
            "hello": file(hello_binary(), 0o755),
        },
    ]


def multilayer_image(**config: Any) -> BuiltImage:
    """`multilayer_layers()` as an image that runs `cat /app/config` (it prints `v2`)."""
    config.setdefault("cmd", ["/bin/cat", "/app/config"])
    return build_image(multilayer_layers(), **config)


def padded_image(total_bytes: int, layers: int = 4) -> BuiltImage:
    """busybox + hello + `layers` layers of incompressible data adding up to `total_bytes`."""
    per_layer = total_bytes // layers
    padding = [
        {f"data/blob-{i}-{j}": file(os.urandom(per_layer // 4)) for j in range(4)}
        for i in range(layers)
    ]
    return build_image(
        [busybox_layer(), {"hello": file(hello_binary(), 0o755)}, *padding], cmd=["/hello"]
    )


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses (deb822 `.sources` or one-line lists)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if path.suffix == ".sources" and words[:1] == ["URIs:"]:
                uris = words[1:]
            elif path.suffix == ".list" and words[:1] == ["deb"]:
                uris = [w for w in words[1:] if not w.startswith("[")][:1]
            else:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")) and uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def _trim_debian_root(root: Path) -> None:
    """Make a debootstrapped tree an image: no host leftovers, a fresh identity per VM."""
    for relative in DEBIAN_TRIM:
        for path in (root / relative).glob("*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for leftover in ("etc/hostname", "etc/resolv.conf"):  # the build host's
        (root / leftover).unlink(missing_ok=True)
    # Empty machine-id: systemd makes up one on each instance's first boot and
    # keeps it in the overlay. Such a boot counts as "first boot", whose wizard
    # would wait for answers on the serial console: mask it.
    (root / "etc/machine-id").write_bytes(b"")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/systemd/system/systemd-firstboot.service").symlink_to("/dev/null")


def directory_layer(root: Path, out: Path) -> str:
    """Write a gzip tar of the tree under `root` to `out`; return its diff_id.

    Paths sorted, numeric owners, hard links kept; mtimes as on disk.
    """
    raw = out.with_name(out.name + ".tar")
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(dirpath, name)
                info = tar.gettarinfo(str(path), str(path.relative_to(root)))
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
    digest = hashlib.sha256()
    with (
        raw.open("rb") as src,
        out.open("wb") as sink,
        gzip.GzipFile("", "wb", compresslevel=1, fileobj=sink, mtime=0) as dst,
    ):
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    raw.unlink()
    return "sha256:" + digest.hexdigest()


def debian_systemd_layer(
    suite: str = "bookworm", mirror: str | None = None, cache_dir: Path = CACHE_DIR
) -> PackedLayer:
    """Debian `suite` (minbase + `DEBIAN_SYSTEMD_PACKAGES`) as one layer, built without Docker.

    `debootstrap` runs once per machine (it needs root and the mirror; about a
    minute); the packed layer is cached under `cache_dir`, keyed by the recipe.
    """
    recipe = json.dumps([suite, DEBIAN_SYSTEMD_PACKAGES, DEBIAN_RECIPE_VERSION, DEBIAN_TRIM])
    done = cache_dir / f"debian-{suite}-systemd-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if not done.is_dir():
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed: run `make setup`")
        work = done.with_name(f"{done.name}.build-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            root = work / "root"
            include = ",".join(DEBIAN_SYSTEMD_PACKAGES)
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root),
                 mirror or debian_mirror()],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            _trim_debian_root(root)
            (work / "diff-id").write_text(directory_layer(root, work / "layer.tar.gz"))
            shutil.rmtree(root)
            # Blob and diff_id appear together; a concurrent build that won keeps its own.
            with contextlib.suppress(OSError):
                work.rename(done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return PackedLayer((done / "layer.tar.gz").read_bytes(), (done / "diff-id").read_text())


def debian_systemd_image(**config: Any) -> BuiltImage:
    """`debian_systemd_layer()` as an image that boots systemd (CMD ["/sbin/init"])."""
    config.setdefault("cmd", ["/sbin/init"])
    return build_image([debian_systemd_layer()], **config)


def write_oci_layout(image: BuiltImage, directory_path: Path, tag: str = "latest") -> None:
    """An OCI image layout (as skopeo's `oci:` transport and umoci read it)."""
    blob_dir = directory_path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in {**image.blobs, image.digest: image.manifest}.items():
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    (directory_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory_path / "index.json").write_text(json.dumps(index))


def tar_gz(files: dict[str, str]) -> bytes:
    """A source archive: path -> text, as a tar.gz (build contexts in tests and benches)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
