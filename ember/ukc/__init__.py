"""The Unikraft Cloud `/v1` API: a thin mapping onto Ember's domain (see README.md)."""

from ember.ukc import account, certificates, instances, services, templates, volumes

# Behind the bearer token, as every Ember route.
ROUTERS = [
    templates.router,  # before instances': `/v1/instances/{uuid}` would take "templates"
    instances.router,
    services.router,
    volumes.router,
    certificates.router,
    account.router,
]

__all__ = ["ROUTERS"]
