// The lookalike web page: plain JS over the REST API, with the API key kept in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("lookalike-key") || "", catalog: "", query: null,
  region: null, current: null, filters: [] };

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.key}` };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

// Images need the key too, so they are fetched and shown as object URLs.
const blobUrls = [];
async function imageUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  blobUrls.push(url);
  return url;
}

// -- key and catalogues ----------------------------------------------------------------------
async function useKey(key) {
  state.key = key;
  localStorage.setItem("lookalike-key", key);
  try {
    const me = await apiJson("/me");
    say(`Signed in as ${me.name}.`);
    await loadCatalogs();
  } catch (error) {
    say(`Key refused: ${error.message}`, true);
  }
}

async function loadCatalogs(select) {
  const { catalogs } = await apiJson("/catalogs");
  const menu = $("catalog");
  menu.replaceChildren(...catalogs.map((c) => new Option(c.name, c.id)));
  if (!catalogs.length) menu.append(new Option("— none yet: create one —", ""));
  state.catalog = select || (catalogs.some((c) => c.id === state.catalog) ? state.catalog
    : (catalogs[0] || {}).id || "");
  menu.value = state.catalog;
  if (!catalogs.length) $("manage").open = true;
  await showCatalogInfo();
}

async function showCatalogInfo() {
  if (!state.catalog) { $("catalog-info").textContent = ""; return; }
  const info = await apiJson(`/catalogs/${state.catalog}`);
  $("catalog-info").textContent = `${info.images} images · ${info.model} · ${info.right}`;
}

async function createCatalog(name) {
  const entry = await apiJson("/catalogs", { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }) });
  await loadCatalogs(entry.id);
  say(`Created ${name}.`);
}

async function deleteCatalog() {
  const name = $("catalog").selectedOptions[0]?.text;
  if (!state.catalog || !confirm(`Delete the catalogue ${name} and all its images?`)) return;
  await api(`/catalogs/${state.catalog}`, { method: "DELETE" });
  state.catalog = "";
  $("results").replaceChildren();
  await loadCatalogs();
  say(`Deleted ${name}.`);
}

// -- uploads ---------------------------------------------------------------------------------
const BATCH = 8;
async function uploadFiles(fileList) {
  const files = [...fileList].filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif)$/i.test(f.name));
  if (!state.catalog) { say("Create a catalogue first.", true); return; }
  if (!files.length) { say("No images in that selection.", true); return; }
  $("upload-status").hidden = false;
  let added = 0, failed = 0;
  for (let start = 0; start < files.length; start += BATCH) {
    const form = new FormData();
    const batch = files.slice(start, start + BATCH);
    batch.forEach((file) => form.append("files", file, file.name));
    form.append("metadata", JSON.stringify(batch.map((f) => ({ filename: f.webkitRelativePath || f.name }))));
    try {
      const body = await (await fetch(`/catalogs/${state.catalog}/images?wait=true`, {
        method: "POST", body: form, headers: { Authorization: `Bearer ${state.key}` } })).json();
      added += body.added || 0;
      failed += batch.length - (body.added || 0);
    } catch (error) {
      failed += batch.length;
    }
    const done = Math.min(start + BATCH, files.length);
    $("upload-progress").value = done / files.length;
    $("upload-text").textContent = `${done} / ${files.length}`;
  }
  say(`Uploaded ${added} image${added === 1 ? "" : "s"}${failed ? `, ${failed} refused` : ""}.`, failed > 0 && !added);
  await showCatalogInfo();
}

// -- query image and region ------------------------------------------------------------------
function setQuery(file) {
  if (!file || !file.type.startsWith("image/")) { say("That is not an image.", true); return; }
  state.query = file;
  state.region = null;
  $("box").hidden = true;
  $("detections").replaceChildren();
  $("query-image").src = URL.createObjectURL(file);
  $("query-wrap").hidden = false;
  $("drop-hint").hidden = true;
  $("region-hint").hidden = false;
  $("text").value = "";
  search();
}

function setupBox() {
  const wrap = $("query-wrap"), box = $("box");
  let start = null;
  const point = (event) => {
    const rect = wrap.getBoundingClientRect();
    return { x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
      y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height), w: rect.width, h: rect.height };
  };
  wrap.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    wrap.setPointerCapture(event.pointerId);
    start = point(event);
    $("detections").replaceChildren();
  });
  wrap.addEventListener("pointermove", (event) => {
    if (!start) return;
    const p = point(event);
    Object.assign(box.style, { left: `${Math.min(start.x, p.x)}px`, top: `${Math.min(start.y, p.y)}px`,
      width: `${Math.abs(p.x - start.x)}px`, height: `${Math.abs(p.y - start.y)}px` });
    box.hidden = false;
  });
  wrap.addEventListener("pointerup", (event) => {
    if (!start) return;
    const p = point(event);
    const w = Math.abs(p.x - start.x), h = Math.abs(p.y - start.y);
    if (w > 10 && h > 10) {
      state.region = [Math.min(start.x, p.x) / p.w, Math.min(start.y, p.y) / p.h, w / p.w, h / p.h];
      search();
    } else {
      box.hidden = true;
    }
    start = null;
  });
}

// -- search and results ----------------------------------------------------------------------
async function search() {
  if (!state.catalog) { say("Choose or create a catalogue first.", true); return; }
  const text = $("text").value.trim();
  const words = $("words").value.trim();
  const k = $("k").value || "12";
  const form = new FormData();
  form.append("k", k);
  if (words) {
    // Words rank first; a text or a dropped image, when given, joins the same ranking.
    form.append("words", words);
    if (text) form.append("text", text);
    else if (state.query) form.append("file", state.query, "query");
  } else if (text) {
    form.append("text", text);
  } else if (state.query) {
    form.append("file", state.query, "query");
    if (state.region) form.append("region", state.region.map((v) => v.toFixed(4)).join(","));
  } else {
    say("Drop an image, type a text or the words written in it.", true);
    return;
  }
  const where = whereOf(state.filters);
  if (where) form.append("where", JSON.stringify(where));
  say("Searching…");
  try {
    const started = performance.now();
    const { results } = await apiJson(`/catalogs/${state.catalog}/search`, { method: "POST", body: form });
    await showGrid(results, true);
    say(`${results.length} result${results.length === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms.`);
  } catch (error) {
    say(error.message, true);
  }
}

// -- filters as removable chips (the search's exact "where") ---------------------------------
const FILTER_HINTS = { taken_after: "2024-05-01", taken_before: "2025", near: "48.85,2.35,10",
  camera: "canon", where: "sku=A-12" };
const FILTER_NAMES = { taken_after: "after", taken_before: "before", near: "near", camera: "camera", where: "" };

function whereOf(filters) {
  if (!filters.length) return null;
  const where = {};
  for (const { kind, value } of filters) {
    if (kind === "where") (where.where = where.where || []).push(value);
    else where[kind] = value;
  }
  return where;
}

function addFilter(kind, value) {
  if (!value) return;
  state.filters = state.filters.filter((f) => f.kind === "where" || f.kind !== kind);
  state.filters.push({ kind, value });
  showChips();
}

function showChips() {
  $("chips").replaceChildren(...state.filters.map((filter, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.title = "Remove this filter";
    chip.textContent = `${FILTER_NAMES[filter.kind]} ${filter.value} ×`.trim();
    chip.addEventListener("click", () => {
      state.filters.splice(i, 1);
      showChips();
      if (state.query || $("text").value.trim()) search();
    });
    return chip;
  }));
}

// What a result's file header says, for its card and its details.
const takenText = (item) => (item.taken ? item.taken.slice(0, 16).replace("T", " ") : "");
const placeText = (item) => (item.gps ? `${item.gps[0].toFixed(4)}, ${item.gps[1].toFixed(4)}` : "");

async function similar() {
  const item = state.current;
  const where = whereOf(state.filters);
  const query = new URLSearchParams({ k: $("k").value || "12" });
  if (where) query.set("where", JSON.stringify(where));
  $("details").close();
  say("Looking for more like it…");
  const { results } = await apiJson(`/catalogs/${state.catalog}/images/${item.id}/similar?${query}`);
  await showGrid(results, true);
  say(`${results.length} image${results.length === 1 ? "" : "s"} like #${item.id}.`);
}

