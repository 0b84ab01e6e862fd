"""Polars expressions compiled to SQL for the server's engine (DataFusion).

Polars can serialize an expression to JSON (``Expr.meta.serialize(format="json")``); this module walks that
tree and writes the same computation as SQL. Nothing is evaluated on the client. Anything it does not know
raises ``UnsupportedExpression`` naming the part, rather than guessing.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import polars as pl

from .errors import UnsupportedExpression


def quote(name: str) -> str:
    """A SQL identifier, quoted so that any column name (spaces, capitals, quotes) survives."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    """A Python value as a SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "CAST('NaN' AS DOUBLE)"
        if math.isinf(value):
            return "CAST('Infinity' AS DOUBLE)" if value > 0 else "CAST('-Infinity' AS DOUBLE)"
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise UnsupportedExpression(f"a literal of type {type(value).__name__} ({value!r})")


@dataclass(frozen=True)
class Compiled:
    """One output column: its SQL and the name Polars would give it."""

    sql: str
    name: str
    is_aggregate: bool

    def select_item(self) -> str:
        return f"{self.sql} AS {quote(self.name)}"


_BINARY = {
    "Plus": "+", "Minus": "-", "Multiply": "*", "Modulus": "%",
    "Eq": "=", "NotEq": "<>", "Lt": "<", "LtEq": "<=", "Gt": ">", "GtEq": ">=",
    "And": "AND", "Or": "OR", "LogicalAnd": "AND", "LogicalOr": "OR",
    "EqValidity": "IS NOT DISTINCT FROM", "NotEqValidity": "IS DISTINCT FROM",
}

_CASTS = {
    "Float64": "DOUBLE", "Float32": "FLOAT", "Int64": "BIGINT", "Int32": "INT", "Int16": "SMALLINT",
    "Int8": "TINYINT", "UInt64": "BIGINT UNSIGNED", "UInt32": "INT UNSIGNED", "UInt16": "SMALLINT UNSIGNED",
    "UInt8": "TINYINT UNSIGNED", "String": "VARCHAR", "Utf8": "VARCHAR", "Boolean": "BOOLEAN", "Date": "DATE",
}

_PLAIN_AGGREGATES = {"Mean": "AVG", "Sum": "SUM", "Median": "MEDIAN", "Min": "MIN", "Max": "MAX",
                     "First": "FIRST_VALUE", "Last": "LAST_VALUE"}


def _tree(expr: pl.Expr) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return json.loads(expr.meta.serialize(format="json"))


def _single_key(node: Dict[str, Any]) -> Tuple[str, Any]:
    if not isinstance(node, dict) or len(node) != 1:
        raise UnsupportedExpression(f"an expression node of unexpected shape: {json.dumps(node)[:200]}")
    return next(iter(node.items()))


