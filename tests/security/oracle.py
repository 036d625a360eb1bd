"""The attack suite's independent oracle and harness.

- :class:`Truth` recomputes what an attack tries to learn with plain DuckDB over the pool's
  Parquet files (never with the gateway's parser, rewrite, ``sqlglot`` or any
  ``sandbox.gateway`` helper): the singled-out patient's weight and flags, and the exact
  small counts (patients above 80, rows of one patient in a join ...).
- :func:`without_patient` writes a copy of a pool with every row of one patient removed, so
  that an answer/refusal pattern can be compared between neighbouring pools.
- :class:`Attack` is a sequence of requests (SQL for ``dp.answer``, or a :class:`Fit` for
  ``dpfit.fit``) and an estimator that turns the answers into a guess of one target value;
  :class:`Asker` sends the requests and turns every exception that is not a clear refusal
  into a test failure (:class:`Unexpected`), and :func:`run` repeats an attack with fresh
  noise and counts the runs whose guess lands within the target's tolerance.

**Leak criterion.** A guess *hits* when it is within the target's tolerance of the truth:
±1 kg for the weight (public range 2-250 kg; no data-free guess is that close, see
``test_no_prior_guess_reaches_the_tolerance``) and ±0.5 for a count below k (the exact
count). An attack *leaks* when it hits in every one of its ``runs`` independent runs.

**Why the suite is not flaky.** Each attack declares ``chance``: an upper bound on the
probability that one noisy run hits by luck, worked out for its estimator from the noise
scales the gateway reports (the comments in ``catalogue.py`` give the numbers; the
largest, 0.4, is for averaging ten pairs of noisy counts, simulated at 0.37). The runs are
independent, so a false leak has probability ``chance ** runs``; :func:`runs_for` picks the
fewest runs that make it at most :data:`FALSE_LEAK_PER_ATTACK` = 1e-5, and
``test_false_leak_budget`` checks that the sum over all randomised attacks (the union
bound) stays below :data:`FALSE_LEAK_SUITE` = 1e-3. An attack that really recovers the
value (a missing noise term, a sensitivity off by a large factor) hits in every run and is
caught; the control run with the noise switched off proves the estimators do recover the
values when answers are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

FALSE_LEAK_PER_ATTACK = 1e-5
FALSE_LEAK_SUITE = 1e-3
WEIGHT_TOLERANCE = 1.0  # kg, against a public range of 2-250 kg
COUNT_TOLERANCE = 0.5  # an exact count: the rounded guess equals the truth
TABLES = ("episode", "collection", "batch", "custody_event")
WORKERS = 2  # runs of one attack asked concurrently


# -- truth ---------------------------------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Truth:
    """Plain DuckDB over a pool's Parquet files (the signing institutions' sources only), with
    the ``institution`` column the gateway's views add; nothing of the gateway is used."""

    def __init__(self, pool: Mapping[str, Sequence[Any]]) -> None:
        self.connection = duckdb.connect(":memory:")
        for table, sources in pool.items():
            parts = [
                f"SELECT *, {_literal(s.institution)} AS institution "
                f"FROM read_parquet({_literal(str(s.path))})"
                for s in sources
            ]
            self.connection.execute(
                f'CREATE VIEW "{table}" AS ' + " UNION ALL BY NAME ".join(parts)
            )

    def scalar(self, sql: str, *params: Any) -> Any:
        row = self.connection.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    def fails(self, sql: str) -> bool:
        """Whether plain DuckDB raises a run-time error on ``sql`` over this pool."""
        try:
            self.connection.execute(sql).fetchall()
        except duckdb.Error:
            return True
        return False

    def secret_id(self) -> str:
        """The singled-out patient: the only episode with indication SCD."""
        rows = self.connection.execute(
            "SELECT coi_id FROM episode WHERE indication = 'SCD'"
        ).fetchall()
        assert len(rows) == 1, f"the pool should hold one SCD episode, not {len(rows)}"
        return str(rows[0][0])

    def targets(self) -> dict[str, float]:
        """Every value an attack may try to learn, by target name."""
        pid = self.secret_id()
        one = "SELECT {} FROM episode WHERE coi_id = ?"
        institution = self.scalar(one.format("institution"), pid)
        return {
            "weight": float(self.scalar(one.format("weight_kg"), pid)),
            "bridging": float(self.scalar(one.format("CAST(bridging AS INT)"), pid)),
            "scd": float(self.scalar("SELECT COUNT(*) FROM episode WHERE indication = 'SCD'")),
            "old": float(self.scalar("SELECT COUNT(*) FROM episode WHERE age > 80")),
            "exact_weight": float(
                self.scalar("SELECT COUNT(*) FROM episode WHERE weight_kg = 123.456")
            ),
            "custody_rows": float(
                self.scalar("SELECT COUNT(*) FROM custody_event WHERE coi_id = ?", pid)
            ),
            "custody_pairs": float(
                self.scalar("SELECT COUNT(*) FROM custody_event WHERE coi_id = ?", pid) ** 2
            ),
            # What a join would multiply one patient's row by if joins were not kept within
            # a patient (the attacker's other hypothesis).
            "same_institution": float(
                self.scalar("SELECT COUNT(*) FROM episode WHERE institution = ?", institution)
            ),
            "same_event": float(
                self.scalar(
                    "SELECT COUNT(*) FROM custody_event a JOIN custody_event b "
                    "ON a.event = b.event WHERE a.coi_id = ?",
                    pid,
                )
            ),
        }


