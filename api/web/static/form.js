// The New page's form: a job or an experiment without typing YAML. Its choices come from the
// service (GET /openapi.json for the networks, the bounds and the defaults; /v1/datasets and
// /v1/models for the data and the uploads); every change rewrites the YAML view, and the YAML
// view's document fills the form when the form is shown again. Keys the form has no field for
// are kept as they are. Loaded before app.js, which owns the page (esc, api, submit).

const WEIGHTS = [
  ["full precision", null], ["ternary [-1, 0, 1]", [-1, 0, 1]],
  ["2-bit signed", { bits: 2, signed: true }], ["4-bit signed", { bits: 4, signed: true }],
  ["8-bit signed", { bits: 8, signed: true }],
];
const ACTIVATIONS = [
  ["full precision", null], ["2-bit [0, 1, 2, 3]", [0, 1, 2, 3]], ["4-bit unsigned", { bits: 4 }],
  ["8-bit unsigned", { bits: 8 }],
];
const CUSTOM = "custom";
const DUMP = { flowLevel: 2, lineWidth: 100, noRefs: true }; // the YAML view: no &anchors
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// ------------------------------------------------------------------ what the service offers

let offered = null; // {archs, training: {field: schema}, datasets, uploads}

function forgetOffers() {
  offered = null; // an upload came or went: the network list changes
}

async function offers() {
  if (offered) return offered;
  const [schema, datasets, uploads] = await Promise.all([
    fetch("/openapi.json").then((r) => r.json()), api("/v1/datasets"), api("/v1/models"),
  ]);
  const s = schema.components.schemas;
  const arch = s.ServiceModelSpec.properties.arch.anyOf.find((a) => a.enum);
  offered = { archs: arch.enum, training: s.ServiceTrainingSpec.properties, datasets, uploads };
  return offered;
}

// ------------------------------------------------------------------ paths in a document

function getPath(doc, path) {
  return path.split(".").reduce((node, key) => (node == null ? undefined : node[key]), doc);
}

function setPath(doc, path, value) {
  // undefined removes the key (and parents left empty): the spec's default applies
  const keys = path.split(".");
  const parents = [doc];
  keys.slice(0, -1).forEach((key, i) => {
    const node = parents[parents.length - 1];
    if (typeof node[key] !== "object" || node[key] === null) {
      node[key] = /^\d+$/.test(keys[i + 1]) ? [] : {};  // variants.0...: a list
    }
    parents.push(node[key]);
  });
  const last = keys[keys.length - 1];
  if (value === undefined && !(last in parents[parents.length - 1])) return;
  if (value === undefined) {
    delete parents[parents.length - 1][last];
    for (let i = keys.length - 2; i >= 0; i--) {
      if (Object.keys(parents[i + 1]).length) break;
      delete parents[i][keys[i]];
    }
  } else {
    parents[parents.length - 1][last] = value;
  }
}

// ------------------------------------------------------------------ the fields

function levelsField(path, presets, label) {
  const options = presets.map(([name], i) => `<option value="${i}">${esc(name)}</option>`).join("");
  return `<label>${label}<span class="levels" data-path="${path}" data-kind="levels">
    <select>${options}<option value="${CUSTOM}">other…</option></select>
    <input class="custom" placeholder="[-2, -1, 0, 1] or {bits: 3}" hidden></span></label>`;
}

function numberField(path, label, schema) {
  const bounds = ["minimum", "maximum"].filter((k) => schema && schema[k] != null)
    .map((k) => `${k === "minimum" ? "min" : "max"}="${schema[k]}"`).join(" ");
  const step = schema && schema.type === "integer" ? "1" : "any";
  const hint = schema && schema.default != null ? `default ${schema.default}` : "";
  return `<label>${label}<input type="number" step="${step}" ${bounds} placeholder="${esc(hint)}"
    data-path="${path}" data-kind="number"></label>`;
}

function choiceField(path, label, choices, fallback = "") {
  const options = choices.map(([text, value]) =>
    `<option value="${esc(JSON.stringify(value))}">${esc(text)}</option>`).join("");
  return `<label>${label}<select data-path="${path}" data-kind="choice"
    data-fallback="${esc(fallback)}">${options}</select></label>`;
}

function besideField(el, message) {
  const label = el.closest("label");
  label.querySelectorAll(".field-error").forEach((e) => e.remove());
  if (message) label.insertAdjacentHTML("beforeend", `<span class="field-error">${esc(message)}</span>`);
}

function textField(path, label, placeholder = "") {
  return `<label>${label}<input data-path="${path}" data-kind="text" placeholder="${esc(placeholder)}"></label>`;
}

