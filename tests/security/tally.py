"""Counters the attack suite reports at the end of the session: attacks run with the noise on
and the leaks among them (the control run with the noise off is not counted here), and how
many numeric attacks the control run saw leak."""

ATTACKS = 0
LEAKS = 0
CONTROL_ATTACKS = 0
CONTROL_LEAKS = 0
# The catalogue's attacks through reviewed release (test_release_attacks.py): run, recovered
# but warned of on the checkers' page, recovered silently (must stay 0).
RELEASE_ATTACKS = 0
RELEASE_WARNED = 0
RELEASE_SILENT = 0