def without_patient(
    pool: Mapping[str, Sequence[Any]], root: Path, coi_id: str, make_source: Callable[..., Any]
) -> dict[str, list[Any]]:
    """A copy of ``pool`` under ``root`` with every row of patient ``coi_id`` removed (the
    neighbouring pool), written by plain DuckDB; ``make_source(path, institution)``."""
    con = duckdb.connect(":memory:")
    found: dict[str, list[Any]] = {}
    try:
        for table, sources in pool.items():
            found[table] = []
            for source in sources:
                folder = root / table / source.institution
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / "v1.parquet"
                con.execute(
                    f"COPY (SELECT * FROM read_parquet({_literal(str(source.path))}) "
                    f"WHERE coi_id IS DISTINCT FROM {_literal(coi_id)}) "
                    f"TO {_literal(str(path))} (FORMAT parquet)"
                )
                found[table].append(make_source(str(path), source.institution))
    finally:
        con.close()
    return found


# -- requests and attacks ------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One SQL request to ``dp.answer``; ``keys``: how many leading output columns are group
    keys (their values must not depend on the data)."""

    sql: str
    keys: int = 0
    epsilon: float | None = None
    rows_per_patient: int | None = None

    def __str__(self) -> str:
        return self.sql


@dataclass(frozen=True)
class Fit:
    """One request to ``dpfit.fit``."""

    features: tuple[str, ...]
    target: str
    kind: str = "linear"
    table: str = "episode"
    filters: str | None = None
    epsilon: float | None = None

    def __str__(self) -> str:
        where = f" WHERE {self.filters}" if self.filters else ""
        return f"FIT {self.kind} {self.target} ~ {' + '.join(self.features)} ON {self.table}{where}"


Request = Query | Fit


class Withheld(Exception):
    """An estimator needed a value the gateway withheld or refused: this run has no guess."""


Estimate = float | tuple[float, ...] | None


@dataclass(frozen=True)
class Attack:
    """Requests (asked ``repeat`` times in one run) and the estimator of ``target``.

    ``expect``: ``answer`` (every request must be answered), ``either`` (a clear
    ``QueryRejected`` is fine too). ``exact_leaks``: True when exact answers (noise off) must
    let the estimator recover the target, which the control run asserts; None when they need
    not (a refusal, or a cell the k rule withholds even exactly). ``chance``: see the module
    docstring. ``divisors``: the guess is also tried divided by each of these pool facts (a
    join's multiplicity of one record's row under each hypothesis the attacker holds); the
    union bound over the candidates is part of ``chance``."""

    name: str
    kind: str
    requests: tuple[Request, ...]
    estimate: Callable[[list[dict[str, Any] | None]], Estimate]
    target: str = "weight"
    chance: float = 0.05  # suits a weight guess: see catalogue.py
    repeat: int = 1
    expect: str = "answer"
    exact_leaks: bool | None = True
    divisors: tuple[str, ...] = ()

    @property
    def tolerance(self) -> float:
        return WEIGHT_TOLERANCE if self.target == "weight" else COUNT_TOLERANCE

    @property
    def runs(self) -> int:
        return runs_for(self.chance)

    def sequence(self) -> list[Request]:
        return list(self.requests) * self.repeat

    def distinct(self) -> list[Request]:
        return list(dict.fromkeys(self.requests))


def runs_for(chance: float) -> int:
    """The fewest independent runs that make ``chance ** runs`` ≤ the per-attack bound."""
    assert 0 < chance < 1
    runs = 2
    while chance**runs > FALSE_LEAK_PER_ATTACK * (1 + 1e-9):  # slack for 0.1 ** 5
        runs += 1
    return runs


# -- reading answers -----------------------------------------------------------------------

_ANY = object()


def cell(answer: Mapping[str, Any] | None, column: int = 0, key: Any = _ANY) -> float:
    """The number in ``column`` of the only row (or of the row whose first cell is ``key``)."""
    if answer is None:
        raise Withheld("refused")
    rows = answer["rows"]
    if key is not _ANY:
        rows = [r for r in rows if r[0] == key]
    if not rows or rows[0][column] is None:
        raise Withheld("withheld")
    return float(rows[0][column])


def visible(answer: Mapping[str, Any] | None, column: int = -1) -> list[float]:
    """The numbers of every released cell in ``column``."""
    if answer is None:
        raise Withheld("refused")
    return [float(r[column]) for r in answer["rows"] if r[column] is not None]


def coefficients(answer: Mapping[str, Any] | None) -> list[float]:
    """A fit's coefficients in order: intercept first."""
    if answer is None:
        raise Withheld("refused")
    return [float(v) for v in answer["coefficients"].values()]


