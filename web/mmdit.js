// ComfyUI-MMDiT editor helpers. MMDiT Empty Latent: picking a family's aspect preset sets width and height
// to the preset's size, and editing width or height by hand switches the aspect to "custom", so the node
// never shows a size it will not make. The sizes come from the node definition (option "mmdit_presets").
import { app } from "../../scripts/app.js";

const CUSTOM = "custom (width x height)";

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

app.registerExtension({
  name: "ComfyUI-MMDiT.EmptyLatentPresets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "MMDiTEmptyLatent") return;
    const presets = nodeData.input?.required?.aspect?.[1]?.mmdit_presets ?? {};
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const [family, aspect, width, height] = ["family", "aspect", "width", "height"].map((n) => widget(this, n));
      if (!family || !aspect || !width || !height) return result;
      const presetSize = () => presets[family.value]?.[aspect.value];
      const applyPreset = () => {
        const size = presetSize();
        if (size) [width.value, height.value] = size;
        this.setDirtyCanvas?.(true, true);
      };
      const leavePreset = () => {
        const size = presetSize();
        if (size && (width.value !== size[0] || height.value !== size[1])) aspect.value = CUSTOM;
      };
      afterCallback(family, applyPreset);
      afterCallback(aspect, applyPreset);
      afterCallback(width, leavePreset);
      afterCallback(height, leavePreset);
      return result;
    };
  },
});
