"""The query gateway mounted under /api/v1/sandbox/ (the library is sandbox.gateway)."""
