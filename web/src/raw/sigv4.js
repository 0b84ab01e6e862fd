// AWS Signature Version 4 query-string presigning for S3 GET URLs, done in the browser with WebCrypto.
//
// Plain JavaScript (checked by tsc through JSDoc) so that the node:test known-answer test in tests/ui/
// can import this very file without a build step. It needs only `crypto.subtle`, which browsers and
// Node 20 both have. Credentials never leave this module except as the signature they produce.

const enc = new TextEncoder();

/** RFC 3986 percent-encoding as SigV4 wants it: everything but A-Z a-z 0-9 - . _ ~ is escaped. */
export function uriEncode(/** @type {string} */ s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

/** Encode an object key path segment by segment, keeping the slashes. */
export function encodeKey(/** @type {string} */ key) {
  return key.split("/").map(uriEncode).join("/");
}

function hex(/** @type {ArrayBuffer} */ buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256Hex(/** @type {string} */ s) {
  return hex(await crypto.subtle.digest("SHA-256", enc.encode(s)));
}

/**
 * @param {ArrayBuffer | Uint8Array<ArrayBuffer>} key
 * @param {string} msg
 */
async function hmac(key, msg) {
  const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return crypto.subtle.sign("HMAC", k, enc.encode(msg));
}

// The derived signing key depends only on the secret, the day, the region and the service: cache it so
// that signing a page of a hundred URLs costs one HMAC each instead of five.
/** @type {Map<string, Promise<ArrayBuffer>>} */
const keyCache = new Map();

/**
 * @param {string} secret
 * @param {string} day
 * @param {string} region
 * @param {string} service
 */
function signingKey(secret, day, region, service) {
  const id = [secret, day, region, service].join("\n");
  let key = keyCache.get(id);
  if (!key) {
    key = (async () => {
      let k = await hmac(enc.encode("AWS4" + secret), day);
      k = await hmac(k, region);
      k = await hmac(k, service);
      return hmac(k, "aws4_request");
    })();
    if (keyCache.size > 16) keyCache.clear();
    keyCache.set(id, key);
  }
  return key;
}

/** Drop cached signing keys (on "Forget credentials"). */
export function clearSigningKeys() {
  keyCache.clear();
}

/** `20130524T000000Z` for a Date. */
export function amzDate(/** @type {Date} */ d) {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

/**
 * @typedef {{accessKeyId: string, secretAccessKey: string, sessionToken?: string}} AwsCredentials
 */

/**
 * Presign a GET of `url` (already path-encoded, no query) for SigV4 with an unsigned payload.
 * @param {{url: string, credentials: AwsCredentials, region: string, service?: string, date?: Date, expires?: number}} o
 * @returns {Promise<string>} the presigned URL
 */
export async function presign({ url, credentials, region, service = "s3", date = new Date(), expires = 3600 }) {
  const u = new URL(url);
  const datetime = amzDate(date);
  const day = datetime.slice(0, 8);
  const scope = `${day}/${region}/${service}/aws4_request`;
  /** @type {[string, string][]} */
  const params = [
    ["X-Amz-Algorithm", "AWS4-HMAC-SHA256"],
    ["X-Amz-Credential", `${credentials.accessKeyId}/${scope}`],
    ["X-Amz-Date", datetime],
    ["X-Amz-Expires", String(expires)],
    ["X-Amz-SignedHeaders", "host"],
  ];
  if (credentials.sessionToken) params.push(["X-Amz-Security-Token", credentials.sessionToken]);
  params.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const query = params.map(([k, v]) => `${uriEncode(k)}=${uriEncode(v)}`).join("&");
  // `u.host` keeps a non-default port, as the Host header the browser will send does.
  const canonical = ["GET", u.pathname || "/", query, `host:${u.host}`, "", "host", "UNSIGNED-PAYLOAD"].join("\n");
  const toSign = ["AWS4-HMAC-SHA256", datetime, scope, await sha256Hex(canonical)].join("\n");
  const signature = hex(await hmac(await signingKey(credentials.secretAccessKey, day, region, service), toSign));
  return `${u.origin}${u.pathname}?${query}&X-Amz-Signature=${signature}`;
}

/**
 * The unsigned HTTPS URL of an S3 object. With an endpoint (an S3-compatible server such as MinIO or
 * moto) requests are path-style, `ENDPOINT/bucket/key`; on AWS they are virtual-host style, except for
 * bucket names with dots, which would not match the wildcard TLS certificate.
 * @param {string} bucket
 * @param {string} key
 * @param {string} region
 * @param {string} [endpoint]
 */
export function s3ObjectUrl(bucket, key, region, endpoint) {
  const path = encodeKey(key);
  if (endpoint) return `${endpoint.replace(/\/+$/, "")}/${uriEncode(bucket)}/${path}`;
  if (bucket.includes(".")) return `https://s3.${region}.amazonaws.com/${bucket}/${path}`;
  return `https://${bucket}.s3.${region}.amazonaws.com/${path}`;
}

/**
 * Split `s3://bucket/key` or `gs://bucket/key`.
 * @param {string} url
 * @returns {{scheme: "s3" | "gs", bucket: string, key: string} | null}
 */
export function parseBucketUrl(url) {
  const m = /^(s3|gs):\/\/([^/]+)\/(.+)$/.exec(url);
  if (!m) return null;
  return { scheme: /** @type {"s3" | "gs"} */ (m[1]), bucket: m[2], key: m[3] };
}

/**
 * Read AWS credentials from the JSON shapes people have at hand (`aws configure export-credentials`,
 * `sts get-session-token`'s `Credentials`, boto-style snake case) or from an INI credentials file
 * (the `[default]` profile, or the first one).
 * @param {string} text
 * @returns {AwsCredentials & {region?: string}}
 */
export function parseAwsCredentials(text) {
  const t = text.trim();
  /** @type {Record<string, string>} */
  let fields = {};
  if (t.startsWith("{")) {
    /** @type {any} */
    let obj = JSON.parse(t);
    if (obj.Credentials && typeof obj.Credentials === "object") obj = { ...obj, ...obj.Credentials };
    for (const [k, v] of Object.entries(obj)) if (typeof v === "string") fields[k.toLowerCase()] = v;
  } else {
    /** @type {Record<string, Record<string, string>>} */
    const profiles = {};
    let current = "default";
    for (const raw of t.split(/\r?\n/)) {
      const line = raw.trim();
      if (!line || line.startsWith("#") || line.startsWith(";")) continue;
      const section = /^\[\s*(?:profile\s+)?([^\]]+?)\s*\]$/.exec(line);
      if (section) {
        current = section[1];
        continue;
      }
      const eq = line.indexOf("=");
      if (eq < 0) continue;
      (profiles[current] ??= {})[line.slice(0, eq).trim().toLowerCase()] = line.slice(eq + 1).trim();
    }
    fields = profiles.default ?? Object.values(profiles)[0] ?? {};
  }
  const pick = (/** @type {string[]} */ ...names) => names.map((n) => fields[n]).find((v) => v);
  const accessKeyId = pick("aws_access_key_id", "accesskeyid", "access_key_id");
  const secretAccessKey = pick("aws_secret_access_key", "secretaccesskey", "secret_access_key");
  if (!accessKeyId || !secretAccessKey) {
    throw new Error("no access key id and secret access key found (expected aws_access_key_id and aws_secret_access_key, or AccessKeyId and SecretAccessKey)");
  }
  const sessionToken = pick("aws_session_token", "sessiontoken", "session_token");
  const region = pick("region", "aws_region");
  return { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}), ...(region ? { region } : {}) };
}