def pairs(answers: Sequence[Mapping[str, Any] | None], column: int = 0) -> list[float]:
    """``first - second`` for each (first, second) pair of a repeated two-request attack,
    skipping pairs with a withheld cell."""
    found = []
    for i in range(0, len(answers) - 1, 2):
        try:
            found.append(cell(answers[i], column) - cell(answers[i + 1], column))
        except Withheld:
            continue
    if not found:
        raise Withheld("every pair withheld")
    return found


# -- asking --------------------------------------------------------------------------------


class Unexpected(AssertionError):
    """The gateway raised something other than a clear refusal: the test fails."""


@dataclass(frozen=True)
class Outcome:
    """What one request got: an answer (``answer``) or a refusal (``refusal``: class and
    message)."""

    answer: dict[str, Any] | None = None
    refusal: tuple[str, str] | None = None

    def shape(self, request: Request) -> Any:
        """What must not depend on the data: the refusal itself, or the answer's columns and
        group keys (every cell of a key's public domain is answered, empty or not)."""
        if self.refusal is not None:
            return ("refused", *self.refusal)
        assert self.answer is not None
        if "rows" not in self.answer:  # a fit, or a fit refused on its noisy counts
            return ("fit",)
        keys = request.keys if isinstance(request, Query) else 0
        groups = sorted(repr(tuple(r[:keys])) for r in self.answer["rows"])
        return ("answer", tuple(self.answer["columns"]), tuple(groups))


@dataclass
class Asker:
    """Sends requests to one set of views; classifies what comes back."""

    gateway: Any
    views: Any
    disclosure: Any

    def ask(self, request: Request, noise: Any) -> Outcome:
        from sandbox.gateway import dp
        from sandbox.gateway.errors import FitRefused, QueryRejected

        try:
            if isinstance(request, Fit):
                from sandbox.gateway import dpfit

                fitted = dpfit.fit(
                    self.gateway,
                    self.views,
                    self.disclosure,
                    kind=request.kind,
                    table=request.table,
                    features=list(request.features),
                    target=request.target,
                    filters=request.filters,
                    epsilon=request.epsilon,
                    noise=noise,
                )
                return Outcome(answer=fitted.as_dict())
            answered = dp.answer(
                self.gateway,
                self.views,
                self.disclosure,
                request.sql,
                epsilon=request.epsilon,
                rows_per_patient=request.rows_per_patient,
                noise=noise,
            )
            return Outcome(answer=answered.as_dict())
        except FitRefused as error:
            if error.spent > 0:
                # Refused after noisy counts: a differentially private outcome, not a
                # refusal made before reading data.
                return Outcome(answer={"coefficients": {}, "refused_after_noise": True})
            return Outcome(refusal=(type(error).__name__, str(error)))
        except QueryRejected as error:
            if not (error.construct and error.reason):
                raise Unexpected(f"{request}: a refusal without construct or reason") from error
            return Outcome(refusal=(type(error).__name__, str(error)))
        except Exception as error:
            raise Unexpected(
                f"{request}: {type(error).__name__}: {error} (not a clear refusal)"
            ) from error


