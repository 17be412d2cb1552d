// Drives ComfyUI's real web frontend in headless Chromium and prints what it saw, as JSON, for
// test_frontend.py: the pack's editor extension, the MMDiT Empty Latent presets, and UI workflows turned
// back into prompts by the frontend itself, and what the frontend would save for each node.
//   node frontend_check.mjs URL UI_WORKFLOW.json...   (PLAYWRIGHT_DIR: a folder with playwright-core installed)
// With PREFILL_MODEL set, it then picks that model in the last workflow's MMDiT Load Diffusion Model and
// reports the steps and cfg its MMDiT Sampler shows afterwards.
import { createRequire } from "module";
import fs from "fs";

const [url, ...uiPaths] = process.argv.slice(2);
const { chromium } = createRequire(`${process.env.PLAYWRIGHT_DIR}/`)("playwright-core");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { pageErrors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => result.pageErrors.push(`${e.message}\n${e.stack}`));
  await page.goto(url, { waitUntil: "networkidle", timeout: 90000 });
  await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 90000 });
  Object.assign(result, await page.evaluate(async ([workflows, prefillModel]) => {
    const out = {};
    out.extensions = window.app.extensions.map((e) => e.name);
    const node = window.LiteGraph.createNode("MMDiTEmptyLatent");
    window.app.graph.add(node);
    const widget = (name) => node.widgets.find((w) => w.name === name);
    const size = () => [widget("aspect").value, widget("width").value, widget("height").value];
    const pick = (name, value) => { widget(name).value = value; widget(name).callback?.(value); };
    out.latentDefaults = size();
    pick("aspect", "16:9");
    out.latentAfterPreset = size();
    pick("width", 1024);
    out.latentAfterEdit = size();
    window.app.graph.remove(node);
    out.prompts = [];
    out.saved = [];
    for (const workflow of workflows) {
      await window.app.loadGraphData(workflow);
      out.prompts.push((await window.app.graphToPrompt()).output);
      // What the frontend itself would save for each node: its widget values and its input slots.
      const saved = window.app.graph.serialize();
      out.saved.push(Object.fromEntries(saved.nodes.map((n) => [n.id, {
        widgets_values: n.widgets_values,
        inputs: (n.inputs || []).map((i) => ({ name: i.name, type: i.type, link: i.link ?? null, widget: !!i.widget })),
      }])));
    }
    if (prefillModel) {
      const nodes = window.app.graph._nodes;
      const loader = nodes.find((n) => n.type === "MMDiTModelLoader");
      const sampler = nodes.find((n) => n.type === "MMDiTSampler");
      const value = (n, name) => n.widgets.find((w) => w.name === name).value;
      const modelWidget = loader.widgets.find((w) => w.name === "model_name");
      modelWidget.value = prefillModel;
      modelWidget.callback?.(prefillModel);
      for (let i = 0; i < 50 && value(sampler, "steps") === out.prompts.at(-1)[sampler.id].inputs.steps; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      out.prefilled = { steps: value(sampler, "steps"), cfg: value(sampler, "cfg") };
    }
    return out;
  }, [uiPaths.map((path) => JSON.parse(fs.readFileSync(path, "utf8"))), process.env.PREFILL_MODEL || ""]));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