// -- compare view: the query beside a result, the keypoints that agree drawn between them ----
async function compare() {
  const item = state.current;
  if (!state.query) { say("Pick a query image first to compare with.", true); return; }
  const shown = !$("compare").hidden;
  $("compare").hidden = shown;
  $("detail-image").hidden = !shown;
  if (!shown) {
    state.match = null;
    $("compare-lines").replaceChildren();
    $("compare-blend").hidden = true;
    $("compare-status").textContent = "Comparing keypoints…";
    $("compare-status").classList.remove("bad");
    const queryUrl = URL.createObjectURL(state.query);
    $("compare-query").src = queryUrl;
    $("compare-blend").src = queryUrl;
    const matching = matchWith(item).catch((error) => ({ error }));
    $("compare-result").src = await imageUrl(item.original);
    const match = await matching;
    if (state.current !== item || $("compare").hidden) return;  // another result meanwhile
    await Promise.all(["compare-query", "compare-result"].map((id) => $(id).decode().catch(() => {})));
    if (match.error) {
      $("compare-status").textContent = `Keypoints not compared: ${match.error.message}`;
      $("compare-status").classList.add("bad");
      state.match = { pairs: [], region: null, verified: false };
    } else {
      state.match = match;
      $("compare-status").textContent = match.verified
        ? `Verified: ${match.inliers} keypoint matches agree${match.pairs.length < match.inliers ? ` (${match.pairs.length} drawn)` : ""}.`
        : `Not verified: ${match.reason || "the keypoints do not agree"}.`;
      $("compare-status").classList.toggle("bad", !match.verified);
    }
    drawMatch();
  }
}

