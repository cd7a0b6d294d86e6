// The page of `protloc serve`: label many images with the served run, look at one's Grad-CAMs, download a CSV.
// It talks only to this server's JSON API (health, predict, explain), one request per image, a few at a time.
"use strict";

const STAIN_NAME = /^(.*)_(red|green|blue|yellow)$/i;  // HPA stain files: ID_red.png, ID_green.png...
const IN_FLIGHT = 4;  // requests at once; the server batches them into shared forward passes
const RETRIES = 4;  // a busy server answers 503; wait and retry

let run = null;  // GET /health
const items = [];  // one per image or stain set: {id, name, file | stains, result, error, explanation, row}
let selected = null;

const byId = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const stem = (name) => name.replace(/\.[^.]*$/, "");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ talking to the API

function options() {
  const form = byId("options");
  return {tta: form.tta.checked, threshold: form.threshold.value.trim(), allow_empty: form.allow_empty.checked};
}

function formFor(item) {
  const body = new FormData();
  if (item.file) {
    body.append("files", item.file, item.file.name);
  } else {
    for (const stain of run.stains) body.append(stain, item.stains[stain], item.stains[stain].name);
  }
  const chosen = options();
  body.append("tta", chosen.tta);
  body.append("allow_empty", chosen.allow_empty);
  if (chosen.threshold) body.append("threshold", chosen.threshold);
  return body;
}

async function post(path, makeBody) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {method: "POST", body: makeBody()});
    if (response.status !== 503 || attempt === RETRIES) return response;
    await sleep(1000 * (attempt + 1));
  }
}

async function answer(response) {
  let detail = response.statusText;
  try {
    const data = await response.json();
    if (response.ok) return data;
    detail = typeof data.detail === "string" ? data.detail
      : data.detail.map((problem) => `${problem.loc.join(".")}: ${problem.msg}`).join("; ");
  } catch (error) {
    if (response.ok) throw error;
  }
  throw new Error(`${detail} (HTTP ${response.status})`);
}

// ------------------------------------------------------------------ files -> items

function addFiles(files) {
  const sets = new Map();
  const added = [];
  for (const file of files) {
    const match = STAIN_NAME.exec(stem(file.name));
    if (!match) {
      added.push({id: stem(file.name), name: file.name, file});
      continue;
    }
    if (!sets.has(match[1])) sets.set(match[1], {});
    sets.get(match[1])[match[2].toLowerCase()] = file;
  }
  for (const [id, stains] of sets) {
    const missing = run.stains.filter((stain) => !stains[stain]);
    const item = {id, name: `${id} (${run.stains.join(", ")})`, stains};
    if (missing.length) item.error = item.incomplete = `stain set without ${missing.join(", ")}`;
    added.push(item);
  }
  items.push(...added);
  byId("results").hidden = false;
  added.forEach(renderRow);
  predictAll(added.filter((item) => !item.error));
}

async function predictItem(item) {
  item.result = null;
  item.error = null;
  item.explanation = null;
  renderRow(item);
  try {
    const data = await answer(await post("predict", () => formFor(item)));
    item.result = data.images[0];
    item.thresholds = data.thresholds;
  } catch (error) {
    item.error = error.message;
  }
  renderRow(item);
  if (item === selected) openDetail(item);
}

async function predictAll(list) {
  const waiting = [...list];
  updateStatus();
  const worker = async () => {
    while (waiting.length) {
      await predictItem(waiting.shift());
      updateStatus();
    }
  };
  await Promise.all(Array.from({length: IN_FLIGHT}, worker));
  updateStatus();
}

// ------------------------------------------------------------------ the table

function spark(result) {
  const chart = element("div", "spark");
  run.labels.forEach((label, index) => {
    const p = result.probabilities[label];
    const bar = element("span", result.classes.includes(index) ? "on" : "");
    bar.style.height = `${Math.max(2, 100 * p)}%`;
    bar.title = `${index} ${label}: ${p.toFixed(3)}`;
    chart.append(bar);
  });
  return chart;
}

function renderRow(item) {
  if (!item.row) {
    item.row = element("tr");
    item.row.addEventListener("click", () => openDetail(item));
    byId("results").tBodies[0].append(item.row);
  }
  const thumb = element("td", "thumb");
  const picture = element("img");
  picture.alt = "";
  picture.addEventListener("error", () => picture.removeAttribute("src"));  // a file that is no image after all
  if (item.thumbnail) picture.src = item.thumbnail;
  else if (item.file && /^image\/(png|jpeg)$/.test(item.file.type)) picture.src = item.thumbnail = URL.createObjectURL(item.file);
  thumb.append(picture);
  const labels = element("td", "labels");
  const bars = element("td", "bars");
  if (item.error) {
    labels.append(element("span", "error", item.error));
  } else if (!item.result) {
    labels.append(element("span", "pending", "predicting\u2026"));
  } else {
    if (!item.result.labels.length) labels.append(element("span", "pending", "no label"));
    item.result.labels.forEach((label) => labels.append(element("span", "label", label)));
    if (item.result.outlier) labels.append(outlierWarning(item.result));
    bars.append(spark(item.result));
  }
  item.row.replaceChildren(thumb, element("td", "name", item.name), labels, bars);
  item.row.classList.toggle("selected", item === selected);
  item.row.classList.toggle("is-outlier", Boolean(item.result && item.result.outlier));
}

// An image unlike the training images: the labels are a guess from a model that never saw its like.
function outlierWarning(result) {
  const warning = element("span", "outlier", "\u26a0 unlike the training images: labels doubtful");
  warning.title = `outlier score ${result.outlier_score.toFixed(1)}, above the run's threshold ` +
    `${run.outlier_threshold.toFixed(1)}; the model ${run.trained_on}`;
  warning.setAttribute("role", "note");
  return warning;
}

