// The data owner's desk, the scientist's console and the admin's desk against a real `milkglass demo` server.
// olivia publishes Titanic from the form; sam's console answers and refuses under that policy; with review
// handling (set by editing the policy) sam's queries wait, olivia sees what each answer would reveal, rejects
// one and approves the other, and sam's rows come with Name empty; the audit page lists all of it with the
// chain verified and filters by time; a scientist is refused the owner's and the admin's pages; the admin
// creates a user, mints a token shown once and revokes it. console.test.mjs covers the console's own details.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, newPage, signIn, startDemo } from "./harness.mjs";

let demo, browser, owner, sci;

before(async () => {
  demo = await startDemo({ frames: 20 });
  browser = await launch();
  owner = await newPage(browser);
  await signIn(owner, demo.url, demo.tokens.olivia, "/tables");
  sci = await newPage(browser);
  await signIn(sci, demo.url, demo.tokens.sam, "/console");
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

const as = (token) => ({ Authorization: `Bearer ${token}` });
const fetchAs = (token, path, init = {}) => fetch(demo.url + path, { ...init, headers: { ...as(token), ...(init.headers ?? {}) } });
const json = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

async function runSql(page, sql) {
  await page.fill("textarea[name=sql]", sql);
  await page.click("button[name=run]");
}

const card = () => owner.locator(".desk-table[data-table=titanic]");

/** Form controls on the page that a screen reader would announce without a name. */
const unlabelled = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll("main input, main select, main textarea")]
      .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")))
      .map((el) => el.outerHTML),
  );

test("an owner publishes the Titanic CSV with a policy from the form, the JSON beside it", async () => {
  await owner.waitForSelector("form[name=publish]");
  assert.match(await owner.textContent(".tables-desk"), /You have published no table yet/);
  await owner.setInputFiles("#publish-file", join(demo.dir, "demo", "sample", "titanic.csv"));
  // The file's header becomes the sanitized-column checkboxes; its name the table's.
  await owner.waitForSelector("input[name=sanitized][value=Name]");
  assert.equal(await owner.locator("input[name=sanitized]").count(), 12);
  assert.equal(await owner.inputValue("#publish-name"), "titanic");
  assert.deepEqual(await unlabelled(owner), [], "every control of the form has a label");
  await owner.fill("#publish-min", "10");
  await owner.check("input[name=sanitized][value=Name]");
  await owner.check("input[name=publish-handling][value=reject]");
  assert.deepEqual(JSON.parse(await owner.inputValue("#publish-json")), {
    safe_zone: { aggregation: { min_agg_size: 10 } },
    unsafe_handling: "reject",
    sanitized_columns: ["Name"],
  });
  // The JSON is editable, and what is typed there sets the form; bad JSON is said to be bad.
  await owner.fill("#publish-json", "{ nope");
  await owner.waitForSelector("#publish-json[aria-invalid=true]");
  assert.match(await owner.textContent(".publish .json-error"), /Not valid JSON/);
  await owner.fill("#publish-json", JSON.stringify({ safe_zone: { aggregation: { min_agg_size: 25 } }, unsafe_handling: "reject", sanitized_columns: ["Name", "Ticket"] }));
  assert.equal(await owner.inputValue("#publish-min"), "25");
  assert.equal(await owner.isChecked("input[name=sanitized][value=Ticket]"), true);
  await owner.uncheck("input[name=sanitized][value=Ticket]");
  await owner.fill("#publish-min", "10");
  assert.match(await owner.textContent("#publish-words"), /at least 10 rows; Name is never shown; queries outside these rules are refused/);
  await owner.fill("#publish-readers", "sam");
  await owner.click("form[name=publish] button[type=submit]");

  await card().waitFor();
  assert.match(await owner.textContent(".notice"), /Published titanic: 891 rows/);
  assert.match(await card().textContent(), /titanic · 891 rows/);
  assert.match(await card().locator(".policy").textContent(), /every result value must stand for at least 10 rows; Name is never shown; queries outside these rules are refused/);
  assert.equal(await card().locator("li.sanitized").textContent(), "Name");
  assert.match(await card().locator(".readers").textContent(), /Readers: sam$/);
  const table = await demo.api("/api/tables/titanic", {}, demo.tokens.olivia);
  assert.deepEqual([table.rows, table.readers, table.policy.sanitized_columns, table.policy.unsafe_handling], [891, ["sam"], ["Name"], "reject"]);
  assert.deepEqual(owner.errors, []);
});

