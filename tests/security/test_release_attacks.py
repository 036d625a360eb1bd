"""The catalogue's numeric attacks through reviewed release: each request of an attack asked
as an output of one release request, computed by the exact path (patients as the unit:
k, institutions, dominance, rounding, secondary suppression), as it would leave if the
checkers approved it without reading.

An attack is safe when its exact answers do not recover the target (the rules withhold what
it needs), or when they would but the evidence the checkers read warns of it: a pair of
rows of two outputs whose patients differ by fewer than k (``differencing across
releases``). A silent leak, recovered and not warned of, fails. The truth comes from plain
DuckDB on the pool (``oracle.Truth``), never from the gateway; an error other than a clear
refusal fails too. The control: the same exact answers, without the rules' suppression of
single-query differencing (the DP path's answers with the noise off, where every attack
marked ``exact_leaks`` recovers its target), shows the warnings are what stands between a
blind approval and a leak for the attacks that the rules alone let through."""

from __future__ import annotations

from typing import Any

import pytest

from hub.releases.services import singled_out
from sandbox.gateway import GatewayError, QueryRejected
from tests.security import tally
from tests.security.catalogue import NUMERIC
from tests.security.oracle import Attack, Query, Withheld, hit

ATTACKS = [a for a in NUMERIC if all(isinstance(r, Query) for r in a.requests)]


def _exact(gateway, views, disclosure, request: Query) -> dict[str, Any] | None:
    try:
        return gateway.run(views, disclosure, request.sql).as_dict()
    except QueryRejected as error:
        assert error.construct and error.reason, f"{request}: a refusal without a reason"
        return None


def _release(gateway, views, disclosure, truth, attack: Attack) -> tuple[bool, bool, int]:
    """(recovered, warned, outputs) for ``attack`` asked as one release request."""
    answers = {r: _exact(gateway, views, disclosure, r) for r in attack.distinct()}
    try:
        guess: Any = attack.estimate([answers[r] for r in attack.sequence()])
    except (Withheld, ZeroDivisionError, ValueError):
        guess = None
    if guess is not None and attack.divisors:
        guess = (guess, *(guess / truth[d] for d in attack.divisors))
    recovered = hit(guess, truth[attack.target], attack.tolerance)
    units = []
    for request, answer in answers.items():
        if answer is None:
            continue
        behind = gateway.patients_behind(views, request.sql, answer["rows"])
        units.append([b[0] for b in behind if b])
    warned = any(
        singled_out(a, b, disclosure.k) is not None
        for i, first in enumerate(units)
        for second in units[i + 1 :]
        for a in first
        for b in second
    )
    return recovered, warned, len(units)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_no_attack_leaves_through_release_unwarned(
    attack: Attack, gateway, views, disclosure, truth
) -> None:
    tally.RELEASE_ATTACKS += 1
    try:
        recovered, warned, _outputs = _release(gateway, views, disclosure, truth, attack)
    except GatewayError as error:  # anything but a clear refusal is a failure
        pytest.fail(f"{attack.name}: {type(error).__name__}: {error}")
    tally.RELEASE_SILENT += recovered and not warned
    tally.RELEASE_WARNED += recovered and warned
    assert not recovered or warned, f"SILENT LEAK through release: {attack.name}"


def test_control_the_warning_sees_differencing(gateway, views, disclosure, truth) -> None:
    """The check can fail: two outputs that differ by exactly the singled-out patient
    (the total weight, and the weight of everyone under 97) are warned of; and with the
    differencing rule inside one query out of the way (two separate outputs), their exact
    difference is the patient's weight, as plain DuckDB says."""
    everyone = Query("SELECT SUM(weight_kg) AS w, COUNT(*) AS n FROM episode")
    others = Query("SELECT SUM(weight_kg) AS w, COUNT(*) AS n FROM episode WHERE age < 97")
    a = _exact(gateway, views, disclosure, everyone)
    b = _exact(gateway, views, disclosure, others)
    assert a is not None and b is not None
    behind_a = gateway.patients_behind(views, everyone.sql, a["rows"])[0]
    behind_b = gateway.patients_behind(views, others.sql, b["rows"])[0]
    assert behind_a and behind_b
    assert singled_out(behind_a[0], behind_b[0], disclosure.k) == 1
    if a["rows"][0][0] is not None and b["rows"][0][0] is not None:
        # Both released exactly: their difference is the secret, which is why the warning
        # exists.
        assert hit(a["rows"][0][0] - b["rows"][0][0], truth["weight"], 1.0)