function jobFields(o, at) {
  const datasets = o.datasets.map((d) => [
    d.root ? `${d.name}: ${d.root} (${d.classes ?? "?"} classes)` : d.name,
    d.root ? { name: d.name, root: d.root } : { name: d.name },
  ]);
  const models = [
    ...o.uploads.filter((u) => u.kind === "onnx").map((u) => [`upload ${u.id}: ${u.filename}`, { upload: u.id }]),
    ...o.archs.filter((a) => a !== "onnx").map((a) => [a, { arch: a }]),
  ];
  const t = o.training;
  return `<fieldset><legend>Data and network</legend>
      ${choiceField(`${at}dataset`, "dataset", datasets)}
      ${numberField(`${at}dataset.train_size`, "training images", { type: "integer", minimum: 1 })}
      ${numberField(`${at}dataset.test_size`, "test images", { type: "integer", minimum: 1 })}
      ${numberField(`${at}dataset.image_size`, "image size (synthetic, image folder)", { type: "integer", minimum: 1 })}
      ${choiceField(`${at}model`, "network", models)}
    </fieldset>
    <fieldset><legend>Constraints</legend>
      ${levelsField(`${at}quantization.weight`, WEIGHTS, "weights")}
      ${levelsField(`${at}quantization.activation`, ACTIVATIONS, "activations")}
      ${choiceField(`${at}quantization.first_last`, "first and last layers", [["float", "float"], ["quantized the same", "same"]], "float")}
    </fieldset>
    <fieldset><legend>Training</legend>
      ${numberField(`${at}training.epochs`, "epochs", t.epochs)}
      ${numberField(`${at}training.lr`, "learning rate", t.lr)}
      ${numberField(`${at}training.batch_size`, "batch size", t.batch_size)}
      ${at ? "" : numberField("training.seed", "seed", t.seed)}
    </fieldset>`;
}

function experimentFields(o) {
  return `${jobFields(o, "base.")}
    <fieldset><legend>Baseline and seeds</legend>
      ${numberField("baseline.training.epochs", "baseline epochs (trained here)", o.training.epochs)}
      ${numberField("baseline.training.lr", "baseline learning rate", o.training.lr)}
      ${textField("seeds", "seeds", "0, 1")}
    </fieldset>
    <fieldset><legend>Variants: one row each</legend>
      <table class="compact" id="rows"><tr><th>weights</th><th>activations</th><th></th></tr></table>
      <button type="button" id="add-row">Add a row</button>
    </fieldset>`;
}

function rowHtml(i) {
  return `<tr data-row="${i}"><td>${levelsField(`variants.${i}.quantization.weight`, WEIGHTS, "")}</td>
    <td>${levelsField(`variants.${i}.quantization.activation`, ACTIVATIONS, "")}</td>
    <td><button type="button" data-remove="${i}">Remove</button></td></tr>`;
}

// ------------------------------------------------------------------ reading and writing

const KEEP = Symbol("keep"); // a field whose input the browser could not read: the YAML keeps its value

function readField(el) {
  const kind = el.dataset.kind;
  if (kind === "number") {
    const bad = el.validity.badInput || (el.value !== "" && !Number.isFinite(Number(el.value)));
    besideField(el, bad ? "not a number this form can send: the YAML keeps the last one" : "");
    if (bad) return KEEP;
    return el.value === "" ? undefined : Number(el.value);
  }
  if (kind === "text") return el.value.trim() === "" ? undefined : el.value.trim();
  if (kind === "choice") {
    const value = JSON.parse(el.value);
    return value === el.dataset.fallback ? undefined : value;  // the spec's default: no key
  }
  // levels: a preset, or the custom text read as YAML (left as text when it is not YAML)
  const choice = el.querySelector("select").value, custom = el.querySelector(".custom");
  custom.hidden = choice !== CUSTOM;
  if (choice !== CUSTOM) {
    // full precision: the job's default (no key); a variant's says so, over the base's levels
    const value = presetsOf(el)[choice][1];
    return value === null && !el.dataset.path.startsWith("variants.") ? undefined : value;
  }
  try { return jsyaml.load(custom.value, { schema: YAML }); } catch { return custom.value; }
}

function presetsOf(el) {
  return el.dataset.path.endsWith("activation") ? ACTIVATIONS : WEIGHTS;
}

function writeField(el, value) {
  const kind = el.dataset.kind;
  if (kind === "number" || kind === "text") {
    el.value = value == null ? "" : Array.isArray(value) ? value.join(", ") : value;
  } else if (kind === "choice") {
    let wanted = [...el.options].find((o) => matches(JSON.parse(o.value), value));
    if (!wanted && value != null) {  // what the document names, though the service lists it not
      wanted = new Option(value.root || value.arch || JSON.stringify(value), JSON.stringify(value));
      el.add(wanted);
    }
    if (wanted) el.value = wanted.value;
  } else {
    const presets = presetsOf(el), i = presets.findIndex(([, v]) => same(v, value ?? null));
    el.querySelector("select").value = i >= 0 ? String(i) : CUSTOM;
    el.querySelector(".custom").hidden = i >= 0;
    el.querySelector(".custom").value = i >= 0 ? "" : jsyaml.dump(value, { flowLevel: 0 }).trim();
  }
}

function matches(option, value) {
  // a dataset or network option stands for the document's value when the keys it names agree
  if (typeof option !== "object" || option === null) return same(option, value ?? "float");
  return value != null && Object.entries(option).every(([k, v]) => same(value[k], v));
}