test("the scientist's console answers the per-class survival query and refuses SELECT * with the rule", async () => {
  await sci.reload();
  await sci.locator(".console-table[data-table=titanic]").waitFor();
  await runSql(sci, "SELECT Pclass, AVG(Survived) AS survived FROM titanic GROUP BY Pclass ORDER BY Pclass");
  await sci.waitForSelector(".console-result tbody tr");
  const survived = await sci.evaluate(() => [...document.querySelectorAll(".console-result tbody tr")].map((r) => Number(r.querySelectorAll("td")[1].textContent).toFixed(6)));
  assert.deepEqual(survived, ["0.629630", "0.472826", "0.242363"]);
  await runSql(sci, "SELECT * FROM titanic LIMIT 5");
  await sci.waitForSelector(".console-refused[data-code=refused]");
  assert.match(await sci.textContent(".console-refused"), /Refused by the policy:.*at least 10 rows of table "titanic"/);
  // The history is the audit log's: another session (a fresh tab) has both, newest first.
  const later = await newPage(browser);
  await signIn(later, demo.url, demo.tokens.sam, "/console");
  await later.waitForSelector(".console-past tr[data-decision=refused]");
  const past = await later.evaluate(() => [...document.querySelectorAll(".console-past tbody tr")].map((r) => r.getAttribute("data-decision")));
  assert.deepEqual(past.slice(0, 2), ["refused", "answered"]);
  await later.click(".console-past tr[data-decision=answered] button");
  assert.match(await later.inputValue("textarea[name=sql]"), /AVG\(Survived\)/);
  assert.equal(await later.evaluate(() => document.activeElement?.id), "sql", "focus goes to the editor");
  await later.context().close();
  assert.deepEqual(sci.errors, []);
});

test("under review handling the query waits, the owner sees what it would reveal and decides, and Name stays empty", async () => {
  // The owner switches the handling to review in the table's editor.
  await card().locator("button[name=edit]").click();
  await card().locator("input[type=radio][value=review]").check();
  await card().locator("button[name=save]").click();
  await owner.waitForFunction(() => /wait for your review/.test(document.querySelector(".desk-table[data-table=titanic] .policy")?.textContent ?? ""));
  assert.equal((await demo.api("/api/tables/titanic", {}, demo.tokens.olivia)).policy.unsafe_handling, "review");

  // A query the guard ran and held for its small groups: the owner sees its row count and smallest group.
  await runSql(sci, "SELECT Pclass, COUNT(*) AS n FROM titanic WHERE Age > 65 GROUP BY Pclass");
  await sci.waitForSelector(".console-held");
  const small = Number(await sci.getAttribute(".console-held", "data-request"));
  await owner.click(".topbar a[href='/reviews']");
  const first = owner.locator(`.review[data-request="${small}"]`);
  await first.waitFor();
  const { requests } = await demo.api("/api/reviews?state=pending", {}, demo.tokens.olivia);
  const reveals = requests.find((r) => r.id === small).reveals;
  assert.ok(reveals.rows > 0 && reveals.smallest_group > 0 && reveals.smallest_group < 10, JSON.stringify(reveals));
  assert.equal(await first.locator("[data-reveal=rows]").textContent(), String(reveals.rows));
  assert.equal(await first.locator("[data-reveal=smallest_group]").textContent(), `${reveals.smallest_group} row${reveals.smallest_group === 1 ? "" : "s"}`);
  assert.equal(await first.locator("[data-reveal=columns]").textContent(), "Pclass, n");
  await first.locator("input[name=reason]").fill("groups of a handful of passengers");
  await first.locator("button[name=reject]").click();
  await owner.waitForSelector(`.review[data-request="${small}"][data-state=rejected]`);
  await sci.waitForSelector(".console-refused[data-code=rejected]");
  assert.match(await sci.textContent(".console-refused"), /groups of a handful of passengers/);

  // A row-level query: one row, standing for one passenger; approved, its Name is empty.
  await runSql(sci, "SELECT Name, Pclass FROM titanic WHERE PassengerId = 1");
  await sci.waitForSelector(".console-held");
  const rows = Number(await sci.getAttribute(".console-held", "data-request"));
  await owner.reload();
  const second = owner.locator(`.review[data-request="${rows}"]`);
  await second.waitFor();
  assert.equal(await second.locator("[data-reveal=rows]").textContent(), "1");
  assert.equal(await second.locator("[data-reveal=smallest_group]").textContent(), "1 row");
  assert.equal(await second.locator("[data-reveal=columns]").textContent(), "Name, Pclass");
  await second.locator("button[name=approve]").click();
  await owner.waitForSelector(`.review[data-request="${rows}"][data-state=approved]`);
  await sci.waitForSelector(".console-result tbody tr");
  const row = await sci.evaluate(() => [...document.querySelectorAll(".console-result tbody tr td")].map((td) => td.textContent));
  assert.deepEqual(row, ["—", "3"], "Name is sanitized, Pclass answered");
  assert.deepEqual([owner.errors, sci.errors], [[], []]);
});

