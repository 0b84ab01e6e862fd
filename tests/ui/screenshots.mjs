// Drives the app through each page and view of a fresh `milkglass demo` and writes 1280x800 PNGs to
// docs/screenshots/ (run by scripts/screenshots.sh).
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { launch, newPage, ROOT, signIn, startDemo } from "./harness.mjs";

const out = join(ROOT, "docs/screenshots");
mkdirSync(out, { recursive: true });
const demo = await startDemo({ frames: 300 });
const browser = await launch();
try {
  const page = await newPage(browser, { width: 1280, height: 800 });
  const shot = async (name) => {
    await page.waitForTimeout(400); // let images decode
    await page.screenshot({ path: join(out, `${name}.png`) });
    console.log(`docs/screenshots/${name}.png`);
  };
  const decoded = () => page.waitForFunction(() => [...document.querySelectorAll(".tile img")].filter((i) => i.complete && i.naturalWidth > 0).length >= 8);

  await page.goto(demo.url + "/");
  await page.waitForSelector("input[name=token]");
  await page.fill("input[name=token]", "mg_" + "•".repeat(20));
  await shot("01-sign-in");

  await signIn(page, demo.url, demo.tokens.olivia);
  await page.waitForFunction(() => /300/.test(document.querySelector("table.datasets tbody")?.textContent ?? ""));
  await shot("02-projects");

  await page.click("a.ds-link");
  await decoded();
  await page.waitForSelector(".tile svg rect");
  await shot("03-grid");

  await page.click(".tile[data-frame] >> nth=1");
  await page.waitForSelector(".frame-view svg rect");
  await shot("04-frame-view");
  await page.keyboard.press("Escape");

  await page.selectOption("select[name=class]", "triangle");
  await page.fill("input[name=meta_key]", "split");
  await page.fill("input[name=meta_value]", "val");
  await page.press("input[name=meta_value]", "Enter");
  await page.waitForFunction(() => /match the filters/.test(document.querySelector(".count")?.textContent ?? ""));
  await page.fill("input[name=conf]", "0.8");
  await decoded();
  await shot("05-filters");

  await page.keyboard.press("?");
  await page.waitForSelector(".help");
  await shot("06-keys");
  await page.keyboard.press("Escape");

  await page.click("a[href='/settings']");
  await page.waitForSelector(".settings");
  await page.fill("input[name=aws_endpoint]", "http://127.0.0.1:9000");
  await shot("07-settings");
  // The signed-in user's own tokens: a personal token just minted (shown once), and the list.
  await page.fill("input[name=label]", "notebook");
  await page.click("button[name=mint_own_token]");
  await page.waitForSelector("[data-minted]");
  await page.evaluate(() => document.getElementById("tokens-h")?.scrollIntoView({ block: "start" }));
  await shot("20-tokens");

  // The insight views of the dataset page.
  const ds = `${demo.url}/p/shapes/d/shapes`;
  await page.goto(`${ds}?view=map`);
  await page.waitForSelector("canvas.map-canvas[data-draws]");
  await page.waitForSelector(".map-legend li.total");
  await page.click("button[name=lasso]");
  const box = await page.locator("canvas.map-canvas").boundingBox();
  const [cx, cy] = [box.x + box.width * 0.42, box.y + box.height * 0.45];
  await page.mouse.move(cx + 120, cy);
  await page.mouse.down();
  for (let k = 1; k <= 24; k++) await page.mouse.move(cx + 120 * Math.cos((k * Math.PI) / 12), cy + 90 * Math.sin((k * Math.PI) / 12));
  await page.mouse.up();
  await page.waitForSelector(".map-selection");
  await page.click("button[name=lasso]"); // keep the tool; hover a point for the thumbnail card
  await page.mouse.move(cx, cy);
  await page.waitForTimeout(600);
  await shot("08-map");

  await page.goto(`${ds}?view=issues`);
  await page.waitForSelector(".issue-row .crop img");
  await page.keyboard.press("j");
  await shot("09-issues");

  await page.goto(`${ds}?view=metrics`);
  await page.waitForSelector("button.cell");
  await shot("10-metrics");

  await demo.api("/api/projects/shapes/datasets/shapes/segments", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "night-misses", description: "missed detections on dark frames", item_kind: "frames", items: ["frame_0003", "frame_0010", "frame_0042"] }),
  });
  await demo.api("/api/projects/shapes/datasets/shapes/segments", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "square-vs-cross", state: "in_review", item_kind: "frames", items: ["frame_0225", "frame_0261"] }),
  });
  await page.goto(`${ds}?view=segments`);
  await page.waitForSelector("tr[data-segment=night-misses]");
  await shot("11-segments");

  await page.goto(`${ds}?similar=frame_0007`);
  await decoded();
  await shot("12-similar");

  // The SQL console, as the scientist sam, on the Titanic table olivia publishes.
  const form = new FormData();
  form.set("name", "titanic");
  form.set("policy", JSON.stringify({ safe_zone: { aggregation: { min_agg_size: 10 } }, unsafe_handling: "review", sanitized_columns: ["Name"] }));
  form.set("file", new Blob([readFileSync(join(demo.dir, "demo", "sample", "titanic.csv"))], { type: "text/csv" }), "titanic.csv");
  await demo.api("/api/tables", { method: "POST", body: form }, demo.tokens.olivia);
  await page.evaluate(() => sessionStorage.clear());
  await signIn(page, demo.url, demo.tokens.sam, "/console");
  await page.fill("textarea[name=sql]", "SELECT Pclass, AVG(Survived) AS survived, COUNT(*) AS n FROM titanic GROUP BY Pclass ORDER BY Pclass");
  await page.click("button[name=run]");
  await page.waitForSelector(".console-result tbody tr");
  await page.waitForSelector(".console-table[data-table=titanic]", { timeout: 60_000 });
  await shot("13-console");

  // A row-level query waits for review; the owner's inbox shows it.
  await page.fill("textarea[name=sql]", "SELECT Name, Pclass FROM titanic WHERE PassengerId = 1");
  await page.click("button[name=run]");
  await page.waitForSelector(".console-held");
  await page.evaluate(() => sessionStorage.clear());
  await signIn(page, demo.url, demo.tokens.olivia, "/reviews");
  await page.waitForSelector(".review[data-request]");
  await shot("14-reviews");

  await page.goto(`${demo.url}/audit`);
  await page.waitForSelector(".chain .verified");
  await page.waitForSelector("table.audit-log tbody tr");
  await shot("15-audit");
  // The owner's desk: the published table, and the publishing form with a file chosen.
  await page.goto(`${demo.url}/tables`);
  await page.waitForSelector(".desk-table[data-table=titanic]");
  await page.setInputFiles("#publish-file", join(demo.dir, "demo", "sample", "titanic.csv"));
  await page.waitForSelector("input[name=sanitized][value=Name]");
  await page.fill("#publish-name", "titanic_2");
  await page.check("input[name=sanitized][value=Name]");
  await page.check("input[name=sanitized][value=Ticket]");
  await shot("16-tables");
  await page.locator("form[name=publish]").scrollIntoViewIfNeeded();
  await shot("17-publish");
  // The scientist's history across sessions, in a fresh session.
  await page.evaluate(() => sessionStorage.clear());
  await signIn(page, demo.url, demo.tokens.sam, "/console");
  await page.waitForSelector(".console-past tbody tr");
  await page.locator(".console-past").scrollIntoViewIfNeeded();
  await shot("18-history");
  // The admin's desk, with a token just minted (shown this once).
  await page.evaluate(() => sessionStorage.clear());
  await signIn(page, demo.url, demo.tokens.admin, "/admin");
  await page.waitForSelector("tr[data-user=sam]");
  await page.click("tr[data-user=sam] button[name=tokens]");
  await page.click("button[name=mint_token]");
  await page.waitForSelector(".token-once");
  await shot("19-admin");
} finally {
  await browser.close();
  await demo.close();
}
