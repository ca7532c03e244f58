"""Ingress: HTTP(S) routes from host ports to instances, served by Caddy."""

from ember.ingress.caddy_config import PublishedRoutes
from ember.ingress.manager import IngressManager, admin_socket_path, default_caddy_binary
from ember.ingress.models import IngressMatch, IngressRecord, IngressRule, IngressTarget

__all__ = [
    "IngressManager",
    "IngressMatch",
    "IngressRecord",
    "IngressRule",
    "IngressTarget",
    "PublishedRoutes",
    "admin_socket_path",
    "default_caddy_binary",
]
