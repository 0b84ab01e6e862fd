"""The Python SDK against a real server: the owner's day and the scientist's, BastionLab's tour included."""

import threading
import warnings

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

import milkglass
from milkglass import (Aggregation, AtLeastNOf, FlaggedQueryWarning, InvalidQuery, Log, Policy, QueryHeld,
                       QueryRefused, QueryRejected, Reject, Review, TrueRule, UnsupportedExpression, UserId)

from conftest import TITANIC

c = pl.col


def connect(server, user):
    return milkglass.connect(server.http, token=server.tokens[user])


# -- BastionLab's tour, in RemoteLazyFrame form ------------------------------------------------------------

def test_the_announcement_query_as_a_remote_lazy_frame(server_reject):
    mg = connect(server_reject, "sam")
    assert mg.flight_url == server_reject.flight  # discovered from GET /api/info
    rdf = mg.table("titanic")
    result = (rdf.select([c("Pclass"), c("Survived")]).group_by("Pclass").agg(c("Survived").mean())
              .sort("Survived", descending=True).collect())
    assert isinstance(result, pl.DataFrame)
    assert result["Pclass"].to_list() == [1, 2, 3]
    assert result["Survived"].to_list() == pytest.approx([0.62963, 0.472826, 0.242363], abs=5e-7)


def test_showing_rows_is_refused_with_the_rules_explanation(server_reject):
    rdf = connect(server_reject, "sam").table("titanic")
    with pytest.raises(QueryRefused, match=r'at least 10 rows of table "titanic"') as refused:
        rdf.head(5).collect()
    assert refused.value.explanation.startswith("Refused:")
    assert "[FlightSQL]" not in refused.value.explanation


def test_a_flagged_query_returns_with_a_warning_and_sanitized_columns_nulled(server_log):
    rdf = connect(server_log, "sam").table("titanic")
    with pytest.warns(FlaggedQueryWarning, match="at least 10 rows"):
        rows = rdf.head(5).collect()
    assert rows.height == 5
    assert rows["Name"].null_count() == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a query inside the safe zone warns of nothing
        rdf.group_by("Sex").agg(c("Age").mean()).collect()


# -- the review flow ----------------------------------------------------------------------------------------

def test_a_held_query_waits_and_returns_once_the_owner_approves(server_review, capsys):
    sam, olivia = connect(server_review, "sam"), connect(server_review, "olivia")
    outcome = {}

    def scientist():
        try:
            outcome["frame"] = sam.table("titanic").filter(c("Age") > 60).select("Age", "Sex").collect(timeout=60)
        except Exception as e:  # surfaced by the assertions below
            outcome["error"] = e

    thread = threading.Thread(target=scientist)
    thread.start()
    pending = _wait_for_pending(olivia)
    assert pending["user"].to_list() == ["sam"]
    assert '"Age" > 60' in pending["query"][0]
    olivia.approve(pending["id"][0])
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    frame = outcome["frame"]
    assert frame.columns == ["Age", "Sex"]
    assert frame.height == 22 and frame["Age"].min() > 60
    assert "waits for the owner" in capsys.readouterr().err
    decisions = olivia.audit(table="titanic")["decision"].to_list()
    assert {"held", "approved", "released"} <= set(decisions)


def test_a_rejected_query_raises_with_the_owners_reason(server_review):
    sam, olivia = connect(server_review, "sam"), connect(server_review, "olivia")
    with pytest.raises(QueryHeld) as held:
        sam.sql("SELECT Name FROM titanic WHERE Age > 70", wait=False)
    olivia.reject(held.value.request_id, "individual rows are not for sharing")
    with pytest.raises(QueryRejected, match="individual rows are not for sharing") as rejected:
        sam.fetch_request(held.value.request_id)
    assert rejected.value.request_id == held.value.request_id


def test_a_held_query_gives_up_after_its_timeout(server_review):
    sam = connect(server_review, "sam")
    with pytest.raises(QueryHeld) as held:
        sam.table("titanic").head(3).collect(timeout=0.5)
    assert held.value.request_id >= 1
    assert connect(server_review, "olivia").reviews()["id"].to_list() == [held.value.request_id]


def test_the_sdk_hears_of_a_hold_at_once_whatever_the_servers_wait(server_review_slow):
    import time

    sam = connect(server_review_slow, "sam")
    started = time.monotonic()
    with pytest.raises(QueryHeld):
        sam.table("titanic").head(3).collect(wait=False)
    assert time.monotonic() - started < 10  # the server would wait 120 s without x-milkglass-wait-seconds


def _wait_for_pending(client, tries=100):
    import time

    for _ in range(tries):
        pending = client.reviews()
        if pending.height:
            return pending
        time.sleep(0.1)
    raise AssertionError("no pending review appeared")


# -- the owner's day ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(server_empty):
    """Titanic published through the SDK twice: guarded, and open (every query safe) to compare with Polars."""
    olivia = connect(server_empty, "olivia")
    local = pl.read_csv(TITANIC)
    olivia.upload_df(local, name="titanic", sanitized_columns=["Name"],
                     policy=Policy(safe_zone=Aggregation(min_agg_size=10), unsafe_handling=Reject(), savable=False))
    olivia.upload_df(str(TITANIC), name="titanic_open", policy=Policy(safe_zone=TrueRule(), unsafe_handling=Log()))
    return server_empty, local


