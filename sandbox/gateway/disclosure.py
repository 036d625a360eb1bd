"""Disclosure control over a rewritten query's result (ARCHITECTURE.md, "Disclosure control
defaults"; the parameters are ``contracts.agreements.Disclosure``).

Patients are the unit: every threshold counts the distinct patients behind the records
(``__pid``: the episode's chain of identity), so ten release tests of one patient are one
patient, not ten.

Primary suppression, per group (row):

- fewer than ``k`` patients, or fewer than ``min_institutions`` distinct institutions in any
  joined table: the group is dropped, key values included (a key shared by fewer than k
  patients is itself a patient's value); the answer counts dropped groups per reason;
- a ``WHERE`` conjunct that removes the records of between 1 and k-1 patients of the group:
  every cell of the group is suppressed (the pair "WHERE x" / "WHERE x AND y" would
  difference them out).

Primary suppression, per cell:

- an aggregate computed from the non-null values of fewer than ``k`` patients;
- a ``CASE``/``IF`` branch or predicate inside an aggregate taken by between 1 and k-1
  patients (``SUM(CASE WHEN <one patient> THEN x ELSE 0 END)``);
- spread: a ``SUM``, ``AVG``, variance or standard deviation whose values differ from the
  cell's most common value for between 1 and k-1 patients (an indicator times a value, a
  constant offset): the aggregate is a function of those patients' values;
- dominance: the largest ``dominance_n`` institutions of any joined table contribute more
  than ``dominance_percent`` % of the cell. A count's contribution is records; a sum's is the
  sum of absolute values; other aggregates' is the non-null values they were computed from.

Secondary suppression: along every line of the answer (all groups that share the other keys,
i.e. a row or column of a 1-D or 2-D table), the suppressed cells of an aggregate column,
dropped groups included, must number at least two and hold at least ``k`` patients together;
otherwise the smallest visible cell of the line is suppressed too, until that holds or the
line is all suppressed. So a total obtained elsewhere minus the visible cells of a line never
yields one suppressed cell, nor a set of them from fewer than k patients. It does not solve
every linked-table problem (see docs/gateway.md).

Counts are rounded to ``rounding_base`` inside the query (``rewrite``), so an expression over
a count sees the rounded value; thresholds use the exact counts.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.agreements import Disclosure
from sandbox.gateway.sql import CheckedQuery, Rewritten


@dataclass
class Controlled:
    """What disclosure control lets out: rows (None for a suppressed cell) and why."""

    rows: list[list[Any]]
    suppressed: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)


def control(
    checked: CheckedQuery,
    rewritten: Rewritten,
    results: Sequence[Mapping[str, Any]],
    disclosure: Disclosure,
) -> Controlled:
    """Apply primary and secondary suppression to the rewritten query's result rows."""
    k, min_inst = disclosure.k, disclosure.min_institutions
    share = disclosure.dominance_percent / 100.0
    tables = [view for _alias, view in checked.tables]
    cell_outputs = [x for x, o in enumerate(checked.outputs) if o.key is None]

    groups: list[Mapping[str, Any]] = [r for r in results if (r["__n"] or 0) > 0]
    dropped: list[bool] = []
    reasons: dict[tuple[int, int], str] = {}
    dropped_reasons: Counter[str] = Counter()
    for g, row in enumerate(groups):
        why = None
        if (row["__np"] or 0) < k:
            why = f"fewer than k={k} patients"
        else:
            for t, view in enumerate(tables):
                if (row[f"__inst{t}"] or 0) < min_inst:
                    which = f" of `{view}`" if len(tables) > 1 else ""
                    why = f"fewer than {min_inst} institutions{which}"
                    break
        dropped.append(why is not None)
        if why is not None:
            dropped_reasons[why] += 1
            for x in cell_outputs:
                reasons[(g, x)] = why
            continue
        row_why = None
        for i, conjunct in enumerate(checked.conjuncts):
            removed = row[f"__wp{i}"] or 0
            if 0 < removed < k:
                row_why = (
                    f"WHERE condition `{conjunct.sql(dialect='duckdb')}` removes the records "
                    f"of fewer than k={k} patients of this group (differencing)"
                )
                break
        j = 0
        for x, output in enumerate(checked.outputs):
            if output.key is not None:
                continue
            why = row_why
            for agg in output.aggregates:
                why = why or _cell_reason(row, j, agg, len(tables), tables, disclosure, share)
                j += 1
            if why:
                reasons[(g, x)] = why

    _secondary(checked, groups, dropped, reasons, cell_outputs, k)

    visible = [g for g in range(len(groups)) if not dropped[g]]
    rows: list[list[Any]] = []
    suppressed: list[dict[str, Any]] = []
    for g in visible:
        row = groups[g]
        values = []
        for x, output in enumerate(checked.outputs):
            if output.key is not None:
                values.append(row[rewritten.keys[output.key]])
            elif (g, x) in reasons:
                values.append(None)
            else:
                name = rewritten.outputs[x]
                assert name is not None  # not a key output, so an aggregate's column
                values.append(row[name])
        rows.append(values)
    order = _order(checked, rows)
    rows = [rows[i] for i in order]
    position = {g: p for p, g in enumerate(visible[i] for i in order)}
    if checked.limit is not None:
        rows = rows[: checked.limit]
    for (g, x), why in sorted(reasons.items()):
        if g in position and position[g] < len(rows):
            suppressed.append(
                {"row": position[g], "column": checked.outputs[x].name, "reason": why}
            )
    for why, count in sorted(dropped_reasons.items()):
        suppressed.append({"row": None, "column": None, "groups": count, "reason": why})
    return Controlled(rows, suppressed, dict(dropped_reasons))


