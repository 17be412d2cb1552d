// ComfyUI-MMDiT editor helpers.
// - MMDiT Empty Latent: picking a family's aspect preset sets width and height to the preset's size, and
//   editing width or height by hand switches the aspect to "custom", so the node never shows a size it will
//   not make. The sizes come from the node definition (option "mmdit_presets").
// - Workflows saved before the sampler lost its shift widget (and its 0-means-default values) open with
//   the values they meant, and an old latent preset keeps the size it made.
// - Picking a model in MMDiT Load Diffusion Model prefills the MMDiT Samplers it feeds with that model's
//   official steps and guidance (asked from the server, which reads the family and variant from the file:
//   HunyuanImage 2.1 distilled gets 8 steps and 3.25). Opening a saved workflow changes nothing.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CUSTOM = "custom (width x height)";
// MMDiT Sampler's widgets before the change, in order (the seed's control widget follows the seed).
const OLD_SAMPLER_WIDGETS = ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "shift", "denoise"];

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function afterCallback(w, action) {
  const original = w.callback;
  w.callback = function () {
    const result = original?.apply(this, arguments);
    action();
    return result;
  };
}

function afterMethod(nodeType, method, action) {
  const original = nodeType.prototype[method];
  nodeType.prototype[method] = function () {
    const result = original?.apply(this, arguments);
    action.apply(this, arguments);
    return result;
  };
}

function setupEmptyLatent(nodeType, nodeData) {
  const presets = nodeData.input?.required?.aspect?.[1]?.mmdit_presets ?? {};
  const parts = (node) => ["family", "aspect", "width", "height"].map((n) => widget(node, n));
  const presetSize = (node) => {
    const [family, aspect] = parts(node);
    return presets[family?.value]?.[aspect?.value];
  };
  const applyPreset = (node) => {
    const [, , width, height] = parts(node);
    const size = presetSize(node);
    if (size && width && height) [width.value, height.value] = size;
    node.setDirtyCanvas?.(true, true);
  };
  afterMethod(nodeType, "onNodeCreated", function () {
    const [family, aspect, width, height] = parts(this);
    if (!family || !aspect || !width || !height) return;
    const leavePreset = () => {
      const size = presetSize(this);
      if (size && (width.value !== size[0] || height.value !== size[1])) aspect.value = CUSTOM;
    };
    afterCallback(family, () => applyPreset(this));
    afterCallback(aspect, () => applyPreset(this));
    afterCallback(width, leavePreset);
    afterCallback(height, leavePreset);
  });
  // Older workflows could hold a preset beside other sizes; the preset is what they made.
  afterMethod(nodeType, "onConfigure", function () {
    applyPreset(this);
  });
}

function setupSampler(nodeType, nodeData) {
  const required = nodeData.input?.required ?? {};
  const declared = { ...(nodeData.input?.optional ?? {}), ...required };
  afterMethod(nodeType, "onConfigure", function (info) {
    const values = info?.widgets_values;
    // The old list and today's (denoise then the guidance rule) are both 8 long: the old one ends in a number.
    if (!Array.isArray(values) || values.length !== OLD_SAMPLER_WIDGETS.length || typeof values[7] !== "number") return;
    const old = Object.fromEntries(OLD_SAMPLER_WIDGETS.map((name, i) => [name, values[i]]));
    const meant = {
      ...old,
      steps: old.steps || required.steps?.[1]?.default,  // 0 meant the family's value
      cfg: old.cfg || required.cfg?.[1]?.default,
      scheduler: old.scheduler === "family default" ? "official" : old.scheduler,
    };
    for (const w of this.widgets ?? []) {
      if (w.name in meant && meant[w.name] !== undefined) w.value = meant[w.name];
      // Widgets added since (the guidance rule) got an old value by position: give them their default.
      else if (!OLD_SAMPLER_WIDGETS.includes(w.name) && declared[w.name]?.[1]?.default !== undefined) {
        w.value = declared[w.name][1].default;
      }
    }
    if (old.shift) {
      console.warn(`MMDiT Sampler: this workflow set shift ${old.shift}; ComfyUI's schedulers now take the ` +
                   "MODEL's shift: add ModelSamplingAuraFlow with that value before the sampler.");
    }
  });
}

// The MMDiT Samplers that take this node's output directly.
function fedSamplers(node) {
  const links = node.outputs?.[0]?.links ?? [];
  return links.map((id) => app.graph.links[id] ?? app.graph.links.get?.(id))
    .map((link) => link && app.graph.getNodeById(link.target_id))
    .filter((target) => target?.type === "MMDiTSampler");
}

async function prefillSamplers(node, modelName) {
  const response = await api.fetchApi(`/mmdit/sampling_defaults?model_name=${encodeURIComponent(modelName)}`);
  if (!response.ok) return;  // not a model we can read: the loader itself will say why when queued
  const defaults = await response.json();
  for (const sampler of fedSamplers(node)) {
    for (const [name, value] of [["steps", defaults.steps], ["cfg", defaults.cfg]]) {
      const w = widget(sampler, name);
      if (w && value !== undefined) w.value = value;
    }
    sampler.setDirtyCanvas?.(true, true);
  }
}

function setupModelLoader(nodeType) {
  afterMethod(nodeType, "onNodeCreated", function () {
    const name = widget(this, "model_name");
    if (name) afterCallback(name, () => prefillSamplers(this, name.value));
  });
}

app.registerExtension({
  name: "ComfyUI-MMDiT.EmptyLatentPresets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "MMDiTEmptyLatent") setupEmptyLatent(nodeType, nodeData);
    if (nodeData.name === "MMDiTSampler") setupSampler(nodeType, nodeData);
    if (nodeData.name === "MMDiTModelLoader") setupModelLoader(nodeType);
  },
});
