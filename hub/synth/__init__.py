"""Synthetic versions of released tables and of agreements' pooled tables: the hub's jobs,
portal pages, API and CLI around :mod:`anonymisation.synthesis`."""
