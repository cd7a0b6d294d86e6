// The page of `protloc serve`: label many images with the served run, look at one's class-activation maps,
// download CSVs. It talks only to this server's JSON API (health, predict, explain), one request per image, a few
// at a time.
"use strict";

const STAIN_NAME = /^(.*)_(red|green|blue|yellow)$/i;  // HPA stain files: ID_red.png, ID_green.png...
const STAIN_ORDER = ["red", "green", "blue", "yellow"];
const BROWSER_IMAGES = /^image\/(png|jpeg)$/;  // what an <img> shows by itself; others get the server's thumbnail
const IN_FLIGHT = 4;  // requests at once; the server batches them into shared forward passes
const RETRIES = 4;  // a busy server answers 503; wait and retry
const NEXT_CLASSES = 3;  // classes shown after the labels in a row

let run = null;  // GET /health
const items = [];  // one per image or stain set: {id, name, file | stains, result, error, explanation, row}
let selected = null;

const byId = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const stem = (name) => name.replace(/\.[^.]*$/, "");
const percent = (p) => (p >= 0.995 ? ">99%" : p < 0.005 ? "<1%" : `${Math.round(100 * p)}%`);
const andList = (words) => (words.length > 1 ? `${words.slice(0, -1).join(", ")} and ${words.at(-1)}` : words.join(""));

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A file name that may break after _ . - rather than anywhere: long names wrap between their parts.
function fileName(text) {
  const node = element("span", "file-name");
  text.split(/(?<=[_.\-])/).forEach((part, index) => {
    if (index) node.append(element("wbr"));
    node.append(part);
  });
  return node;
}

// ------------------------------------------------------------------ talking to the API

function options() {
  const form = byId("options");
  return {tta: form.tta.checked, threshold: form.threshold.value.trim(), allow_empty: form.allow_empty.checked,
          bit_depth: form.bit_depth.value, cells: form.cells.checked};
}

function formFor(item, extra = {}) {
  const body = new FormData();
  if (item.file) {
    body.append("files", item.file, item.file.name);
  } else {
    // Every stain given, yellow too: the server says which it does not use.
    for (const stain of STAIN_ORDER) if (item.stains[stain]) body.append(stain, item.stains[stain], item.stains[stain].name);
  }
  const chosen = options();
  body.append("tta", chosen.tta);
  body.append("allow_empty", chosen.allow_empty);
  if (chosen.threshold) body.append("threshold", chosen.threshold);
  if (chosen.bit_depth) body.append("bit_depth", chosen.bit_depth);
  for (const [name, value] of Object.entries(extra)) body.append(name, value);
  return body;
}

async function post(path, makeBody) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, {method: "POST", body: makeBody()});
    } catch (error) {
      throw new Error("the server did not answer; is protloc serve still running?");
    }
    if (response.status !== 503 || attempt === RETRIES) return response;
    await sleep(1000 * (attempt + 1));
  }
}

// The server's words for a refusal, in the page's: no status codes, no field paths.
async function answer(response) {
  let detail = "";
  try {
    const data = await response.json();
    if (response.ok) return data;
    detail = typeof data.detail === "string" ? data.detail
      : data.detail.map((problem) => `${problem.loc.at(-1)}: ${problem.msg}`).join("; ");
  } catch (error) {
    if (response.ok) throw error;
  }
  if (response.status === 503) detail = "the server is busy; try again in a minute";
  else if (response.status === 413 && !detail) detail = "too large for this server";
  throw new Error(detail || `the server refused it (${response.statusText || response.status})`);
}

// An error message that starts with what it is about.
function aboutItem(item, message) {
  const names = [item.name, item.id, ...Object.values(item.stains || {}).map((file) => file.name)];
  return names.some((name) => message.startsWith(name)) ? message : `${item.name}: ${message}`;
}

// ------------------------------------------------------------------ files -> items

// Ids are unique, as the CSV's first column must be: 10034.png and 10034.tif are "10034" and "10034.tif".
function uniqueId(wanted, fallback) {
  const taken = new Set(items.map((item) => item.id));
  if (!taken.has(wanted)) return wanted;
  if (!taken.has(fallback)) return fallback;
  let count = 2;
  while (taken.has(`${fallback} (${count})`)) count++;
  return `${fallback} (${count})`;
}

function describeSet(item) {
  const given = STAIN_ORDER.filter((stain) => item.stains[stain]);
  const missing = run.stains.filter((stain) => !item.stains[stain]);
  item.name = `${item.setId} (${given.join(", ")})`;
  item.error = item.incomplete = missing.length
    ? `stain set without ${andList(missing)}: add ${missing.map((stain) => `${item.setId}_${stain}`).join(", ")} ` +
      "(drop or pick them; they join this row)"
    : null;
}

