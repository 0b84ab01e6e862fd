"""Single sign-on against an identity provider the test starts on loopback (oidc-provider-mock, from
PyPI): the browser's walk through the authorization code flow, done with requests, a claim mapped to a
role, the user created on first sign-in and found by subject after, a personal token for the SDK, and
sign-ins that must fail (no mapped role, a callback from another browser) audited."""

import subprocess
import tempfile
import urllib.parse

import oidc_provider_mock
import pytest
import requests

from conftest import BIN, free_port, milkglass


@pytest.fixture(scope="module")
def provider():
    with oidc_provider_mock.run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def server(provider):
    data = tempfile.mkdtemp(prefix="milkglass-oidc-")
    admin = milkglass("user", "add", "root", "--role", "admin", "--data-dir", data).strip().splitlines()[-1]
    # A local user whose name an identity provider's user will also want.
    milkglass("user", "add", "carol", "--role", "viewer", "--data-dir", data)
    http, flight = free_port(), free_port()
    process = subprocess.Popen(
        [BIN, "serve", "--data-dir", data, "--http-addr", f"127.0.0.1:{http}", "--flight-addr", f"127.0.0.1:{flight}",
         "--oidc-issuer", provider, "--oidc-client-id", "milkglass", "--oidc-client-secret", "s3cret",
         "--oidc-role", "ml-admins=admin,data-owners=owner,ml=scientist"],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("milkglass serving"), line
    yield {"url": f"http://127.0.0.1:{http}", "flight": f"grpc://127.0.0.1:{flight}", "admin": admin}
    process.kill()
    process.wait()


def set_claims(provider, sub, **claims):
    r = requests.put(f"{provider}/users/{urllib.parse.quote(sub)}", json=claims, timeout=10)
    assert r.status_code == 204, r.text


def sign_in(server, sub, next_path="/tables"):
    """What a browser does: milkglass's login, the provider's form, back to milkglass's callback.
    Returns where milkglass finally sends the browser."""
    browser = requests.Session()
    start = browser.get(f"{server['url']}/auth/oidc/login", params={"next": next_path}, allow_redirects=False, timeout=10)
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"], authorize
    assert query["nonce"] and query["state"], authorize
    approved = browser.post(authorize, data={"sub": sub}, allow_redirects=False, timeout=10)
    assert approved.status_code == 302, approved.text
    back = browser.get(approved.headers["location"], allow_redirects=False, timeout=30)
    assert back.status_code == 302, back.text
    assert back.headers["cache-control"] == "no-store"
    return back.headers["location"], browser, approved.headers["location"]


def session_token(location):
    path, _, fragment = location.partition("#")
    token = urllib.parse.parse_qs(fragment)["session"][0]
    return path, token


def whoami(server, token):
    return requests.get(f"{server['url']}/api/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_a_provider_user_signs_in_with_the_role_their_groups_map_to(server, provider):
    assert requests.get(f"{server['url']}/api/auth", timeout=10).json()["sso"]["login_url"] == "/auth/oidc/login"
    set_claims(provider, "alice-sub", email="alice@example.com", preferred_username="alice", groups=["ml", "data-owners"])
    location, _, _ = sign_in(server, "alice-sub")
    path, token = session_token(location)
    assert path == "/tables", "back to where the sign-in started"
    me = whoami(server, token).json()
    assert (me["name"], me["role"]) == ("alice", "owner"), me  # the strongest mapped group wins

    # The groups change at the provider: the next sign-in is the same user with the new role.
    set_claims(provider, "alice-sub", email="alice@example.com", preferred_username="alice", groups=["ml-admins"])
    _, again = session_token(sign_in(server, "alice-sub")[0])
    assert whoami(server, again).json() == {**me, "role": "admin"}
    users = requests.get(f"{server['url']}/api/users", headers={"Authorization": f"Bearer {server['admin']}"}, timeout=10)
    assert [u["name"] for u in users.json()["users"]].count("alice") == 1

    # A session lasts hours, not forever, and is listed among the user's own tokens.
    mine = requests.get(f"{server['url']}/api/tokens", headers={"Authorization": f"Bearer {again}"}, timeout=10).json()
    assert all(t["expires_at"] and t["label"] == "web sign-in" for t in mine["tokens"]), mine


def test_a_signed_in_user_mints_a_personal_token_for_the_sdk(server, provider):
    import milkglass as mg

    set_claims(provider, "sam-sub", email="sam@example.com", groups=["ml"])
    _, session = session_token(sign_in(server, "sam-sub", "/")[0])
    minted = requests.post(f"{server['url']}/api/tokens", json={"label": "notebook", "expires_in_days": 7},
                           headers={"Authorization": f"Bearer {session}"}, timeout=10)
    assert minted.status_code == 201, minted.text
    client = mg.connect(server["url"], minted.json()["token"], flight_url=server["flight"])
    assert client.whoami()["name"] == "sam"  # named from the email, as no user name was given
    assert client.whoami()["role"] == "scientist"


def test_a_name_taken_locally_is_not_given_to_a_provider_user(server, provider):
    set_claims(provider, "carol-sub", email="carol@example.com", preferred_username="carol", groups=["ml"])
    _, token = session_token(sign_in(server, "carol-sub")[0])
    me = whoami(server, token).json()
    assert me["name"] == "carol-2" and me["role"] == "scientist", me


def test_sign_ins_that_must_fail_are_refused_and_audited(server, provider):
    # No group of theirs maps to a role, and there is no default role.
    set_claims(provider, "mallory-sub", email="mallory@example.com", groups=["sales"])
    location, _, _ = sign_in(server, "mallory-sub")
    assert location.startswith("/signin?"), location
    message = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["sso_error"][0]
    assert "no milkglass role" in message, message

    # A callback made in one browser, opened in another (a forged sign-in link), is refused.
    set_claims(provider, "alice-sub", email="alice@example.com", preferred_username="alice", groups=["ml"])
    _, _, callback = sign_in_until_callback(server, "alice-sub")
    stranger = requests.get(callback, allow_redirects=False, timeout=30)
    assert stranger.status_code == 302
    assert stranger.headers["location"].startswith("/signin?sso_error="), stranger.headers["location"]
    assert "#session=" not in stranger.headers["location"]

    entries = requests.get(f"{server['url']}/api/audit", headers={"Authorization": f"Bearer {server['admin']}"},
                           timeout=10).json()["entries"]
    failed = [e for e in entries if e["query"] == "GET /auth/oidc/callback"]
    reasons = " | ".join(e["reason"] for e in failed)
    assert all(e["decision"] == "unauthenticated" and e["user"] == "(unknown)" for e in failed), failed
    assert "mallory" in reasons and "not started in this browser" in reasons, reasons
    assert all(e["reason"].endswith("from 127.0.0.1") for e in failed), reasons


def sign_in_until_callback(server, sub):
    """The first half of a sign-in: the callback URL the provider sends the browser to, not yet opened."""
    browser = requests.Session()
    start = browser.get(f"{server['url']}/auth/oidc/login", allow_redirects=False, timeout=10)
    approved = browser.post(start.headers["location"], data={"sub": sub}, allow_redirects=False, timeout=10)
    return start, browser, approved.headers["location"]