def test_upload_df_takes_polars_pandas_pyarrow_and_paths(published):
    server, local = published
    olivia = connect(server, "olivia")
    small = local.head(40).select("PassengerId", "Pclass", "Fare")
    for name, data in [("from_pandas", small.to_pandas()), ("from_arrow", small.to_arrow()),
                       ("from_lazy", small.lazy())]:
        info = olivia.upload_df(data, name=name, policy=Policy(safe_zone=Aggregation(min_agg_size=5)))
        assert info["rows"] == 40, name
        back = connect(server, "sam").table(name).group_by("Pclass").agg(c("Fare").sum()).sort("Pclass").collect()
        expected = small.group_by("Pclass").agg(c("Fare").sum()).sort("Pclass")
        assert_frame_equal(back, expected, check_dtypes=False)
        olivia.drop_table(name)
    tables = connect(server, "sam").tables()
    assert set(tables["name"].to_list()) == {"titanic", "titanic_open"}


def test_the_policy_reaches_the_server_as_written(published):
    server, _ = published
    described = connect(server, "olivia").tables().filter(c("name") == "titanic")
    import json

    policy = json.loads(described["policy"][0])
    assert policy["safe_zone"] == {"aggregation": {"min_agg_size": 10}}
    assert policy["unsafe_handling"] == "reject"
    assert policy["sanitized_columns"] == ["Name"]


def test_a_scientist_cannot_publish_and_bad_policies_name_the_field(published):
    server, local = published
    with pytest.raises(milkglass.ApiError) as forbidden:
        connect(server, "sam").upload_df(local, name="mine", policy=Policy(safe_zone=TrueRule()))
    assert forbidden.value.status == 403
    with pytest.raises(milkglass.ApiError) as unknown:
        connect(server, "olivia").upload_df(local, name="t2", policy=Policy(safe_zone=TrueRule()),
                                            sanitized_columns=["NoSuchColumn"])
    assert unknown.value.status == 400 and unknown.value.field == "policy.sanitized_columns"
    with pytest.raises(ValueError):
        Aggregation(min_agg_size=0)


def test_rules_serialize_to_the_servers_json():
    rule = (Aggregation(min_agg_size=10) | UserId("alice")) & AtLeastNOf(1, [UserId("bob")])
    assert rule.to_json() == {"at_least": {"n": 2, "of": [
        {"at_least": {"n": 1, "of": [{"aggregation": {"min_agg_size": 10}}, {"user": "alice"}]}},
        {"at_least": {"n": 1, "of": [{"user": "bob"}]}},
    ]}}
    policy = Policy(safe_zone=rule, unsafe_handling=Review(), savable=True)
    assert policy.to_json(["Name"])["unsafe_handling"] == "review"


def test_audit_lists_every_query_as_a_frame(published):
    server, _ = published
    sam = connect(server, "sam")
    with pytest.raises(QueryRefused):
        sam.table("titanic").select("Name", "Age").collect()
    audit = connect(server, "olivia").audit(table="titanic")
    assert isinstance(audit, pl.DataFrame)
    refused = audit.filter(c("decision") == "refused")
    assert refused.height >= 1 and refused["user"][0] == "sam"
    # sam sees only his own entries
    assert set(sam.audit()["user"].to_list()) == {"sam"}


# -- every verb compiles to SQL that computes what Polars computes --------------------------------------------

