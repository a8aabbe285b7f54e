// Opens the Prefect UI in a real (headless) Chromium and reports what a user would see of one deployment:
// node prefect_ui_check.mjs <ui-base-url> <deployment-name>  ->  one JSON line on stdout.
import { chromium } from "playwright-core";

const [base, name] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const result = { listed: false, parameters: "" };
try {
  const page = await browser.newPage();
  await page.goto(`${base}/deployments`, { waitUntil: "networkidle", timeout: 90000 });
  const link = page.getByRole("link", { name, exact: true }).first();
  await link.waitFor({ timeout: 60000 });
  result.listed = true;
  await link.click();
  await page.waitForLoadState("networkidle");
  const tab = page.getByText("Parameters", { exact: true }).first();
  await tab.click();
  await page.waitForTimeout(1500);
  result.parameters = await page.locator("body").innerText();
  result.url = page.url();
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