function addFiles(files) {
  const added = [];
  const touched = new Set();
  for (const file of files) {
    const match = STAIN_NAME.exec(stem(file.name));
    if (!match) {
      const item = {id: uniqueId(stem(file.name), file.name), name: file.name, file};
      items.push(item);
      added.push(item);
      continue;
    }
    const [, setId, stain] = match;
    let item = items.find((other) => other.stains && other.setId === setId);
    if (!item) {
      item = {id: uniqueId(setId, `${setId} (stain set)`), setId, stains: {}};
      items.push(item);
      added.push(item);
    }
    item.stains[stain.toLowerCase()] = file;
    touched.add(item);
  }
  touched.forEach(describeSet);
  byId("results").hidden = items.length === 0;
  items.filter((item) => added.includes(item) || touched.has(item)).forEach(renderRow);
  predictAll(items.filter((item) => (added.includes(item) || touched.has(item)) && !item.incomplete));
}

function removeItem(item) {
  const index = items.indexOf(item);
  if (index < 0) return;
  items.splice(index, 1);
  item.removed = true;
  if (item.row) item.row.remove();
  if (item.thumbnail && item.thumbnail.startsWith("blob:")) URL.revokeObjectURL(item.thumbnail);
  if (selected === item) closeDetail();
  byId("results").hidden = items.length === 0;
  updateStatus();
}

