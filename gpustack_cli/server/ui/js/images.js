// Images: generations from a prompt, or edits of an uploaded image with a mask painted on a
// canvas; previews while denoising (`partial_images`), and a gallery of the results.

import { call, events } from "./api.js";

const $ = (id) => document.getElementById(id);
let ui;
let source = null; // the uploaded image, drawn under the mask
let sourceFile = null; // the same, as the file to send
let mask = null; // an offscreen canvas: opaque, transparent where painted (OpenAI's mask)
let painting = false;

function figure(caption) {
  const node = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = caption;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  node.append(img, text);
  return node;
}

function redraw() {
  const canvas = $("image-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(source, 0, 0);
  // Painted areas (transparent in the mask) are shown tinted.
  const tint = document.createElement("canvas");
  tint.width = canvas.width;
  tint.height = canvas.height;
  const t = tint.getContext("2d");
  t.fillStyle = "rgba(47, 111, 237, 0.55)";
  t.fillRect(0, 0, tint.width, tint.height);
  t.globalCompositeOperation = "destination-out";
  t.drawImage(mask, 0, 0);
  context.drawImage(tint, 0, 0);
}

function resetMask() {
  if (!source) return;
  mask = document.createElement("canvas");
  mask.width = source.naturalWidth;
  mask.height = source.naturalHeight;
  const context = mask.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  redraw();
}

function paint(event) {
  if (!painting || !mask) return;
  const canvas = $("image-canvas");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * canvas.width;
  const y = ((event.clientY - box.top) / box.height) * canvas.height;
  const context = mask.getContext("2d");
  context.globalCompositeOperation = "destination-out";
  context.beginPath();
  context.arc(x, y, (Number($("image-brush").value) * canvas.width) / box.width / 2, 0, Math.PI * 2);
  context.fill();
  redraw();
}

async function loadSource(file) {
  sourceFile = file || null;
  if (!file) {
    source = null;
    $("image-canvas").hidden = true;
    $("image-go").textContent = "Generate";
    return;
  }
  source = new Image();
  source.src = URL.createObjectURL(file);
  await source.decode();
  const canvas = $("image-canvas");
  canvas.width = source.naturalWidth;
  canvas.height = source.naturalHeight;
  canvas.hidden = false;
  $("image-go").textContent = "Edit";
  resetMask();
}

function fields() {
  const fields = {
    model: $("image-model").value,
    prompt: $("image-prompt").value,
    size: $("image-size").value,
    n: Number($("image-n").value) || 1,
    num_inference_steps: Number($("image-steps").value) || undefined,
    stream: true,
    partial_images: 2,
  };
  if ($("image-seed").value !== "") fields.seed = Number($("image-seed").value);
  return fields;
}

async function generate(event) {
  event.preventDefault();
  const asked = fields();
  const slots = Array.from({ length: asked.n }, (_, i) => figure(`${asked.prompt} (${i + 1})`));
  $("image-gallery").prepend(...slots);
  $("image-go").disabled = true;
  $("image-status").textContent = "Denoising…";
  const started = performance.now();
  try {
    let response;
    if (source) {
      const form = new FormData();
      for (const [key, value] of Object.entries(asked)) if (value !== undefined) form.append(key, String(value));
      form.append("image", sourceFile, sourceFile.name);
      form.append("mask", await new Promise((resolve) => mask.toBlob(resolve, "image/png")), "mask.png");
      response = await call("/v1/images/edits", { method: "POST", form });
    } else {
      response = await call("/v1/images/generations", { method: "POST", json: asked });
    }
    const seen = {};
    let done = 0;
    for await (const { data } of events(response)) {
      if (!data?.b64_json) continue;
      const partial = data.type.endsWith("partial_image");
      const key = partial ? `p${data.partial_image_index}` : "done";
      const slot = (seen[key] = (seen[key] ?? -1) + 1);
      const img = slots[slot % slots.length].querySelector("img");
      img.src = `data:image/${data.output_format || "png"};base64,${data.b64_json}`;
      if (partial) $("image-status").textContent = `Preview ${data.partial_image_index + 1}…`;
      else done += 1;
    }
    $("image-status").textContent = `${done} image${done === 1 ? "" : "s"} in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (error) {
    slots.forEach((s) => s.remove());
    $("image-status").textContent = "";
    ui.notice(`Image request failed: ${error.message}`, true);
  } finally {
    $("image-go").disabled = false;
  }
}

export function init(context) {
  ui = context;
  $("image-form").addEventListener("submit", generate);
  $("image-source").addEventListener("change", () => loadSource($("image-source").files[0]));
  $("image-clear-mask").addEventListener("click", resetMask);
  const canvas = $("image-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    painting = true;
    canvas.setPointerCapture(event.pointerId);
    paint(event);
  });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => {
    painting = false;
  });
}

export function setModels(list) {
  ui.fillModels($("image-model"), list);
}
