"""The connection to a milkglass server: HTTP for the owner's work, Arrow Flight SQL for queries."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import sys
import threading
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from ._sql import quote
from .errors import (ApiError, FlaggedQueryWarning, InvalidQuery, MilkglassError, QueryHeld, QueryRefused,
                     QueryRejected)
from .lazy import RemoteLazyFrame, _Plan
from .policy import Policy

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Schema metadata the server sets on Flight SQL answers (see docs/API.md).
FLAGGED_KEY = b"milkglass.flagged"
MASKED_KEY = b"milkglass.masked_columns"
AUDIT_KEY = b"milkglass.audit_id"

DataLike = Union[pl.DataFrame, pl.LazyFrame, pa.Table, "pandas.DataFrame", str, os.PathLike]  # noqa: F821


def connect(url: str, token: str, *, flight_url: Optional[str] = None, timeout: float = 60.0,
            ca_cert: Optional[Union[str, os.PathLike]] = None) -> "Client":
    """Connects to a milkglass server.

    ``url`` is the HTTP address (``http://127.0.0.1:7700``, or ``https://...`` for a server started with
    ``--tls-cert``); the Flight SQL address is discovered from ``GET /api/info`` unless given. ``token`` is
    the caller's milkglass token. ``ca_cert`` is a PEM file of certificates to trust, for a server whose
    certificate no system authority signed (``milkglass tls self-signed``); it serves HTTP and Flight SQL.
    """
    return Client(url, token, flight_url=flight_url, timeout=timeout, ca_cert=ca_cert)


class Client:
    """One user's connection. Owners publish tables and review queries; scientists query them."""

    def __init__(self, url: str, token: str, *, flight_url: Optional[str] = None, timeout: float = 60.0,
                 ca_cert: Optional[Union[str, os.PathLike]] = None):
        if not token:
            raise ValueError("a token is required: ask the server's admin for one (milkglass user add)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = requests.Session()
        self._ca_pem = None
        # Passed with every request: a session's own `verify` loses to REQUESTS_CA_BUNDLE and
        # CURL_CA_BUNDLE when they are set, and those would not hold a self-signed certificate.
        self._verify: Union[bool, str] = True
        if ca_cert is not None:
            self._verify = os.fspath(ca_cert)
            with open(ca_cert, encoding="ascii") as f:
                self._ca_pem = f.read()
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._token = token
        self.user = self._request("GET", "/api/whoami")
        self.flight_url = flight_url or self._request("GET", "/api/info")["flight_url"]
        self._flight = None
        self._flight_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"milkglass.Client({self.url!r}, user={self.user.get('name')!r})"

    def close(self) -> None:
        """Closes the Flight SQL connection and the HTTP session."""
        if self._flight is not None:
            self._flight.close()
            self._flight = None
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, self.url + path, timeout=self.timeout, verify=self._verify, **kwargs)
        if response.status_code >= 400:
            raise _api_error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- who is signed in ------------------------------------------------------------------------------

    def whoami(self) -> Dict[str, Any]:
        """The user this client's token signs in as: ``{"name": ..., "role": ...}``."""
        return self._request("GET", "/api/whoami")

    def mint_token(self, *, label: Optional[str] = None, expires_in_days: int = 90) -> Dict[str, Any]:
        """A personal token of the signed-in user, with their rights, expiring after ``expires_in_days``
        (at most 365). The answer's ``token`` is shown only this once."""
        return self._request("POST", "/api/tokens", json={"label": label, "expires_in_days": expires_in_days})

    # -- the owner's day ----------------------------------------------------------------------------------

    def upload_df(self, df: DataLike, name: str, policy: Policy, *, sanitized_columns: Sequence[str] = (),
                  readers: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Publishes a table under ``policy`` (replacing a table of that name you own, atomically).

        ``df`` is a Polars, pandas or pyarrow table, or the path of a CSV, Parquet or Arrow file.
        ``sanitized_columns`` never reach any result; ``readers`` limits which scientists may query it
        (default: every scientist). Returns the table as the server describes it.
        """
        if not isinstance(policy, Policy):
            raise TypeError("policy must be a milkglass.Policy")
        fields: Dict[str, Any] = {"name": (None, name), "policy": (None, json.dumps(policy.to_json(sanitized_columns)))}
        if readers is not None:
            fields["readers"] = (None, ",".join(readers))
        if isinstance(df, (str, os.PathLike)):
            path = pathlib.Path(df)
            with open(path, "rb") as f:
                fields["file"] = (path.name, f, "application/octet-stream")
                return self._request("POST", "/api/tables", files=fields)
        buffer = io.BytesIO()
        pq.write_table(_to_arrow(df), buffer)
        fields["format"] = (None, "parquet")
        fields["file"] = (f"{name}.parquet", buffer.getvalue(), "application/vnd.apache.parquet")
        return self._request("POST", "/api/tables", files=fields)

    def set_policy(self, table: str, policy: Policy, *, sanitized_columns: Sequence[str] = (),
                   readers: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Replaces a table's policy (and readers)."""
        body: Dict[str, Any] = {"policy": policy.to_json(sanitized_columns)}
        if readers is not None:
            body["readers"] = list(readers)
        return self._request("PUT", f"/api/tables/{_segment(table)}/policy", json=body)

    def drop_table(self, table: str) -> None:
        """Deletes one of your tables."""
        self._request("DELETE", f"/api/tables/{_segment(table)}")

    def reviews(self, state: Optional[str] = "pending") -> pl.DataFrame:
        """Held queries you may decide on (and your own), as a frame; ``state=None`` lists every state."""
        params = {"state": state} if state else {}
        requests_ = self._request("GET", "/api/reviews", params=params)["requests"]
        return _frame(requests_, ["id", "user", "query", "tables", "reason", "state", "decided_by",
                                  "decision_reason", "created_at", "decided_at"])

    def approve(self, request_id: int) -> Dict[str, Any]:
        """Approves a held query: its result is released, once, to the requester."""
        return self._request("POST", f"/api/reviews/{int(request_id)}/approve")

    def reject(self, request_id: int, reason: str) -> Dict[str, Any]:
        """Rejects a held query; the requester reads ``reason``."""
        return self._request("POST", f"/api/reviews/{int(request_id)}/reject", json={"reason": reason})

    def audit(self, table: Optional[str] = None) -> pl.DataFrame:
        """The audit log you may read (every query on your tables, and your own), as a frame."""
        params = {"table": table} if table else {}
        entries = self._request("GET", "/api/audit", params=params)["entries"]
        return _frame(entries, ["id", "at", "user", "tables", "query", "decision", "reason", "rows_returned",
                                "columns", "smallest_group", "request_id", "hash"])

    # -- the scientist's day ------------------------------------------------------------------------------

    def tables(self) -> pl.DataFrame:
        """Tables you may query, with their owners, policies and sizes."""
        tables = self._request("GET", "/api/tables")["tables"]
        for t in tables:
            t["policy"] = json.dumps(t.get("policy"))
        return _frame(tables, ["name", "owner", "rows", "columns", "readers", "policy", "created_at", "updated_at"])

    def budget(self) -> pl.DataFrame:
        """Your privacy budget on every differentially private table you may read: what it is, what you spent,
        what is left."""
        budgets = self._request("GET", "/api/budget")["budgets"]
        return _frame(budgets, ["table", "per", "epsilon", "delta", "query_epsilon", "epsilon_spent",
                                "delta_spent", "queries", "epsilon_left", "delta_left"])

    def table(self, name: str) -> RemoteLazyFrame:
        """A lazy frame over a table you may query. Its columns come from the server's planner."""
        return self._lazy(quote(name), name)

    def dataset(self, name: str, *, version: Optional[int] = None, project: Optional[str] = None) -> "RemoteDataset":
        """A dataset's tables (``frames``, ``labels``, ``inferences_<set>``) as lazy frames, for its project's
        members and for scientists it was published to. ``version`` reads an earlier version; ``project`` tells
        apart two datasets of one name."""
        return RemoteDataset(self, name, version=version, project=project)

    def dataset_tables(self) -> pl.DataFrame:
        """Every dataset table you may query, with its SQL name, version, rows and units."""
        tables = self._request("GET", "/api/dataset_tables")["tables"]
        for t in tables:
            t["columns"] = [c["name"] for c in t["columns"]]
        return _frame(tables, ["sql_name", "project", "dataset", "table", "version", "rows", "units", "columns",
                               "member"])

    def _lazy(self, source: str, name: str) -> RemoteLazyFrame:
        columns = list(self._schema_of(f"SELECT * FROM {source}").names())
        return RemoteLazyFrame(self, _Plan(source=source, columns=tuple(columns), tables=(name,)))

    def sql(self, query: str, *, wait: bool = True, timeout: Optional[float] = None) -> pl.DataFrame:
        """Runs SQL under the owner's policies over Flight SQL; see ``RemoteLazyFrame.collect``."""
        try:
            table = self._execute(query, wait_seconds=0)
        except QueryHeld as held:
            if not wait:
                raise
            print(f"milkglass: the query is held for the owner's review (request {held.request_id}) and waits for "
                  "the owner to approve or reject it...", file=sys.stderr)
            table = self._await_release(held, timeout)
        return _answer(table)

    def fetch_request(self, request_id: int, *, wait: bool = True, timeout: Optional[float] = None) -> pl.DataFrame:
        """The result of a held query once the owner approved it (it is released once)."""
        held = QueryHeld(int(request_id), f"request {request_id} waits for the owner's review.")
        return _answer(self._await_release(held, timeout if wait else 0))

    # -- Flight SQL ---------------------------------------------------------------------------------------

    def _connection(self):
        with self._flight_lock:
            if self._flight is None:
                import adbc_driver_flightsql.dbapi as flight_sql

                options = {
                    "adbc.flight.sql.authorization_header": f"Bearer {self._token}",
                    # Answer "held" at once; this client then polls, and can say that it waits.
                    "adbc.flight.sql.rpc.call_header.x-milkglass-wait-seconds": "0",
                }
                if self._ca_pem is not None:
                    options["adbc.flight.sql.client_option.tls_root_certs"] = self._ca_pem
                self._flight = flight_sql.connect(self.flight_url, db_kwargs=options, autocommit=True)
            return self._flight

    def _execute(self, query: str, wait_seconds: int) -> pa.Table:
        with self._connection().cursor() as cursor:
            try:
                cursor.execute(query)
                return cursor.fetch_arrow_table()
            except Exception as e:  # ADBC raises its own error classes; map them to ours
                raise _query_error(e) from None

    def _schema_of(self, query: str) -> pl.Schema:
        with self._connection().cursor() as cursor:
            try:
                schema = cursor.adbc_execute_schema(query)
            except Exception as e:
                raise _query_error(e) from None
        return pl.from_arrow(schema.empty_table()).schema

    def _allows_extremes(self, tables: Sequence[str]) -> bool:
        """Whether every one of ``tables`` allows min, max and the like (from the policies the server shows)."""
        policies = {t["name"]: t.get("policy") or {} for t in self._request("GET", "/api/tables")["tables"]}
        return bool(tables) and all(policies.get(t, {}).get("allow_extremes") for t in tables)

    def _await_release(self, held: QueryHeld, timeout: Optional[float]) -> pa.Table:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.2
        while True:
            response = self._http.get(f"{self.url}/api/query/requests/{held.request_id}",
                                      headers={"Accept": ARROW_STREAM}, timeout=self.timeout, verify=self._verify)
            if response.status_code == 200:
                table = pa.ipc.open_stream(response.content).read_all()
                metadata = dict(table.schema.metadata or {})
                metadata[AUDIT_KEY] = response.headers.get("milkglass-audit-id", "").encode()
                if "milkglass-flagged" in response.headers:
                    metadata[FLAGGED_KEY] = response.headers["milkglass-flagged"].encode()
                if "milkglass-masked-columns" in response.headers:
                    masked = response.headers["milkglass-masked-columns"].split(",")
                    metadata[MASKED_KEY] = json.dumps(masked).encode()
                return table.replace_schema_metadata(metadata)
            if response.status_code == 202:
                if deadline is not None and time.monotonic() >= deadline:
                    raise held
                time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(delay * 1.5, 2.0)
                continue
            error = _api_error(response)
            if error.code == "rejected":
                raise QueryRejected(held.request_id, error.message)
            raise error


def _api_error(response: requests.Response) -> ApiError:
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {}
    return ApiError(response.status_code, body.get("code", "http_error"), body.get("message", response.text[:500]),
                    body.get("field"), body.get("details"))


def _query_error(e: Exception) -> MilkglassError:
    """An ADBC error as this package's, by the structured error the server sends as gRPC metadata
    (``x-milkglass-error-kind``, ``-code``, ``-field``, ``x-milkglass-request-id``; see docs/API.md), never by
    the wording of its message."""
    message = _server_message(str(e))
    meta = _error_metadata(e)
    kind = meta.get("x-milkglass-error-kind")
    request_id = int(meta["x-milkglass-request-id"]) if "x-milkglass-request-id" in meta else -1
    if kind == "held":
        return QueryHeld(request_id, message)
    if kind == "rejected":
        return QueryRejected(request_id, message)
    if kind == "refused":
        return QueryRefused(message)
    if kind == "invalid":
        return InvalidQuery(message)
    if kind is not None:
        return ApiError(0, meta.get("x-milkglass-error-code", kind), message, meta.get("x-milkglass-error-field"))
    return MilkglassError(message)


def _error_metadata(e: Exception) -> dict:
    """The gRPC metadata an ADBC error carries (``Error.details``: pairs of bytes), as text."""
    pairs = getattr(e, "details", None) or []
    meta = {}
    for key, value in pairs:
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key.startswith("x-milkglass-"):
            meta[key] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return meta


def _server_message(text: str) -> str:
    """The server's own sentence out of an ADBC error
    (``UNAUTHORIZED: [FlightSQL] <message> (PermissionDenied; ExecuteQuery). Vendor code: 14``)."""
    text = text.strip().split("\nDetail:")[0]
    text = re.sub(r"\.?\s*Vendor code: -?\d+\s*$", "", text)
    text = re.sub(r"^[A-Z_]+: ", "", text)
    text = re.sub(r"^\[FlightSQL\]\s*", "", text)
    return re.sub(r"\s*\(\w+; \w+\)\s*$", "", text).strip()


def _answer(table: pa.Table) -> pl.DataFrame:
    """A Flight SQL answer as a frame, warning when the owner's log will show it as flagged."""
    metadata = table.schema.metadata or {}
    if FLAGGED_KEY in metadata:
        warnings.warn(f"milkglass: {metadata[FLAGGED_KEY].decode()}", FlaggedQueryWarning, stacklevel=3)
    frame = pl.from_arrow(table.replace_schema_metadata(None))
    return frame if isinstance(frame, pl.DataFrame) else frame.to_frame()


def _to_arrow(df: Any) -> pa.Table:
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if isinstance(df, pl.DataFrame):
        return df.to_arrow()
    if isinstance(df, pa.Table):
        return df
    if type(df).__module__.startswith("pandas"):
        return pa.Table.from_pandas(df, preserve_index=False)
    raise TypeError(f"cannot upload a {type(df).__name__}: give a Polars, pandas or pyarrow table, or a file path")


def _frame(rows: List[Dict[str, Any]], columns: List[str]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame({c: [] for c in columns})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.select([c for c in columns if c in frame.columns] + [c for c in frame.columns if c not in columns])


def _segment(name: str) -> str:
    return requests.utils.quote(name, safe="")


class RemoteDataset:
    """A dataset's tables on the server: ``ds.frames``, ``ds.labels``, ``ds.inferences("model_v1")``, and its
    insight scores: ``ds.frame_scores``, ``ds.label_scores``, ``ds.issues("model_v1")``."""

    def __init__(self, client: Client, name: str, *, version: Optional[int] = None, project: Optional[str] = None):
        self._client = client
        self.name = name
        self.version = version
        self.project = project

    def table(self, table: str) -> RemoteLazyFrame:
        """One of the dataset's tables as a lazy frame."""
        schema = self.name if self.version is None else f"{self.name}@v{int(self.version)}"
        parts = ([self.project] if self.project else []) + [schema, table]
        return self._client._lazy(".".join(quote(p) for p in parts), f"{schema}.{table}")

    @property
    def frames(self) -> RemoteLazyFrame:
        """One row per frame: id, timestamp, geo, sensor kinds and URLs, one column per metadata key."""
        return self.table("frames")

    @property
    def labels(self) -> RemoteLazyFrame:
        """One row per ground-truth label: class, kind, box geometry and area, attributes."""
        return self.table("labels")

    def inferences(self, inference_set: str) -> RemoteLazyFrame:
        """One row per inference of a set, with its confidence and its best match among the labels."""
        return self.table(f"inferences_{inference_set}")

    @property
    def frame_scores(self) -> RemoteLazyFrame:
        """One row per frame: ``uniqueness`` (0 to 1) and ``outlier_score`` (robust z) over its embedding's
        10 nearest neighbours; NULL where the frame has no embedding."""
        return self.table("frame_scores")

    @property
    def label_scores(self) -> RemoteLazyFrame:
        """One row per label: ``uniqueness`` and ``outlier_score`` over the label (crop) embeddings."""
        return self.table("label_scores")

    def issues(self, inference_set: str) -> RemoteLazyFrame:
        """The likely label errors against an inference set: ``kind``, ``score``, the label, inference and
        suggested class, as the label-error queue ranks them."""
        return self.table(f"issues_{inference_set}")
