"""TLS with real clients: requests, the SDK (HTTP and Flight SQL) and a stock ADBC client against a server
started with a self-signed certificate from `milkglass tls self-signed`."""

import pathlib
import subprocess
import tempfile

import adbc_driver_flightsql.dbapi as flight_sql
import pytest
import requests

import milkglass
from milkglass import Aggregation, Policy, Reject
from conftest import BIN, TITANIC, free_port, milkglass as cli


@pytest.fixture(scope="module")
def tls_server():
    work = pathlib.Path(tempfile.mkdtemp(prefix="milkglass-tls-"))
    cli("tls", "self-signed", "--out", str(work / "certs"))
    token = cli("user", "add", "olivia", "--role", "owner", "--data-dir", str(work / "data")).strip().splitlines()[-1]
    http, flight = free_port(), free_port()
    process = subprocess.Popen(
        [BIN, "serve", "--data-dir", str(work / "data"), "--http-addr", f"127.0.0.1:{http}",
         "--flight-addr", f"127.0.0.1:{flight}", "--tls-cert", str(work / "certs" / "cert.pem"),
         "--tls-key", str(work / "certs" / "key.pem")],
        stdout=subprocess.PIPE, text=True,
    )
    ready = process.stdout.readline()
    assert ready.startswith("milkglass serving") and "https://" in ready and "grpc+tls://" in ready, ready
    owner = milkglass.connect(f"https://127.0.0.1:{http}", token, ca_cert=work / "certs" / "cert.pem")
    owner.upload_df(str(TITANIC), name="titanic", sanitized_columns=["Name"],
                    policy=Policy(safe_zone=Aggregation(min_agg_size=10), unsafe_handling=Reject()))
    owner.close()
    yield {"http": f"https://127.0.0.1:{http}", "flight": f"grpc+tls://127.0.0.1:{flight}", "token": token,
           "ca": work / "certs" / "cert.pem"}
    process.kill()
    process.wait()


def test_requests_trusts_the_certificate_it_is_given_and_no_other(tls_server):
    url = f"{tls_server['http']}/api/whoami"
    headers = {"Authorization": f"Bearer {tls_server['token']}"}
    answer = requests.get(url, headers=headers, verify=str(tls_server["ca"]), timeout=30)
    assert answer.status_code == 200 and answer.json()["name"] == "olivia"
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, headers=headers, timeout=30)  # the system's authorities did not sign it
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https://", "http://"), headers=headers, timeout=30)  # no plain HTTP


def test_the_sdk_queries_over_https_and_flight_sql_over_tls(tls_server):
    client = milkglass.connect(tls_server["http"], tls_server["token"], ca_cert=tls_server["ca"])
    assert client.flight_url == tls_server["flight"]
    frame = client.sql("SELECT Pclass, AVG(Survived) AS rate FROM titanic GROUP BY Pclass ORDER BY Pclass")
    assert [round(r, 6) for r in frame["rate"].to_list()] == [0.62963, 0.472826, 0.242363]
    client.close()


def test_a_stock_adbc_client_connects_with_the_certificate(tls_server):
    options = {"adbc.flight.sql.authorization_header": f"Bearer {tls_server['token']}",
               "adbc.flight.sql.client_option.tls_root_certs": tls_server["ca"].read_text()}
    with flight_sql.connect(tls_server["flight"], db_kwargs=options, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) AS n FROM titanic")
            assert cur.fetchall() == [(891,)]
    # Without the certificate the handshake fails: the client is not talking to an unverified server.
    untrusted = {"adbc.flight.sql.authorization_header": f"Bearer {tls_server['token']}"}
    with pytest.raises(Exception):
        with flight_sql.connect(tls_server["flight"], db_kwargs=untrusted, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) AS n FROM titanic")
                cur.fetchall()
