"""RemoteLazyFrame: the Polars lazy verbs over a guarded table, compiled to SQL and run on the server.

Each verb returns a new frame holding a SQL plan; nothing runs until ``collect()``, which sends one query
through the server's guard and returns a ``polars.DataFrame``. ``sql()`` shows what would be sent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import polars as pl
import pyarrow as pa

from ._sql import Compiled, ExprCompiler, _flatten, literal, quote
from .errors import UnsupportedExpression

if TYPE_CHECKING:
    from .client import Client

IntoExpr = Union[str, pl.Expr, Any]

_aliases = itertools.count(1)


@dataclass(frozen=True)
class SortKey:
    column: str
    descending: bool
    nulls_last: bool

    def sql(self) -> str:
        direction = "DESC" if self.descending else "ASC"
        nulls = "NULLS LAST" if self.nulls_last else "NULLS FIRST"
        return f"{quote(self.column)} {direction} {nulls}"


@dataclass(frozen=True)
class _Plan:
    """One SELECT level. Verbs that cannot extend this level wrap it as a subquery of a new one."""

    source: str  # a quoted table name, or "(SELECT ...) AS _mgN"
    columns: Tuple[str, ...]  # output column names, in order
    select: Optional[Tuple[str, ...]] = None  # select items; None is SELECT *
    where: Tuple[str, ...] = ()
    group_by: Tuple[str, ...] = ()
    distinct: bool = False
    order_by: Tuple[SortKey, ...] = ()
    limit: Optional[int] = None
    tables: Tuple[str, ...] = ()  # the server tables it reads

    def sql(self) -> str:
        items = ", ".join(self.select) if self.select is not None else "*"
        text = f"SELECT {'DISTINCT ' if self.distinct else ''}{items} FROM {self.source}"
        if self.where:
            text += " WHERE " + " AND ".join(f"({w})" for w in self.where)
        if self.group_by:
            text += " GROUP BY " + ", ".join(self.group_by)
        if self.order_by:
            text += " ORDER BY " + ", ".join(k.sql() for k in self.order_by)
        if self.limit is not None:
            text += f" LIMIT {self.limit}"
        return text

    def is_plain(self) -> bool:
        """A bare ``SELECT * FROM source``, to which any clause can be added."""
        return (self.select is None and not self.where and not self.group_by and not self.distinct
                and not self.order_by and self.limit is None)

    def wrapped(self) -> "_Plan":
        """A level with no clause but a sort, over this one. A sort without a limit moves out to the new
        level, since SQL keeps row order only at the outermost ORDER BY."""
        order = self.order_by if self.limit is None else ()
        inner = replace(self, order_by=()) if order else self
        if inner.is_plain():
            return _Plan(source=inner.source, columns=self.columns, order_by=order, tables=self.tables)
        return _Plan(source=f"({inner.sql()}) AS _mg{next(_aliases)}", columns=self.columns, order_by=order,
                     tables=self.tables)

    def projected(self, items: Sequence[str], columns: Sequence[str], keeps: Dict[str, str]) -> "_Plan":
        """A level selecting ``items`` over this plan. ``keeps`` maps output names to the input column they
        pass through unchanged, so a pending sort on those columns survives."""
        base = self.wrapped()
        order = []
        for key in base.order_by:
            renamed = [out for out, src in keeps.items() if src == key.column]
            if not renamed:
                break  # the sort column is gone or changed: the order can no longer be expressed
            order.append(replace(key, column=renamed[0]))
        return _Plan(source=base.source, columns=tuple(columns), select=tuple(items), order_by=tuple(order),
                     tables=self.tables)


class RemoteLazyFrame:
    """A lazy query over tables on a milkglass server, in the shape of ``polars.LazyFrame``.

    Build it with ``Client.table(name)``; chain verbs; ``collect()`` runs it under the owner's policy.
    """

    def __init__(self, client: "Client", plan: _Plan):
        self._client = client
        self._plan = plan

    def __repr__(self) -> str:
        return f"RemoteLazyFrame(columns={list(self._plan.columns)})\n  {self.sql()}"

    # -- inspection --------------------------------------------------------------------------------------

    @property
    def columns(self) -> List[str]:
        """The output column names, known without asking the server."""
        return list(self._plan.columns)

    def sql(self) -> str:
        """The SQL that ``collect()`` sends."""
        return self._plan.sql()

    def collect_schema(self) -> pl.Schema:
        """The result's column types, from the server's planner (the query is planned, not run)."""
        return self._client._schema_of(self.sql())

    @property
    def schema(self) -> pl.Schema:
        return self.collect_schema()

    def collect_arrow(self) -> "pa.Table":
        """Runs the query and returns the Arrow table as the server sent it, field metadata included: on a
        differentially private table each number's field carries its 95% error bound (``milkglass.dp.ci95``)."""
        return self._client._execute(self.sql(), wait_seconds=0)

    def explain_privacy(self) -> pl.DataFrame:
        """What this query would cost on a differentially private table, before running it: epsilon and delta,
        each output column's 95% error bound, the group size below which groups are likely suppressed, and the
        budget left. Runs nothing and spends nothing."""
        return self._client.sql("EXPLAIN PRIVACY " + self.sql())

    def collect(self, *, wait: bool = True, timeout: Optional[float] = None) -> pl.DataFrame:
        """Runs the query under the owner's policy and returns the result.

        Raises ``QueryRefused`` when the guard refuses it. A query held for the owner's review waits (up to
        ``timeout`` seconds, forever when None) and then returns, or raises ``QueryRejected``; with
        ``wait=False`` a held query raises ``QueryHeld`` at once. A flagged answer emits a
        ``FlaggedQueryWarning``.
        """
        return self._client.sql(self.sql(), wait=wait, timeout=timeout)

    # -- verbs -------------------------------------------------------------------------------------------

    def _compiler(self) -> ExprCompiler:
        return ExprCompiler(self._plan.columns)

    def _project(self, outputs: Sequence[Compiled], passthrough: Optional[Dict[str, str]] = None) -> "RemoteLazyFrame":
        names = [c.name for c in outputs]
        _check_unique(names)
        keeps = passthrough if passthrough is not None else {c.name: c.name for c in outputs if c.sql == quote(c.name)}
        plan = self._plan.projected([c.select_item() for c in outputs], names, keeps)
        return RemoteLazyFrame(self._client, plan)

    def select(self, *exprs: IntoExpr, **named: IntoExpr) -> "RemoteLazyFrame":
        """Columns or expressions, like ``LazyFrame.select``. Aggregates without a group reduce to one row."""
        outputs = self._compiler().compile_all(exprs, named)
        if not outputs:
            raise UnsupportedExpression("select needs at least one column or expression")
        return self._project(outputs)

    def with_columns(self, *exprs: IntoExpr, **named: IntoExpr) -> "RemoteLazyFrame":
        """Adds columns, or replaces those of the same name in place."""
        new = {c.name: c for c in self._compiler().compile_all(exprs, named)}
        outputs = [new.pop(c, Compiled(quote(c), c, False)) for c in self._plan.columns] + list(new.values())
        return self._project(outputs)

    def filter(self, *predicates: IntoExpr, **constraints: Any) -> "RemoteLazyFrame":
        """Rows where every predicate holds; ``name=value`` keywords test equality."""
        compiler = self._compiler()
        conditions = [compiler.predicate(p) for p in _flatten(predicates)]
        conditions += [compiler.predicate(pl.col(k) == v) for k, v in constraints.items()]
        if not conditions:
            raise UnsupportedExpression("filter needs at least one predicate")
        base = self._plan
        if base.group_by or base.distinct or base.limit is not None or base.select is not None:
            base = base.wrapped()
        return RemoteLazyFrame(self._client, replace(base, where=base.where + tuple(conditions)))

    where = filter

    def group_by(self, *by: IntoExpr, maintain_order: bool = False) -> "RemoteGroupBy":
        """Groups for ``.agg(...)``. Keys are column names or expressions."""
        keys = self._compiler().compile_all(by, {})
        if not keys:
            raise UnsupportedExpression("group_by needs at least one key")
        return RemoteGroupBy(self, keys, maintain_order)

    def sort(self, by: Union[IntoExpr, Sequence[IntoExpr]], *more_by: IntoExpr,
             descending: Union[bool, Sequence[bool]] = False,
             nulls_last: Union[bool, Sequence[bool]] = False) -> "RemoteLazyFrame":
        """Sorts by columns, like ``LazyFrame.sort``."""
        columns: List[str] = []
        for key in _flatten([by, *more_by]):
            compiled = self._compiler().compile(key)
            if len(compiled) != 1 or compiled[0].sql != quote(compiled[0].name):
                raise UnsupportedExpression("sort by column names; compute expressions with with_columns first")
            columns.append(compiled[0].name)
        desc = _per_key(descending, len(columns), "descending")
        last = _per_key(nulls_last, len(columns), "nulls_last")
        base = self._plan
        if base.limit is not None:
            base = base.wrapped()
        keys = tuple(SortKey(c, d, n) for c, d, n in zip(columns, desc, last))
        return RemoteLazyFrame(self._client, replace(base, order_by=keys))

    def head(self, n: int = 5) -> "RemoteLazyFrame":
        """The first ``n`` rows (of the sort order, if sorted)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError("n must be a non-negative integer")
        base = self._plan
        limit = n if base.limit is None else min(n, base.limit)
        return RemoteLazyFrame(self._client, replace(base, limit=limit))

    limit = head

    def unique(self, subset: Optional[Union[str, Sequence[str]]] = None, *, keep: str = "any",
               maintain_order: bool = False) -> "RemoteLazyFrame":
        """Distinct rows. (``subset`` keeps only those columns distinct, as SQL's DISTINCT can.)"""
        if keep not in ("any", "first", "last"):
            raise UnsupportedExpression(f"unique(keep={keep!r}); 'any' is compiled")
        if subset is not None:
            names = [subset] if isinstance(subset, str) else list(subset)
            if set(names) != set(self._plan.columns):
                raise UnsupportedExpression("unique(subset=...) over some columns; select them, then unique()")
        base = self._plan
        if base.group_by or base.limit is not None or base.distinct:
            base = base.wrapped()
        return RemoteLazyFrame(self._client, replace(base, distinct=True, order_by=()))

    def rename(self, mapping: Dict[str, str]) -> "RemoteLazyFrame":
        """Renames columns, like ``LazyFrame.rename``."""
        unknown = [k for k in mapping if k not in self._plan.columns]
        if unknown:
            raise UnsupportedExpression(f"no column named {unknown[0]!r}; the frame has {self.columns}")
        outputs = [Compiled(quote(c), mapping.get(c, c), False) for c in self._plan.columns]
        return self._project(outputs, passthrough={mapping.get(c, c): c for c in self._plan.columns})

    def drop(self, *columns: Union[str, Sequence[str]]) -> "RemoteLazyFrame":
        """Every column but these."""
        names = set(_flatten(columns))
        unknown = sorted(names - set(self._plan.columns))
        if unknown:
            raise UnsupportedExpression(f"no column named {unknown[0]!r}; the frame has {self.columns}")
        kept = [c for c in self._plan.columns if c not in names]
        return self._project([Compiled(quote(c), c, False) for c in kept])

    def join(self, other: "RemoteLazyFrame", on: Optional[Union[str, Sequence[str]]] = None, how: str = "inner",
             *, left_on: Optional[Union[str, Sequence[str]]] = None,
             right_on: Optional[Union[str, Sequence[str]]] = None, suffix: str = "_right") -> "RemoteLazyFrame":
        """Joins another remote frame of the same server, like ``LazyFrame.join``."""
        if not isinstance(other, RemoteLazyFrame) or other._client is not self._client:
            raise UnsupportedExpression("join needs another RemoteLazyFrame of the same client")
        kinds = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN",
                 "semi": "LEFT SEMI JOIN", "anti": "LEFT ANTI JOIN", "cross": "CROSS JOIN"}
        if how not in kinds:
            raise ValueError(f"how must be one of {sorted(kinds)}")
        lkeys, rkeys = _join_keys(on, left_on, right_on, how)
        for k in lkeys:
            if k not in self._plan.columns:
                raise UnsupportedExpression(f"no column named {k!r} on the left; it has {self.columns}")
        for k in rkeys:
            if k not in other._plan.columns:
                raise UnsupportedExpression(f"no column named {k!r} on the right; it has {other.columns}")
        left, right = f"_mg{next(_aliases)}", f"_mg{next(_aliases)}"
        items = [f"{left}.{quote(c)} AS {quote(c)}" for c in self._plan.columns]
        names = list(self._plan.columns)
        if how not in ("semi", "anti"):
            coalesced = set(rkeys) if how in ("inner", "left") else set()
            for c in other._plan.columns:
                if c in coalesced:
                    continue
                name = c + suffix if c in names else c
                items.append(f"{right}.{quote(c)} AS {quote(name)}")
                names.append(name)
        condition = " AND ".join(f"{left}.{quote(a)} = {right}.{quote(b)}" for a, b in zip(lkeys, rkeys))
        source = (f"({self._plan.sql()}) AS {left} {kinds[how]} ({other._plan.sql()}) AS {right}"
                  + (f" ON {condition}" if how != "cross" else ""))
        tables = self._plan.tables + tuple(t for t in other._plan.tables if t not in self._plan.tables)
        return RemoteLazyFrame(self._client, _Plan(source=source, columns=tuple(names), select=tuple(items),
                                                   tables=tables))

    def describe(self, statistics: Optional[Sequence[str]] = None) -> pl.DataFrame:
        """Summary statistics per column, computed on the server as one guarded query.

        The default statistics are those every aggregation policy allows: count, null_count, mean, std;
        min, the quartiles and max are added when the tables allow extremes (``allow_extremes``), as they
        each reveal one row's value. Pass ``statistics`` to choose.
        """
        schema = self.collect_schema()
        if statistics is None:
            statistics = ["count", "null_count", "mean", "std"]
            if self._client._allows_extremes(self._plan.tables):
                statistics += ["min", "25%", "50%", "75%", "max"]
        known = {"count", "null_count", "mean", "std", "min", "25%", "50%", "75%", "max"}
        unknown = [s for s in statistics if s not in known]
        if unknown:
            raise ValueError(f"unknown statistic {unknown[0]!r}; choose from {sorted(known)}")
        source = f"({self._plan.sql()}) AS _mg{next(_aliases)}"
        rows = []
        for stat in statistics:
            items = [f"{literal(stat)} AS {quote('statistic')}"]
            for name, dtype in schema.items():
                items.append(f"{_statistic(stat, quote(name), dtype)} AS {quote(name)}")
            rows.append(f"SELECT {', '.join(items)} FROM {source}")
        # The order of UNION ALL branches is not guaranteed: restore the statistics' order here.
        result = self._client.sql(" UNION ALL ".join(rows))
        order = {s: i for i, s in enumerate(statistics)}
        return result.sort(pl.col("statistic").replace_strict(order, return_dtype=pl.Int32))


