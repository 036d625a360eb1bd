"""JupyterHub parts of the researcher sandbox: the authenticator that asks the hub, the
spawner that runs each researcher's notebook server as their own operating-system user, the
access sweep that stops servers of users who lost their last agreement, and ``configure(c)``
which ``sandbox/jupyterhub_config.py`` calls. ``cleanroom sandbox`` (and ``cleanroom up``)
write the run's settings to a JSON file named by ``CLEANROOM_SANDBOX_CONFIG``."""
