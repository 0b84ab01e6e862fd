"""S3 access end to end: a real milkglass server against moto's S3 and STS server on loopback, with
IAM authentication on (every request after the set-up must carry a valid SigV4 signature of a key
moto issued, and IAM policies decide what each identity may do).

Identities in the moto account:
- ``admin``: sets things up (boto3, like the bucket owner's console);
- ``owner``: a key pair the project owner hands to milkglass (may read ``user-images``);
- ``milkglass``: the server's own identity; may only call ``sts:AssumeRole``, never read a bucket;
- role ``reader``: may read ``user-images``; the project names it and milkglass assumes it.
"""

import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.request

import boto3
import botocore
import pytest
import requests

from conftest import BIN, free_port, milkglass

BUCKET = "user-images"
OBJECTS = {"cats/a.png": b"\x89PNG bytes of a", "cats/b b.png": b"\x89PNG bytes of b"}
READ_BUCKET = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}


class Moto:
    def __init__(self, iam_checks=True):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # The first three requests (the admin's user, key and policy) go unauthenticated; every
        # later one is checked.
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3" if iam_checks else "inf")
        self.process = subprocess.Popen(
            ["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.time() < deadline, "moto did not start"
                time.sleep(0.1)
        iam = self.client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="admin")
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        self.admin = (key["AccessKeyId"], key["SecretAccessKey"])
        iam = self.client("iam", *self.admin)
        s3 = self.client("s3", *self.admin)
        s3.create_bucket(Bucket=BUCKET)
        for key, body in OBJECTS.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        self.owner = self.user(iam, "owner", READ_BUCKET)
        self.milkglass = self.user(iam, "milkglass", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]})
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
        self.role_arn = iam.create_role(RoleName="reader", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName="reader", PolicyName="read", PolicyDocument=json.dumps(READ_BUCKET))

    def client(self, service, key_id, secret):
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    @staticmethod
    def user(iam, name, policy):
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def moto():
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_storage():
    """A bucket server for the hosted store. Its IAM checks are off: moto's signature check refuses
    object_store's list requests (a prefix with `/` in the query), which AWS itself accepts."""
    server = Moto(iam_checks=False)
    yield server
    server.stop()


