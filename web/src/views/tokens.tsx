// The signed-in user's own tokens: personal tokens for the SDK and notebooks (each expires, at most in a
// year), and the sessions single sign-on made. A new token's text is shown once; revoking one ends it at once.
import { useState } from "preact/hooks";
import { api } from "../api";
import { Confirmed, Empty, ErrorBox, HeadRow, Spinner, useAction, useAsync } from "../ui";

interface TokenInfo {
  id: number;
  created_at: string;
  revoked_at: string | null;
  expires_at: string | null;
  label: string | null;
}

const when = (at: string) => new Date(at).toLocaleString();
const stateOf = (t: TokenInfo) =>
  t.revoked_at ? `revoked ${when(t.revoked_at)}` : t.expires_at && new Date(t.expires_at) <= new Date() ? "expired" : "active";

export function PersonalTokens() {
  const [changed, setChanged] = useState(0);
  const tokens = useAsync((signal) => api<{ tokens: TokenInfo[] }>("/api/tokens", { signal }), [changed]);
  const [label, setLabel] = useState("");
  const [days, setDays] = useState(90);
  const [minted, setMinted] = useState<string | null>(null);
  const { run, error, busy } = useAction();
  const mint = (e: Event) => {
    e.preventDefault();
    run(async () => {
      const t = await api<{ token: string }>("/api/tokens", { method: "POST", json: { label: label || null, expires_in_days: days } });
      setMinted(t.token);
      setLabel("");
      setChanged((n) => n + 1);
    });
  };
  const revoke = (id: number) => run(async () => (await api(`/api/tokens/${id}`, { method: "DELETE" }), setChanged((n) => n + 1)));
  return (
    <section class="card" aria-labelledby="tokens-h">
      <h2 id="tokens-h">Your tokens</h2>
      <p>
        A personal token signs the SDK or a notebook in as you, with your rights: <code>milkglass.connect(url, token)</code>. It expires
        after the days you choose (at most 365).
      </p>
      <form class="row" onSubmit={mint} aria-label="Mint a personal token">
        <label>
          For
          <input name="label" value={label} maxLength={100} placeholder="notebook" onInput={(e) => setLabel(e.currentTarget.value)} />
        </label>
        <label>
          Days
          <input name="expires_in_days" type="number" min={1} max={365} value={days} onInput={(e) => setDays(Number(e.currentTarget.value))} />
        </label>
        <button type="submit" class="primary" name="mint_own_token" disabled={busy}>
          Mint a token
        </button>
      </form>
      {minted && (
        <p class="state ok" role="status" data-minted>
          Copy it now, it is not shown again: <code>{minted}</code>
        </p>
      )}
      {error != null && <ErrorBox error={error} />}
      {tokens.error ? (
        <ErrorBox error={tokens.error} retry={tokens.reload} />
      ) : !tokens.data ? (
        <Spinner />
      ) : tokens.data.tokens.length === 0 ? (
        <Empty>No tokens.</Empty>
      ) : (
        <table class="result">
          <HeadRow columns={["token", "for", "issued", "expires", "state", ""]} />
          <tbody>
            {tokens.data.tokens.map((t) => (
              <tr key={t.id} data-token={t.id} data-state={stateOf(t)}>
                <th scope="row">#{t.id}</th>
                <td>{t.label ?? ""}</td>
                <td>{when(t.created_at)}</td>
                <td>{t.expires_at ? when(t.expires_at) : "never"}</td>
                <td>{stateOf(t)}</td>
                <td>{stateOf(t) === "active" && <Confirmed label={`Revoke token #${t.id}`} name="revoke_own_token" onConfirm={() => revoke(t.id)} />}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
