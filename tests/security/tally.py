"""Counters the attack suite reports at the end of the session."""

ATTACKS = 0
LEAKS = 0
