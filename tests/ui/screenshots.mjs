// Drives the app through each page of a fresh `milkglass demo` and writes 1280x800 PNGs to
// docs/screenshots/ (run by scripts/screenshots.sh).
import { mkdirSync } from "node:fs";
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
} finally {
  await browser.close();
  await demo.close();
}
