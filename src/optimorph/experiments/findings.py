"""A recipe's findings: the source's claim, what was measured, and a verdict whose printed rule is
the rule the code applied.

A :class:`Rule` is a threshold that judges a value *and* renders itself, so the text a finding
prints ("rule: full-batch train accuracy >= 0.95") and the comparison that decided it come from
one object and cannot disagree. A verdict is one of four statuses: held, did not hold, open (the
measurement cannot decide, e.g. noisy samples on both sides of the threshold) and not judged at
quick scale (a claim the recipe's quick variant is too small to test, fixed per claim in the
recipe code before any number is seen).

>>> rule = at_least(0.95, "full-batch train accuracy")
>>> rule.judge(0.902)
Verdict(held=False, rule='full-batch train accuracy >= 0.95')
>>> f = finding("Full batch interpolates the flipped labels", "accuracy 0.9020", rule.judge(0.902))
>>> f["status"], f["measured"]
('did not hold', 'accuracy 0.9020; rule: full-batch train accuracy >= 0.95')
>>> above(1.0, "speed ratio").judge_samples([0.8, 1.3, 2.0]).held is None  # spread covers 1
True
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "Rule",
    "Verdict",
    "above",
    "at_least",
    "below",
    "at_most",
    "within",
    "all_of",
    "finding",
    "spread",
    "at_quick_scale",
    "status_of",
    "tally",
    "HELD",
    "FAILED",
    "OPEN",
    "NOT_JUDGED",
    "STATUSES",
]

HELD, FAILED, OPEN, NOT_JUDGED = "held", "did not hold", "open", "not judged at quick scale"
STATUSES = (HELD, FAILED, OPEN, NOT_JUDGED)

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a claim held (None: undecided) and the text of the rule that decided it."""

    held: bool | None
    rule: str


@dataclasses.dataclass(frozen=True)
class Rule:
    """``what op bound`` (``op`` one of > >= < <=), or ``lo <= what <= hi`` (``op="within"``).

    ``each`` names what a sequence of values runs over ("lr", "run"): the rule then holds when
    it holds for every value. A NaN value (nothing measured) leaves the verdict undecided.
    """

    what: str
    op: str
    bound: float | tuple[float, float]
    each: str = ""

    def __post_init__(self) -> None:
        if self.op == "within":
            lo, hi = self.bound  # type: ignore[misc]
            if not lo <= hi:
                raise ValueError(f"rule on {self.what}: within({lo}, {hi}) needs lo <= hi")
        elif self.op not in _OPS:
            valid = ", ".join([*_OPS, "within"])
            raise ValueError(f"rule on {self.what}: op {self.op!r}; valid: {valid}")

    def test(self, value: float) -> bool | None:
        """This rule on one value (None when the value is NaN)."""
        value = float(value)
        if math.isnan(value):
            return None
        if self.op == "within":
            lo, hi = self.bound  # type: ignore[misc]
            return bool(lo <= value <= hi)
        return bool(_OPS[self.op](value, self.bound))

    def __str__(self) -> str:
        if self.op == "within":
            lo, hi = self.bound  # type: ignore[misc]
            text = f"{_num(lo)} <= {self.what} <= {_num(hi)}"
        else:
            text = f"{self.what} {self.op} {_num(self.bound)}"  # type: ignore[arg-type]
        return f"{text} for every {self.each}" if self.each else text

    def judge(self, value: float | Iterable[float]) -> Verdict:
        """The verdict on ``value`` (one number, or one per ``each`` when ``each`` is set)."""
        if not self.each:
            return Verdict(self.test(value), str(self))  # type: ignore[arg-type]
        results = [self.test(v) for v in value]  # type: ignore[union-attr]
        return Verdict(_all(results) if results else None, str(self))

    def judge_samples(self, samples: Sequence[float]) -> Verdict:
        """The verdict on repeated noisy measurements of one quantity (timings): held when every
        sample passes, did not hold when every sample fails, open when they disagree (their
        spread covers the threshold). One sample is not enough to decide anything."""
        results = [self.test(s) for s in samples]
        if len(results) < 2 or None in results:
            held = None
        else:
            held = True if all(results) else False if not any(results) else None
        return Verdict(held, f"{self} in each of the {len(results)} samples (open when they "
                             "disagree)")  # fmt: skip


