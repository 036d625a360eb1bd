"""Counters the attack suite reports at the end of the session: attacks run with the noise on
and the leaks among them (the control run with the noise off is not counted here), and how
many numeric attacks the control run saw leak."""

ATTACKS = 0
LEAKS = 0
CONTROL_ATTACKS = 0
CONTROL_LEAKS = 0
