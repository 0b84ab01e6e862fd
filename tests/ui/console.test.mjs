// The scientist's SQL console against a real `milkglass demo` server: the tables with their policies in
// words, an answered query, a refusal with the rule, and a held query collected once the owner approves it
// in the review inbox.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { launch, newPage, signIn, startDemo } from "./harness.mjs";

let demo, browser, page;

/** Publishes the demo's Titanic CSV as `name` under `handling`, as olivia, for sam. */
async function publish(name, handling) {
  const form = new FormData();
  form.set("name", name);
  form.set("policy", JSON.stringify({ safe_zone: { aggregation: { min_agg_size: 10 } }, unsafe_handling: handling, sanitized_columns: ["Name"] }));
  form.set("readers", "sam");
  const csv = readFileSync(join(demo.dir, "demo", "sample", "titanic.csv"));
  form.set("file", new Blob([csv], { type: "text/csv" }), "titanic.csv");
  await demo.api("/api/tables", { method: "POST", body: form }, demo.tokens.olivia);
}

before(async () => {
  demo = await startDemo({ frames: 20 });
  await publish("titanic", "reject");
  await publish("titanic_reviewed", "review");
  browser = await launch();
  page = await newPage(browser);
  await signIn(page, demo.url, demo.tokens.sam, "/console");
});
after(async () => {
  await browser?.close();
  await demo?.close();
});

async function runSql(sql) {
  await page.fill("textarea[name=sql]", sql);
  await page.click("button[name=run]");
}

test("the console lists the scientist's tables with their policies in words and answers the seed query", async () => {
  const table = page.locator(".console-table[data-table=titanic]");
  await table.waitFor();
  assert.match(await table.locator(".policy").textContent(), /at least 10 rows; Name is never shown; queries outside these rules are refused/);
  assert.equal(await table.locator("li.sanitized").textContent(), "Name");
  // A dataset published to sam: its minimum counts frames, and its ids are crossed out.
  const labels = page.locator(".console-table[data-table='shapes.labels']");
  await labels.waitFor({ timeout: 60_000 });
  assert.match(await labels.locator(".policy").textContent(), /at least 5 frames; .*label_id.* never shown/);
  await runSql("SELECT Pclass, AVG(Survived) AS survived FROM titanic GROUP BY Pclass ORDER BY Pclass");
  await page.waitForSelector(".console-result table.result tbody tr");
  const cells = await page.evaluate(() => [...document.querySelectorAll(".console-result tbody tr")].map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)));
  assert.deepEqual(cells.map((r) => r[0]), ["1", "2", "3"]);
  const survived = cells.map((r) => Number(r[1]).toFixed(6));
  assert.deepEqual(survived, ["0.629630", "0.472826", "0.242363"]);
  assert.match(await page.textContent("pre.snippet[data-kind=sdk]"), /client\.sql\("SELECT Pclass, AVG\(Survived\)/);
  assert.deepEqual(page.errors, []);
});

test("a row-level query is refused with the guard's sentence naming the rule", async () => {
  await runSql("SELECT * FROM titanic LIMIT 5");
  const refusal = page.locator(".console-refused");
  await refusal.waitFor();
  assert.equal(await refusal.getAttribute("data-code"), "refused");
  assert.match(await refusal.textContent(), /Refused by the policy:.*at least 10 rows/);
  // The earlier answer stays in the session's history.
  assert.match(await page.textContent(".console-history"), /AVG\(Survived\)/);
});

