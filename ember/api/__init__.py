"""The HTTP API: the FastAPI app, its routers, auth and error mapping (see README.md).

Nothing is imported here: the CLI mints tokens with `ember.api.auth` without loading
FastAPI and the managers (`ember/cli/README.md`, startup time)."""
