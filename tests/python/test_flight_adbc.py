"""Any Flight SQL client works: ADBC and Polars, without importing milkglass."""

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pytest
import requests

ANNOUNCEMENT = "SELECT Pclass, AVG(Survived) AS Survived FROM titanic GROUP BY Pclass ORDER BY Survived DESC"


def connect(server, user):
    token = server.tokens[user]
    return flight_sql.connect(server.flight, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"})


def test_adbc_and_polars_get_the_announcement_numbers(server_reject):
    with connect(server_reject, "sam") as conn:
        df = pl.read_database(ANNOUNCEMENT, conn)
    assert df["Pclass"].to_list() == [1, 2, 3]
    assert df["Survived"].to_list() == pytest.approx([0.62963, 0.472826, 0.242363], abs=5e-7)


def test_a_refused_query_raises_with_the_rule(server_reject):
    with connect(server_reject, "sam") as conn:
        with pytest.raises(Exception, match="at least 10 rows of table \"titanic\""):
            pl.read_database("SELECT * FROM titanic LIMIT 5", conn)


def test_a_held_query_names_its_request_and_the_owner_approves_it(server_review):
    with connect(server_review, "sam") as conn:
        with pytest.raises(Exception, match=r"held for the owner's review \(request 1\)"):
            pl.read_database("SELECT * FROM titanic LIMIT 5", conn)
    owner = {"Authorization": f"Bearer {server_review.tokens['olivia']}"}
    assert requests.post(f"{server_review.http}/api/reviews/1/approve", headers=owner, timeout=10).status_code == 200
    sam = {"Authorization": f"Bearer {server_review.tokens['sam']}"}
    released = requests.get(f"{server_review.http}/api/query/requests/1", headers=sam, timeout=10).json()
    assert released["row_count"] == 5
    assert released["masked_columns"] == ["Name"]
    assert all(row["Name"] is None for row in released["rows"])