class RemoteGroupBy:
    """The grouping of a RemoteLazyFrame; ``agg`` finishes it."""

    def __init__(self, frame: RemoteLazyFrame, keys: List[Compiled], maintain_order: bool):
        self._frame = frame
        self._keys = keys
        self._maintain_order = maintain_order

    def agg(self, *aggs: IntoExpr, **named: IntoExpr) -> RemoteLazyFrame:
        """One row per group, like ``LazyGroupBy.agg``. Each expression must aggregate."""
        outputs = self._frame._compiler().compile_all(aggs, named)
        for c in outputs:
            if not c.is_aggregate:
                raise UnsupportedExpression(
                    f"{c.name!r} in agg() does not aggregate (Polars would make a list per group); "
                    "use an aggregate such as .mean(), .sum() or .count()")
        columns = tuple(k.name for k in self._keys) + tuple(c.name for c in outputs)
        _check_unique(columns)
        plan = _Plan(
            source=self._frame._plan.wrapped().source,
            columns=columns,
            select=tuple(k.select_item() for k in self._keys) + tuple(c.select_item() for c in outputs),
            group_by=tuple(k.sql for k in self._keys),
            tables=self._frame._plan.tables,
        )
        return RemoteLazyFrame(self._frame._client, plan)

    def len(self, name: str = "len") -> RemoteLazyFrame:
        """The number of rows in each group."""
        return self.agg(pl.len().alias(name))

    count = len

    def mean(self) -> RemoteLazyFrame:
        """The mean of every non-key column."""
        keys = {k.name for k in self._keys}
        return self.agg([pl.col(c).mean() for c in self._frame.columns if c not in keys])

    def sum(self) -> RemoteLazyFrame:
        """The sum of every non-key column."""
        keys = {k.name for k in self._keys}
        return self.agg([pl.col(c).sum() for c in self._frame.columns if c not in keys])


