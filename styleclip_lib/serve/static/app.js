// StyleCLIP web page: plain JS, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, jobId: null, polling: null, busy: false };

function apiHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(method, path, body, isForm) {
  const opts = { method, headers: apiHeaders(isForm || !body ? {} : { "Content-Type": "application/json" }) };
  if (body) opts.body = isForm ? body : JSON.stringify(body);
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = (data && data.error) || { message: `HTTP ${res.status}` };
    let msg = err.message || `HTTP ${res.status}`;
    if (err.limit) msg += ` [limit: ${err.limit}]`;
    if (res.status === 429 || res.status === 503) msg += ` — busy, retry in ${res.headers.get("Retry-After") || "a few"} s`;
    throw new Error(msg);
  }
  return { status: res.status, data };
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg || "";
  el.hidden = !msg;
}

function setStatus(msg) { $("status").textContent = msg || ""; }

function setBusy(busy) {
  state.busy = busy;
  $("run").disabled = busy;
}

function sourceKind() { return $("source-upload").checked ? "upload" : "seed"; }

function methodChanged() {
  const m = $("method").value;
  document.querySelectorAll(".only-global").forEach((e) => (e.hidden = m !== "global"));
  document.querySelectorAll(".only-optimize").forEach((e) => (e.hidden = m !== "optimize"));
  document.querySelectorAll(".only-mapper").forEach((e) => (e.hidden = m !== "mapper"));
}

function sourceChanged() {
  const up = sourceKind() === "upload";
  $("seed-box").hidden = up;
  $("upload-box").hidden = !up;
  if (!up) showSeedPreview();
}

function showSeedPreview() {
  const seed = parseInt($("seed").value, 10) || 0;
  $("before").src = `/v1/samples/${seed}`;
  $("after").removeAttribute("src");
  $("pasted-box").hidden = true;
  document.querySelectorAll("#samples img").forEach((img) =>
    img.classList.toggle("selected", parseInt(img.dataset.seed, 10) === seed));
}

function bindSlider(id, digits) {
  const input = $(id), out = $(id + "-out");
  const upd = () => (out.textContent = Number(input.value).toFixed(digits));
  input.addEventListener("input", upd);
  upd();
}

async function loadInfo() {
  try {
    const { data } = await api("GET", "/v1/models");
    state.info = data;
    $("model-info").textContent = `model: ${data.model} · ${data.resolution}px · W+ ${data.num_ws}×${data.w_dim} · ${data.device}`;
    const lim = data.limits || {};
    if (lim.max_steps) $("steps").max = lim.max_steps;
    const sel = $("mapper");
    sel.innerHTML = "";
    (data.mappers || []).forEach((n) => { const o = document.createElement("option"); o.value = o.textContent = n; sel.appendChild(o); });
    const mapperOpt = $("method").querySelector('option[value="mapper"]');
    mapperOpt.disabled = !(data.mappers || []).length;
    if (mapperOpt.disabled) mapperOpt.textContent = "latent mapper (none available)";
    const globalOpt = $("method").querySelector('option[value="global"]');
    if (data.methods && !data.methods.global) {
      globalOpt.disabled = true;
      globalOpt.textContent = "global directions (not available)";
      $("method").value = "optimize";
      methodChanged();
    }
  } catch (e) {
    $("model-info").textContent = "model: unavailable";
    showError(e.message);
  }
}

function buildSamples() {
  const box = $("samples");
  for (let s = 0; s < 8; s++) {
    const img = document.createElement("img");
    img.src = `/v1/samples/${s}`;
    img.alt = `sample ${s}`;
    img.dataset.seed = String(s);
    img.addEventListener("click", () => { $("seed").value = s; showSeedPreview(); });
    box.appendChild(img);
  }
}