class Milkglass:
    """A milkglass server with an admin, started with extra arguments and environment."""

    def __init__(self, *args, env=None):
        self.dir = tempfile.mkdtemp(prefix="milkglass-s3-")
        self.token = milkglass("user", "add", "admin", "--role", "admin", "--data-dir", self.dir).strip().splitlines()[-1]
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(
            [BIN, "serve", "--data-dir", self.dir, "--http-addr", f"127.0.0.1:{port}",
             "--flight-addr", f"127.0.0.1:{free_port()}", *args],
            stdout=subprocess.PIPE, text=True, env={**clean, **(env or {})},
        )
        assert self.process.stdout.readline().startswith("milkglass serving")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method, path, **kwargs):
        return self.http.request(method, self.base + path, timeout=60, **kwargs)

    def project(self, name, mode, fetch=None):
        r = self.call("POST", "/api/projects", json={"name": name, "access_mode": mode,
                                                     "classes": [{"id": 0, "name": "cat"}]})
        assert r.status_code == 201, r.text
        assert self.call("POST", f"/api/projects/{name}/datasets", json={"name": "d"}).status_code == 201
        if fetch is not None:
            r = self.call("PUT", f"/api/projects/{name}/fetch", json=fetch)
            assert r.status_code == 200, r.text
            return r.json()

    def upload(self, project, urls):
        lines = "\n".join(json.dumps({
            "frame_id": f"f{i}", "sensors": [{"sensor_id": "cam", "kind": "image", "url": url}],
            "embedding": [0.1, 0.2, 0.3],
        }) for i, url in enumerate(urls))
        r = self.call("POST", f"/api/projects/{project}/datasets/d/frames", data=lines,
                      headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 200, r.text

    def url_check(self, project):
        r = self.call("POST", f"/api/projects/{project}/datasets/d/url_check")
        assert r.status_code == 200, r.text
        return r.json()

    def report_after_upload(self, project):
        """The URL report the server makes in the background after an upload (a mirrored project
        mirrors first)."""
        deadline = time.time() + 60
        while True:
            r = self.call("GET", f"/api/projects/{project}/datasets/d/url_report")
            if r.status_code == 200:
                return r.json()
            assert time.time() < deadline, "no URL report after the upload"
            time.sleep(0.1)

    def mirror(self, project):
        r = self.call("POST", f"/api/projects/{project}/datasets/d/mirror")
        assert r.status_code == 200, r.text
        return r.json()

    def load(self, project, url):
        """The bytes the browser gets for a data URL, through the URL milkglass hands out."""
        r = self.call("POST", f"/api/projects/{project}/assets/resolve", json={"urls": [url]})
        assert r.status_code == 200, r.text
        load_url = r.json()["urls"][0]["load_url"]
        assert load_url, r.text
        return requests.get(load_url, timeout=10)

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def start():
    servers = []

    def start(*args, env=None):
        servers.append(Milkglass(*args, env=env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def urls(*keys):
    return [f"s3://{BUCKET}/{key}" for key in keys]


def test_owner_keys_mirror_each_object_once(moto, start):
    server = start("--fetch-allow", "127.0.0.1")
    key_id, secret = moto.owner
    shown = server.project("keys", "mirrored", {"s3": {"endpoint": moto.endpoint, "access_key_id": key_id,
                                                       "secret_access_key": secret}})
    assert shown["s3"]["access_key_id"] == key_id
    assert shown["s3"]["secret_access_key"] == "(set)", "secrets are write-only"
    assert secret not in json.dumps(server.call("GET", "/api/projects/keys/fetch").json())

    server.upload("keys", urls("cats/a.png", "cats/b%20b.png", "cats/missing.png"))
    at_upload = server.report_after_upload("keys")
    assert at_upload["counts"]["reachable"] == 2, at_upload
    again = server.mirror("keys")
    assert (again["fetched"], again["already_mirrored"]) == (0, 2), again
    assert "404" in again["failed"][0]["error"], again

    assert server.load("keys", f"s3://{BUCKET}/cats/a.png").content == OBJECTS["cats/a.png"]
    assert server.load("keys", f"s3://{BUCKET}/cats/b%20b.png").content == OBJECTS["cats/b b.png"]
    report = server.url_check("keys")
    assert report["counts"]["reachable"] == 2, report
    assert report["counts"]["invalid"] == 1, report


def test_a_wrong_secret_is_reported_at_the_url_check(moto, start):
    server = start("--fetch-allow", "127.0.0.1")
    key_id, _ = moto.owner
    server.project("wrong", "public", {"s3": {"endpoint": moto.endpoint, "access_key_id": key_id,
                                              "secret_access_key": "not-the-secret"}})
    server.upload("wrong", urls("cats/a.png"))
    report = server.url_check("wrong")
    assert report["counts"]["browser_only"] == 1, report
    assert "403" in report["examples"]["browser_only"][0]["reason"], report


def test_milkglass_assumes_the_projects_role_with_its_own_identity(moto, start):
    # The server's identity alone may not read the bucket: only the role it assumes may.
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        moto.client("s3", *moto.milkglass).get_object(Bucket=BUCKET, Key="cats/a.png")
    key_id, secret = moto.milkglass
    server = start("--fetch-allow", "127.0.0.1", env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret})
    shown = server.project("role", "mirrored", {"s3": {"endpoint": moto.endpoint, "role_arn": moto.role_arn}})
    external_id = shown["external_id"]
    assert len(external_id) == 32 and int(external_id, 16) >= 0, shown

    server.upload("role", urls("cats/a.png", "cats/b%20b.png"))
    result = server.mirror("role")
    assert result["failed_count"] == 0, result
    assert server.load("role", f"s3://{BUCKET}/cats/a.png").content == OBJECTS["cats/a.png"]
    assert server.url_check("role")["counts"]["reachable"] == 2

    # The external id is made once: settings written again keep it.
    again = server.call("PUT", "/api/projects/role/fetch",
                        json={"s3": {"endpoint": moto.endpoint, "role_arn": moto.role_arn}}).json()
    assert again["external_id"] == external_id


def test_a_role_needs_a_server_identity(moto, start):
    server = start("--fetch-allow", "127.0.0.1")
    server.project("norole", "mirrored", {"s3": {"endpoint": moto.endpoint, "role_arn": moto.role_arn}})
    server.upload("norole", urls("cats/a.png"))
    result = server.mirror("norole")
    assert result["failed_count"] == 1, result
    assert "AWS_ACCESS_KEY_ID" in result["failed"][0]["error"], result


def test_an_s3_endpoint_on_loopback_is_refused_unless_allowed(moto, start):
    server = start()  # no --fetch-allow: loopback is off limits, for S3 endpoints too
    key_id, secret = moto.owner
    server.project("ssrf", "mirrored")
    # Refused when saved, by the fetcher's own rules, so no setting waits to be refused later.
    for endpoint, why in [(moto.endpoint, "loopback"), ("http://169.254.169.254", "link-local"),
                          ("http://10.0.0.1:9000", "private"), ("http://[::ffff:127.0.0.1]:9000", "loopback")]:
        r = server.call("PUT", "/api/projects/ssrf/fetch", json={"s3": {
            "endpoint": endpoint, "access_key_id": key_id, "secret_access_key": secret}})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["field"] == "s3.endpoint" and why in error["message"], error
    assert server.call("GET", "/api/projects/ssrf/fetch").json()["s3"] is None, "nothing was saved"
    allowed = start("--fetch-allow", "127.0.0.1")
    allowed.project("ok", "mirrored", {"s3": {"endpoint": moto.endpoint, "access_key_id": key_id,
                                              "secret_access_key": secret}})


def test_s3_urls_without_access_say_what_to_set_up(start):
    server = start("--fetch-allow", "127.0.0.1")
    server.project("none", "mirrored")
    server.upload("none", urls("cats/a.png"))
    assert server.url_check("none")["counts"]["bucket_path"] == 1
    result = server.mirror("none")
    assert "S3 access" in result["failed"][0]["error"], result


@pytest.mark.parametrize("s3, field", [
    ({"access_key_id": "AKID", "secret_access_key": "x", "role_arn": "arn:aws:iam::1:role/r"}, "s3.role_arn"),
    ({"access_key_id": "AKID"}, "s3.secret_access_key"),
    ({"secret_access_key": "x"}, "s3.access_key_id"),
    ({}, "s3"),
    ({"role_arn": "reader"}, "s3.role_arn"),
    ({"role_arn": "arn:aws:iam::1:role/r", "region": "EU WEST"}, "s3.region"),
    ({"role_arn": "arn:aws:iam::1:role/r", "endpoint": "file:///etc/passwd"}, "s3.endpoint"),
    ({"role_arn": "arn:aws:iam::1:role/r", "sts_endpoint": "gopher://x"}, "s3.sts_endpoint"),
    ({"role_arn": "arn:aws:iam::1:role/r", "bucket": "x"}, "bucket"),
])
def test_bad_s3_settings_are_refused_and_change_nothing(start, s3, field):
    server = start()
    server.project("bad", "mirrored", {"headers": {"X-Kept": "1"}})
    r = server.call("PUT", "/api/projects/bad/fetch", json={"s3": s3})
    assert r.status_code == 400, r.text
    assert field in r.text, r.text
    kept = server.call("GET", "/api/projects/bad/fetch").json()
    assert kept["headers"] == {"X-Kept": "(set)"} and kept["s3"] is None, kept


def test_hosted_files_can_live_in_a_bucket(moto_storage, start):
    moto = moto_storage
    admin_s3 = moto.client("s3", *moto.admin)
    admin_s3.create_bucket(Bucket="milkglass-hosted")
    key_id, secret = moto.admin
    server = start("--asset-store", "s3://milkglass-hosted/prod", env={
        "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.endpoint, "AWS_ALLOW_HTTP": "true"})
    server.project("hosted", "hosted")
    r = server.call("POST", "/api/projects/hosted/assets/sign", json={"keys": ["cats/a.png"], "put": True})
    assert r.status_code == 200, r.text
    urls = r.json()["urls"][0]
    body = bytes(range(256)) * 64
    put = requests.put(urls["put_url"], data=body, timeout=10)
    assert put.status_code == 201, put.text
    assert requests.put(urls["put_url"] + "0", data=b"x", timeout=10).status_code == 403

    # The object is in the bucket, under the project's id, and nowhere on the server's disk.
    listed = [o["Key"] for o in admin_s3.list_objects_v2(Bucket="milkglass-hosted")["Contents"]]
    assert len(listed) == 1 and listed[0].startswith("prod/") and listed[0].endswith("/cats/a.png"), listed
    assert not (pathlib.Path(server.dir) / "assets").exists() or not any((pathlib.Path(server.dir) / "assets").rglob("a.png"))

    got = requests.get(urls["get_url"], timeout=10)
    assert got.status_code == 200 and got.content == body
    assert got.headers["content-type"] == "image/png"
    assert got.headers["access-control-allow-origin"] == "*"
    ranged = requests.get(urls["get_url"], headers={"Range": "bytes=10-19"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == body[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(body)}"
    cached = requests.get(urls["get_url"], headers={"If-None-Match": got.headers["etag"]}, timeout=10)
    assert cached.status_code == 304
    tampered = urls["get_url"].replace("sig=", "sig=0")
    assert requests.get(tampered, timeout=10).status_code == 403

    server.upload("hosted", ["hosted:cats/a.png", "hosted:cats/none.png"])
    report = server.url_check("hosted")
    assert (report["counts"]["reachable"], report["counts"]["invalid"]) == (1, 1), report

    # Deleting the project deletes its objects.
    assert server.call("DELETE", "/api/projects/hosted").status_code == 204
    assert admin_s3.list_objects_v2(Bucket="milkglass-hosted").get("KeyCount", 0) == 0
    # The project's URLs die with it (403, as for a forged URL), and its objects are gone.
    assert requests.get(urls["get_url"], timeout=10).status_code == 403


def test_an_unusable_asset_store_stops_the_start():
    directory = tempfile.mkdtemp(prefix="milkglass-s3-")
    out = subprocess.run([BIN, "serve", "--data-dir", directory, "--http-addr", f"127.0.0.1:{free_port()}",
                          "--flight-addr", f"127.0.0.1:{free_port()}", "--asset-store", "ftp://bucket/x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--asset-store" in out.stderr and "s3://BUCKET" in out.stderr, out.stderr
    assert "milkglass serving" not in out.stdout