def _check_unique(names: Sequence[str]) -> None:
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise UnsupportedExpression(f"the output would have duplicate column names {duplicates}; use .alias()")


def _per_key(value: Union[bool, Sequence[bool]], n: int, what: str) -> List[bool]:
    if isinstance(value, bool):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values for {n} sort keys")
    return values


def _join_keys(on, left_on, right_on, how) -> Tuple[List[str], List[str]]:
    def names(x):
        return [] if x is None else ([x] if isinstance(x, str) else list(x))

    if how == "cross":
        if on is not None or left_on is not None or right_on is not None:
            raise ValueError("a cross join takes no keys")
        return [], []
    if on is not None:
        if left_on is not None or right_on is not None:
            raise ValueError("give either on or left_on/right_on")
        return names(on), names(on)
    lk, rk = names(left_on), names(right_on)
    if not lk or len(lk) != len(rk):
        raise ValueError("give on, or left_on and right_on of the same length")
    return lk, rk


def _statistic(stat: str, column: str, dtype: pl.DataType) -> str:
    numeric = dtype.is_numeric() or dtype == pl.Boolean
    value = f"CAST({column} AS DOUBLE)" if numeric else None
    if stat == "count":
        return f"CAST(COUNT({column}) AS DOUBLE)"
    if stat == "null_count":
        return f"CAST(COUNT(*) - COUNT({column}) AS DOUBLE)"
    if value is None:
        return "CAST(NULL AS DOUBLE)"
    if stat == "mean":
        return f"AVG({value})"
    if stat == "std":
        return f"STDDEV_SAMP({value})"
    if stat == "min":
        return f"MIN({value})"
    if stat == "max":
        return f"MAX({value})"
    quantile = {"25%": 0.25, "50%": 0.5, "75%": 0.75}[stat]
    return f"APPROX_PERCENTILE_CONT({value}, {quantile})"
