// Bucket credentials loaded on the Settings page. They stay in this browser: AWS keys in memory and
// sessionStorage (gone with the tab), the GCS private key as a non-extractable CryptoKey in IndexedDB.
// Nothing here is ever sent to milkglass; the signatures they make go only to the bucket's own host.
import { signal } from "@preact/signals";
import { clearSigningKeys, parseAwsCredentials, type AwsCredentials } from "./sigv4.js";
import { importServiceAccountKey } from "./gcs.js";

export interface AwsSettings extends AwsCredentials {
  region: string;
  /** An S3-compatible endpoint (MinIO, moto...): path-style URLs. Empty for AWS itself. */
  endpoint: string;
}
export interface GcsSettings {
  clientEmail: string;
  key: CryptoKey;
}

const AWS_KEY = "milkglass.aws";
function loadAws(): AwsSettings | null {
  try {
    return JSON.parse(sessionStorage.getItem(AWS_KEY) ?? "null");
  } catch {
    return null;
  }
}

export const aws = signal<AwsSettings | null>(loadAws());
export const gcs = signal<GcsSettings | null>(null);
/** Bumped whenever credentials change, so cached signed URLs are dropped. */
export const credentialsEpoch = signal(0);

export function setAws(text: string, region: string, endpoint: string): AwsSettings {
  const c = parseAwsCredentials(text);
  const e = endpoint.trim().replace(/\/+$/, "");
  if (e && !/^https?:\/\/[^/]+$/.test(e)) throw new Error("the endpoint must be like http://127.0.0.1:9000 (scheme, host, optional port)");
  const s: AwsSettings = { ...c, region: region.trim() || c.region || "us-east-1", endpoint: e };
  sessionStorage.setItem(AWS_KEY, JSON.stringify(s));
  aws.value = s;
  credentialsEpoch.value++;
  return s;
}

// ---- GCS: the CryptoKey object itself is stored (structured clone keeps it non-extractable). ----

const DB = "milkglass";
function idb<T>(mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction("keys", mode);
      const req = f(tx.objectStore("keys"));
      req.onsuccess = () => resolve(req.result as T);
      req.onerror = () => reject(req.error);
      tx.oncomplete = () => open.result.close();
    };
  });
}

export async function setGcs(text: string): Promise<GcsSettings> {
  let sa: any;
  try {
    sa = JSON.parse(text);
  } catch {
    throw new Error("a service-account key is a JSON file with client_email and private_key");
  }
  if (typeof sa?.client_email !== "string" || typeof sa?.private_key !== "string") {
    throw new Error("the JSON has no client_email and private_key: download a key of type service_account");
  }
  const s = { clientEmail: sa.client_email, key: await importServiceAccountKey(sa.private_key) };
  await idb("readwrite", (st) => st.put(s, "gcs")).catch(() => undefined); // private mode: memory only
  gcs.value = s;
  credentialsEpoch.value++;
  return s;
}

export async function loadStoredGcs() {
  try {
    const s = await idb<GcsSettings | undefined>("readonly", (st) => st.get("gcs"));
    if (s?.key && s.clientEmail) {
      gcs.value = s;
      credentialsEpoch.value++;
    }
  } catch {
    // No IndexedDB: nothing stored.
  }
}

export async function forgetCredentials() {
  sessionStorage.removeItem(AWS_KEY);
  aws.value = null;
  gcs.value = null;
  clearSigningKeys();
  await idb("readwrite", (st) => st.delete("gcs")).catch(() => undefined);
  credentialsEpoch.value++;
}
