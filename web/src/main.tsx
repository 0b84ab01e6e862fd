// milkglass web app: sign-in, projects, the dataset explorer, the SQL console, and the owner's and admin's
// desks (tables, reviews, audit, users). The server sends metadata; the
// browser fetches pixels itself, from the user's own URLs.
import { render } from "preact";
import { useEffect } from "preact/hooks";
import { api, setToken, token } from "./api";
import { datasetUrl, loc, navigate, onLinkClick } from "./route";
import { helpOpen, me, type Me } from "./session";
import { loadStoredGcs } from "./raw/credentials";
import { ErrorBox, ModeBadge, Spinner, isTyping, useAsync } from "./ui";
import { SignIn } from "./views/signin";
import { Home } from "./views/home";
import { Settings } from "./views/settings";
import { Console } from "./views/console";
import { Audit } from "./views/audit";
import { Tables } from "./views/tables";
import { Admin } from "./views/admin";
import { Reviews, pendingReviews, usePendingReviews } from "./views/reviews";
import { Help } from "./views/help";
import { Explorer } from "./explorer/explorer";
import type { Project } from "./api";
import "./style.css";

loadStoredGcs();

addEventListener("keydown", (e) => {
  if (e.key === "?" && !isTyping(e.target)) {
    helpOpen.value = !helpOpen.value;
    e.preventDefault();
  } else if (e.key === "Escape" && helpOpen.value) {
    helpOpen.value = false;
    e.stopImmediatePropagation();
  }
}, { capture: true });

function parse(path: string): { page: "home" | "project" | "dataset" | "settings" | "console" | "reviews" | "audit" | "tables" | "admin" | "signin" | "missing"; project?: string; dataset?: string } {
  if (path === "/" || path === "") return { page: "home" };
  if (path === "/signin") return { page: "signin" };
  if (path === "/settings") return { page: "settings" };
  if (path === "/console") return { page: "console" };
  if (path === "/reviews") return { page: "reviews" };
  if (path === "/audit") return { page: "audit" };
  if (path === "/tables") return { page: "tables" };
  if (path === "/admin") return { page: "admin" };
  const m = /^\/p\/([^/]+)(?:\/d\/([^/]+))?\/?$/.exec(path);
  if (m) {
    const project = decodeURIComponent(m[1]);
    return m[2] ? { page: "dataset", project, dataset: decodeURIComponent(m[2]) } : { page: "project", project };
  }
  return { page: "missing" };
}

function TopBar({ route }: { route: ReturnType<typeof parse> }) {
  const u = me.value;
  return (
    <header class="topbar">
      <a href="/" class="brand">
        milkglass
      </a>
      <nav aria-label="breadcrumb" class="crumbs">
        {route.project && (
          <>
            <a href={`/p/${encodeURIComponent(route.project)}`}>{route.project}</a>
            {route.dataset && (
              <>
                <span aria-hidden="true"> › </span>
                <a href={datasetUrl(route.project, route.dataset)} aria-current="page">
                  {route.dataset}
                </a>
              </>
            )}
            <ProjectMode name={route.project} />
          </>
        )}
      </nav>
      <span class="spacer" />
      <nav aria-label="main" class="mainnav">
      <a href="/console" class={route.page === "console" ? "current" : ""} aria-current={route.page === "console" ? "page" : undefined}>
        SQL console
      </a>
      {(u?.role === "owner" || u?.role === "admin") && (
        <a href="/tables" class={route.page === "tables" ? "current" : ""} aria-current={route.page === "tables" ? "page" : undefined}>
          Tables
        </a>
      )}
      {(u?.role === "owner" || u?.role === "admin") && (
        <a href="/reviews" class={route.page === "reviews" ? "current" : ""} aria-current={route.page === "reviews" ? "page" : undefined}>
          Reviews
          {!!pendingReviews.value && (
            <span class="badge pending" aria-label={`${pendingReviews.value} waiting`}>
              {pendingReviews.value}
            </span>
          )}
        </a>
      )}
      <a href="/audit" class={route.page === "audit" ? "current" : ""} aria-current={route.page === "audit" ? "page" : undefined}>
        Audit
      </a>
      {u?.role === "admin" && (
        <a href="/admin" class={route.page === "admin" ? "current" : ""} aria-current={route.page === "admin" ? "page" : undefined}>
          Admin
        </a>
      )}
      <a href="/settings" class={route.page === "settings" ? "current" : ""} aria-current={route.page === "settings" ? "page" : undefined}>
        Settings
      </a>
      </nav>
      <button type="button" class="icon" aria-label="keyboard shortcuts" title="keyboard shortcuts (?)" onClick={() => (helpOpen.value = true)}>
        ?
      </button>
      {u && (
        <span class="user" title="signed in as">
          {u.name} <span class="muted">({u.role})</span>
        </span>
      )}
      <button
        type="button"
        onClick={() => {
          setToken(null);
          me.value = null;
          navigate("/signin");
        }}
      >
        Sign out
      </button>
    </header>
  );
}

const modes = new Map<string, Promise<Project>>();
function ProjectMode({ name }: { name: string }) {
  const p = useAsync(() => {
    if (!modes.has(name)) modes.set(name, api<Project>(`/api/projects/${encodeURIComponent(name)}`));
    return modes.get(name)!;
  }, [name]);
  return p.data ? <ModeBadge mode={p.data.access_mode} /> : null;
}

function App() {
  const route = parse(loc.value.path);
  const t = token.value;
  const who = useAsync(async () => (t ? (me.value ??= await api<Me>("/api/whoami")) : null), [t]);
  usePendingReviews();

  useEffect(() => {
    // Without a token every page but sign-in leads there, and back afterwards.
    if (!t && route.page !== "signin") navigate(`/signin?next=${encodeURIComponent(loc.value.path + location.search)}`, { replace: true });
  }, [t, route.page]);

  if (route.page === "signin" || !t) return <SignIn next={loc.value.query.get("next") ?? "/"} />;
  let page;
  if (who.error) page = <ErrorBox error={who.error} retry={who.reload} />;
  else if (!who.data) page = <Spinner label="Signing in…" />;
  else if (route.page === "home") page = <Home />;
  else if (route.page === "project") page = <Home only={route.project} />;
  else if (route.page === "settings") page = <Settings />;
  else if (route.page === "console") page = <Console />;
  else if (route.page === "reviews") page = <Reviews />;
  else if (route.page === "audit") page = <Audit />;
  else if (route.page === "tables") page = <Tables />;
  else if (route.page === "admin") page = <Admin />;
  else if (route.page === "dataset") page = <Explorer key={route.project + "/" + route.dataset} project={route.project!} dataset={route.dataset!} />;
  else page = <main class="state empty">No such page. <a href="/">Go to the projects.</a></main>;
  return (
    <div class="app" onClick={onLinkClick}>
      <TopBar route={route} />
      {page}
      {helpOpen.value && <Help />}
    </div>
  );
}

render(<App />, document.getElementById("app")!);
