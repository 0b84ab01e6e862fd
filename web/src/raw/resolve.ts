// Where the browser loads each raw file from, by the project's access mode. The server never fetches
// pixels for the grid: public URLs load directly, hosted keys and mirrored copies become URLs signed
// by milkglass (one batched resolve call per page), and bucket paths are signed here, in the browser.
import { api, enc, type Project } from "../api";
import { aws, credentialsEpoch, gcs } from "./credentials";
import { parseBucketUrl, presign, s3ObjectUrl } from "./sigv4.js";
import { signGcsUrl } from "./gcs.js";

export type Via = "public" | "hosted" | "mirror" | "s3" | "gs";
export interface Source {
  url: string;
  /** What to put in `src`, or null with a `reason` saying why nothing can be shown. */
  src: string | null;
  via?: Via;
  reason?: string;
  /** Tooltip: where the pixels come from. */
  title: string;
}

const VIA_TEXT: Record<Via, string> = {
  public: "public URL, loaded directly by your browser",
  hosted: "hosted file, URL signed by milkglass",
  mirror: "milkglass's mirror copy, URL signed by milkglass",
  s3: "private S3 object, URL signed in your browser (your keys never leave it)",
  gs: "private GCS object, URL signed in your browser (your key never leaves it)",
};

interface Cached {
  source: Source;
  until: number;
  epoch: number;
}
const cache = new Map<string, Cached>();
const SIGNED_FOR = 3600;

function ok(url: string, src: string, via: Via): Source {
  return { url, src, via, title: `${VIA_TEXT[via]}\n${url}` };
}
function fail(url: string, reason: string): Source {
  return { url, src: null, reason, title: `${url}\n${reason}` };
}

/** Sources of URLs the browser can handle alone: http(s) as is, s3:// and gs:// signed with local keys. */
async function local(url: string): Promise<Source> {
  if (/^https?:\/\//i.test(url)) return ok(url, url, "public");
  const b = parseBucketUrl(url);
  if (b?.scheme === "s3") {
    const c = aws.value;
    if (!c) return fail(url, "an s3:// path: load AWS credentials on the Settings page to sign it in your browser");
    const unsigned = s3ObjectUrl(b.bucket, b.key, c.region, c.endpoint || undefined);
    return ok(url, await presign({ url: unsigned, credentials: c, region: c.region, expires: SIGNED_FOR }), "s3");
  }
  if (b?.scheme === "gs") {
    const c = gcs.value;
    if (!c) return fail(url, "a gs:// path: load a GCP service-account key on the Settings page to sign it in your browser");
    return ok(url, await signGcsUrl({ bucket: b.bucket, key: b.key, clientEmail: c.clientEmail, privateKey: c.key, expires: SIGNED_FOR }), "gs");
  }
  return fail(url, `the browser cannot load this kind of URL: ${url.slice(0, 80)}`);
}

interface Resolved {
  url: string;
  load_url: string | null;
  via: string;
  expires_at?: number;
  reason?: string;
}

/** Sources for many URLs at once; at most one resolve request per 1000 URLs that need the server. */
export async function resolveSources(project: Project, urls: string[]): Promise<Map<string, Source>> {
  const now = Date.now();
  const epoch = credentialsEpoch.peek();
  const out = new Map<string, Source>();
  const toServer: string[] = [];
  const toLocal: string[] = [];
  for (const url of new Set(urls)) {
    const c = cache.get(url);
    if (c && c.until > now && c.epoch === epoch) out.set(url, c.source);
    else if (url.startsWith("hosted:") || project.access_mode === "mirrored") toServer.push(url);
    else toLocal.push(url);
  }
  const remember = (s: Source, until: number) => {
    out.set(s.url, s);
    cache.set(s.url, { source: s, until, epoch });
  };
  for (let i = 0; i < toServer.length; i += 1000) {
    const chunk = toServer.slice(i, i + 1000);
    try {
      const r = await api<{ urls: Resolved[] }>(`/api/projects/${enc(project.name)}/assets/resolve`, {
        method: "POST",
        json: { urls: chunk },
      });
      for (const x of r.urls) {
        const until = x.expires_at ? x.expires_at * 1000 - 60_000 : now + 600_000;
        if (!x.load_url) remember(fail(x.url, x.reason ?? "milkglass has no copy of this file"), now + 30_000);
        else if (x.via === "hosted" || x.via === "mirror") remember(ok(x.url, x.load_url, x.via), until);
        else toLocal.push(x.url); // `browser`: returned as given, so the browser's own rules apply
      }
    } catch (e) {
      // Not cached: the next page load asks again.
      for (const url of chunk) out.set(url, fail(url, `milkglass could not resolve it: ${(e as Error).message}`));
    }
  }
  await Promise.all(
    toLocal.map(async (url) => {
      try {
        remember(await local(url), now + (SIGNED_FOR - 120) * 1000);
      } catch (e) {
        out.set(url, fail(url, `signing failed: ${(e as Error).message}`));
      }
    }),
  );
  return out;
}

/** Every raw-file URL of a frame worth resolving with its page: sensors and mask images. */
export function frameUrls(f: { sensors: { kind: string; url: string }[]; labels?: { geometry: any }[]; inferences?: { geometry: any }[] }): string[] {
  const urls = f.sensors.filter((s) => s.kind !== "text").map((s) => s.url);
  for (const l of [...(f.labels ?? []), ...(f.inferences ?? [])]) if (typeof l.geometry?.url === "string") urls.push(l.geometry.url);
  return urls;
}
