"""The researcher sandbox: JupyterHub configuration, the query gateway (server side) and the
researcher client, which needs only ``requests`` and ``pandas``."""
