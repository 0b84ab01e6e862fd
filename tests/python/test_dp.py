"""Differential privacy from the SDK: an owner publishes Titanic with ``Policy(dp=DP(...), privacy_unit=...)``;
a scientist's lazy frames are answered with noise, a repeat replays at no cost, ``explain_privacy`` tells the
cost first, ``budget()`` shows what is left, and the spent budget refuses."""

import polars as pl
import pytest

import milkglass
from milkglass import DP, Aggregation, Policy, QueryRefused

from conftest import TITANIC


def test_a_dp_table_through_the_sdk(server_empty):
    owner = milkglass.connect(server_empty.http, server_empty.tokens["olivia"], flight_url=server_empty.flight)
    policy = Policy(safe_zone=Aggregation(min_agg_size=10), privacy_unit="PassengerId",
                    dp=DP(epsilon=1.0, query_epsilon=0.25, bounds={"Age": (0, 100)},
                          public_keys={"Sex": ["female", "male"]}))
    owner.upload_df(pl.read_csv(TITANIC), name="titanic_dp", policy=policy, sanitized_columns=["Name"])
    scientist = milkglass.connect(server_empty.http, server_empty.tokens["sam"], flight_url=server_empty.flight)
    rdf = scientist.table("titanic_dp").group_by("Sex").agg(pl.len().alias("n"), pl.col("Age").mean().alias("age"))

    explained = rdf.explain_privacy()
    n = explained.filter(pl.col("column") == "n")
    assert n["epsilon"][0] == 0.25 and n["ci95"][0] > 0
    assert scientist.budget()["epsilon_spent"][0] == 0.0, "explaining spends nothing"

    first = rdf.collect().sort("Sex")
    assert first["Sex"].to_list() == ["female", "male"]
    # The true counts are 314 and 577; the noise is a few dozen at most at this epsilon.
    assert abs(first["n"][0] - 314) < 200 and abs(first["n"][1] - 577) < 200, first
    # The Arrow answer carries each number's 95% error bound in its field's metadata.
    arrow = rdf.collect_arrow()
    assert float(arrow.schema.field("n").metadata[b"milkglass.dp.ci95"]) > 0
    again = rdf.collect().sort("Sex")
    assert again.equals(first), "a repeat replays the stored answer"
    budget = scientist.budget()
    assert budget["epsilon_spent"][0] == 0.25 and budget["queries"][0] == 1, budget

    for threshold in (10, 20, 30):
        scientist.table("titanic_dp").filter(pl.col("Age") > threshold).select(pl.len()).collect()
    assert scientist.budget()["epsilon_left"][0] == pytest.approx(0.0)
    with pytest.raises(QueryRefused, match="budget is exhausted"):
        scientist.table("titanic_dp").filter(pl.col("Age") > 40).select(pl.len()).collect()
    with pytest.raises(QueryRefused, match="differential privacy"):
        scientist.table("titanic_dp").select("Age").collect()


def test_a_median_through_the_sdk_is_a_dp_quantile(server_empty):
    """``pl.col(...).median()`` compiles to MEDIAN, which a DP table answers with its quantile mechanism;
    at a very large epsilon that is the true median of each group's ages (NULLs skipped)."""
    owner = milkglass.connect(server_empty.http, server_empty.tokens["olivia"], flight_url=server_empty.flight)
    policy = Policy(safe_zone=Aggregation(min_agg_size=10), privacy_unit="PassengerId",
                    dp=DP(epsilon=1e6, query_epsilon=1e5, bounds={"Age": (0, 100)},
                          public_keys={"Sex": ["female", "male"]}))
    owner.upload_df(pl.read_csv(TITANIC), name="titanic_median", policy=policy, sanitized_columns=["Name"])
    scientist = milkglass.connect(server_empty.http, server_empty.tokens["sam"], flight_url=server_empty.flight)
    got = (scientist.table("titanic_median").group_by("Sex").agg(pl.col("Age").median().alias("median_age"))
           .collect().sort("Sex"))
    truth = pl.read_csv(TITANIC).group_by("Sex").agg(pl.col("Age").median().alias("median_age")).sort("Sex")
    assert got["Sex"].to_list() == truth["Sex"].to_list()
    for mine, true in zip(got["median_age"].to_list(), truth["median_age"].to_list()):
        assert abs(mine - true) <= 1.5, (got, truth)