def above(bound: float, what: str, *, each: str = "") -> Rule:
    """``what > bound``."""
    return Rule(what, ">", bound, each)


def at_least(bound: float, what: str, *, each: str = "") -> Rule:
    """``what >= bound``."""
    return Rule(what, ">=", bound, each)


def below(bound: float, what: str, *, each: str = "") -> Rule:
    """``what < bound``."""
    return Rule(what, "<", bound, each)


def at_most(bound: float, what: str, *, each: str = "") -> Rule:
    """``what <= bound``."""
    return Rule(what, "<=", bound, each)


def within(lo: float, hi: float, what: str, *, each: str = "") -> Rule:
    """``lo <= what <= hi``."""
    return Rule(what, "within", (lo, hi), each)


def all_of(*verdicts: Verdict) -> Verdict:
    """Several rules that must all hold: did not hold if one failed, else open if one is open."""
    if not verdicts:
        raise ValueError("all_of needs at least one verdict")
    return Verdict(_all([v.held for v in verdicts]), " and ".join(v.rule for v in verdicts))


def _all(results: list[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


def _num(x: float) -> str:
    return f"{x:g}"


def spread(samples: Sequence[float], fmt: str = ".3g", unit: str = "") -> str:
    """``median m (min..max over n samples)`` of repeated measurements (``unit`` after each
    number, e.g. ``" s"``)."""
    a = np.asarray(samples, dtype=float)
    lo, mid, hi = (f"{x:{fmt}}{unit}" for x in (a.min(), np.median(a), a.max()))
    return f"median {mid} ({lo}..{hi} over {a.size} samples)"


def finding(
    claim: str, measured: str, verdict: Verdict | bool | None, *, judged_at_quick: bool = True
) -> dict:
    """One claim of the source, what was measured, and whether it held.

    Args:
      claim: the claim, worded as the source states it (or as the recipe predicts it); its
        status says whether what was observed agrees.
      measured: the numbers measured.
      verdict: a :class:`Verdict` from a rule (its text is appended to ``measured``), or a plain
        True / False / None for a judgement without a threshold (a set property, an ordering).
      judged_at_quick: False for a claim the recipe's quick variant is too small to test, fixed
        in the recipe code: :func:`at_quick_scale` then reports it as not judged.

    Returns:
      ``{"claim", "measured", "held", "status", "rule", "judged_at_quick"}``.
    """
    rule = None
    if isinstance(verdict, Verdict):
        held, rule = verdict.held, verdict.rule
        measured = f"{measured}; rule: {rule}"
    else:
        held = None if verdict is None else bool(verdict)
    status = {True: HELD, False: FAILED, None: OPEN}[held]
    return {"claim": claim, "measured": measured, "held": held, "status": status, "rule": rule,
            "judged_at_quick": judged_at_quick}  # fmt: skip


def at_quick_scale(findings: Iterable[dict]) -> list[dict]:
    """The findings of a quick run: each claim its recipe marked as beyond the quick variant is
    not judged (its numbers stay, its verdict goes)."""
    return [f if f.get("judged_at_quick", True) else {**f, "held": None, "status": NOT_JUDGED}
            for f in findings]  # fmt: skip


def status_of(f: dict) -> str:
    """A stored finding's status (findings written before statuses existed: from ``held``)."""
    if f.get("status") in STATUSES:
        return f["status"]
    return {True: HELD, False: FAILED}.get(f.get("held"), OPEN)


def tally(findings: Iterable[dict]) -> str:
    """``"2 of 5 claims held, 1 did not hold, 2 not judged at quick scale"``."""
    statuses = [status_of(f) for f in findings]
    counts = {s: statuses.count(s) for s in STATUSES}
    rest = [f"{counts[s]} {s}" for s in STATUSES[1:] if counts[s]]
    return ", ".join([f"{counts[HELD]} of {len(statuses)} claims held", *rest])