async function predictItem(item) {
  if (item.removed) return;
  item.result = null;
  item.error = null;
  item.explanation = null;
  renderRow(item);
  const needsThumbnail = !(item.file && BROWSER_IMAGES.test(item.file.type));
  try {
    const extra = needsThumbnail ? {thumbnails: true} : {};
    if (options().cells) extra.cells = true;  // only predict answers per cell; explain draws the class maps
    const data = await answer(await post("predict", () => formFor(item, extra)));
    item.result = data.images[0];
    item.thresholds = data.thresholds;
    if (item.result.thumbnail) item.thumbnail = item.result.thumbnail;
  } catch (error) {
    item.error = aboutItem(item, error.message);
  }
  if (item.removed) return;
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

function ranked(result) {
  return run.labels.map((label, index) => ({label, index, p: result.probabilities[label]})).sort((a, b) => b.p - a.p);
}

function labelCell(item) {
  const cell = element("td", "labels");
  if (item.error) {
    cell.append(element("span", "error", item.error));
  } else if (!item.result) {
    cell.append(element("span", "pending", "predicting\u2026"));
  } else {
    if (!item.result.labels.length) cell.append(element("span", "pending", "no label"));
    for (const {label, p} of ranked(item.result).filter(({index}) => item.result.classes.includes(index))) {
      const chip = element("span", "label", label);
      chip.append(" ", element("span", "value", percent(p)));
      cell.append(chip);
    }
    for (const note of item.result.notes || []) cell.append(element("span", "note", note));
    if (item.result.cells) cell.append(element("span", "note cells-count", cellsSummary(item.result.cells)));
    if (item.result.outlier) cell.append(outlierWarning(item.result));
  }
  return cell;
}

function nextCell(item) {
  const cell = element("td", "next");
  if (item.result) {
    const others = ranked(item.result).filter(({index}) => !item.result.classes.includes(index)).slice(0, NEXT_CLASSES);
    others.forEach(({label, p}) => {
      const entry = element("span", "other", label);
      entry.append(" ", element("span", "value", percent(p)));
      cell.append(entry);
    });
  }
  return cell;
}

function renderRow(item) {
  if (item.removed) return;
  if (!item.row) {
    item.row = element("tr");
    item.row.addEventListener("click", () => openDetail(item));
    byId("results").tBodies[0].append(item.row);
  }
  const thumb = element("td", "thumb");
  const picture = element("img");
  picture.alt = "";
  picture.addEventListener("error", () => picture.removeAttribute("src"));  // a file that is no image after all
  if (!item.thumbnail && item.file && BROWSER_IMAGES.test(item.file.type)) item.thumbnail = URL.createObjectURL(item.file);
  if (item.thumbnail) picture.src = item.thumbnail;
  thumb.append(picture);
  const name = element("td", "name");
  name.append(fileName(item.name));
  if (item.id !== stem(item.name) && item.id !== item.setId) name.append(element("span", "csv-id", `CSV id: ${item.id}`));
  const remove = element("td", "remove");
  const button = element("button", "remove-button", "\u00d7");
  button.type = "button";
  button.title = button.ariaLabel = `remove ${item.name}`;
  button.addEventListener("click", (event) => { event.stopPropagation(); removeItem(item); });
  remove.append(button);
  item.row.replaceChildren(thumb, name, labelCell(item), nextCell(item), remove);
  item.row.classList.toggle("selected", item === selected);
  item.row.classList.toggle("failed", Boolean(item.error));
  item.row.classList.toggle("is-outlier", Boolean(item.result && item.result.outlier));
}

// An image unlike the training images: the labels are a guess from a model that never saw its like.
function outlierWarning(result) {
  const warning = element("span", "outlier", "\u26a0 unlike the training images: labels doubtful");
  warning.title = `outlier score ${result.outlier_score.toFixed(1)}, above the run's threshold ` +
    `${run.outlier_threshold.toFixed(1)}; the model was ${run.trained_on}`;
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
  if (failed) parts.push(`${failed} not labelled (see their rows)`);
  byId("status").textContent = items.length ? parts.join(", ") : "";
  byId("status").className = failed ? "error" : "";
  byId("download").disabled = byId("download-table").disabled = done === 0;
  byId("clear").disabled = items.length === 0;
}

// ------------------------------------------------------------------ one image: its cells, bars and maps

function cellsSummary(cells) {
  const labelled = cells.filter((cell) => cell.labels.length).length;
  return `${cells.length} cells found, ${labelled} with labels (open the row to see them outlined)`;
}

// The image with each cell outlined and numbered by its classes, drawn on a canvas at the image's own size (the
// API's outlines are in its pixels; the composite stretches over them whatever size the server drew it): white
// outline for a cell with labels, grey for one without. A PNG, so it enlarges like the maps.
async function cellsPicture(background, result) {
  const [width, height] = result.size;
  const picture = new Image();
  picture.src = background;
  await picture.decode();
  const canvas = element("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(picture, 0, 0, width, height);
  context.lineWidth = Math.max(1, width / 256);
  const labelledLast = [...result.cells].sort((a, b) => Boolean(a.labels.length) - Boolean(b.labels.length));
  for (const cell of labelledLast) {  // a shared edge shows the labelled cell's white
    context.strokeStyle = cell.labels.length ? "white" : "grey";
    context.beginPath();
    cell.outline.forEach(([x, y], index) => (index ? context.lineTo(x, y) : context.moveTo(x, y)));
    context.closePath();
    context.stroke();
  }
  context.font = `${Math.max(8, Math.round(width / 24))}px sans-serif`;
  context.textAlign = "center";
  context.textBaseline = "middle";
  context.fillStyle = "white";
  context.strokeStyle = "black";
  for (const cell of result.cells.filter((one) => one.classes.length)) {
    const [x, y] = cell.centroid;
    context.strokeText(cell.classes.join(" "), x, y);
    context.fillText(cell.classes.join(" "), x, y);
  }
  return canvas.toDataURL("image/png");
}

function figure(src, caption, strong) {
  const box = element("figure");
  const picture = element("img");
  picture.src = src;
  picture.alt = strong ? `${strong} ${caption}` : caption;
  const text = element("figcaption");
  if (strong) text.append(element("strong", "", strong), " ");
  text.append(caption);
  box.append(picture, text);
  box.tabIndex = 0;
  const zoom = () => openZoom(picture.src, text.textContent);
  box.addEventListener("click", zoom);
  box.addEventListener("keydown", (event) => { if (event.key === "Enter") zoom(); });
  return box;
}

function openZoom(src, caption) {
  byId("zoom-image").src = src;
  byId("zoom-image").alt = caption;
  byId("zoom-caption").textContent = caption;
  byId("zoom").showModal();
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
    tick.title = `threshold ${percent(item.thresholds[label])}`;
    track.append(fill, tick);
    row.append(element("span", "bar-name", `${index} ${label}`), track, element("span", "bar-value", percent(p)));
    return row;
  });
  byId("detail-bars").replaceChildren(...rows);
  byId("detail-bars-legend").hidden = false;
}

function mapStyle() {
  return document.querySelector("input[name=map-style]:checked").value;
}