def _cell_reason(
    row: Mapping[str, Any],
    j: int,
    agg: Any,
    n_tables: int,
    tables: list[str],
    disclosure: Disclosure,
    share: float,
) -> str | None:
    k = disclosure.k
    contributors = row[f"__a{j}_p"] or 0
    if 0 < contributors < k:
        return f"{agg.func.upper()} computed from the values of fewer than k={k} patients"
    for s, selector in enumerate(agg.selectors):
        for b in range(len(selector.branches)):
            taken = row[f"__s{j}_{s}_p{b}"] or 0
            if 0 < taken < k:
                return (
                    f"a condition inside the aggregate (`{selector.text}`) selects fewer than "
                    f"k={k} patients"
                )
    differing = row.get(f"__d{j}")
    if differing is not None and 0 < differing < k:
        return (
            f"{agg.func.upper()} reveals the values of fewer than k={k} patients: every other "
            "patient of the cell holds the same value"
        )
    for t in range(n_tables):
        top, total = row[f"__top{t}_{j}"], row[f"__tot{t}_{j}"]
        if total and top is not None and float(top) > share * float(total):
            which = f" of `{tables[t]}`" if n_tables > 1 else ""
            return (
                f"dominance: the largest {disclosure.dominance_n} institutions{which} "
                f"contribute more than {disclosure.dominance_percent:g}% of the cell"
            )
    return None


def _secondary(
    checked: CheckedQuery,
    groups: list[Mapping[str, Any]],
    dropped: list[bool],
    reasons: dict[tuple[int, int], str],
    cell_outputs: list[int],
    k: int,
) -> None:
    nk = len(checked.keys)
    if nk == 0 or not reasons:
        return
    lines: list[list[int]] = []
    for d in range(nk):
        by_rest: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for g, row in enumerate(groups):
            rest = tuple(repr(row[f"__k{i}"]) for i in range(nk) if i != d)
            by_rest[rest].append(g)
        lines.extend(by_rest.values())
    why = "secondary: protects a suppressed cell in the same row or column of the answer"
    changed = True
    while changed:
        changed = False
        for x in cell_outputs:
            for line in lines:
                hidden = [g for g in line if (g, x) in reasons]
                if not hidden:
                    continue
                if len(hidden) >= 2 and sum(groups[g]["__np"] for g in hidden) >= k:
                    continue
                shown = [g for g in line if (g, x) not in reasons and not dropped[g]]
                if not shown:
                    continue
                smallest = min(shown, key=lambda g: groups[g]["__np"])
                reasons[(smallest, x)] = why
                changed = True


def _order(checked: CheckedQuery, rows: list[list[Any]]) -> list[int]:
    order = list(range(len(rows)))
    # Sort after suppression, so a suppressed value never decides its row's place.
    for index, descending in reversed(checked.order):
        present = [i for i in order if rows[i][index] is not None]
        missing = [i for i in order if rows[i][index] is None]
        present.sort(key=lambda i: rows[i][index], reverse=descending)
        order = present + missing
    return order