test("under review the query waits, the owner approves it in the inbox, and its rows appear with Name empty", async () => {
  await runSql("SELECT Name, Pclass FROM titanic_reviewed WHERE PassengerId = 1");
  const held = page.locator(".console-held");
  await held.waitFor();
  const request = Number(await held.getAttribute("data-request"));
  // A reload keeps the waiting query.
  await page.reload();
  await page.waitForSelector(`.console-held[data-request="${request}"]`);
  // The owner, in another browser, sees it in the inbox (and its count in the top bar) and approves it.
  const owner = await newPage(browser);
  await signIn(owner, demo.url, demo.tokens.olivia, "/reviews");
  const item = owner.locator(`.review[data-request="${request}"]`);
  await item.waitFor();
  assert.match(await item.textContent(), /sam.*titanic_reviewed[\s\S]*SELECT Name, Pclass FROM titanic_reviewed[\s\S]*Held because:/);
  assert.equal(await owner.textContent(".topbar .badge.pending"), "1");
  await item.locator("button[name=approve]").click();
  await owner.waitForSelector(`.review[data-request="${request}"][data-state=approved]`);
  await owner.waitForFunction(() => !document.querySelector(".topbar .badge.pending"));
  assert.deepEqual(owner.errors, []);
  await page.waitForSelector(".console-result table.result tbody tr");
  const row = await page.evaluate(() => [...document.querySelectorAll(".console-result tbody tr td")].map((td) => td.textContent));
  assert.deepEqual(row, ["—", "3"], "Name is sanitized, Pclass answered");
  assert.match(await page.textContent(".console-result"), /Name hidden \(sanitized\)/);
  assert.deepEqual(page.errors, []);
});

test("a scientist has no review inbox: the page says so and the API refuses a decision", async () => {
  assert.equal(await page.locator(".topbar a[href='/reviews']").count(), 0, "no link for a scientist");
  await page.goto(`${demo.url}/reviews`);
  await page.waitForSelector(".reviews .state.empty");
  assert.match(await page.textContent(".reviews"), /Only table owners and admins review queries/);
  const r = await fetch(`${demo.url}/api/reviews/1/approve`, { method: "POST", headers: { Authorization: `Bearer ${demo.tokens.sam}` } });
  assert.ok(r.status === 403 || r.status === 404, `a scientist's approval is refused (${r.status})`);
  assert.ok((await r.json()).error, "with the JSON error body");
});

test("the owner's audit page lists all of it, reports the chain verified, filters and exports", async () => {
  const owner = await newPage(browser);
  await signIn(owner, demo.url, demo.tokens.olivia, "/audit");
  await owner.waitForSelector(".chain .verified");
  const verdict = await demo.api("/api/audit/verify", {}, demo.tokens.olivia);
  assert.equal(verdict.verified, true);
  assert.match(await owner.textContent(".chain"), new RegExp(`${verdict.entries} entries`));
  await owner.waitForSelector("table.audit-log tbody tr");
  const api = (await demo.api("/api/audit", {}, demo.tokens.olivia)).entries;
  const decisions = new Set(api.filter((e) => e.user === "sam").map((e) => e.decision));
  for (const d of ["answered", "refused", "held", "released"]) assert.ok(decisions.has(d), `sam's ${d} query is in the log: ${[...decisions]}`);
  assert.ok(api.some((e) => e.user === "olivia" && e.decision === "approved"), "olivia's approval is in the log");
  assert.equal(await owner.locator("table.audit-log tbody tr").count(), api.length);
  // Only the refusals, and their export is exactly what is shown.
  await owner.selectOption("select[name=decision]", "refused");
  await owner.waitForFunction(() => [...document.querySelectorAll("table.audit-log tbody tr")].every((r) => r.getAttribute("data-decision") === "refused"));
  const refused = api.filter((e) => e.decision === "refused");
  assert.equal(await owner.locator("table.audit-log tbody tr").count(), refused.length);
  assert.match(await owner.textContent("table.audit-log"), /SELECT \* FROM titanic LIMIT 5/);
  const [download] = await Promise.all([owner.waitForEvent("download"), owner.click("button[name=export_json]")]);
  const exported = JSON.parse(readFileSync(await download.path(), "utf8"));
  assert.deepEqual(exported.map((e) => e.id), refused.map((e) => e.id));
  // A scientist's verification is refused by the API.
  const r = await fetch(`${demo.url}/api/audit/verify`, { headers: { Authorization: `Bearer ${demo.tokens.sam}` } });
  assert.equal(r.status, 403);
  assert.deepEqual(owner.errors, []);
});