function updateStatus() {
  const done = items.filter((item) => item.result).length;
  const failed = items.filter((item) => item.error).length;
  const pending = items.length - done - failed;
  const parts = [`${done} of ${items.length} images labelled`];
  const outliers = items.filter((item) => item.result && item.result.outlier).length;
  if (outliers) parts.push(`${outliers} unlike the training images`);
  if (pending) parts.push(`${pending} waiting`);
  if (failed) parts.push(`${failed} failed`);
  byId("status").textContent = parts.join(", ");
  byId("status").className = failed ? "error" : "";
  byId("download").disabled = done === 0;
  byId("clear").disabled = items.length === 0;
}

// ------------------------------------------------------------------ one image: Grad-CAM

function figure(src, caption, strong) {
  const box = element("figure");
  const picture = element("img");
  picture.src = src;
  picture.alt = caption;
  const text = element("figcaption");
  if (strong) text.append(element("strong", "", strong), " ");
  text.append(caption);
  box.append(picture, text);
  return box;
}

function probabilityBars(item) {
  const rows = run.labels.map((label, index) => {
    const p = item.result.probabilities[label];
    const row = element("div", `bar-row${item.result.classes.includes(index) ? " on" : ""}`);
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    const tick = element("div", "tick");
    tick.style.left = `${(100 * item.thresholds[label]).toFixed(1)}%`;
    track.append(fill, tick);
    row.append(element("span", "bar-name", `${index} ${label}`), track, element("span", "bar-value", p.toFixed(3)));
    return row;
  });
  byId("detail-bars").replaceChildren(...rows);
}

function showExplanation(item) {
  const data = item.explanation;
  const panels = [figure(data.composite, "the image"), figure(data.green, "protein (green channel)")];
  for (const part of data.explanations) {
    panels.push(figure(part.overlay, `p = ${part.probability.toFixed(2)}`, part.label));
  }
  byId("detail-images").replaceChildren(...panels);
  byId("detail-status").textContent = data.explanations.length ? "Grad-CAM for each predicted class:"
    : "No class is predicted for this image, so there is nothing to explain.";
  byId("detail").scrollIntoView({block: "start"});
}

async function openDetail(item) {
  selected = item;
  items.forEach((other) => other.row && other.row.classList.toggle("selected", other === item));
  byId("detail").hidden = false;
  byId("detail-name").textContent = item.name;
  byId("detail-images").replaceChildren();
  byId("detail-bars").replaceChildren();
  const status = byId("detail-status");
  status.className = "";
  if (item.error || !item.result) {
    status.textContent = item.error || "still predicting\u2026";
    status.className = item.error ? "error" : "";
    return;
  }
  probabilityBars(item);
  if (item.result.outlier) byId("detail-bars").prepend(outlierWarning(item.result));
  if (!item.explanation) {
    status.textContent = "computing Grad-CAM\u2026";
    try {
      item.explanation = await answer(await post("explain", () => formFor(item)));
    } catch (error) {
      if (selected === item) {
        status.textContent = error.message;
        status.className = "error";
      }
      return;
    }
    item.thumbnail = item.thumbnail || item.explanation.composite;
    renderRow(item);
  }
  if (selected === item) showExplanation(item);
}

// ------------------------------------------------------------------ CSV in the run's Kaggle format

function csvField(text) {
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const lines = [run.csv_columns.join(",")];
  for (const item of items) {
    if (item.result) lines.push(`${csvField(item.id)},${item.result.classes.join(" ")}`);
  }
  const link = element("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
  link.download = "submission.csv";
  document.body.append(link);
  link.click();
  link.remove();
}

function clearAll() {
  items.splice(0).forEach((item) => item.row && item.row.remove());
  selected = null;
  byId("detail").hidden = true;
  byId("results").hidden = true;
  updateStatus();
  byId("status").textContent = "";
}

// ------------------------------------------------------------------ wiring

function wireDropZone() {
  const zone = byId("drop-zone");
  const stop = (event) => { event.preventDefault(); event.stopPropagation(); };
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => { stop(event); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => { stop(event); zone.classList.remove("over"); }));
  zone.addEventListener("drop", (event) => addFiles([...event.dataTransfer.files]));
  byId("picker").addEventListener("change", (event) => {
    addFiles([...event.target.files]);
    event.target.value = "";
  });
}

async function start() {
  byId("download").addEventListener("click", downloadCsv);
  byId("clear").addEventListener("click", clearAll);
  byId("detail-close").addEventListener("click", () => {
    selected = null;
    byId("detail").hidden = true;
    items.forEach((item) => item.row && item.row.classList.remove("selected"));
  });
  byId("options").addEventListener("change", () => predictAll(items.filter((item) => !item.incomplete)));
  byId("options").addEventListener("submit", (event) => event.preventDefault());
  try {
    run = await answer(await fetch("health"));
  } catch (error) {
    byId("run-about").textContent = `The service does not answer: ${error.message}`;
    return;
  }
  document.title = `protloc: ${run.run}`;
  byId("run-name").textContent = `\u00b7 ${run.run}`;
  byId("run-about").textContent = `${run.backbone}, ${run.labels.length} classes; images are seen at ` +
    `${run.image_size} px. Images go to this server only.`;
  const trainedOn = byId("trained-on");
  trainedOn.textContent = `The model was ${run.trained_on}.`;
  if (run.training_data && run.training_data.kind === "demo") {
    trainedOn.textContent += " It has only seen generated cells: do not trust it on real images.";
    trainedOn.className = "demo";
  }
  wireDropZone();
}

start();