function toDocument(form, doc) {
  for (const el of form.querySelectorAll("[data-path]")) {
    let value = readField(el);
    const path = el.dataset.path;
    if (path === "seeds" && typeof value === "string") {
      value = value.split(/[\s,]+/).filter(Boolean).map(Number);
    }
    if (value === KEEP) continue;
    if (el.dataset.kind === "choice" && /(dataset|model)$/.test(path)) {
      value = merged(path, getPath(doc, path) || {}, value);
    }
    setPath(doc, path, value);
  }
  fitToUpload(doc, form.querySelector("[data-path$=dataset]").dataset.path.replace(/dataset$/, ""));
  if (form.querySelector("#rows")) {
    const rows = form.querySelectorAll("tr[data-row]").length;
    doc.variants = (doc.variants || []).slice(0, rows);
    if (!rows) delete doc.variants;
    if (doc.baseline && !doc.baseline.job) doc.baseline.train = true;
  }
  return doc;
}

function merged(path, old, chosen) {
  // the document's dataset or model with the choice made: what the choice names replaced,
  // the rest kept (a model's init; a dataset's subsets always, its other keys while its name
  // stays: image_size or channels of one dataset are errors on another)
  let kept;
  if (path.endsWith("model")) kept = chosen.upload ? {} : { init: old.init };
  else if (old.name === chosen.name) kept = old;
  else kept = { train_size: old.train_size, test_size: old.test_size };
  const value = { ...kept, ...chosen };
  Object.keys(value).forEach((k) => value[k] === undefined && delete value[k]);
  if (!value.root) delete value.root;
  return value;
}

function fitToUpload(doc, at) {
  // an uploaded ONNX model takes images of one size: synthetic data and image folders are made
  // to it (the form's dataset.image_size shows it)
  const model = getPath(doc, `${at}model`), data = getPath(doc, `${at}dataset`);
  const upload = model && model.upload && offered.uploads.find((u) => u.id === model.upload);
  if (!upload || !data || !["synthetic", "image_folder"].includes(data.name)) return;
  data.image_size = upload.image_size;
  if (data.name === "image_folder") data.channels = upload.channels;
}

function fromDocument(form, doc) {
  const rows = form.querySelector("#rows");
  if (rows) {
    rows.querySelectorAll("tr[data-row]").forEach((r) => r.remove());
    (doc.variants || []).forEach((_, i) => rows.insertAdjacentHTML("beforeend", rowHtml(i)));
  }
  for (const el of form.querySelectorAll("[data-path]")) writeField(el, getPath(doc, el.dataset.path));
}

// ------------------------------------------------------------------ the page's part

async function renderForm(kind, holder, area) {
  const o = await offers();
  holder.innerHTML = `<form class="spec-form" id="spec-form">
    ${textField("name", "name", kind === "job" ? "my-job" : "my-table")}
    ${kind === "job" ? jobFields(o, "") : experimentFields(o)}</form>`;
  const form = holder.querySelector("form");
  const documentOf = () => { try { return jsyaml.load(area.value, { schema: YAML }) || {}; } catch { return {}; } };
  const sync = () => {
    const doc = toDocument(form, documentOf());
    area.value = jsyaml.dump(doc, DUMP);
    for (const el of form.querySelectorAll("[data-path$='dataset.image_size']")) {
      writeField(el, getPath(doc, el.dataset.path));  // fitToUpload may have set it
    }
  };
  fromDocument(form, documentOf());
  form.addEventListener("input", sync);
  form.addEventListener("change", sync);
  form.addEventListener("click", (event) => {
    const remove = event.target.dataset.remove;
    if (event.target.id === "add-row") {
      const rows = form.querySelector("#rows"), i = rows.querySelectorAll("tr[data-row]").length;
      rows.insertAdjacentHTML("beforeend", rowHtml(i));
      writeField(rows.lastElementChild.querySelector("[data-path$=weight]"), [-1, 0, 1]);
      writeField(rows.lastElementChild.querySelector("[data-path$=activation]"), [0, 1, 2, 3]);
    } else if (remove !== undefined) {
      const doc = documentOf();
      doc.variants.splice(Number(remove), 1);
      area.value = jsyaml.dump(doc, DUMP);
      fromDocument(form, doc);
    } else {
      return;
    }
    sync();
  });
  return {
    refresh() {  // false when the YAML view holds no document the form can show
      try {
        fromDocument(form, jsyaml.load(area.value, { schema: YAML }) || {});
        return true;
      } catch (e) {
        return false;
      }
    },
  };
}

function showFieldErrors(fields) {
  // each 422 beside the input it names; false when some field has no input on the form
  document.querySelectorAll(".field-error").forEach((e) => e.remove());
  let all = true;
  for (const f of fields) {
    const el = [...document.querySelectorAll("#spec-form [data-path]")]
      .find((e) => f.field === e.dataset.path || f.field.startsWith(`${e.dataset.path}.`));
    if (!el) { all = false; continue; }
    el.closest("label").insertAdjacentHTML("beforeend", `<span class="field-error">${esc(f.message)}</span>`);
  }
  return all;
}
