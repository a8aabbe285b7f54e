// What a user of `steermoe stack up` does in the two UIs, in a real (headless) Chromium:
//   1. Prefect UI: deployment safety-pipeline -> Run -> Custom run, config_path = <config> -> Submit,
//      then watch the flow run until the worker has taken it to a final state;
//   2. MLflow UI: the registered model's page, the newest version and its aliases (challenger);
//   3. Prefect UI: deployment promote -> Custom run with the same config -> Submit -> final state;
//   4. MLflow UI: the same version now shows champion.
// node stack_ui_flow.mjs <prefect-url> <mlflow-url> <registered-model> <config-path> <screenshot-dir>
// -> one JSON line on stdout; a screenshot of every step in <screenshot-dir>.
import { chromium } from "playwright-core";

const [prefect, mlflow, model, configPath, shots] = process.argv.slice(2);
const FINAL = ["Completed", "Failed", "Crashed", "Cancelled"];
const result = { steps: [], screenshots: [] };

async function shot(page, name) {
  const path = `${shots}/${String(result.screenshots.length + 1).padStart(2, "0")}-${name}.png`;
  await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
}

async function startCustomRun(page, deployment) {
  await page.goto(`${prefect}/deployments`, { waitUntil: "networkidle", timeout: 90000 });
  const link = page.getByRole("link", { name: deployment, exact: true }).first();
  await link.waitFor({ timeout: 60000 });
  await link.click();
  await page.waitForURL(/\/deployments\/deployment\//, { timeout: 60000 });
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await page.getByText("Custom run", { exact: true }).click();
  await page.waitForURL(/\/run/, { timeout: 60000 });
  // The parameter form: one property per flow parameter, a textarea for a string.
  const field = page
    .locator("div.schema-form-property", { has: page.locator(".schema-form-property__label", { hasText: /^config_path/ }) })
    .last()
    .locator("textarea");
  await field.fill(configPath);
  await shot(page, `${deployment}-custom-run`);
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  // The toast names the new flow run ("<name> scheduled to start now"); the deployment's run list links to it.
  const toast = page.locator(".toast-flow-run-create").first();
  await toast.waitFor({ timeout: 60000 });
  const runName = ((await toast.innerText()).match(/(\S+)\s+scheduled to start/) || [])[1];
  if (!runName) throw new Error(`no flow run name in the toast: ${await toast.innerText()}`);
  await page.getByRole("link", { name: runName, exact: true }).first().click({ timeout: 60000 });
  await page.waitForURL(/\/runs\/flow-run\//, { timeout: 60000 });
  return { url: page.url(), name: runName };
}

async function waitFinal(page, deployment, timeoutMs) {
  const badge = page.locator(".page-heading .state-badge").first();
  const deadline = Date.now() + timeoutMs;
  let state = "";
  let lastReload = Date.now();
  while (Date.now() < deadline) {
    state = ((await badge.innerText({ timeout: 10000 }).catch(() => "")) || "").trim();
    if (FINAL.includes(state)) break;
    await page.waitForTimeout(2000);
    if (Date.now() - lastReload > 30000) {  // the page polls by itself; a reload now and then guards against a stalled socket
      await page.reload({ waitUntil: "networkidle" });
      lastReload = Date.now();
    }
  }
  await shot(page, `${deployment}-${state.toLowerCase() || "timeout"}`);
  return state;
}

async function modelVersions(page, name) {
  await page.goto(`${mlflow}/#/models/${encodeURIComponent(name)}`, { waitUntil: "load", timeout: 90000 });
  await page.getByRole("row").nth(1).waitFor({ timeout: 60000 });
  await page.waitForTimeout(1000);
  await shot(page, `mlflow-${name}`);
  const rows = await page.getByRole("row").allInnerTexts();
  // "Version 2 <date> <tags...> @ challenger" -> {version: "2", aliases: ["challenger"]}
  return rows.slice(1).map((text) => {
    const flat = text.replace(/\s+/g, " ");
    return { version: (flat.match(/Version (\d+)/) || [])[1], aliases: [...flat.matchAll(/@ ([\w-]+)/g)].map((m) => m[1]) };
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  for (const [deployment, seeModel] of [["safety-pipeline", "challenger"], ["promote", "champion"]]) {
    const run = await startCustomRun(page, deployment);
    const state = await waitFinal(page, deployment, Number(process.env.RUN_TIMEOUT_MS || 300000));
    const step = { deployment, flow_run_url: run.url, flow_run_name: run.name, state };
    result.steps.push(step);
    if (state !== "Completed") break;
    step.versions = await modelVersions(page, model);
    step.expected_alias = seeModel;
  }
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