PIPELINES = {
    "select_filter": lambda f: f.select("Pclass", "Age", "Sex").filter((c("Age") > 30) & (c("Sex") == "female")),
    "or_not_null": lambda f: f.filter((c("Age") < 5) | c("Cabin").is_null().not_()).select("PassengerId"),
    "with_columns": lambda f: f.with_columns((c("Fare") / c("SibSp").clip(1, 8)).alias("per"),
                                             (c("Age") * 2 + 1).alias("x"), c("Pclass").cast(pl.Float64)),
    "agg_many": lambda f: f.group_by("Pclass", "Sex").agg(
        c("Age").mean().alias("mean"), c("Fare").sum().alias("sum"), c("Age").count().alias("count"),
        pl.len(), c("Age").min().alias("min"), c("Age").max().alias("max"), c("Fare").std().alias("std"),
        c("Fare").var().alias("var"), c("Age").median().alias("median"), c("Embarked").n_unique().alias("nu")),
    "agg_expression": lambda f: f.group_by("Embarked").agg((c("Survived").mean() * 100).alias("pct")),
    "sort_head": lambda f: f.sort("Fare", "PassengerId", descending=[True, False]).head(7).select("PassengerId"),
    "unique": lambda f: f.select("Pclass", "Embarked").unique(),
    "rename_drop": lambda f: f.rename({"Pclass": "class"}).drop("Name", "Ticket", "Cabin"),
    "is_null": lambda f: f.select(c("Cabin").is_null().alias("no_cabin")).group_by("no_cabin").agg(pl.len()),
    "global_agg": lambda f: f.select(c("Age").mean(), c("Fare").max(), c("Survived").sum()),
    "join": lambda f: f.select("PassengerId", "Pclass").join(
        f.group_by("Pclass").agg(c("Fare").mean().alias("class_fare")), on="Pclass").filter(c("PassengerId") < 20),
    "ternary_between": lambda f: f.with_columns(
        pl.when(c("Age").is_between(18, 65)).then(pl.lit("adult")).otherwise(pl.lit("other")).alias("band")
    ).group_by("band").agg(pl.len()),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_remote_verbs_match_local_polars(published, name):
    server, local = published
    remote = PIPELINES[name](connect(server, "sam").table("titanic_open"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlaggedQueryWarning)
        got = remote.collect()
    expected = PIPELINES[name](local.lazy()).collect()
    assert got.columns == expected.columns, remote.sql()
    if name != "sort_head":  # SQL returns rows in no particular order unless sorted
        got, expected = got.sort(got.columns, nulls_last=True), expected.sort(expected.columns, nulls_last=True)
    assert_frame_equal(got, expected, check_dtypes=False, abs_tol=1e-9)


def test_describe_computes_summaries_on_the_server(published):
    server, local = published
    summary = connect(server, "sam").table("titanic").drop("Name").describe()
    assert summary["statistic"].to_list() == ["count", "null_count", "mean", "std"]  # no extremes allowed
    expected = local.describe()
    for stat in ["count", "null_count", "mean", "std"]:
        got = summary.filter(c("statistic") == stat)["Age"][0]
        want = expected.filter(c("statistic") == stat)["Age"][0]
        assert got == pytest.approx(want), stat
    assert summary.filter(c("statistic") == "mean")["Sex"][0] is None


def test_sql_errors_and_unsupported_expressions_are_clear(published):
    server, _ = published
    sam = connect(server, "sam")
    with pytest.raises(InvalidQuery, match="NoSuchColumn|no_such|not found|No field"):
        sam.sql("SELECT NoSuchColumn FROM titanic_open")
    with pytest.raises(InvalidQuery):
        sam.sql("DROP TABLE titanic")
    with pytest.raises(UnsupportedExpression, match="does not aggregate"):
        sam.table("titanic_open").group_by("Pclass").agg(c("Age"))
    with pytest.raises(UnsupportedExpression, match="no column named 'Nope'"):
        sam.table("titanic_open").drop("Nope")
    schema = sam.table("titanic_open").select("Age", "Pclass").collect_schema()
    assert schema["Age"] == pl.Float64 and schema["Pclass"].is_integer()


def test_an_other_users_token_cannot_see_tables_it_may_not_read(published):
    server, local = published
    olivia = connect(server, "olivia")
    olivia.upload_df(local.head(20), name="private", policy=Policy(safe_zone=TrueRule()), readers=["nobody"])
    with pytest.raises(InvalidQuery):
        connect(server, "sam").table("private")
    olivia.drop_table("private")
    with pytest.raises(milkglass.ApiError) as bad:
        milkglass.connect(server.http, token="not-a-token")
    assert bad.value.status == 401


def test_frames_from_pyarrow_and_pandas_helpers_roundtrip(published):
    server, _ = published
    frame = connect(server, "sam").sql("SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass ORDER BY Pclass")
    assert frame["n"].to_list() == [216, 184, 491]
    assert isinstance(frame.to_arrow(), pa.Table) and isinstance(frame.to_pandas(), pd.DataFrame)


def test_errors_are_classified_by_the_servers_structured_metadata_not_its_wording():
    """The SDK reads the kind and the request id from the gRPC metadata the server sends
    (x-milkglass-error-*); a message in other words still classifies."""
    from milkglass.client import _query_error
    from milkglass.errors import QueryHeld, QueryRefused, QueryRejected

    class FakeAdbcError(Exception):
        def __init__(self, message, details):
            super().__init__(message)
            self.details = details

    reworded = "PERMISSION_DENIED: [FlightSQL] Nope, not today (PermissionDenied; ExecuteQuery)"
    refused = _query_error(FakeAdbcError(reworded, [(b"x-milkglass-error-kind", b"refused")]))
    assert isinstance(refused, QueryRefused) and refused.explanation == "Nope, not today"
    held = _query_error(FakeAdbcError("anything", [(b"x-milkglass-error-kind", b"held"),
                                                  (b"x-milkglass-request-id", b"42")]))
    assert isinstance(held, QueryHeld) and held.request_id == 42
    rejected = _query_error(FakeAdbcError("refused? held?", [(b"x-milkglass-error-kind", b"rejected"),
                                                            (b"x-milkglass-request-id", b"7")]))
    assert isinstance(rejected, QueryRejected) and rejected.request_id == 7
    # A message that reads like a refusal, without the metadata, is not taken for one.
    plain = _query_error(FakeAdbcError("Refused: held for the owner's review (request 3)", []))
    assert not isinstance(plain, (QueryRefused, QueryHeld))