function showExplanation(item) {
  const data = item.explanation;
  const style = mapStyle();
  const panels = [figure(data.composite, "the image"), figure(data.green, "protein (green channel)")];
  if (item.result.cells) {
    const cells = figure(data.composite, "white outline: a cell with labels (its class numbers, as in the bars); " +
      "grey: none", "cells");
    cells.classList.add("cells-picture");
    cellsPicture(data.composite, item.result).then((src) => { cells.querySelector("img").src = src; });
    panels.push(cells);
  }
  for (const part of data.explanations) {
    panels.push(figure(style === "heatmap" ? part.heatmap : part.overlay, percent(part.probability), part.label));
  }
  byId("detail-images").replaceChildren(...panels);
  const any = data.explanations.length > 0;
  byId("detail-status").textContent = any ? "" : "No class is predicted for this image, so there is no map to show.";
  byId("maps-heading").hidden = byId("map-style").hidden = byId("maps-legend").hidden = !any;
  data.outline_shares.forEach((share, index) => {
    document.querySelectorAll(`.share-${index}`).forEach((node) => { node.textContent = `${Math.round(100 * share)}%`; });
  });
  document.querySelector(".key-overlay").hidden = style !== "overlay";
  document.querySelector(".key-heatmap").hidden = style !== "heatmap";
  byId("maps-about").textContent = data.about;
}

function closeDetail() {
  selected = null;
  byId("detail").hidden = true;
  items.forEach((item) => item.row && item.row.classList.remove("selected"));
}

async function openDetail(item) {
  selected = item;
  items.forEach((other) => other.row && other.row.classList.toggle("selected", other === item));
  byId("detail").hidden = false;
  byId("detail-name").replaceChildren(fileName(item.name));
  byId("detail-images").replaceChildren();
  byId("detail-bars").replaceChildren();
  byId("detail-bars-legend").hidden = byId("maps-heading").hidden = byId("map-style").hidden = true;
  byId("maps-legend").hidden = true;
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
    status.textContent = "drawing the class maps\u2026";
    try {
      item.explanation = await answer(await post("explain", () => formFor(item)));
    } catch (error) {
      if (selected === item) {
        status.textContent = aboutItem(item, error.message);
        status.className = "error";
      }
      return;
    }
    item.thumbnail = item.thumbnail || item.explanation.composite;
    renderRow(item);
  }
  if (selected === item) showExplanation(item);
}

// ------------------------------------------------------------------ CSVs

function csvField(text) {
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function download(lines, fileName) {
  const link = element("a");
  link.href = URL.createObjectURL(new Blob([lines.map((fields) => fields.map(csvField).join(",")).join("\n") + "\n"],
                                           {type: "text/csv"}));
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
}

// The run's Kaggle format: id, class numbers.
function downloadCsv() {
  const done = items.filter((item) => item.result);
  download([run.csv_columns, ...done.map((item) => [item.id, item.result.classes.join(" ")])], "submission.csv");
}

// For people: id, labels by name, then every class's probability (as protloc.load(...).predict(...).to_frame()).
function downloadTable() {
  const done = items.filter((item) => item.result);
  const rows = done.map((item) => [item.id, item.result.labels.join("; "),
    ...run.labels.map((label) => item.result.probabilities[label].toFixed(6))]);
  download([["id", "labels", ...run.labels], ...rows], "labels.csv");
}

function clearAll() {
  [...items].forEach(removeItem);
  closeDetail();
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

function describeRun() {
  document.title = `protloc: ${run.run}`;
  byId("run-name").textContent = `\u00b7 ${run.run}`;
  byId("run-about").textContent = `${run.backbone}, ${run.labels.length} classes; reads ${andList(run.stains)} ` +
    `stains and sees images at ${run.image_size} px.`;
  // What the model learned from: a model trained on generated cells says so before any label.
  const trained = byId("run-trained");
  trained.textContent = `The model was ${run.trained_on}.`;
  if (run.training_data && run.training_data.kind === "demo") {
    trained.textContent += " It has only seen generated cells: do not trust it on real images.";
    trained.className = "demo";
  }
  trained.hidden = false;
}

async function start() {
  byId("download").addEventListener("click", downloadCsv);
  byId("download-table").addEventListener("click", downloadTable);
  byId("clear").addEventListener("click", clearAll);
  byId("detail-close").addEventListener("click", closeDetail);
  byId("zoom").addEventListener("click", (event) => { if (event.target === byId("zoom")) byId("zoom").close(); });
  byId("map-style").addEventListener("change", () => selected && selected.explanation && showExplanation(selected));
  byId("options").addEventListener("change", () => predictAll(items.filter((item) => !item.incomplete)));
  byId("options").addEventListener("submit", (event) => event.preventDefault());
  try {
    run = await answer(await fetch("health"));
  } catch (error) {
    byId("run-about").textContent = `The service does not answer: ${error.message}`;
    return;
  }
  describeRun();
  wireDropZone();
}

start();
