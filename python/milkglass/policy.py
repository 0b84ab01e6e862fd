"""Policies as Python values: what a table's owner allows, in the shape BastionLab users know.

A policy serializes to the JSON the server reads::

    Policy(safe_zone=Aggregation(min_agg_size=10), unsafe_handling=Review(), savable=False)
    # {"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "review", "savable": false, ...}

Rules combine: ``a & b`` is ``AtLeastNOf(2, [a, b])`` and ``a | b`` is ``AtLeastNOf(1, [a, b])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple


class Rule:
    """A safe-zone rule. Subclasses say when a query is safe."""

    def to_json(self) -> Any:
        raise NotImplementedError

    def __and__(self, other: "Rule") -> "AtLeastNOf":
        return AtLeastNOf(2, [self, other])

    def __or__(self, other: "Rule") -> "AtLeastNOf":
        return AtLeastNOf(1, [self, other])


@dataclass(frozen=True)
class Aggregation(Rule):
    """Safe when every result row stands for at least ``min_agg_size`` rows of the table."""

    min_agg_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.min_agg_size, int) or self.min_agg_size < 1:
            raise ValueError("min_agg_size must be a positive integer")

    def to_json(self) -> Any:
        return {"aggregation": {"min_agg_size": self.min_agg_size}}


@dataclass(frozen=True)
class UserId(Rule):
    """Safe when the query comes from this milkglass user."""

    user: str

    def to_json(self) -> Any:
        return {"user": self.user}


@dataclass(frozen=True)
class AtLeastNOf(Rule):
    """Safe when at least ``n`` of ``rules`` hold."""

    n: int
    rules: Sequence[Rule]

    def __post_init__(self) -> None:
        if not 0 <= self.n <= len(self.rules):
            raise ValueError(f"n must be between 0 and {len(self.rules)} (the number of rules)")

    def to_json(self) -> Any:
        return {"at_least": {"n": self.n, "of": [r.to_json() for r in self.rules]}}


@dataclass(frozen=True)
class TrueRule(Rule):
    """Every query is safe."""

    def to_json(self) -> Any:
        return True


@dataclass(frozen=True)
class FalseRule(Rule):
    """No query is safe: each one follows the unsafe handling."""

    def to_json(self) -> Any:
        return False


class UnsafeHandling:
    """What happens to a query outside the safe zone."""

    name: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(self.name)


class Log(UnsafeHandling):
    """Answer it, flag it in the audit log, and warn the caller."""

    name = "log"


class Reject(UnsafeHandling):
    """Refuse it, naming the rule that failed."""

    name = "reject"


class Review(UnsafeHandling):
    """Hold it until the owner approves or rejects it."""

    name = "review"


@dataclass(frozen=True)
class DP:
    """Differential privacy for a table: every answer is noisy and charged to the analyst's budget.

    ``epsilon`` and ``delta`` are each analyst's (``per="analyst"``) or each pool's (``per="group"``) total
    budget; ``query_epsilon`` what one query spends (default a tenth); ``bounds`` clamp the columns SUM and
    AVG may read (``{"Age": (0, 100)}``); ``public_keys`` declare group-key values that may be released as
    they are. See docs/PRIVACY.md.
    """

    epsilon: float
    delta: float = 1e-6
    query_epsilon: Optional[float] = None
    per: str = "analyst"
    table_epsilon: Optional[float] = None
    renewal_days: Optional[float] = None
    max_rows_per_unit: int = 1
    max_groups_per_unit: int = 1
    bounds: Optional[Dict[str, Tuple[float, float]]] = None
    public_keys: Optional[Dict[str, Sequence[Any]]] = None

    def to_json(self, privacy_unit: Optional[str]) -> dict:
        out: Dict[str, Any] = {"epsilon": self.epsilon, "delta": self.delta, "per": self.per,
                               "max_rows_per_unit": self.max_rows_per_unit,
                               "max_groups_per_unit": self.max_groups_per_unit}
        if self.query_epsilon is not None:
            out["query_epsilon"] = self.query_epsilon
        if self.table_epsilon is not None:
            out["table_epsilon"] = self.table_epsilon
        if self.renewal_days is not None:
            out["renewal_days"] = self.renewal_days
        if privacy_unit is not None:
            out["privacy_unit"] = privacy_unit
        if self.bounds:
            out["bounds"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.bounds.items()}
        if self.public_keys:
            out["public_keys"] = {k: list(v) for k, v in self.public_keys.items()}
        return out


@dataclass(frozen=True)
class Policy:
    """A table's policy.

    ``allow_extremes`` allows aggregates that return one person's value (min, max, median, ...);
    ``savable`` lets results be saved on the server as new guarded tables.
    """

    safe_zone: Rule
    unsafe_handling: UnsafeHandling = field(default_factory=Reject)
    savable: bool = False
    allow_extremes: bool = False
    dp: Optional[DP] = None
    privacy_unit: Optional[str] = None

    def to_json(self, sanitized_columns: Sequence[str] = ()) -> dict:
        """The server's JSON form, with the columns that must never be revealed."""
        if not isinstance(self.safe_zone, Rule):
            raise TypeError("safe_zone must be a Rule, e.g. Aggregation(min_agg_size=10)")
        if not isinstance(self.unsafe_handling, UnsafeHandling):
            raise TypeError("unsafe_handling must be Log(), Reject() or Review()")
        columns: List[str] = list(sanitized_columns)
        return {
            "safe_zone": self.safe_zone.to_json(),
            "unsafe_handling": self.unsafe_handling.name,
            "sanitized_columns": columns,
            "savable": self.savable,
            "allow_extremes": self.allow_extremes,
            **({"dp": self.dp.to_json(self.privacy_unit)} if self.dp is not None else {}),
        }