test("the audit page lists all of it, refusals before planning included, verifies the chain and filters by time", async () => {
  // A statement refused before it could be planned still names olivia's table, so it is hers to read.
  const drop = await fetchAs(demo.tokens.sam, "/api/query", json({ sql: "DROP TABLE titanic" }));
  assert.equal(drop.status, 400);
  await owner.goto(`${demo.url}/audit`);
  await owner.waitForSelector(".chain .verified");
  await owner.waitForSelector("table.audit-log tbody tr[data-decision=invalid]");
  assert.deepEqual(await unlabelled(owner), [], "every filter has a label");
  const { entries } = await demo.api("/api/audit", {}, demo.tokens.olivia);
  const decisions = new Set(entries.map((e) => `${e.user}:${e.decision}`));
  for (const d of ["sam:answered", "sam:refused", "sam:held", "sam:released", "sam:invalid", "olivia:approved", "olivia:rejected"]) assert.ok(decisions.has(d), `${d} in ${[...decisions]}`);
  assert.equal(await owner.locator("table.audit-log tbody tr").count(), entries.length);
  assert.match(await owner.textContent("tr[data-decision=invalid]"), /DROP TABLE titanic[\s\S]*only SELECT queries/);

  // From the second of the last entry on: that entry and any in the same second; before the first: none.
  const last = entries[entries.length - 1];
  const localSecond = await owner.evaluate((iso) => {
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }, last.at);
  await owner.fill("input[name=from]", localSecond);
  const floor = Math.floor(Date.parse(last.at) / 1000) * 1000;
  const expected = entries.filter((e) => Date.parse(e.at) >= floor).length;
  await owner.waitForFunction((n) => document.querySelectorAll("table.audit-log tbody tr").length === n, expected);
  assert.ok(expected >= 1 && expected < entries.length);
  await owner.fill("input[name=from]", "");
  await owner.fill("input[name=to]", "2000-01-01T00:00:00");
  await owner.waitForSelector(".audit .state.empty");
  assert.match(await owner.textContent(".audit .state.empty"), /No entries match these filters/);
  assert.equal(await owner.getAttribute("button[name=export_csv]", "disabled"), "");
  await owner.fill("input[name=to]", "");
  await owner.waitForFunction((n) => document.querySelectorAll("table.audit-log tbody tr").length === n, entries.length);
  assert.deepEqual(owner.errors, []);
});