// POST /catalogs/{id}/images/{image}/match with the query as it was searched (its region too).
async function matchWith(item) {
  const form = new FormData();
  form.append("file", state.query, "query");
  if (state.region) form.append("region", state.region.map((v) => v.toFixed(4)).join(","));
  return apiJson(`/catalogs/${state.catalog}/images/${item.id}/match`, { method: "POST", body: form });
}

// Lines and the region box in an SVG over both figures, in its pixels: each point is scaled by
// its image's displayed size over the size the server measured it in.
function drawMatch() {
  const match = state.match;
  const svg = $("compare-lines");
  if (!match || $("compare").hidden) return;
  const base = $("compare-pair").getBoundingClientRect();
  const q = $("compare-query").getBoundingClientRect(), r = $("compare-result").getBoundingClientRect();
  const querySize = match.query_size || [$("compare-query").naturalWidth, $("compare-query").naturalHeight];
  const imageSize = match.image_size || [$("compare-result").naturalWidth, $("compare-result").naturalHeight];
  const qx = (x) => q.left - base.left + x * q.width / querySize[0];
  const qy = (y) => q.top - base.top + y * q.height / querySize[1];
  const rx = (x) => r.left - base.left + x * r.width / imageSize[0];
  const ry = (y) => r.top - base.top + y * r.height / imageSize[1];
  const ns = "http://www.w3.org/2000/svg";
  const shape = (kind, attributes, className) => {
    const element = document.createElementNS(ns, kind);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value.toFixed ? value.toFixed(1) : value);
    if (className) element.setAttribute("class", className);
    return element;
  };
  svg.setAttribute("viewBox", `0 0 ${base.width.toFixed(1)} ${base.height.toFixed(1)}`);
  const shapes = [];
  if (match.region) {
    const [x0, y0, x1, y1] = match.region;
    shapes.push(shape("rect", { x: rx(x0), y: ry(y0), width: rx(x1) - rx(x0), height: ry(y1) - ry(y0) }, "region"));
  }
  match.pairs.forEach(([ax, ay, bx, by], i) => {
    const line = shape("line", { x1: qx(ax), y1: qy(ay), x2: rx(bx), y2: ry(by) },
      match.verified ? "pair" : "pair weak");
    if (match.verified) line.style.stroke = `hsl(${(i * 47) % 360} 85% 50%)`;  // CSSOM: allowed by the CSP
    shapes.push(line);
  });
  svg.replaceChildren(...shapes);
  svg.toggleAttribute("hidden", !$("compare-show-lines").checked);  // an SVG has no .hidden
  placeBlend();
}

