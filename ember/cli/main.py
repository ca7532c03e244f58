"""The `ember` command: run the server, mint tokens, and drive the API."""

from __future__ import annotations

import os

import typer

from ember.config import Settings

app = typer.Typer(no_args_is_help=True, help="Ember: run OCI images as QEMU microVMs.")


@app.command()
def serve() -> None:
    """Run the API server (configured by EMBER_* environment variables)."""
    import uvicorn

    from ember.api.app import create_app
    from ember.api.auth import load_or_create_secret
    from ember.logsetup import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    load_or_create_secret(settings.data_dir)
    typer.echo(f"ember: listening on http://{settings.listen} (data dir {settings.data_dir})")
    typer.echo("ember: get a token with `ember token`, then send 'Authorization: Bearer <token>'")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@app.command()
def token(
    subject: str = typer.Option("admin", help="Who the token is for (the `sub` claim)."),
    ttl: int = typer.Option(0, help="Lifetime in seconds (default EMBER_TOKEN_TTL_SECONDS)."),
) -> None:
    """Mint an API token signed with this server's secret (reads the data dir)."""
    from ember.api.auth import load_or_create_secret, mint_token

    settings = Settings()
    secret = load_or_create_secret(settings.data_dir)
    typer.echo(mint_token(secret, subject, ttl or settings.token_ttl_seconds))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
