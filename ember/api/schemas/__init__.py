"""Wire schemas: the answers and requests of the HTTP API, one module per resource.

Answers are built from domain types by explicit keyword converters (`X.of(...)`);
see ../README.md ("Wire schemas") and tests/api/test_schemas.py."""

__all__: list[str] = []