@dataclass
class Budget:
    """The attacker's ε for one run: the agreement's total, at most ``per_answer`` a time."""

    total: float
    per_answer: float
    spent: float = 0.0

    def spend(self, request: Request) -> None:
        epsilon = request.epsilon if request.epsilon is not None else self.per_answer
        self.spent += epsilon
        assert self.spent <= self.total + 1e-9, "the attack asks more than the total budget"


@dataclass
class Verdict:
    """An attack's runs: how many guessed within tolerance, and the guesses."""

    attack: Attack
    truth: float
    runs: int
    hits: int = 0
    guesses: list[Estimate] = field(default_factory=list)
    outcomes: dict[Request, Outcome] = field(default_factory=dict)

    @property
    def leaked(self) -> bool:
        return self.runs > 0 and self.hits == self.runs

    def describe(self) -> str:
        shown = ", ".join("-" if g is None else _show(g) for g in self.guesses)
        return (
            f"{self.attack.name}: {self.hits}/{self.runs} runs within "
            f"±{self.attack.tolerance:g} of {self.attack.target} = {self.truth:g} "
            f"(guesses: {shown})"
        )


def _show(guess: float | tuple[float, ...]) -> str:
    if isinstance(guess, tuple):
        return "/".join(f"{g:.4g}" for g in guess)
    return f"{guess:.4g}"


def hit(guess: Estimate, truth: float, tolerance: float) -> bool:
    if guess is None:
        return False
    candidates = guess if isinstance(guess, tuple) else (guess,)
    return any(math.isfinite(c) and abs(c - truth) < tolerance for c in candidates)


def run(
    attack: Attack,
    asker: Asker,
    truth: Mapping[str, float],
    noise: Callable[[], Any],
    runs: int,
) -> Verdict:
    """``runs`` independent runs of ``attack``, each with fresh noise and within the budget
    of one researcher (``epsilon_total``), two at a time (the gateway answers concurrent
    requests, as the hub's workers do). Raises :class:`Unexpected` on an error that is not a
    clear refusal, or on any refusal of an attack that must be answered."""
    verdict = Verdict(attack, truth[attack.target], runs)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        done = list(pool.map(lambda _: _one_run(attack, asker, noise), range(runs)))
    for outcomes, guess in done:
        for request, outcome in outcomes:
            verdict.outcomes.setdefault(request, outcome)
        if guess is not None and attack.divisors:
            assert isinstance(guess, float | int)
            guess = (guess, *(guess / truth[d] for d in attack.divisors))
        verdict.guesses.append(guess)
        verdict.hits += hit(guess, verdict.truth, attack.tolerance)
    return verdict


def _one_run(
    attack: Attack, asker: Asker, noise: Callable[[], Any]
) -> tuple[list[tuple[Request, Outcome]], Estimate]:
    disclosure = asker.disclosure
    budget = Budget(disclosure.epsilon_total, disclosure.epsilon_per_answer)
    outcomes: list[tuple[Request, Outcome]] = []
    for request in attack.sequence():
        budget.spend(request)
        outcome = asker.ask(request, noise())
        if outcome.refusal is not None and attack.expect == "answer":
            raise Unexpected(f"{attack.name}: refused {request}: {outcome.refusal[1]}")
        outcomes.append((request, outcome))
    try:
        guess = attack.estimate([o.answer for _r, o in outcomes])
    except (Withheld, ZeroDivisionError, ValueError):
        guess = None
    return outcomes, guess
