// The admin's desk: users and their global roles; creating a user (their first token shown once); minting
// and revoking a user's tokens (a token's text is shown once, when minted, and never listed); revoking a user;
// and project membership. Every route it calls is admin-only on the server; this page only says so to others.
import { useLayoutEffect, useRef, useState } from "preact/hooks";
import { api, enc, type Project } from "../api";
import { me } from "../session";
import { Confirmed, Empty, ErrorBox, HeadRow, Spinner, fmt, useAction, useAsync } from "../ui";
import { NotYours } from "./tables";

interface UserInfo {
  name: string;
  role: string;
  created_at: string;
  revoked: boolean;
  active_tokens: number;
}
interface TokenInfo {
  id: number;
  created_at: string;
  revoked_at: string | null;
}
interface Minted {
  user: string;
  id?: number;
  token: string;
}

const ROLES = ["admin", "owner", "scientist", "viewer"];
const when = (at: string) => new Date(at).toLocaleString();

export function Admin() {
  if (me.value?.role !== "admin") {
    return <NotYours title="Users and projects">Only admins manage users, tokens and project membership.</NotYours>;
  }
  return <AdminDesk />;
}

function AdminDesk() {
  const users = useAsync((signal) => api<{ users: UserInfo[] }>("/api/users", { signal }), []);
  const [selected, setSelected] = useState<string | null>(null);
  const [minted, setMinted] = useState<Minted | null>(null);
  const [tokensChanged, setTokensChanged] = useState(0);
  const action = useAction();
  const act = async (work: () => Promise<unknown>) => {
    if (await action.run(work)) {
      users.reload();
      setTokensChanged((n) => n + 1);
    }
  };
  const list = users.data?.users ?? [];
  return (
    <main class="desk admin">
      <h1>Users and projects</h1>
      {minted && <TokenOnce minted={minted} onDone={() => setMinted(null)} />}
      {action.error != null && <ErrorBox error={action.error} />}
      <div class="admin-grid">
        <section class="card" aria-labelledby="users-heading">
          <h2 id="users-heading">Users</h2>
          {users.error ? (
            <ErrorBox error={users.error} retry={users.reload} />
          ) : !users.data ? (
            <Spinner />
          ) : (
            <table class="result users">
              <HeadRow columns={["user", "role", "created", "tokens", ""]} />
              <tbody>
                {list.map((u) => (
                  <tr key={u.name} data-user={u.name} data-revoked={u.revoked ? "true" : undefined}>
                    <th scope="row">{u.name}</th>
                    <td>
                      {u.revoked ? (
                        <span class="muted">{u.role} (revoked)</span>
                      ) : (
                        <select
                          name="role"
                          aria-label={`role of ${u.name}`}
                          value={u.role}
                          disabled={u.name === me.value?.name}
                          title={u.name === me.value?.name ? "another admin changes your role" : undefined}
                          onChange={(e) => {
                            const role = e.currentTarget.value;
                            act(() => api(`/api/users/${enc(u.name)}`, { method: "PATCH", json: { role } }));
                          }}
                        >
                          {ROLES.map((r) => (
                            <option key={r}>{r}</option>
                          ))}
                        </select>
                      )}
                    </td>
                    <td>{when(u.created_at)}</td>
                    <td class="num">{fmt(u.active_tokens)}</td>
                    <td>
                      <button type="button" name="tokens" aria-pressed={selected === u.name} aria-label={`tokens of ${u.name}`} onClick={() => setSelected(u.name)}>
                        Tokens
                      </button>{" "}
                      {!u.revoked && u.name !== me.value?.name && (
                        <Confirmed label={`Revoke ${u.name}`} name="revoke_user" onConfirm={() => act(() => api(`/api/users/${enc(u.name)}`, { method: "DELETE" }))} />
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <NewUser
            onCreated={(m) => {
              setMinted(m);
              setSelected(m.user);
              users.reload();
            }}
          />
        </section>
        {selected ? (
          <Tokens key={selected} user={selected} changed={tokensChanged} onMint={(m) => (setMinted(m), users.reload())} act={act} />
        ) : (
          <section class="card">
            <h2>Tokens</h2>
            <p class="muted">Choose a user's Tokens to list, mint or revoke theirs.</p>
          </section>
        )}
      </div>
      <Memberships users={list.filter((u) => !u.revoked).map((u) => u.name)} />
    </main>
  );
}

/** A new token's text, the one time it is shown; focus goes to it so that it is read out and copied. */
function TokenOnce({ minted, onDone }: { minted: Minted; onDone: () => void }) {
  const box = useRef<HTMLDivElement>(null);
  const [copied, setCopied] = useState(false);
  useLayoutEffect(() => box.current?.focus(), [minted]);
  return (
    <div class="token-once" role="alert" tabIndex={-1} ref={box} data-token-for={minted.user}>
      <p>
        New token for <strong>{minted.user}</strong>. It is shown only this once: copy it now and hand it over safely.
      </p>
      <code class="token">{minted.token}</code>
      <div class="desk-actions">
        <button
          type="button"
          name="copy_token"
          onClick={() =>
            navigator.clipboard?.writeText(minted.token).then(
              () => setCopied(true),
              () => setCopied(false),
            )
          }
        >
          {copied ? "Copied" : "Copy"}
        </button>
        <button type="button" name="dismiss_token" onClick={onDone}>
          I have copied it
        </button>
      </div>
    </div>
  );
}

/** A destructive button that asks once more. */
function NewUser({ onCreated }: { onCreated: (m: Minted) => void }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState("scientist");
  const { run, error } = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    run(async () => {
      const r = await api<{ user: UserInfo; token: string }>("/api/users", { method: "POST", json: { name: name.trim(), role } });
      setName("");
      onCreated({ user: r.user.name, token: r.token });
    });
  };
  return (
    <form name="new_user" class="row" aria-label="create a user" onSubmit={submit}>
      <label for="new-user-name" class="grow">
        New user
        <input id="new-user-name" name="name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <label for="new-user-role">
        Role
        <select id="new-user-role" name="role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
          {ROLES.map((r) => (
            <option key={r}>{r}</option>
          ))}
        </select>
      </label>
      <button type="submit" class="primary" name="create_user">
        Create
      </button>
      {error != null && <ErrorBox error={error} />}
    </form>
  );
}

function Tokens({ user, changed, onMint, act }: { user: string; changed: number; onMint: (m: Minted) => void; act: (work: () => Promise<unknown>) => Promise<void> }) {
  const tokens = useAsync((signal) => api<{ tokens: TokenInfo[] }>(`/api/users/${enc(user)}/tokens`, { signal }), [user, changed]);
  const mint = () =>
    act(async () => {
      const t = await api<{ id: number; token: string }>(`/api/users/${enc(user)}/tokens`, { method: "POST" });
      onMint({ user, id: t.id, token: t.token });
    });
  return (
    <section class="card tokens" aria-labelledby="tokens-heading" data-user={user}>
      <h2 id="tokens-heading">Tokens of {user}</h2>
      <button type="button" class="primary" name="mint_token" onClick={mint}>
        Mint a token
      </button>
      {tokens.error ? (
        <ErrorBox error={tokens.error} retry={tokens.reload} />
      ) : !tokens.data ? (
        <Spinner />
      ) : tokens.data.tokens.length === 0 ? (
        <Empty>No tokens.</Empty>
      ) : (
        <table class="result">
          <HeadRow columns={["token", "issued", "state", ""]} />
          <tbody>
            {tokens.data.tokens.map((t) => (
              <tr key={t.id} data-token={t.id} data-state={t.revoked_at ? "revoked" : "active"}>
                <th scope="row">#{t.id}</th>
                <td>{when(t.created_at)}</td>
                <td>{t.revoked_at ? `revoked ${when(t.revoked_at)}` : "active"}</td>
                <td>
                  {!t.revoked_at && (
                    <Confirmed label={`Revoke token #${t.id}`} name="revoke_token" onConfirm={() => act(() => api(`/api/users/${enc(user)}/tokens/${t.id}`, { method: "DELETE" }))} />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** Project membership: who is a viewer or an owner of each project. */
function Memberships({ users }: { users: string[] }) {
  const projects = useAsync((signal) => api<{ projects: Project[] }>("/api/projects", { signal }), []);
  const [project, setProject] = useState("");
  const current = project || projects.data?.projects[0]?.name || "";
  const [changed, setChanged] = useState(0);
  const members = useAsync(
    (signal) => (current ? api<{ members: { user: string; role: string }[] }>(`/api/projects/${enc(current)}/members`, { signal }) : Promise.resolve({ members: [] })),
    [current, changed],
  );
  const [user, setUser] = useState("");
  const [role, setRole] = useState("viewer");
  const { run, error } = useAction();
  const change = async (work: () => Promise<unknown>) => {
    if (await run(work)) setChanged((n) => n + 1);
  };
  return (
    <section class="card members" aria-labelledby="members-heading">
      <h2 id="members-heading">Project membership</h2>
      {projects.error ? (
        <ErrorBox error={projects.error} retry={projects.reload} />
      ) : !projects.data ? (
        <Spinner />
      ) : projects.data.projects.length === 0 ? (
        <Empty>No projects yet.</Empty>
      ) : (
        <>
          <label for="members-project" class="inline">
            Project
            <select id="members-project" name="project" value={current} onChange={(e) => setProject(e.currentTarget.value)}>
              {projects.data.projects.map((p) => (
                <option key={p.name}>{p.name}</option>
              ))}
            </select>
          </label>
          {error != null && <ErrorBox error={error} />}
          {members.error ? (
            <ErrorBox error={members.error} retry={members.reload} />
          ) : (
            <table class="result">
              <HeadRow columns={["member", "role", ""]} />
              <tbody>
                {(members.data?.members ?? []).map((m) => (
                  <tr key={m.user} data-member={m.user}>
                    <th scope="row">{m.user}</th>
                    <td>{m.role}</td>
                    <td>
                      <Confirmed label={`Remove ${m.user}`} name="remove_member" onConfirm={() => change(() => api(`/api/projects/${enc(current)}/members/${enc(m.user)}`, { method: "DELETE" }))} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <form
            class="row"
            name="add_member"
            aria-label={`add a member to ${current}`}
            onSubmit={(e) => {
              e.preventDefault();
              if (user) change(() => api(`/api/projects/${enc(current)}/members/${enc(user)}`, { method: "PUT", json: { role } }));
            }}
          >
            <label for="member-user">
              User
              <select id="member-user" name="member" value={user} onChange={(e) => setUser(e.currentTarget.value)}>
                <option value="">choose…</option>
                {users.map((u) => (
                  <option key={u}>{u}</option>
                ))}
              </select>
            </label>
            <label for="member-role">
              As
              <select id="member-role" name="member_role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
                <option>viewer</option>
                <option>owner</option>
              </select>
            </label>
            <button type="submit" name="add_member" disabled={!user}>
              Add or change
            </button>
          </form>
        </>
      )}
    </section>
  );
}
