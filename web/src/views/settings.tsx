// Bucket credentials for signing s3:// and gs:// URLs in this browser. Nothing entered here is sent
// to milkglass: signing happens in the page, and only the bucket's host sees the signed URLs.
import { useState } from "preact/hooks";
import { aws, forgetCredentials, gcs, setAws, setGcs } from "../raw/credentials";
import { PersonalTokens } from "./tokens";

const mask = (s: string) => (s.length > 8 ? `${s.slice(0, 4)}…${s.slice(-2)}` : "…");

async function readFile(e: Event): Promise<string | null> {
  const f = (e.currentTarget as HTMLInputElement).files?.[0];
  return f ? f.text() : null;
}

export function Settings() {
  const a = aws.value;
  const g = gcs.value;
  const [awsText, setAwsText] = useState("");
  const [endpoint, setEndpoint] = useState(a?.endpoint ?? "");
  const [region, setRegion] = useState(a?.region ?? "");
  const [gcsText, setGcsText] = useState("");
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);

  const saveAws = (e: Event) => {
    e.preventDefault();
    try {
      const s = setAws(awsText || (a ? JSON.stringify({ aws_access_key_id: a.accessKeyId, aws_secret_access_key: a.secretAccessKey, aws_session_token: a.sessionToken }) : ""), region, endpoint);
      setAwsText("");
      setMsg({ ok: true, text: `AWS key ${mask(s.accessKeyId)} loaded (region ${s.region}${s.endpoint ? `, endpoint ${s.endpoint}` : ""}).` });
    } catch (err) {
      setMsg({ ok: false, text: `AWS credentials not loaded: ${(err as Error).message}` });
    }
  };
  const saveGcs = async (e: Event) => {
    e.preventDefault();
    try {
      const s = await setGcs(gcsText);
      setGcsText("");
      setMsg({ ok: true, text: `GCS key of ${s.clientEmail} loaded.` });
    } catch (err) {
      setMsg({ ok: false, text: `GCS key not loaded: ${(err as Error).message}` });
    }
  };

  return (
    <main class="settings">
      <h1>Settings</h1>
      <p class="notice">
        Credentials for private buckets stay in this browser. They sign <code>s3://</code> and <code>gs://</code> URLs here, in the page;
        they are never sent to milkglass or to any host but the bucket's own. AWS keys are kept in this tab's memory and sessionStorage
        (gone when the tab closes); a GCS key is imported as a non-extractable key (not even this page can read it back) and kept in this
        browser's IndexedDB until you forget it.
      </p>
      {msg && (
        <p class={`state ${msg.ok ? "ok" : "error"}`} role={msg.ok ? "status" : "alert"}>
          {msg.text}
        </p>
      )}
      <section class="card" aria-labelledby="aws-h">
        <h2 id="aws-h">Amazon S3 and S3-compatible storage</h2>
        <p>
          {a ? (
            <>
              Loaded: key <code>{mask(a.accessKeyId)}</code>
              {a.sessionToken ? " with a session token" : ""}, region <code>{a.region}</code>
              {a.endpoint ? (
                <>
                  , endpoint <code>{a.endpoint}</code> (path-style URLs)
                </>
              ) : (
                " (AWS, virtual-host URLs)"
              )}
              .
            </>
          ) : (
            "No AWS credentials loaded."
          )}
        </p>
        <form onSubmit={saveAws}>
          <label>
            <span>
              Credentials: JSON (<code>AccessKeyId</code>/<code>SecretAccessKey</code>/<code>SessionToken</code> or <code>aws_access_key_id</code>…) or an INI
              credentials file
            </span>
            <textarea
              name="aws_credentials"
              rows={5}
              spellcheck={false}
              autocomplete="off"
              placeholder={"[default]\naws_access_key_id = AKIA…\naws_secret_access_key = …"}
              value={awsText}
              onInput={(e) => setAwsText(e.currentTarget.value)}
            />
          </label>
          <label>
            <span>…or from a file</span> <input type="file" name="aws_file" accept=".json,.ini,.txt,*" onChange={async (e) => setAwsText((await readFile(e)) ?? "")} />
          </label>
          <div class="row">
            <label>
              Region
              <input name="aws_region" placeholder="us-east-1" value={region} onInput={(e) => setRegion(e.currentTarget.value)} />
            </label>
            <label class="grow">
              S3 endpoint (S3-compatible servers only)
              <input name="aws_endpoint" placeholder="http://127.0.0.1:9000" value={endpoint} onInput={(e) => setEndpoint(e.currentTarget.value)} />
            </label>
          </div>
          <button type="submit" class="primary" disabled={!awsText.trim() && !a}>
            {a && !awsText.trim() ? "Update region and endpoint" : "Load AWS credentials"}
          </button>
        </form>
      </section>
      <section class="card" aria-labelledby="gcs-h">
        <h2 id="gcs-h">Google Cloud Storage</h2>
        <p>{g ? <>Loaded: service account <code>{g.clientEmail}</code>.</> : "No GCS key loaded."}</p>
        <form onSubmit={saveGcs}>
          <label>
            Service-account JSON key
            <textarea name="gcs_key" rows={4} spellcheck={false} autocomplete="off" placeholder='{"type": "service_account", "client_email": …, "private_key": …}' value={gcsText} onInput={(e) => setGcsText(e.currentTarget.value)} />
          </label>
          <label>
            <span>…or from a file</span> <input type="file" name="gcs_file" accept=".json" onChange={async (e) => setGcsText((await readFile(e)) ?? "")} />
          </label>
          <button type="submit" class="primary" disabled={!gcsText.trim()}>
            Load GCS key
          </button>
        </form>
      </section>
      <button
        type="button"
        class="danger"
        disabled={!a && !g}
        onClick={async () => {
          await forgetCredentials();
          setEndpoint("");
          setRegion("");
          setMsg({ ok: true, text: "Credentials forgotten: nothing is kept in this browser any more." });
        }}
      >
        Forget credentials
      </button>
      <PersonalTokens />
    </main>
  );
}
