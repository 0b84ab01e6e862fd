"""A private S3 bucket for the browser test: moto's S3 behind a small front that checks every
request's SigV4 query signature with botocore (moto itself does not verify presigned URLs), so an
image only shows if the browser signed its URL correctly. Prints one JSON line when ready, then serves
until stdin closes or it is killed.

Usage: python3 s3fixture.py BUCKET DIR_OF_PNGS
"""

import calendar
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer

bucket, pngs = sys.argv[1], Path(sys.argv[2])
KEY_ID = "AKIA" + secrets.token_hex(8).upper()
SECRET = secrets.token_urlsafe(30)
REGION = "eu-west-1"

moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
moto.start()
moto_host, moto_port = moto.get_host_and_port()
moto_url = f"http://{moto_host}:{moto_port}"
s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
keys = []
for p in sorted(pngs.glob("*.png"))[:24]:
    s3.put_object(Bucket=bucket, Key=f"images/{p.name}", Body=p.read_bytes(), ContentType="image/png")
    keys.append(f"images/{p.name}")

seen = []  # every request the front received: method, path and query, headers


def signature_ok(method, url, query):
    if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or "X-Amz-Signature" not in query:
        return "not a presigned URL"
    key_id, day, region, service, _ = query["X-Amz-Credential"].split("/")
    if key_id != KEY_ID or region != REGION or service != "s3":
        return f"wrong credential scope {query['X-Amz-Credential']}"
    signed = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    if time.time() > signed + int(query["X-Amz-Expires"]):
        return "expired"
    auth = S3SigV4QueryAuth(Credentials(KEY_ID, SECRET, query.get("X-Amz-Security-Token")), "s3", REGION, expires=int(query["X-Amz-Expires"]))
    unsigned = url.split("&X-Amz-Signature=")[0]
    req = AWSRequest(method=method, url=unsigned)
    req.context["timestamp"] = query["X-Amz-Date"]
    want = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    return None if want == query["X-Amz-Signature"] else "signature does not match"


class Front(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        seen.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
        url = f"http://{self.headers['Host']}{self.path}"
        problem = signature_ok("GET", url, query)
        if problem:
            body = f"<Error><Code>SignatureDoesNotMatch</Code><Message>{problem}</Message></Error>".encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # Valid: fetch the object from moto as its (authenticated) owner.
        name, _, key = unquote(parts.path).lstrip("/").partition("/")
        try:
            obj = s3.get_object(Bucket=name, Key=key)
        except s3.exceptions.NoSuchKey:
            self.send_response(404)
            self.end_headers()
            return
        data = obj["Body"].read()
        self.send_response(200)
        self.send_header("Content-Type", obj.get("ContentType", "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
threading.Thread(target=front.serve_forever, daemon=True).start()
print(json.dumps({"endpoint": f"http://127.0.0.1:{front.server_address[1]}", "region": REGION, "key_id": KEY_ID, "secret": SECRET, "keys": keys}), flush=True)

# Commands on stdin: "seen" prints the request log as one JSON line; end of input stops.
for line in sys.stdin:
    if line.strip() == "seen":
        print(json.dumps(seen), flush=True)
front.shutdown()
moto.stop()
