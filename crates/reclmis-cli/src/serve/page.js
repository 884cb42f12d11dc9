// The viewer: sends the image and the note to /api/segment, draws what comes back. The mask at
// another threshold is drawn here from the probabilities, without asking the server again.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, result: null, seq: 0, timer: null, controller: null, otherNote: null };
// The last answer, for scripts driving the page (the browser check reads it).
window.reclmis = state;

fetch("/api/model").then((r) => r.json()).then((m) => {
  const total = m.parameters.inference_with_explain.toLocaleString("en");
  $("model-line").textContent =
    `${m.source} · ${m.image_size} px · ${total} parameters · ${m.text_encoder}`;
}).catch(() => { $("model-line").textContent = "the model could not be described"; });

function setFile(file) {
  state.file = file;
  $("file-name").textContent = file ? `${file.name} (${Math.round(file.size / 1024)} kB)` : "";
  schedule(0);
}

$("file").addEventListener("change", (e) => setFile(e.target.files[0] || null));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
});
$("note").addEventListener("input", () => schedule(250));
$("slice").addEventListener("input", () => schedule(250));
$("threshold").addEventListener("input", () => {
  $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  if (state.result) drawMask(state.result);
});

$("example").addEventListener("click", async () => {
  const ex = await (await fetch("/api/example")).json();
  const blob = await (await fetch(ex.image)).blob();
  $("note").value = ex.note;
  state.otherNote = ex.other_note;
  $("other-note-row").hidden = false;
  setFile(new File([blob], ex.name, { type: "image/png" }));
});
$("other-note").addEventListener("click", () => {
  const current = $("note").value;
  $("note").value = state.otherNote;
  state.otherNote = current;
  schedule(0);
});

// Debounced: typing re-segments once the user pauses.
function schedule(delay) {
  clearTimeout(state.timer);
  state.timer = setTimeout(segment, delay);
}

async function segment() {
  if (!state.file) return;
  const seq = ++state.seq;
  if (state.controller) state.controller.abort();
  state.controller = new AbortController();
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("note", $("note").value);
  if ($("slice").value !== "") form.append("slice", $("slice").value);
  const status = $("status");
  status.classList.remove("error");
  status.textContent = "segmenting…";
  const t0 = performance.now();
  let body;
  try {
    const r = await fetch("/api/segment", { method: "POST", body: form, signal: state.controller.signal });
    body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  } catch (e) {
    if (e.name === "AbortError") return;
    if (seq !== state.seq) return;
    status.classList.add("error");
    status.textContent = e.message;
    status.dataset.done = String(seq);
    return;
  }
  if (seq !== state.seq) return;
  state.result = body;
  await draw(body);
  const total = performance.now() - t0;
  status.textContent = `segmented in ${total.toFixed(0)} ms (model ${body.ms.toFixed(0)} ms)`;
  status.dataset.done = String(seq);
  $("download-mask").disabled = false;
  $("download-prob").disabled = false;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = src;
  });
}

// A perceptual ramp from dark blue through orange to pale yellow, t in 0..1.
function ramp(t) {
  const stops = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
}

function sized(id, n) {
  const c = $(id);
  c.width = n;
  c.height = n;
  return c.getContext("2d");
}

async function draw(r) {
  state.image = await loadImage(r.image);
  drawMask(r);
  const s = r.size;
  // Probability map.
  const pctx = sized("prob", s);
  const prob = pctx.createImageData(s, s);
  r.prob.forEach((row, y) => row.forEach((p, x) => {
    const [cr, cg, cb] = ramp(p);
    prob.data.set([cr, cg, cb, 255], 4 * (y * s + x));
  }));
  pctx.putImageData(prob, 0, 0);
  // POI: the patch grid, smoothed up to the image, over the image.
  const g = r.grid;
  const grid = document.createElement("canvas");
  grid.width = g;
  grid.height = g;
  const gctx = grid.getContext("2d");
  const gimg = gctx.createImageData(g, g);
  const max = Math.max(...r.poi.flat(), 1e-12);
  r.poi.forEach((row, y) => row.forEach((v, x) => {
    const [cr, cg, cb] = ramp(v / max);
    gimg.data.set([cr, cg, cb, 255], 4 * (y * g + x));
  }));
  gctx.putImageData(gimg, 0, 0);
  const qctx = sized("poi", s);
  qctx.drawImage(state.image, 0, 0, s, s);
  qctx.globalAlpha = 0.55;
  qctx.imageSmoothingEnabled = true;
  qctx.drawImage(grid, 0, 0, s, s);
  qctx.globalAlpha = 1;
  drawWords(r);
}

function drawMask(r) {
  const s = r.size;
  const t = Number($("threshold").value);
  const ctx = sized("overlay", s);
  if (state.image) ctx.drawImage(state.image, 0, 0, s, s);
  const img = ctx.getImageData(0, 0, s, s);
  let n = 0;
  r.prob.forEach((row, y) => row.forEach((p, x) => {
    if (p > t) {
      n += 1;
      const i = 4 * (y * s + x);
      img.data[i] = Math.round(img.data[i] * 0.45 + 255 * 0.55);
      img.data[i + 1] = Math.round(img.data[i + 1] * 0.45 + 40 * 0.55);
      img.data[i + 2] = Math.round(img.data[i + 2] * 0.45 + 40 * 0.55);
    }
  }));
  ctx.putImageData(img, 0, 0);
  state.maskPixels = n;
  $("overlay").dataset.maskPixels = String(n);
}

function drawWords(r) {
  const box = $("woi");
  box.replaceChildren();
  const max = Math.max(...r.woi.map((w) => w.weight), 1e-12);
  for (const w of r.woi) {
    const span = document.createElement("span");
    span.textContent = w.word;
    span.title = `WOI ${w.weight.toFixed(4)}${w.padding ? " (padding the model adds)" : ""}`;
    if (w.padding) span.className = "padding";
    span.style.background = `rgba(234, 88, 12, ${(0.85 * w.weight / max).toFixed(3)})`;
    box.append(span, " ");
  }
  const parts = [];
  if (r.model_text !== r.note) parts.push(`the model read: “${r.model_text}”`);
  if (r.truncated_words.length) parts.push(`past the token context: ${r.truncated_words.join(" ")}`);
  $("reading").textContent = parts.join(" · ");
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

$("download-mask").addEventListener("click", () => {
  const r = state.result;
  const t = Number($("threshold").value);
  const c = document.createElement("canvas");
  c.width = r.size;
  c.height = r.size;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(r.size, r.size);
  r.prob.forEach((row, y) => row.forEach((p, x) => {
    const v = p > t ? 255 : 0;
    img.data.set([v, v, v, 255], 4 * (y * r.size + x));
  }));
  ctx.putImageData(img, 0, 0);
  c.toBlob((b) => download(b, "mask.png"), "image/png");
});

// prob.npy: NumPy's format 1.0, little-endian float32, shape (S, S).
$("download-prob").addEventListener("click", () => {
  const r = state.result;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${r.size}, ${r.size}), }`;
  const unpadded = 10 + header.length + 1;
  header += " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(head.buffer).setUint16(8, header.length, true);
  head.set(new TextEncoder().encode(header), 10);
  const data = new Float32Array(r.prob.flat());
  download(new Blob([head, data.buffer]), "prob.npy");
});
