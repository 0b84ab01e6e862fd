import { useState } from "preact/hooks";
import { api, setToken } from "../api";
import { useAsync } from "../ui";
import { navigate } from "../route";
import { me } from "../session";

export function SignIn({ next }: { next: string }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const methods = useAsync((signal) => api<{ sso: { login_url: string } | null }>("/api/auth", { signal }), []);
  const ssoError = new URLSearchParams(location.search).get("sso_error");
  const sso = methods.data?.sso;
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setToken(value.trim());
    try {
      me.value = await api("/api/whoami");
      navigate(next || "/", { replace: true });
    } catch (err) {
      setToken(null);
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to milkglass</h1>
        {ssoError && (
          <p class="state error" role="alert" data-sso-error>
            {ssoError}
          </p>
        )}
        {sso && (
          <p>
            <a class="button primary" href={`${sso.login_url}?next=${encodeURIComponent(next || "/")}`} data-sso>
              Sign in with single sign-on
            </a>
          </p>
        )}
        <label>
          Access token
          <input
            type="password"
            name="token"
            autocomplete="off"
            spellcheck={false}
            placeholder="mg_…"
            value={value}
            onInput={(e) => setValue(e.currentTarget.value)}
            required
            autoFocus
          />
        </label>
        {error && (
          <p class="state error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy || !value.trim()}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted">
          An administrator creates tokens with <code>milkglass user add NAME --role ROLE</code>. The token is kept in this tab only
          (sessionStorage) and sent only to this server.
        </p>
      </form>
    </main>
  );
}
