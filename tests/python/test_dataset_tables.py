"""A dataset's tables from real clients: a stock ADBC client lists and queries them, and the SDK's lazy frame
over ``labels`` gives what Polars gives over an export of the same rows."""

import json
import pathlib
import subprocess
import tempfile

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import milkglass
from milkglass import QueryRefused

from conftest import BIN, free_port


@pytest.fixture(scope="module")
def demo():
    """``milkglass demo`` with 60 frames: victor is a member (viewer) of project shapes, sam a scientist the
    dataset is published to (at least 5 frames per value; frame ids, URLs and label ids sanitized)."""
    directory = tempfile.mkdtemp(prefix="milkglass-pytest-demo-")
    http, flight = free_port(), free_port()
    process = subprocess.Popen(
        [BIN, "demo", "--data-dir", directory, "--http-addr", f"127.0.0.1:{http}",
         "--flight-addr", f"127.0.0.1:{flight}", "--frames", "60"],
        stdout=subprocess.PIPE, text=True,
    )
    for line in process.stdout:
        if line.startswith("milkglass serving"):
            break
    tokens = json.loads((pathlib.Path(directory) / "demo-tokens.json").read_text())
    yield {"http": f"http://127.0.0.1:{http}", "flight": f"grpc://127.0.0.1:{flight}",
           "tokens": {name: t["token"] for name, t in tokens.items()}}
    process.kill()
    process.wait()


def adbc(demo, user):
    return flight_sql.connect(demo["flight"], db_kwargs={
        "adbc.flight.sql.authorization_header": f"Bearer {demo['tokens'][user]}"})


def test_a_stock_adbc_client_lists_and_queries_the_dataset_tables(demo):
    with adbc(demo, "victor") as conn:
        objects = conn.adbc_get_objects(depth="columns").read_all().to_pylist()
        tables = {}
        for catalog in objects:
            for schema in catalog["catalog_db_schemas"] or []:
                for table in schema["db_schema_tables"] or []:
                    columns = [c["column_name"] for c in table["table_columns"] or []]
                    tables[(schema["db_schema_name"], table["table_name"])] = columns
        assert ("shapes", "labels") in tables, tables.keys()
        assert ("shapes", "inferences_detector_v1") in tables
        assert {"class", "width", "height", "area"} <= set(tables[("shapes", "labels")])
        assert "__mg_row" not in tables[("shapes", "labels")]
        with conn.cursor() as cursor:
            cursor.execute("SELECT class, COUNT(*) AS n FROM shapes.labels GROUP BY class ORDER BY class")
            answer = pl.from_arrow(cursor.fetch_arrow_table())
    status = milkglass.connect(demo["http"], demo["tokens"]["victor"])._request(
        "GET", "/api/projects/shapes/datasets/shapes/status")
    assert answer["n"].sum() == status["labels"]


def test_the_sdks_lazy_labels_equal_polars_over_an_export(demo):
    member = milkglass.connect(demo["http"], demo["tokens"]["victor"])
    remote = (member.dataset("shapes").labels
              .group_by("class")
              .agg(pl.len().alias("n"), (pl.col("width") * pl.col("height")).mean().alias("mean_area"))
              .sort("class")
              .collect())
    exported = member.sql("SELECT * FROM shapes.labels")
    local = (exported.lazy()
             .group_by("class")
             .agg(pl.len().alias("n"), (pl.col("width") * pl.col("height")).mean().alias("mean_area"))
             .sort("class")
             .collect())
    assert len(remote) > 1
    assert_frame_equal(remote, local, check_dtypes=False)

    # The scientist reads the published dataset under its policy: the same aggregate, but no rows of ids.
    scientist = milkglass.connect(demo["http"], demo["tokens"]["sam"])
    theirs = (scientist.dataset("shapes").labels
              .group_by("class")
              .agg(pl.len().alias("n"), (pl.col("width") * pl.col("height")).mean().alias("mean_area"))
              .sort("class")
              .collect())
    assert_frame_equal(theirs, remote, check_dtypes=False)
    with pytest.raises(QueryRefused):
        scientist.dataset("shapes").labels.select("label_id", "class").collect()
    listed = scientist.dataset_tables()
    assert "shapes.labels" in listed["sql_name"].to_list()


def test_the_insight_score_tables_through_the_sdk_and_adbc(demo):
    member = milkglass.connect(demo["http"], demo["tokens"]["victor"])
    shapes = member.dataset("shapes")
    by_kind = shapes.issues("detector_v1").group_by("kind").agg(pl.len().alias("n")).sort("kind").collect()
    queue = member._request("GET", "/api/projects/shapes/datasets/shapes/insights/label_errors",
                            params={"inference_set": "detector_v1", "limit": 10000})
    expected = {}
    for issue in queue["issues"]:
        expected[issue["kind"]] = expected.get(issue["kind"], 0) + 1
    assert dict(zip(by_kind["kind"].to_list(), by_kind["n"].to_list())) == expected
    rarest = shapes.frame_scores.sort("uniqueness", descending=True).head(3).collect()
    assert rarest["uniqueness"].to_list()[0] == 1.0, rarest
    with adbc(demo, "victor") as conn, conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) AS n FROM shapes.frame_scores WHERE outlier_score > 3")
        outliers = cursor.fetch_arrow_table().to_pylist()[0]["n"]
    route = member._request("GET", "/api/projects/shapes/datasets/shapes/insights/neighbors",
                            params={"kind": "outliers", "min_score": 3, "limit": 1})
    assert outliers == route["total"]
    # The scientist gets the aggregate, never which frame.
    scientist = milkglass.connect(demo["http"], demo["tokens"]["sam"])
    mean = scientist.dataset("shapes").frame_scores.select(pl.col("uniqueness").mean()).collect()
    assert abs(mean["uniqueness"][0] - shapes.frame_scores.select(pl.col("uniqueness").mean()).collect()["uniqueness"][0]) < 1e-9
    with pytest.raises(QueryRefused):
        scientist.dataset("shapes").frame_scores.sort("uniqueness", descending=True).head(1).select("frame_id").collect()