test("a scientist cannot reach the owner's or the admin's pages: the API refuses and the UI says so", async () => {
  assert.equal(await sci.locator(".topbar a[href='/tables'], .topbar a[href='/admin']").count(), 0, "no links for a scientist");
  await sci.goto(`${demo.url}/tables`);
  await sci.waitForSelector(".not-yours[role=alert]");
  assert.match(await sci.textContent(".not-yours"), /Only table owners and admins publish and manage tables.*signed in as scientist/);
  await sci.goto(`${demo.url}/admin`);
  await sci.waitForSelector(".not-yours[role=alert]");
  assert.match(await sci.textContent(".not-yours"), /Only admins manage users/);
  // The server refuses whatever the page shows.
  const form = new FormData();
  form.set("name", "mine");
  form.set("policy", JSON.stringify({ safe_zone: true }));
  form.set("file", new Blob(["a\n1\n"], { type: "text/csv" }), "mine.csv");
  const refusals = [
    await fetchAs(demo.tokens.sam, "/api/tables", { method: "POST", body: form }),
    await fetchAs(demo.tokens.sam, "/api/tables/titanic/policy", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ policy: { safe_zone: true } }) }),
    await fetchAs(demo.tokens.sam, "/api/tables/titanic", { method: "DELETE" }),
    await fetchAs(demo.tokens.sam, "/api/users"),
    await fetchAs(demo.tokens.sam, "/api/users", json({ name: "mallory", role: "admin" })),
    await fetchAs(demo.tokens.olivia, "/api/users/sam/tokens", { method: "POST" }),
  ];
  for (const r of refusals) {
    assert.equal(r.status, 403, r.url);
    assert.ok((await r.json()).error.message, "with the JSON error body");
  }
  assert.equal((await demo.api("/api/tables/titanic", {}, demo.tokens.olivia)).policy.unsafe_handling, "review", "the policy is unchanged");
  // An owner has the tables but not the admin's page.
  await owner.goto(`${demo.url}/admin`);
  await owner.waitForSelector(".not-yours");
  assert.deepEqual(sci.errors, []);
});

test("the admin creates a user, mints a token shown once, revokes it, and the revoked token fails on the API", async () => {
  const admin = await newPage(browser);
  await signIn(admin, demo.url, demo.tokens.admin, "/admin");
  await admin.waitForSelector("tr[data-user=sam]");
  await admin.waitForSelector("#member-user");
  assert.deepEqual(await unlabelled(admin), [], "every control of the page has a label");
  await admin.fill("#new-user-name", "rita");
  await admin.selectOption("#new-user-role", "scientist");
  await admin.click("button[name=create_user]");
  const once = admin.locator(".token-once[data-token-for=rita]");
  await once.waitFor();
  const first = await once.locator("code.token").textContent();
  assert.match(first, /^mg_[0-9a-f]{64}$/);
  assert.equal(await admin.evaluate(() => document.activeElement?.classList.contains("token-once")), true, "focus goes to the token");
  assert.equal((await (await fetchAs(first, "/api/whoami")).json()).name, "rita");
  await admin.click("button[name=dismiss_token]");
  await once.waitFor({ state: "detached" });
  assert.ok(!(await admin.content()).includes(first), "a token is never shown again");

  // Another token, for the same user; its row in the list has no text of it.
  await admin.waitForSelector(".tokens[data-user=rita] tr[data-token]");
  await admin.click("button[name=mint_token]");
  await admin.waitForSelector(".token-once[data-token-for=rita]");
  const second = await admin.textContent(".token-once code.token");
  assert.notEqual(second, first);
  const { tokens } = await demo.api("/api/users/rita/tokens");
  const id = tokens[tokens.length - 1].id;
  await admin.waitForSelector(`tr[data-token="${id}"][data-state=active]`);
  await admin.click("button[name=dismiss_token]");
  // Revoked, with a confirmation, from the keyboard: focus lands on the confirming button.
  await admin.click(`tr[data-token="${id}"] button[name=revoke_token]`);
  assert.equal(await admin.evaluate(() => document.activeElement?.getAttribute("name")), "confirm_revoke_token");
  await admin.keyboard.press("Enter");
  await admin.waitForSelector(`tr[data-token="${id}"][data-state=revoked]`);
  assert.equal((await fetchAs(second, "/api/whoami")).status, 401, "the revoked token fails");
  assert.equal((await fetchAs(first, "/api/whoami")).status, 200, "the other token still works");

  // A role and a membership: rita becomes a viewer of the demo's project.
  await admin.selectOption("#member-user", "rita");
  await admin.click("button[name=add_member]");
  await admin.waitForSelector("tr[data-member=rita]");
  const { members } = await demo.api("/api/projects/shapes/members");
  assert.ok(members.some((m) => m.user === "rita" && m.role === "viewer"));
  assert.deepEqual(admin.errors, []);
});