class ExprCompiler:
    """Compiles expressions over a frame whose columns are ``columns`` (for ``pl.all()`` and selectors)."""

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)

    def compile(self, expr: Any) -> List[Compiled]:
        """One expression (a column name, a Polars expression, or a Python literal) to output columns."""
        if isinstance(expr, str):
            expr = pl.col(expr)
        if not isinstance(expr, pl.Expr):
            expr = pl.lit(expr)
        return self._outputs(_tree(expr))

    def compile_all(self, exprs: Sequence[Any], named: Dict[str, Any]) -> List[Compiled]:
        out: List[Compiled] = []
        for e in _flatten(exprs):
            out.extend(self.compile(e))
        for name, e in named.items():
            out.extend(Compiled(c.sql, name, c.is_aggregate) for c in self.compile(e))
        return out

    def predicate(self, expr: Any) -> str:
        compiled = self.compile(expr)
        if len(compiled) != 1:
            raise UnsupportedExpression("a filter predicate must be one boolean expression")
        return compiled[0].sql

    # -- the tree walk ------------------------------------------------------------------------------------

    def _outputs(self, node: Any) -> List[Compiled]:
        """Selectors expand to several columns; everything else is one."""
        if isinstance(node, dict) and "Selector" in node:
            return [Compiled(quote(c), c, False) for c in self._selected(node["Selector"])]
        if isinstance(node, dict) and "Alias" in node:
            inner, name = node["Alias"]
            outs = self._outputs(inner)
            if len(outs) != 1:
                raise UnsupportedExpression(f"alias {name!r} on an expression with {len(outs)} columns")
            return [Compiled(outs[0].sql, name, outs[0].is_aggregate)]
        sql, name, agg = self._one(node)
        return [Compiled(sql, name, agg)]

    def _selected(self, selector: Any) -> List[str]:
        if selector == "Wildcard":
            return list(self.columns)
        kind, body = _single_key(selector)
        if kind == "ByName":
            missing = [n for n in body["names"] if n not in self.columns]
            if missing and body.get("strict", True):
                raise UnsupportedExpression(f"no column named {missing[0]!r}; the frame has {self.columns}")
            return [n for n in body["names"] if n in self.columns]
        if kind == "Difference":
            left, right = body
            dropped = set(self._selected(right))
            return [c for c in self._selected(left) if c not in dropped]
        if kind == "Union":
            left, right = body
            seen = self._selected(left)
            return seen + [c for c in self._selected(right) if c not in seen]
        raise UnsupportedExpression(f"the column selector {kind}")

    def _one(self, node: Any) -> Tuple[str, str, bool]:
        """(SQL, output name, whether it aggregates) of a single-column expression."""
        if node == "Len":
            return "COUNT(*)", "len", True
        kind, body = _single_key(node)
        if kind == "Column":
            return quote(body), body, False
        if kind == "Literal":
            return self._literal(body), "literal", False
        if kind == "Selector":
            outs = self._outputs(node)
            if len(outs) != 1:
                raise UnsupportedExpression("a multi-column selector inside an expression")
            return outs[0].sql, outs[0].name, False
        if kind == "Alias":
            inner, name = body
            sql, _, agg = self._one(inner)
            return sql, name, agg
        if kind == "BinaryExpr":
            return self._binary(body)
        if kind == "Agg":
            return self._aggregate(body)
        if kind == "Cast":
            sql, name, agg = self._one(body["expr"])
            return f"CAST({sql} AS {self._cast_type(body['dtype'])})", name, agg
        if kind == "Ternary":
            p, _, pa = self._one(body["predicate"])
            t, name, ta = self._one(body["truthy"])
            f, _, fa = self._one(body["falsy"])
            return f"CASE WHEN {p} THEN {t} ELSE {f} END", name, pa or ta or fa
        if kind == "Function":
            return self._function(body)
        raise UnsupportedExpression(f"the expression kind {kind}")

    def _literal(self, body: Any) -> str:
        kind, value = _single_key(body)
        if kind == "Dyn":
            _, v = _single_key(value)
            return literal(v)
        if kind == "Scalar":
            dtype, v = _single_key(value)
            if dtype == "Null":
                return "NULL"
            if isinstance(v, (list, dict)):
                raise UnsupportedExpression(f"a {dtype} literal (lists and structs are not compiled)")
            return literal(v)
        raise UnsupportedExpression(f"the literal kind {kind}")

    def _cast_type(self, dtype: Any) -> str:
        name = dtype
        if isinstance(dtype, dict):
            _, name = _single_key(dtype)
        if isinstance(name, dict):
            name, _ = _single_key(name)
        if name not in _CASTS:
            raise UnsupportedExpression(f"a cast to {name}")
        return _CASTS[name]

    def _binary(self, body: Dict[str, Any]) -> Tuple[str, str, bool]:
        left, name, la = self._one(body["left"])
        right, _, ra = self._one(body["right"])
        op = body["op"]
        if op == "TrueDivide":
            # Polars' `/` is always true division; SQL's divides integers as integers.
            return f"(CAST({left} AS DOUBLE) / {right})", name, la or ra
        if op == "FloorDivide":
            return f"FLOOR(CAST({left} AS DOUBLE) / {right})", name, la or ra
        if op in ("Xor", "LogicalXor"):
            return f"(({left}) <> ({right}))", name, la or ra
        if op not in _BINARY:
            raise UnsupportedExpression(f"the operator {op}")
        return f"({left} {_BINARY[op]} {right})", name, la or ra

    def _aggregate(self, body: Any) -> Tuple[str, str, bool]:
        kind, arg = _single_key(body)
        if kind in ("Std", "Var"):
            inner, ddof = arg
            sql, name, _ = self._one(inner)
            if ddof not in (0, 1):
                raise UnsupportedExpression(f"{kind.lower()} with ddof={ddof} (0 and 1 are compiled)")
            fn = {("Std", 1): "STDDEV_SAMP", ("Std", 0): "STDDEV_POP",
                  ("Var", 1): "VAR_SAMP", ("Var", 0): "VAR_POP"}[(kind, ddof)]
            return f"{fn}({sql})", name, True
        if kind == "Count":
            sql, name, _ = self._one(arg["input"])
            return ("COUNT(*)" if arg.get("include_nulls") else f"COUNT({sql})"), name, True
        if kind == "NUnique":
            sql, name, _ = self._one(arg)
            # Polars counts null as one more distinct value; COUNT(DISTINCT) skips it.
            return f"(COUNT(DISTINCT {sql}) + CASE WHEN COUNT(*) > COUNT({sql}) THEN 1 ELSE 0 END)", name, True
        if kind in _PLAIN_AGGREGATES:
            inner = arg["input"] if isinstance(arg, dict) and "input" in arg else arg
            sql, name, _ = self._one(inner)
            return f"{_PLAIN_AGGREGATES[kind]}({sql})", name, True
        raise UnsupportedExpression(f"the aggregate {kind}")

    def _function(self, body: Dict[str, Any]) -> Tuple[str, str, bool]:
        inputs = [self._one(i) for i in body["input"]]
        if not inputs:
            raise UnsupportedExpression("a function without inputs")
        sqls = [i[0] for i in inputs]
        name = inputs[0][1]
        agg = any(i[2] for i in inputs)
        function = body["function"]
        if isinstance(function, str):
            kind, options = function, None
        else:
            kind, options = _single_key(function)
        if kind == "Boolean":
            sub = options if isinstance(options, str) else _single_key(options)[0]
            if sub == "IsNull":
                return f"({sqls[0]} IS NULL)", name, agg
            if sub == "IsNotNull":
                return f"({sqls[0]} IS NOT NULL)", name, agg
            if sub == "Not":
                return f"(NOT {sqls[0]})", name, agg
            if sub == "IsNan":
                return f"isnan({sqls[0]})", name, agg
            if sub == "IsBetween":
                closed = _single_key(options)[1]["closed"]
                low = {"Both": ">=", "Left": ">=", "Right": ">", "None": ">"}[closed]
                high = {"Both": "<=", "Left": "<", "Right": "<=", "None": "<"}[closed]
                return f"({sqls[0]} {low} {sqls[1]} AND {sqls[0]} {high} {sqls[2]})", name, agg
            raise UnsupportedExpression(f"the boolean function {sub}")
        if kind == "Negate":
            return f"(- {sqls[0]})", name, agg
        if kind == "Abs":
            return f"ABS({sqls[0]})", name, agg
        if kind == "Clip":
            sql = sqls[0]
            rest = iter(sqls[1:])
            if options.get("has_min"):
                sql = f"GREATEST({sql}, {next(rest)})"
            if options.get("has_max"):
                sql = f"LEAST({sql}, {next(rest)})"
            return sql, name, agg
        if kind == "Round":
            return f"ROUND({sqls[0]}, {int(options['decimals'])})", name, agg
        if kind == "FillNull":
            return f"COALESCE({sqls[0]}, {sqls[1]})", name, agg
        if kind in ("Sqrt", "Exp", "Floor", "Ceil"):
            return f"{kind.upper()}({sqls[0]})", name, agg
        if kind == "Pow":
            return f"POWER({sqls[0]}, {sqls[1]})", name, agg
        if kind == "Log":
            return f"LOG({sqls[1]}, {sqls[0]})" if len(sqls) > 1 else f"LN({sqls[0]})", name, agg
        raise UnsupportedExpression(f"the function {kind}")


def _flatten(items: Sequence[Any]) -> List[Any]:
    """Polars verbs take expressions either spread out or as one list."""
    out: List[Any] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out
