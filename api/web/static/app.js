// The dashboard: plain JavaScript over the /v1 API, no build step. Pages by URL hash:
// #/ (jobs and experiments), #/jobs/ID, #/experiments/ID, #/new. Live by polling every 2 s.
"use strict";

const main = document.getElementById("main");
const FINISHED = ["succeeded", "failed", "cancelled"];
let poll = null; // the current page's refresh timer
const images = {}; // path -> {url, at, live}: the last fetched picture, when, and if drawn live
const REDRAWN_EVERY = 10000; // a running job's plots are fetched again at most this often (ms)

// ---------------------------------------------------------------- the token and the API

function token() {
  // the CLI prints links with it (#token=T, #/jobs/7?token=T): keep it here, out of the
  // address bar, and open the page the link names
  const m = location.hash.match(/[#?&]token=([^&]+)/);
  if (m) {
    localStorage.setItem("lsq-token", decodeURIComponent(m[1]));
    const page = location.hash.replace(/[?&]?token=[^&]+/, "");
    history.replaceState(null, "", location.pathname + (page.length > 2 ? page : "#/"));
  }
  return localStorage.getItem("lsq-token");
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.fields = (body && body.error && body.error.fields) || [];
  }
}

async function api(path, options = {}) {
  const sent = token();
  const headers = { Authorization: `Bearer ${sent}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  // A 401 asks for a token only if it answers the token in use: a page's request sent before
  // a link brought a new one must not stop the page that link opened.
  if (response.status === 401) { if (token() === sent) askToken(); throw new ApiError(401, null); }
  const kind = response.headers.get("content-type") || "";
  const body = kind.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function askToken() {
  stop();
  main.innerHTML = `<h1>API token</h1>
    <p>Paste a token (<code>lsq serve</code> saved this machine's in
    <code>runs/service/token</code>; <code>lsq token create OWNER</code> makes one).</p>
    <p><input id="token" size="60" autocomplete="off"> <button class="primary" id="save">Use it</button></p>`;
  document.getElementById("save").onclick = () => {
    localStorage.setItem("lsq-token", document.getElementById("token").value.trim());
    route();
  };
}

// ----------------------------------------------------------------------------- helpers

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const tag = (status) => `<span class="status ${esc(status)}">${esc(status)}</span>`;
const pct = (x) => (x == null ? "" : `${x.toFixed(2)}%`);
const stat = (s) => (s == null ? "" : s.mean.toFixed(2) + (s.std == null ? "" : ` ± ${s.std.toFixed(2)}`));

function progress(p, status) {
  const done = status === "succeeded" ? 1 : Math.max(0, (p.epoch - 1 + p.fraction) / p.epochs);
  const epoch = status === "succeeded" ? p.epochs : Math.max(0, p.epoch - 1 + p.fraction);
  const shown = epoch.toFixed(1).replace(/\.0$/, ""); // 2/2 epochs, not 2.0/2; 1.5/2 as is
  return `<progress class="bar" max="1" value="${done.toFixed(3)}"></progress>
    <span class="muted">${shown}/${p.epochs} epochs</span>`;
}

function levels(value) {
  if (value == null) return "float";
  return esc(typeof value === "string" ? value : JSON.stringify(value).replace(/,/g, ", "));
}

function stop() { if (poll) clearInterval(poll); poll = null; }

// Each navigation is a generation: a page's render still waiting for the API when the user
// moves on must not paint over the next page.
let generation = 0;

function every(ms, render) {
  stop();
  const tick = () => render().catch(showError);
  tick();
  poll = setInterval(tick, ms);
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return;
  main.insertAdjacentHTML("afterbegin", `<p class="errors">${esc(e.message)}</p>`);
  stop();
}

async function picture(id, path, live) {
  const el = document.getElementById(id);
  if (!el) return;
  const known = images[path];
  const stale = known && ((live && Date.now() - known.at > REDRAWN_EVERY) || (known.live && !live));
  if (!known || stale) {
    try {
      const blob = await api(path);
      if (known) URL.revokeObjectURL(known.url);
      images[path] = { url: URL.createObjectURL(blob), at: Date.now(), live };
    } catch (e) {
      if (!known) { notYet(el, true); return; }
    }
  }
  notYet(el, false);
  el.src = images[path].url;
}

// A line of text in place of a plot not drawn yet (an image without a source shows as broken).
function notYet(el, pending) {
  let note = el.previousElementSibling;
  if (!note || !note.classList.contains("not-yet")) {
    if (!pending) return;
    note = document.createElement("p");
    note.className = "muted not-yet";
    note.textContent = `${el.alt}: drawn after the first epoch`;
    el.before(note);
  }
  note.hidden = !pending;
  el.hidden = pending;
}

// ---------------------------------------------------------------------------- the pages

async function home() {
  const g = generation;
  const [exps, jobs] = await Promise.all([api("/v1/experiments?limit=20"), api("/v1/jobs?limit=50")]);
  if (g !== generation) return;  // the user went elsewhere meanwhile
  main.innerHTML = `<h1>Experiments</h1>${exps.items.length ? `<table>
      <tr><th>id</th><th>name</th><th>status</th><th>jobs ended</th><th>created</th></tr>
      ${exps.items.map((x) => `<tr><td><a href="#/experiments/${x.id}">${x.id}</a></td>
        <td><a href="#/experiments/${x.id}">${esc(x.name)}</a></td><td>${tag(x.status)}</td>
        <td>${x.finished_jobs}/${x.total_jobs}</td>
        <td class="muted">${new Date(x.created_at).toLocaleString()}</td></tr>`).join("")}
    </table>` : `<p class="muted">None yet: <a href="#/new">submit one</a>.</p>`}
    <h1>Jobs</h1>${jobs.items.length ? `<table id="jobs">
      <tr><th>id</th><th>name</th><th>status</th><th>progress</th><th class="num">test top-1</th>
      <th class="num">drop</th></tr>
      ${jobs.items.map((j) => `<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td>
        <td><a href="#/jobs/${j.id}">${esc(j.name)}</a></td><td>${tag(j.status)}</td>
        <td>${progress(j.progress, j.status)}</td>
        <td class="num">${j.result ? pct(j.result.final_top1) : ""}</td>
        <td class="num">${j.result && j.result.drop_top1 != null ? j.result.drop_top1.toFixed(2) : ""}</td></tr>`).join("")}
    </table>${jobs.next_cursor ? `<p class="muted">The newest 50 are shown.</p>` : ""}`
    : `<p class="muted">None yet: <a href="#/new">submit one</a>.</p>`}`;
}

async function jobPage(id) {
  const g = generation;
  const j = await api(`/v1/jobs/${id}`);
  if (g !== generation) return;  // the user went elsewhere meanwhile
  const running = !FINISHED.includes(j.status);
  const q = j.spec.quantization || {};
  const r = j.result;
  main.innerHTML = `<h1>Job ${j.id}: ${esc(j.name)} ${tag(j.status)}</h1>
    <p class="muted">${esc(j.spec.model.arch)} on ${esc(j.spec.dataset.name)};
      weights ${levels(q.weight)}, activations ${levels(q.activation)},
      first/last ${levels(q.first_last ?? "float")}</p>
    <p>${progress(j.progress, j.status)} · attempts ${j.attempts}
      ${running ? `<button id="cancel">Cancel</button>` : `<button id="delete">Delete</button>`}</p>
    ${j.error ? `<p class="errors">${esc(j.error)}</p>` : ""}
    ${j.warnings.map((w) => `<div class="warning">${esc(w)}</div>`).join("")}
    ${r ? `<div class="kv"><span>final test top-1</span><b>${pct(r.final_top1)}</b>
      <span>top-5</span><span>${pct(r.final_top5)}</span>
      ${r.init_top1 != null ? `<span>start (before quantization)</span><span>${pct(r.init_top1)}</span>
      <span>drop</span><b>${r.drop_top1.toFixed(2)} points</b>` : ""}</div>` : ""}
    ${j.spec.sensitivity ? probes(r) : `<h2>Curves</h2><div class="plots"><img id="plot" alt="accuracy and loss per epoch">
      ${q.weight || q.activation ? `<img id="health" alt="quantizer health">` : ""}</div>`}
    <h2${j.spec.sensitivity ? ' hidden' : ""}>Epochs</h2><table id="epochs"${j.spec.sensitivity ? " hidden" : ""}><tr><th class="num">epoch</th><th class="num">train loss</th>
      <th class="num">train top-1</th><th class="num">test loss</th><th class="num">test top-1</th>
      <th class="num">test top-5</th><th class="num">lr</th><th class="num">seconds</th></tr>
      ${j.epochs.map((e) => `<tr><td class="num">${e.epoch}</td><td class="num">${e.train_loss.toFixed(4)}</td>
        <td class="num">${pct(e.train_top1)}</td><td class="num">${e.test_loss.toFixed(4)}</td>
        <td class="num">${pct(e.test_top1)}</td><td class="num">${pct(e.test_top5)}</td>
        <td class="num">${e.lr.toPrecision(3)}</td><td class="num">${e.seconds.toFixed(1)}</td></tr>`).join("")}
    </table>
    ${classes(r)}
    <h2>Files</h2><p id="files" class="muted">…</p>`;
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.onclick = () => api(`/v1/jobs/${id}/cancel`, { method: "POST" }).then(route);
  const remove = document.getElementById("delete");
  if (remove) remove.onclick = () => confirm(`Delete job ${id}, its epochs and its files?`) &&
    api(`/v1/jobs/${id}`, { method: "DELETE" }).then(() => (location.hash = "#/"), showError);
  if (j.spec.sensitivity) await picture("bars", `/v1/jobs/${id}/sensitivity.png`, running);
  await picture("plot", `/v1/jobs/${id}/plot.png`, running);
  await picture("health", `/v1/jobs/${id}/quantizers.png`, running);
  const files = await api(`/v1/jobs/${id}/artifacts`);
  const el = document.getElementById("files");
  el.innerHTML = files.length ? files.map((f) => `<button data-url="${esc(f.url)}" data-name="${esc(f.name)}">
      ${esc(f.name)} (${(f.size / 1024).toFixed(0)} KiB)</button>`).join(" ") : "none yet";
  el.querySelectorAll("button").forEach((b) => (b.onclick = () => download(b.dataset.url, b.dataset.name)));
  if (!running) stop();
}

async function download(url, name) {
  const blob = await api(url);
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  a.click();
}

// The finished model class by class: test top-1 (the worst in bold; past 50 classes, the 20
// worst only) and the commonest mistakes.
function classes(r) {
  const pc = r && r.per_class;
  if (!pc) return "";
  let rows = pc.classes.map((name, i) => ({ name, top1: pc.top1[i] }));
  const known = rows.filter((c) => c.top1 != null).map((c) => c.top1);
  const worst = Math.min(...known);
  const many = rows.length > 50;
  if (many) rows = rows.filter((c) => c.top1 != null).sort((a, b) => a.top1 - b.top1).slice(0, 20);
  return `<h2>Classes</h2>${many ? `<p class="muted">The 20 worst of ${pc.classes.length} classes.</p>` : ""}
    <table id="classes" class="compact"><tr><th>class</th><th class="num">test top-1</th><th></th></tr>
      ${rows.map((c) => `<tr><td>${esc(c.name)}</td>
        <td class="num">${c.top1 == null ? "no test image" : c.top1 === worst ? `<b>${pct(c.top1)}</b>` : pct(c.top1)}</td>
        <td><progress class="bar" max="100" value="${c.top1 ?? 0}"></progress></td></tr>`).join("")}
    </table>
    ${pc.confusions.length ? `<h3>Commonest mistakes</h3><table id="confusions" class="compact"><tr><th>class</th>
      <th>taken for</th><th class="num">test images</th><th class="num">of its class</th></tr>
      ${pc.confusions.map((m) => `<tr><td>${esc(m.true)}</td><td>${esc(m.predicted)}</td>
        <td class="num">${m.count}</td><td class="num">${pct(m.share)}</td></tr>`).join("")}</table>` : ""}`;
}

// A sensitivity job: its drop per layer, as a plot and a table (the largest drop in bold).
function probes(r) {
  const rows = (r && r.sensitivity) || [];
  const worst = Math.max(...rows.map((p) => p.drop_top1));
  return `<h2>Drop per layer</h2><div class="plots"><img id="bars" alt="drop in test top-1 per layer"></div>
    <table id="probes"><tr><th>layer</th><th>weight</th><th>input</th><th class="num">parameters</th>
      <th class="num">test top-1</th><th class="num">drop</th></tr>
      ${rows.map((p) => `<tr><td>${esc(p.layer)}</td><td>${levels(p.weight)}</td><td>${levels(p.activation)}</td>
        <td class="num">${p.parameters.toLocaleString()}</td><td class="num">${pct(p.test_top1)}</td>
        <td class="num">${p.drop_top1 === worst ? `<b>${p.drop_top1.toFixed(2)}</b>` : p.drop_top1.toFixed(2)}</td></tr>`).join("")}
    </table>`;
}

async function experimentPage(id) {
  const g = generation;
  const x = await api(`/v1/experiments/${id}`);
  if (g !== generation) return;  // the user went elsewhere meanwhile
  const running = !FINISHED.includes(x.status);
  const refs = x.rows.some((r) => r.reference);
  const others = x.rows.some((r) => r.other_settings);  // rows that differ where no column looks
  main.innerHTML = `<h1>Experiment ${x.id}: ${esc(x.name)} ${tag(x.status)}</h1>
    <p class="muted">${x.finished_jobs}/${x.total_jobs} jobs ended
      ${running ? `<button id="cancel">Cancel all</button>` : ""}
      · <a href="#" id="md">Markdown table</a></p>
    <table id="results"><tr><th>ID</th><th>row</th><th>quan_lr</th><th>constr_w</th><th>constr_a</th>
      <th class="num">lr</th><th class="num">epochs</th><th class="num">test top-1</th>
      <th class="num">drop</th><th class="num">top-5</th><th class="num">drop top-5</th>
      ${refs ? `<th class="num">published</th><th class="num">delta</th>` : ""}
      ${others ? `<th>settings</th>` : ""}<th>runs</th></tr>
      ${x.rows.map((r) => `<tr class="${r.baseline ? "baseline" : ""}"><td>${esc(r.id)}</td>
        <td>${esc(r.label)}</td><td>${esc(r.quan_lr)}</td><td>${esc(r.constr_w)}</td><td>${esc(r.constr_a)}</td>
        <td class="num">${r.lr_base ?? ""}</td><td class="num">${r.epochs ?? ""}</td><td class="num">${stat(r.test_top1)}</td>
        <td class="num">${stat(r.drop_top1)}</td><td class="num">${stat(r.test_top5)}</td>
        <td class="num">${stat(r.drop_top5)}</td>
        ${refs ? `<td class="num">${r.reference ? r.reference.test_top1.toFixed(2) : ""}</td>
          <td class="num">${r.delta_vs_reference != null ? r.delta_vs_reference.toFixed(2) : ""}</td>` : ""}
        ${others ? `<td>${esc(r.other_settings)}</td>` : ""}
        <td>${r.jobs.length ? `${r.jobs.map((j) => `<a href="#/jobs/${j}">${j}</a>`).join(" ")}
          <span class="muted">(${r.finished}/${r.jobs.length})</span>` : ""}</td></tr>`).join("")}
    </table>
    <h2>${x.spec.kind === "sensitivity" ? "Drop in test top-1 per layer" : "Test accuracy per epoch"}</h2>
    <div class="plots"><img id="plot" alt="the experiment's plot"></div>
    <h2>Jobs</h2><table><tr><th>id</th><th>name</th><th>status</th><th>progress</th></tr>
      ${x.jobs.map((j) => `<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.name)}</td>
        <td>${tag(j.status)}</td><td>${progress(j.progress, j.status)}</td></tr>`).join("")}</table>`;
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.onclick = () => api(`/v1/experiments/${id}/cancel`, { method: "POST" }).then(route);
  document.getElementById("md").onclick = async (event) => {
    event.preventDefault();
    const text = await (await api(`/v1/experiments/${id}?format=md`)).text();
    main.insertAdjacentHTML("beforeend", `<h2>Markdown</h2><pre>${esc(text)}</pre>`);
  };
  const plot = `/v1/experiments/${id}/plot.png`;
  await picture("plot", plot, running);
  // a succeeded experiment's last plot is drawn just after its last result: poll until it is
  if (!running && (images[plot] || x.status !== "succeeded")) stop();
}

const EXAMPLES = {
  job: `name: quick
dataset: {name: synthetic, train_size: 512, test_size: 128}
model: {arch: resnet20}
quantization: {weight: [-1, 0, 1], activation: [0, 1, 2, 3]}
training: {epochs: 3, batch_size: 64, lr: 0.05}
`,
  experiment: `name: quick-table
base:
  dataset: {name: synthetic, train_size: 512, test_size: 128}
  model: {arch: resnet20}
  training: {epochs: 2, batch_size: 64, lr: 0.01}
baseline: {train: true, training: {epochs: 3, lr: 0.05}}
variants:
  - quantization: {weight: [-1, 0, 1], activation: null}
  - quantization: {weight: [-1, 0, 1], activation: [0, 1, 2, 3]}
`,
};

function newPage() {
  stop();
  main.innerHTML = `<h1>Submit</h1>
    <p><label><input type="radio" name="kind" value="job" checked> a job</label>
       <label><input type="radio" name="kind" value="experiment"> an experiment</label>
       <span class="tabs"><button id="show-form" class="tab on">Form</button><button id="show-yaml"
         class="tab">YAML</button></span>
       <span class="muted">the YAML is what is sent, as for <code>lsq run</code> / <code>lsq experiment</code></span></p>
    <div id="form-holder"></div>
    <textarea id="spec" spellcheck="false" hidden>${esc(EXAMPLES.job)}</textarea>
    <ul class="errors" id="errors"></ul>
    <button class="primary" id="submit">Submit</button>
    <h2>Your models</h2>
    <p class="muted">An ONNX classifier, or safetensors weights for a named network (never a
      pickle: <a href="/docs">POST /v1/models</a>). A job then names it.</p>
    <p class="upload"><input type="file" id="model-file">
      <input id="model-arch" placeholder="arch, for weights" size="18" title="safetensors weights: the network they are for">
      <select id="model-dataset" title="safetensors weights: the data they are for">${["cifar10", "fashion-mnist", "imagenet", "synthetic"]
        .map((d) => `<option>${d}</option>`).join("")}</select>
      <button id="upload">Upload</button></p>
    <ul class="errors" id="upload-errors"></ul>
    <div id="uploads"></div>`;
  const kind = () => document.querySelector("input[name=kind]:checked").value;
  const area = document.getElementById("spec"), holder = document.getElementById("form-holder");
  let form = null;
  rebuildForm = async () => { form = await renderForm(kind(), holder, area); };
  const show = (yaml) => {
    if (!yaml && form && !form.refresh()) {  // what was typed in the YAML view, if it reads
      document.getElementById("errors").innerHTML =
        "<li>the YAML does not read as a document: fix it, or the form would lose it</li>";
      return;
    }
    area.hidden = !yaml;
    holder.hidden = yaml;
    document.getElementById("show-yaml").classList.toggle("on", yaml);
    document.getElementById("show-form").classList.toggle("on", !yaml);
  };
  document.getElementById("show-yaml").onclick = () => show(true);
  document.getElementById("show-form").onclick = () => show(false);
  document.querySelectorAll("input[name=kind]").forEach((r) => (r.onchange = () => {
    const name = (area.value.match(/^name: (.*)$/m) || [])[1];  // the name typed so far stays
    area.value = name ? EXAMPLES[kind()].replace(/^name: .*$/m, `name: ${name}`) : EXAMPLES[kind()];
    rebuildForm().catch(showError);
  }));
  document.getElementById("submit").onclick = () => submit(kind());
  document.getElementById("upload").onclick = () => upload().catch(showError);
  rebuildForm().catch(showError);
  uploads().catch(showError);
}

let rebuildForm = async () => {}; // the New page's form, drawn again from the YAML view

function putInJob(u) {
  // a job on upload `u` in the YAML view, and the form drawn for it (with the upload listed)
  document.querySelector("input[name=kind][value=job]").checked = true;
  document.getElementById("spec").value = useSpec(u);
  forgetOffers();
  return rebuildForm();
}

function useSpec(u) {
  // a job on the upload: its model line, the rest of the quick example
  const model = u.kind === "onnx" ? `{upload: ${u.id}}` : `{arch: ${u.arch}, init: {upload: ${u.id}}}`;
  const data = u.channels === 1 && u.image_size === 28 ? "name: fashion-mnist"
    : `name: synthetic, image_size: ${u.image_size}`;  // else: name your data (image_folder...)
  return EXAMPLES.job.replace("name: quick", `name: ${u.filename.replace(/[^\w.-]/g, "_")}-w3a2`)
    .replace(/dataset: \{name: synthetic/, `dataset: {${data}`)
    .replace(/model: .*/, `model: ${model}`);
}

async function uploads() {
  const rows = await api("/v1/models");
  const el = document.getElementById("uploads");
  if (!el) return;
  el.innerHTML = rows.length ? `<table class="compact"><tr><th>id</th><th>file</th><th>kind</th>
      <th>takes</th><th class="num">size</th><th>sha256</th><th></th></tr>
    ${rows.map((u) => `<tr><td>${u.id}</td><td>${esc(u.filename)}</td>
      <td>${esc(u.kind)}${u.arch ? ` (${esc(u.arch)})` : ""}</td>
      <td>${u.channels} × ${u.image_size} px, ${u.classes} classes</td>
      <td class="num">${(u.size_bytes / 2 ** 20).toFixed(1)} MiB</td>
      <td><code>${esc(u.sha256.slice(0, 12))}</code></td>
      <td><button data-use="${u.id}">Use in a job</button> <button data-delete="${u.id}">Delete</button></td></tr>`).join("")}
    </table>` : `<p class="muted">None yet.</p>`;
  el.querySelectorAll("button[data-use]").forEach((b) => (b.onclick = () =>
    putInJob(rows.find((u) => u.id === Number(b.dataset.use))).catch(showError)));
  el.querySelectorAll("button[data-delete]").forEach((b) => (b.onclick = () =>
    api(`/v1/models/${b.dataset.delete}`, { method: "DELETE" })
      .then(() => { forgetOffers(); return Promise.all([uploads(), rebuildForm()]); })
      .catch(uploadError)));
}

async function upload() {
  const file = document.getElementById("model-file").files[0];
  const errors = document.getElementById("upload-errors");
  errors.innerHTML = "";
  if (!file) return void (errors.innerHTML = "<li>choose a file first</li>");
  const form = new FormData();
  form.append("file", file);
  const arch = document.getElementById("model-arch").value.trim();
  if (arch) form.append("arch", arch);
  form.append("dataset", document.getElementById("model-dataset").value);
  try {
    const u = await api("/v1/models", { method: "POST", body: form });
    await putInJob(u);
    await uploads();
  } catch (e) {
    uploadError(e);
  }
}

function uploadError(e) {
  if (!(e instanceof ApiError)) throw e;
  const fields = e.fields.length ? e.fields : [{ field: "", message: e.message }];
  document.getElementById("upload-errors").innerHTML = fields.map((f) =>
    `<li><code>${esc(f.field)}</code> ${esc(f.message)}</li>`).join("");
}

// JSON's kinds of value (no dates, no merge keys), as lsq.documents reads a spec file
const YAML = jsyaml.CORE_SCHEMA;

async function submit(kind) {
  const text = document.getElementById("spec").value;
  const errors = document.getElementById("errors");
  errors.innerHTML = "";
  let body;
  try {
    body = jsyaml.load(text, { schema: YAML });
  } catch (e) {
    errors.innerHTML = `<li>not valid YAML: ${esc(e.message)}</li>`;
    return;
  }
  document.querySelectorAll(".field-error").forEach((el) => el.remove());
  try {
    const created = await api(`/v1/${kind}s`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    location.hash = `#/${kind}s/${created.id}`;
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    const fields = e.fields.length ? e.fields : [{ field: "", message: e.message }];
    errors.innerHTML = fields.map((f) => `<li><a href="#" data-field="${esc(f.field)}"><code>${esc(f.field)}</code></a>
      ${esc(f.message)}</li>`).join("");
    errors.querySelectorAll("a").forEach((a) => (a.onclick = (event) => {
      event.preventDefault();
      document.getElementById("show-yaml").click();
      select(a.dataset.field);
    }));
    const inForm = !document.getElementById("form-holder").hidden;
    if (inForm) showFieldErrors(e.fields);  // beside their inputs; the list keeps them all
    else if (e.fields.length) select(e.fields[0].field);
  }
}

function select(field) {
  // put the cursor on the line of the field's last key found in the document; a quoted part
  // is a layer pattern, dots and all, and a grid's keys are dotted paths (the longest key wins)
  const area = document.getElementById("spec");
  const parts = (field.match(/"(?:[^"\\]|\\.)*"|[^.]+/g) || []).map((p) =>
    p.startsWith('"') ? p.slice(1, -1).replace(/\\(.)/g, "$1") : p);
  let node = yamlTree(area.value), at = -1;
  for (let i = 0; node && i < parts.length; ) {
    if (node.kind === "sequence") {
      node = node.children[Number(parts[i++])];
      at = node ? node.at : at;
      continue;
    }
    let j = parts.length, k = -1;
    for (; j > i && k < 0; j--) k = keyIndex(node, parts.slice(i, j).join("."));
    if (k < 0) break;
    [at, node, i] = [node.children[k].at, node.children[k + 1], j + 1];
  }
  if (at < 0) return;
  const end = area.value.indexOf("\n", at);
  area.focus();
  area.setSelectionRange(at, end < 0 ? area.value.length : end);
}

function yamlTree(text) {
  // the document's nodes with the offset where each opens: js-yaml reports every node, keys
  // included, in order, so a mapping's children are key, value, key, value, ...
  const root = { children: [] }, open = [root];
  try {
    jsyaml.load(text, { schema: YAML, listener(event, state) {
      if (event === "open") {
        const node = { at: state.position, children: [] };
        open[open.length - 1].children.push(node);
        open.push(node);
      } else {  // a node read first as a possible key comes back wrapped in itself: unwrap it
        const node = open.pop(), only = node.children.length === 1 ? node.children[0] : null;
        const read = { kind: state.kind, result: state.result };
        Object.assign(node, only && only.result === read.result ? only : read);
      }
    } });
  } catch {
    return null;
  }
  return root.children[0];
}

function keyIndex(node, name) {
  // where the key `name` is among a mapping's children (-1 if nowhere)
  if (node.kind !== "mapping") return -1;
  return node.children.findIndex((c, n) => n % 2 === 0 && String(c.result) === name);
}

// -------------------------------------------------------------------------- the router

function route() {
  generation++;
  if (!token()) return askToken();
  const hash = location.hash || "#/";
  let m;
  if ((m = hash.match(/^#\/jobs\/(\d+)/))) return every(2000, () => jobPage(m[1]));
  if ((m = hash.match(/^#\/experiments\/(\d+)/))) return every(2000, () => experimentPage(m[1]));
  if (hash.startsWith("#/new")) return newPage();
  return every(2000, home);
}

window.addEventListener("hashchange", route);
route();
