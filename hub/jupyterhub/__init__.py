"""The hub's side of the researchers' JupyterHub: the service endpoints JupyterHub asks
(:mod:`hub.jupyterhub.service`) and ``cleanroom sandbox``, which starts it
(:mod:`hub.jupyterhub.cli`). JupyterHub's own configuration is ``sandbox/jupyterhub/``."""