// The query laid over the result: on the matched region when there is one, else on all of it.
function placeBlend() {
  const match = state.match, blend = $("compare-blend");
  if (!match) return;
  const size = match.image_size || [$("compare-result").naturalWidth, $("compare-result").naturalHeight];
  const [x0, y0, x1, y1] = match.region || [0, 0, size[0], size[1]];
  Object.assign(blend.style, { left: `${(100 * x0) / size[0]}%`, top: `${(100 * y0) / size[1]}%`,
    width: `${(100 * (x1 - x0)) / size[0]}%`, height: `${(100 * (y1 - y0)) / size[1]}%`,
    opacity: `${$("compare-opacity").value / 100}` });
  blend.hidden = false;
}

async function readWords() {
  if (!state.catalog) { say("Choose or create a catalogue first.", true); return; }
  say("Reading the words in the images…");
  const answer = await apiJson(`/catalogs/${state.catalog}/words`, { method: "POST" });
  if (answer.job) { say("Reading the words as a job: search with words when it is done."); return; }
  say(`Words read in ${answer.read} image${answer.read === 1 ? "" : "s"}: ${answer.with_text} with text.`);
}

async function browse() {
  if (!state.catalog) return;
  const page = await apiJson(`/catalogs/${state.catalog}/images?limit=200`);
  await showGrid(page.images, false);
  say(`${page.total} image${page.total === 1 ? "" : "s"} in this catalogue${page.total > 200 ? " (first 200 shown)" : ""}.`);
}

const itemName = (item) => item.metadata.title || item.metadata.sku
  || (item.metadata.filename || "").split("/").pop() || `#${item.id}`;

function makeCard(item, withScore, badge = "") {
  const card = document.createElement("button");
  card.className = "card";
  card.type = "button";
  card.dataset.id = item.id;
  const img = document.createElement("img");
  img.alt = item.metadata.title || item.metadata.filename || `image ${item.id}`;
  img.loading = "lazy";
  const caption = document.createElement("div");
  caption.className = "caption";
  const name = document.createElement("span");
  name.textContent = itemName(item);
  name.title = name.textContent;
  name.className = "name muted";
  caption.append(name);
  if (item.taken || item.gps) {
    const when = document.createElement("span");
    when.className = "taken muted small";
    when.textContent = [takenText(item), item.gps ? "⌖" : ""].filter(Boolean).join(" ");
    when.title = [item.taken, placeText(item), item.camera].filter(Boolean).join(" · ");
    caption.append(when);
  }
  if (item.words && item.words.length) {
    const seen = document.createElement("span");
    seen.className = "words muted small";
    seen.textContent = `“${item.words.map((line) => line.text).join(" · ")}”`;
    caption.append(seen);
  }
  if (withScore || badge) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = badge || item.score.toFixed(3);
    caption.append(score);
  }
  if (item.words && item.words.length && item.width && item.height) {
    const thumb = document.createElement("span");
    thumb.className = "thumb";
    thumb.append(img, wordBoxes(item));
    card.append(thumb, caption);
  } else {
    card.append(img, caption);
  }
  card.addEventListener("click", () => openDetails(item));
  imageUrl(item.thumbnail).then((url) => { img.src = url; }).catch(() => {});
  return card;
}