function requestBody() {
  const m = $("method").value;
  const p = { prompt: $("prompt").value };
  if (m === "global") {
    p.neutral = $("neutral").value || "a face";
    p.alpha = Number($("alpha").value);
    p.beta = Number($("beta").value);
  } else if (m === "optimize") {
    p.steps = Number($("steps").value);
    p.l2_lambda = Number($("l2").value);
  } else {
    p.mapper = $("mapper").value;
    p.strength = Number($("strength").value);
  }
  let path = `/v1/edit/${m}`;
  if (sourceKind() === "upload") {
    const file = $("photo").files[0];
    if (!file) throw new Error("choose a photo first");
    if ($("photo-pipeline").checked) {  // align → invert → edit → paste back
      path = "/v1/edit/photo";
      p.method = m;
    }
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    form.append("params", JSON.stringify(p));
    return { path, body: form, isForm: true };
  }
  p.seed = parseInt($("seed").value, 10) || 0;
  return { path, body: p, isForm: false };
}

function showResult(r) {
  const img = (r.images || [])[0] || {};
  if (img.source || img.source_url) $("before").src = img.source || img.source_url;
  if (img.edited || img.edited_url) $("after").src = img.edited || img.edited_url;
  const pasted = img.pasted || img.pasted_url;
  $("pasted-box").hidden = !pasted;
  if (pasted) $("pasted").src = pasted;
  $("channels").textContent = r.num_channels !== undefined && r.num_channels !== null
    ? `${r.num_channels} StyleSpace channels changed (beta ${r.params && r.params.beta})` + (r.note ? ` — ${r.note}` : "")
    : "";
  const t = r.timings || {};
  $("timings").textContent = Object.keys(t).map((k) => `${k.replace("_ms", "")} ${Math.round(t[k])} ms`).join(" · ");
}

async function run() {
  if (state.busy) return;
  showError("");
  let req;
  try { req = requestBody(); } catch (e) { showError(e.message); return; }
  setBusy(true);
  setStatus("working…");
  try {
    const { status, data } = await api("POST", req.path, req.body, req.isForm);
    if (status === 202) {
      await followJob(data.job_id);
    } else {
      showResult(data);
      setStatus("done");
    }
  } catch (e) {
    showError(e.message);
    setStatus("");
  } finally {
    setBusy(false);
  }
}

function followJob(jobId) {
  state.jobId = jobId;
  $("cancel").hidden = false;
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  return new Promise((resolve, reject) => {
    const tick = async () => {
      try {
        const { data } = await api("GET", `/v1/jobs/${jobId}`);
        bar.value = data.progress || 0;
        const loss = data.info && data.info.losses ? ` · loss ${Number(data.info.losses.total || data.info.losses.clip || 0).toFixed(4)}` : "";
        setStatus(`${data.status} · step ${data.step}/${data.total}${loss}`);
        if (data.status === "succeeded") { finish(); showResult(data.result); resolve(); return; }
        if (data.status === "failed") { finish(); reject(new Error((data.error && data.error.message) || "job failed")); return; }
        if (data.status === "cancelled") { finish(); setStatus("cancelled"); resolve(); return; }
        state.polling = setTimeout(tick, 400);
      } catch (e) { finish(); reject(e); }
    };
    const finish = () => { clearTimeout(state.polling); state.jobId = null; $("cancel").hidden = true; bar.hidden = true; };
    tick();
  });
}

async function cancel() {
  if (!state.jobId) return;
  try { await api("DELETE", `/v1/jobs/${state.jobId}`); setStatus("cancelling…"); } catch (e) { showError(e.message); }
}

window.addEventListener("DOMContentLoaded", () => {
  bindSlider("alpha", 1); bindSlider("beta", 2); bindSlider("strength", 2); bindSlider("steps", 0); bindSlider("l2", 3);
  const saved = sessionStorage.getItem("styleclip-api-key");
  if (saved) $("api-key").value = saved;
  $("api-key").addEventListener("change", () => sessionStorage.setItem("styleclip-api-key", $("api-key").value));
  $("method").addEventListener("change", methodChanged);
  document.querySelectorAll('input[name="source"]').forEach((r) => r.addEventListener("change", sourceChanged));
  $("seed").addEventListener("change", showSeedPreview);
  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 100000); showSeedPreview(); });
  $("photo").addEventListener("change", () => {
    const f = $("photo").files[0];
    if (f) { $("before").src = URL.createObjectURL(f); $("after").removeAttribute("src"); }
  });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  buildSamples();
  methodChanged();
  sourceChanged();
  loadInfo();
});
