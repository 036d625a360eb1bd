"""``python -m hub`` is the ``cleanroom`` command."""

from hub.cli import cli

cli()