// A words search's matched lines boxed over the thumbnail: an SVG whose viewBox is the image's
// own pixels (the lines' corners as the server gives them), fitted to the thumbnail as the
// thumbnail is to its square (object-fit: cover = preserveAspectRatio slice), so it follows any size.
function wordBoxes(item) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "word-boxes");
  svg.setAttribute("viewBox", `0 0 ${item.width} ${item.height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid slice");
  svg.setAttribute("aria-hidden", "true");
  for (const line of item.words) {
    if (!line.box || line.box.length < 3) continue;
    const shape = document.createElementNS(ns, "polygon");
    shape.setAttribute("class", "word-box");
    shape.setAttribute("points", line.box.map(([x, y]) => `${x},${y}`).join(" "));
    shape.dataset.text = line.text;
    svg.append(shape);
  }
  return svg;
}

async function showGrid(items, withScores) {
  blobUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  $("results").replaceChildren(...items.map((item) => makeCard(item, withScores)));
}

// -- items in a photo (POST /detect) ---------------------------------------------------------
async function detectItems() {
  if (!state.catalog) { say("Choose or create a catalogue first.", true); return; }
  if (!state.query) { say("Pick a photo first.", true); return; }
  const form = new FormData();
  form.append("file", state.query, "photo");
  form.append("k", "3");
  say("Looking for catalogue items in the photo…");
  state.region = null;
  $("box").hidden = true;
  const started = performance.now();
  const found = await apiJson(`/catalogs/${state.catalog}/detect`, { method: "POST", body: form });
  await showGrid(found.items.map((item) => item.matches[0]).filter(Boolean), true);
  drawDetections(found.items);
  const n = found.items.length;
  say(n ? `Found ${n} item${n === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms.`
    : "No catalogue item found in this photo.");
}

// Boxes are placed in percentages of the photo, so they follow it at any screen size.
function drawDetections(items) {
  const layer = $("detections");
  layer.replaceChildren(...items.map((item) => {
    const [x, y, w, h] = item.region;
    const best = item.matches[0];
    const box = document.createElement("div");
    box.className = `det-box${item.verified ? "" : " unconfirmed"}${y < 0.12 ? " low" : ""}`
      + (x > 0.5 ? " right" : "");  // labels stay inside the photo
    Object.assign(box.style, { left: `${x * 100}%`, top: `${y * 100}%`,
      width: `${w * 100}%`, height: `${h * 100}%` });
    box.title = `${best ? itemName(best) : "?"}: score ${item.score ?? "?"}`
      + (item.verified ? `, ${item.inliers} keypoint matches` : ", not confirmed by keypoints");
    const label = document.createElement("div");
    label.className = "det-label";
    if (best) {
      const thumb = document.createElement("img");
      thumb.alt = itemName(best);
      imageUrl(best.thumbnail).then((url) => { thumb.src = url; }).catch(() => {});
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = itemName(best);
      const score = document.createElement("b");
      score.className = "det-score";
      score.textContent = best.score.toFixed(2);
      label.append(thumb, name, score);
    }
    box.append(label);
    return box;
  }));
}

// -- duplicates (POST /duplicates; a job when the copy space is computed for many images) ----
// Decisions ("Not duplicates", "Keep this one") are kept by the catalogue
// (POST /duplicates/decisions) and respected by every later search for duplicates.
const findDuplicates = () => refreshDuplicates();

async function refreshDuplicates(note = "") {
  if (!state.catalog) return;
  say("Looking for duplicates…");
  const response = await api(`/catalogs/${state.catalog}/duplicates`, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: "{}" });
  let answer = await response.json();
  if (response.status === 202) {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const job = await apiJson(answer.status);
      if (job.state === "failed") throw new Error(job.result?.error || "the job failed");
      if (job.state === "done") { answer = job.result; break; }
      say(`Computing copy-detection vectors: ${job.done} / ${job.total}…`);
    }
  }
  let decisions = [];
  try {
    ({ decisions } = await apiJson(`/catalogs/${state.catalog}/duplicates/decisions`));
  } catch (_) { /* the groups are shown without their decisions */ }
  showDuplicates(answer, decisions, note);
}

async function decideDuplicates(decision, images, note) {
  document.querySelectorAll("#results .decide").forEach((button) => { button.disabled = true; });
  say("Recording the decision…");
  await apiJson(`/catalogs/${state.catalog}/duplicates/decisions`, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ decision, images }) });
  await refreshDuplicates(note);
}

function decisionButton(text, title, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small decide";
  button.textContent = text;
  button.title = title;
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    action().catch((error) => say(error.message, true));
  });
  return button;
}

function duplicateItem(item, group, isOriginal) {
  const decided = isOriginal && group.decided === "keep";
  const card = makeCard(item, !isOriginal, isOriginal ? (decided ? "kept ✓" : "original") : "");
  if (isOriginal) card.classList.add("original");
  if (decided) card.classList.add("decided");
  const keep = decisionButton(decided ? "Kept" : "Keep this one",
    "This one is the original of its group (remembered by the catalogue)",
    () => decideDuplicates("keep", [item.id], `Kept ${itemName(item)} as the original.`));
  keep.classList.add("keep");
  keep.disabled = decided;
  const wrap = document.createElement("div");
  wrap.className = "dupe";
  wrap.append(card, keep);
  return wrap;
}

function showDuplicates(answer, decisions = [], note = "") {
  blobUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  const nodes = [];
  if (decisions.length) {
    const line = document.createElement("div");
    line.className = "group decisions";
    const text = document.createElement("span");
    const kept = decisions.filter((d) => d.decision === "keep").length;
    const apart = decisions.length - kept;
    text.textContent = `Decisions kept: ${[
      apart ? `${apart} pair${apart === 1 ? "" : "s"} not duplicates` : "",
      kept ? `${kept} original${kept === 1 ? "" : "s"} chosen` : ""].filter(Boolean).join(", ")}. `;
    const images = [...new Set(decisions.flatMap((d) => d.images))];
    const forget = decisionButton("Forget them", "Drop these decisions: the groups are found as before",
      () => decideDuplicates("forget", images, "Decisions forgotten."));
    forget.id = "forget-decisions";
    line.append(text, forget);
    nodes.push(line);
  }
  answer.groups.forEach((group, i) => {
    const title = document.createElement("div");
    title.className = "group";
    const text = document.createElement("span");
    text.textContent = `Group ${i + 1}: ${group.others.length + 1} images`
      + (group.decided === "keep" ? " · original chosen " : " ");
    const apart = decisionButton("Not duplicates", "None of these images is a copy of another (remembered)",
      () => decideDuplicates("distinct", [group.original.id], `Group ${i + 1} marked not duplicates.`));
    apart.classList.add("distinct");
    title.append(text, apart);
    nodes.push(title, duplicateItem(group.original, group, true),
      ...group.others.map((item) => duplicateItem(item, group, false)));
  });
  $("results").replaceChildren(...nodes);
  const n = answer.total_groups;
  say((n ? `${n} group${n === 1 ? "" : "s"} of duplicates (copy score ≥ ${answer.threshold}).`
    : `No duplicates among ${answer.images} images.`) + (note ? ` ${note}` : ""));
}

async function openDetails(item) {
  state.current = item;
  $("detail-image").src = "";
  const rows = [["id", item.id], ["size", `${item.width} × ${item.height}`]];
  if (item.score !== undefined) rows.push(["score", item.score.toFixed(4)]);
  if (item.taken) rows.push(["taken", `${takenText(item)}${item.taken_from === "mtime" ? " (file time)" : ""}`]);
  if (item.gps) rows.push(["place", placeText(item)]);
  if (item.camera) rows.push(["camera", item.camera]);
  if (item.lens) rows.push(["lens", item.lens]);
  for (const [key, value] of Object.entries(item.metadata)) rows.push([key, typeof value === "string" ? value : JSON.stringify(value)]);
  $("detail-meta").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    return [dt, dd];
  }));
  $("compare").hidden = true;
  $("detail-image").hidden = false;
  $("detail-compare").hidden = !state.query;
  $("details").showModal();
  $("detail-image").src = await imageUrl(item.original);
}

async function deleteCurrent() {
  const item = state.current;
  if (!item || !confirm(`Delete image #${item.id}?`)) return;
  try {
    await api(`/catalogs/${state.catalog}/images/${item.id}`, { method: "DELETE" });
    $("details").close();
    document.querySelector(`.card[data-id="${item.id}"]`)?.remove();
    say(`Deleted image #${item.id}.`);
    await showCatalogInfo();
  } catch (error) {
    say(error.message, true);
  }
}

async function searchWithCurrent() {
  const item = state.current;
  const blob = await (await api(item.original)).blob();
  $("details").close();
  setQuery(new File([blob], `image-${item.id}`, { type: blob.type || "image/jpeg" }));
}

// -- wiring ----------------------------------------------------------------------------------
function wire() {
  const run = (fn) => (...args) => fn(...args).catch((error) => say(error.message, true));
  $("key-form").addEventListener("submit", (event) => { event.preventDefault(); useKey($("key").value.trim()); });
  $("catalog").addEventListener("change", run(async () => {
    state.catalog = $("catalog").value;
    $("results").replaceChildren();
    await showCatalogInfo();
  }));
  $("create-form").addEventListener("submit", run(async (event) => {
    event.preventDefault();
    await createCatalog($("new-name").value.trim());
    $("new-name").value = "";
  }));
  $("delete-catalog").addEventListener("click", run(deleteCatalog));
  $("browse").addEventListener("click", run(browse));
  $("duplicates").addEventListener("click", run(findDuplicates));
  $("detect").addEventListener("click", run(detectItems));
  $("read-words").addEventListener("click", run(readWords));
  for (const id of ["folder", "files"]) {
    $(id).addEventListener("change", run(async (event) => { await uploadFiles(event.target.files); event.target.value = ""; }));
  }
  $("query-file").addEventListener("change", (event) => {
    setQuery(event.target.files[0]);
    event.target.value = ""; // so that picking the same file again searches again
  });
  $("text-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("clear-box").addEventListener("click", () => { state.region = null; $("box").hidden = true; search(); });
  $("detail-delete").addEventListener("click", deleteCurrent);
  $("detail-similar").addEventListener("click", run(similar));
  $("detail-compare").addEventListener("click", run(compare));
  $("compare-opacity").addEventListener("input", placeBlend);
  $("compare-show-lines").addEventListener("change", () => {
    $("compare-lines").toggleAttribute("hidden", !$("compare-show-lines").checked);
  });
  window.addEventListener("resize", drawMatch);
  $("filter-kind").addEventListener("change", () => { $("filter-value").placeholder = FILTER_HINTS[$("filter-kind").value]; });
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    addFilter($("filter-kind").value, $("filter-value").value.trim());
    $("filter-value").value = "";
    if (state.query || $("text").value.trim()) search();
  });
  $("detail-search").addEventListener("click", run(searchWithCurrent));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setQuery(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) setQuery(file);
  });
  setupBox();
  $("key").value = state.key;
  if (state.key) useKey(state.key);
  else say("Enter your API key to start.");
}

wire();
