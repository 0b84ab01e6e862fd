// Google Cloud Storage V4 signed URLs (GOOG4-RSA-SHA256) made in the browser from a service-account key.
// The key is imported as a non-extractable WebCrypto key: once imported, not even this page's scripts
// can read the private key back, only sign with it. Plain JavaScript for the same reason as sigv4.js.

import { amzDate, encodeKey, uriEncode } from "./sigv4.js";

const enc = new TextEncoder();

function hex(/** @type {ArrayBuffer} */ buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Import the PEM `private_key` of a service-account JSON key for signing only.
 * @param {string} pem
 * @returns {Promise<CryptoKey>}
 */
export async function importServiceAccountKey(pem) {
  const body = pem.replace(/-----(BEGIN|END) PRIVATE KEY-----/g, "").replace(/\s+/g, "");
  const der = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
  return crypto.subtle.importKey("pkcs8", der, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]);
}

/**
 * The canonical request and string to sign, exposed so that a test can check them.
 * @param {{bucket: string, key: string, clientEmail: string, date: Date, expires: number}} o
 */
export async function gcsStringToSign({ bucket, key, clientEmail, date, expires }) {
  const datetime = amzDate(date);
  const scope = `${datetime.slice(0, 8)}/auto/storage/goog4_request`;
  const path = `/${uriEncode(bucket)}/${encodeKey(key)}`;
  const query = [
    ["X-Goog-Algorithm", "GOOG4-RSA-SHA256"],
    ["X-Goog-Credential", `${clientEmail}/${scope}`],
    ["X-Goog-Date", datetime],
    ["X-Goog-Expires", String(expires)],
    ["X-Goog-SignedHeaders", "host"],
  ]
    .map(([k, v]) => `${uriEncode(k)}=${uriEncode(v)}`)
    .join("&");
  const canonical = ["GET", path, query, "host:storage.googleapis.com", "", "host", "UNSIGNED-PAYLOAD"].join("\n");
  const digest = hex(await crypto.subtle.digest("SHA-256", enc.encode(canonical)));
  return { path, query, canonical, stringToSign: ["GOOG4-RSA-SHA256", datetime, scope, digest].join("\n") };
}

/**
 * A V4 signed GET URL for gs://bucket/key.
 * @param {{bucket: string, key: string, clientEmail: string, privateKey: CryptoKey, date?: Date, expires?: number}} o
 */
export async function signGcsUrl({ bucket, key, clientEmail, privateKey, date = new Date(), expires = 3600 }) {
  const { path, query, stringToSign } = await gcsStringToSign({ bucket, key, clientEmail, date, expires });
  const sig = await crypto.subtle.sign("RSASSA-PKCS1-v1_5", privateKey, enc.encode(stringToSign));
  return `https://storage.googleapis.com${path}?${query}&X-Goog-Signature=${hex(sig)}`;
}