test("the owner deletes a table after a confirmation that Escape cancels", async () => {
  await owner.goto(`${demo.url}/tables`);
  await card().waitFor();
  await card().locator("button[name=delete]").click();
  await owner.waitForSelector("[role=alertdialog]");
  assert.equal(await owner.evaluate(() => document.activeElement?.getAttribute("name")), "confirm_delete");
  await owner.keyboard.press("Escape");
  await owner.waitForSelector("[role=alertdialog]", { state: "detached" });
  await owner.waitForFunction(() => document.activeElement?.getAttribute("name") === "delete", null, { timeout: 2000 }); // focus returns to Delete…
  assert.equal((await fetchAs(demo.tokens.olivia, "/api/tables/titanic")).status, 200, "cancelled: still there");
  await card().locator("button[name=delete]").click();
  await owner.click("button[name=confirm_delete]");
  await card().waitFor({ state: "detached" });
  assert.match(await owner.textContent(".notice"), /Deleted titanic/);
  assert.equal((await fetchAs(demo.tokens.olivia, "/api/tables/titanic")).status, 404);
  assert.deepEqual(owner.errors, []);
});

test("a scientist mints a personal token in Settings, shown once, and revokes it there", async () => {
  await sci.goto(`${demo.url}/settings`);
  await sci.waitForSelector("form[aria-label='Mint a personal token']");
  assert.deepEqual(await unlabelled(sci), [], "every control of the page has a label");
  await sci.fill("input[name=label]", "notebook");
  await sci.fill("input[name=expires_in_days]", "7");
  await sci.click("button[name=mint_own_token]");
  const minted = (await sci.textContent("[data-minted] code")).trim();
  assert.match(minted, /^mg_[0-9a-f]{64}$/);
  const me = await (await fetchAs(minted, "/api/whoami")).json();
  assert.equal(me.name, "sam", "the token is sam's, with sam's rights");
  const { tokens } = await (await fetchAs(minted, "/api/tokens")).json();
  const mine = tokens[tokens.length - 1];
  assert.equal(mine.label, "notebook");
  const days = (Date.parse(mine.expires_at) - Date.parse(mine.created_at)) / 86_400_000;
  assert.ok(Math.abs(days - 7) < 0.01, `expires in ${days} days`);
  assert.ok(!(await sci.textContent("table.result")).includes(minted), "the list never shows a token's text");
  await sci.click(`tr[data-token="${mine.id}"] button[name=revoke_own_token]`);
  await sci.click(`tr[data-token="${mine.id}"] button[name=confirm_revoke_own_token]`);
  await sci.waitForSelector(`tr[data-token="${mine.id}"][data-state^=revoked]`);
  assert.equal((await fetchAs(minted, "/api/whoami")).status, 401, "the revoked token fails");
  assert.equal((await fetchAs(demo.tokens.sam, "/api/whoami")).status, 200, "sam's other token still works");
  assert.deepEqual(sci.errors, []);
});
