// Unit tests of the in-browser signers (no browser needed: Node 20 has the same WebCrypto).
import { test } from "node:test";
import assert from "node:assert/strict";
import { presign, s3ObjectUrl, parseAwsCredentials, parseBucketUrl } from "../../web/src/raw/sigv4.js";
import { gcsStringToSign, signGcsUrl } from "../../web/src/raw/gcs.js";

test("SigV4 presigned URL matches AWS's documented example", async () => {
  // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", Example: presigned URL.
  const url = await presign({
    url: "https://examplebucket.s3.amazonaws.com/test.txt",
    credentials: { accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" },
    region: "us-east-1",
    date: new Date("2013-05-24T00:00:00Z"),
    expires: 86400,
  });
  assert.equal(
    url,
    "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256" +
      "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request" +
      "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host" +
      "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
  );
});

test("session tokens are signed into the query", async () => {
  const url = await presign({
    url: "http://127.0.0.1:5000/b/k.png",
    credentials: { accessKeyId: "AK", secretAccessKey: "SK", sessionToken: "to/ken+=" },
    region: "us-east-1",
    date: new Date("2013-05-24T00:00:00Z"),
  });
  assert.match(url, /^http:\/\/127\.0\.0\.1:5000\/b\/k\.png\?/);
  assert.match(url, /&X-Amz-Security-Token=to%2Fken%2B%3D&X-Amz-SignedHeaders=host&X-Amz-Signature=[0-9a-f]{64}$/);
});

test("S3 object URLs: path style with an endpoint, virtual host on AWS", () => {
  assert.equal(s3ObjectUrl("b", "cats/b b.png", "us-east-1", "http://127.0.0.1:5000/"), "http://127.0.0.1:5000/b/cats/b%20b.png");
  assert.equal(s3ObjectUrl("b", "x/(1).png", "eu-west-1"), "https://b.s3.eu-west-1.amazonaws.com/x/%281%29.png");
  assert.equal(s3ObjectUrl("my.bucket", "k", "eu-west-1"), "https://s3.eu-west-1.amazonaws.com/my.bucket/k");
  assert.deepEqual(parseBucketUrl("gs://b/a/c.png"), { scheme: "gs", bucket: "b", key: "a/c.png" });
  assert.equal(parseBucketUrl("https://x/y"), null);
});

test("AWS credentials parse from JSON and INI", () => {
  const want = { accessKeyId: "AKID", secretAccessKey: "SECRET" };
  assert.deepEqual(parseAwsCredentials('{"aws_access_key_id": "AKID", "aws_secret_access_key": "SECRET"}'), want);
  assert.deepEqual(parseAwsCredentials('{"Credentials": {"AccessKeyId": "AKID", "SecretAccessKey": "SECRET", "SessionToken": "T"}}'), { ...want, sessionToken: "T" });
  assert.deepEqual(
    parseAwsCredentials("[other]\naws_access_key_id=X\naws_secret_access_key=Y\n\n[default]\naws_access_key_id = AKID\naws_secret_access_key = SECRET\nregion = eu-west-1\n"),
    { ...want, region: "eu-west-1" },
  );
  assert.throws(() => parseAwsCredentials("[default]\nfoo = bar"), /no access key id/);
});

test("GCS V4 signature verifies with the service account's public key", async () => {
  const pair = await crypto.subtle.generateKey(
    { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
  const o = { bucket: "b", key: "dir/a b.png", clientEmail: "sa@p.iam.gserviceaccount.com", date: new Date("2024-01-02T03:04:05Z"), expires: 3600 };
  const { canonical, stringToSign } = await gcsStringToSign(o);
  assert.equal(
    canonical,
    "GET\n/b/dir/a%20b.png\nX-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20240102%2Fauto%2Fstorage%2Fgoog4_request" +
      "&X-Goog-Date=20240102T030405Z&X-Goog-Expires=3600&X-Goog-SignedHeaders=host\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD",
  );
  const url = await signGcsUrl({ ...o, privateKey: pair.privateKey });
  const sig = new URL(url).searchParams.get("X-Goog-Signature");
  assert.ok(url.startsWith("https://storage.googleapis.com/b/dir/a%20b.png?X-Goog-Algorithm=GOOG4-RSA-SHA256&"));
  const bytes = Uint8Array.from(sig.match(/../g), (h) => parseInt(h, 16));
  assert.ok(await crypto.subtle.verify("RSASSA-PKCS1-v1_5", pair.publicKey, bytes, new TextEncoder().encode(stringToSign)));
});
