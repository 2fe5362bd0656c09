// regzoo explore: sliders -> one network forward on the server -> redraw. No build step.
"use strict";

(() => {
  const ROWS = ["fixed", "warped", "difference", "jacobian"];
  const DISPLAY = 240; // screen pixels of a plane's longer side (about)
  const FOLDED = [255, 221, 0];
  const $ = (id) => document.getElementById(id);
  const sliders = [...document.querySelectorAll("input.param")];
  const sliceInputs = [...document.querySelectorAll("input.slice")];
  const values = {}; // parameter name -> physical value (exact, not the slider's rounding)
  let view = null;
  let inflight = false;
  let pending = false;
  let busy = false; // refining or saving: the registration must not change
  let updates = 0;
  let canSave = false;

  // -- parameters on their own scale ------------------------------------------------------
  function valueAt(slider) {
    const t = Number(slider.value) / Number(slider.max);
    const lo = Number(slider.dataset.low), hi = Number(slider.dataset.high);
    if (slider.dataset.scale === "log") {
      return Math.exp(Math.log(lo) + t * (Math.log(hi) - Math.log(lo)));
    }
    return lo + t * (hi - lo);
  }

  function positionOf(slider, value) {
    const lo = Number(slider.dataset.low), hi = Number(slider.dataset.high);
    const t = slider.dataset.scale === "log"
      ? (Math.log(value) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))
      : (value - lo) / (hi - lo);
    return Math.round(Math.min(Math.max(hi > lo ? t : 0, 0), 1) * Number(slider.max));
  }

  function numberFor(slider) {
    return document.querySelector(`input.value[data-for="${slider.id}"]`);
  }

  function clamp(slider, value) {
    return Math.min(Math.max(value, Number(slider.dataset.low)), Number(slider.dataset.high));
  }

  const fmt = (v, digits = 4) => (v === 0 ? "0" : Number(v).toPrecision(digits));

  // -- talking to the server --------------------------------------------------------------
  const token = document.querySelector('meta[name="regzoo-token"]').content;

  async function call(url, body) {
    const init = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Regzoo-Token": token },
      body: JSON.stringify(body),
    };
    const response = await fetch(url, init);
    const text = await response.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: `${response.status} ${response.statusText}: ${text}` };
    }
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function slices() {
    return sliceInputs.map((input) => Number(input.value));
  }

  function status(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  // One request at a time; moves made meanwhile are merged into the next request.
  function requestUpdate() {
    if (busy) return;
    if (inflight) { pending = true; return; }
    inflight = true;
    pending = false;
    const started = performance.now();
    call("/api/update", { params: { ...values }, slices: slices() })
      .then((data) => {
        view = data;
        draw();
        showReadout(performance.now() - started);
        updates += 1;
        document.body.dataset.updates = String(updates);
        if ($("status").classList.contains("error")) status("");
      })
      .catch((error) => status(error.message, true))
      .finally(() => {
        inflight = false;
        if (pending) requestUpdate();
      });
  }

  // -- readouts ---------------------------------------------------------------------------
  function showReadout(roundTrip) {
    const r = view.readout;
    $("dice").textContent = r.dice === null ? "– (needs both segmentations)" : r.dice.toFixed(4);
    $("sdlogj").textContent = r.sdlogj.toFixed(4);
    $("folding").textContent = `${(100 * r.folding_fraction).toFixed(3)} %`;
    $("similarity").textContent = fmt(r.similarity);
    $("objective").textContent = fmt(r.objective);
    $("source").textContent = view.refined ? `refined, ${view.refined} iterations` : "network";
    $("seconds").textContent =
      `${Math.round(roundTrip)} ms (server ${Math.round(1000 * r.seconds)})`;
    const energies = $("energies");
    energies.replaceChildren(...Object.entries(r.energies).map(([term, energy]) => {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = `energy: ${term}`;
      td.textContent = fmt(energy);
      row.append(th, td);
      return row;
    }));
  }

  // -- drawing ----------------------------------------------------------------------------
  function diverging(t) { // 0 -> blue, 0.5 -> white, 1 -> red
    const blue = [33, 102, 172], red = [178, 24, 43];
    const [end, s] = t < 0.5 ? [blue, 1 - 2 * t] : [red, 2 * t - 1];
    return end.map((c) => Math.round(255 + s * (c - 255)));
  }

  const TABLES = {
    gray: Array.from({ length: 256 }, (_, v) => [v, v, v]),
    difference: Array.from({ length: 256 }, (_, v) => diverging(v / 255)),
    jacobian: Array.from({ length: 256 }, (_, v) => (v === 0 ? FOLDED : diverging((v - 1) / 254))),
  };
  const TABLE_OF = { fixed: "gray", warped: "gray", difference: "difference", jacobian: "jacobian" };

  function bytes(image) {
    const raw = atob(image.data);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function scaleFor(image) {
    return Math.max(1, Math.floor(DISPLAY / Math.max(image.width, image.height)));
  }

  function paint(canvas, image, table, axis) {
    const { width: w, height: h } = image;
    const s = scaleFor(image);
    const data = bytes(image);
    const pixels = new ImageData(w, h);
    for (let i = 0; i < data.length; i++) {
      const [r, g, b] = table[data[i]];
      pixels.data.set([r, g, b, 255], 4 * i);
    }
    const off = document.createElement("canvas");
    off.width = w;
    off.height = h;
    off.getContext("2d").putImageData(pixels, 0, 0);
    canvas.width = w * s;
    canvas.height = h * s;
    // physical aspect ratio: columns run along in-plane axis a, rows along b
    const [a, b] = [0, 1, 2].filter((k) => k !== axis);
    const sa = view.spacing[a], sb = view.spacing[b], m = Math.min(sa, sb);
    canvas.style.width = `${(w * s * sa) / m}px`;
    canvas.style.height = `${(h * s * sb) / m}px`;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, w * s, h * s);
    return { ctx, s };
  }

  function contour(ctx, image, s, colour) {
    const { width: w, height: h } = image;
    const labels = bytes(image);
    ctx.beginPath();
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = labels[y * w + x];
        if (x + 1 < w && labels[y * w + x + 1] !== v) {
          ctx.moveTo((x + 1) * s, y * s);
          ctx.lineTo((x + 1) * s, (y + 1) * s);
        }
        if (y + 1 < h && labels[(y + 1) * w + x] !== v) {
          ctx.moveTo(x * s, (y + 1) * s);
          ctx.lineTo((x + 1) * s, (y + 1) * s);
        }
      }
    }
    ctx.strokeStyle = colour;
    ctx.lineWidth = Math.max(1, s / 3);
    ctx.stroke();
  }

  function grid(ctx, nodes, s) {
    const { rows, columns, x, y } = nodes;
    const at = (r, c) => [(x[r * columns + c] + 0.5) * s, (y[r * columns + c] + 0.5) * s];
    ctx.beginPath();
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < columns; c++) ctx[c ? "lineTo" : "moveTo"](...at(r, c));
    }
    for (let c = 0; c < columns; c++) {
      for (let r = 0; r < rows; r++) ctx[r ? "lineTo" : "moveTo"](...at(r, c));
    }
    ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
    ctx.lineWidth = 1;
    ctx.stroke();
  }

  // one more row per parameter map (a per-label model given the fixed label map)
  function mapRows() {
    const names = Object.keys(view.maps || {});
    for (const name of names) {
      const id = `map:${name}`;
      if ($(`${id}-0`)) continue;
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.id = `${id}-title`;
      row.append(th);
      for (let axis = 0; axis < 3; axis++) {
        const td = document.createElement("td");
        const canvas = document.createElement("canvas");
        canvas.id = `${id}-${axis}`;
        td.append(canvas);
        row.append(td);
      }
      $("view-rows").append(row);
    }
    for (const name of names) {
      const [low, high] = view.maps[name];
      $(`map:${name}-title`).textContent = `${name} (${fmt(low)} to ${fmt(high)})`;
    }
    return names.map((name) => `map:${name}`);
  }

  function draw() {
    if (!view) return;
    const showGrid = $("show-grid").checked;
    const showContours = $("show-contours").checked;
    const rows = [...ROWS, ...mapRows()];
    for (const plane of view.planes) {
      for (const row of rows) {
        const table = TABLES[TABLE_OF[row] || "gray"];
        const { ctx, s } = paint($(`${row}-${plane.axis}`), plane[row], table, plane.axis);
        if (showContours && (row === "fixed" || row === "warped")) {
          if (plane.fixed_seg) contour(ctx, plane.fixed_seg, s, "#ff3030");
          if (row === "warped" && plane.warped_seg) contour(ctx, plane.warped_seg, s, "#ffdd00");
        }
        if (showGrid && row === "jacobian") grid(ctx, plane.grid, s);
      }
    }
    view.slices.forEach((index, axis) => { $(`slice-${axis}-value`).textContent = String(index); });
  }

  // -- refine and save --------------------------------------------------------------------
  function setBusy(on) {
    busy = on;
    for (const input of document.querySelectorAll("aside input, aside button")) input.disabled = on;
    $("save").disabled = on || !canSave;
  }

  async function refine() {
    const steps = Number($("refine-steps").value);
    setBusy(true);
    $("cancel").hidden = false;
    $("cancel").disabled = false;
    status(`refining (${steps} iterations)...`);
    $("refine-progress").value = 0;
    try {
      await call("/api/refine", { params: { ...values }, steps });
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        const job = await call("/api/refine");
        $("refine-progress").value = job.fraction;
        if (job.running) continue;
        if (job.error) throw new Error(job.error);
        if (job.cancelled) { status("refinement cancelled"); return; }
        break;
      }
      status(`refined: ${steps} iterations`);
    } catch (error) {
      status(error.message, true);
    } finally {
      $("cancel").hidden = true;
      setBusy(false);
      requestUpdate();
    }
  }

  async function save() {
    setBusy(true);
    try {
      const result = await call("/api/save", { params: { ...values } });
      status(`wrote\n${result.written.join("\n")}\nthe same as:\n${result.command}`);
    } catch (error) {
      status(error.message, true);
    } finally {
      setBusy(false);
    }
  }

  // -- wiring -----------------------------------------------------------------------------
  for (const slider of sliders) {
    const number = numberFor(slider);
    slider.addEventListener("input", () => {
      values[slider.dataset.name] = valueAt(slider);
      number.value = fmt(values[slider.dataset.name]);
      requestUpdate();
    });
    number.addEventListener("change", () => {
      const value = clamp(slider, Number(number.value));
      if (!Number.isFinite(value)) return;
      values[slider.dataset.name] = value;
      number.value = fmt(value);
      slider.value = String(positionOf(slider, value));
      requestUpdate();
    });
  }
  for (const input of sliceInputs) input.addEventListener("input", requestUpdate);
  $("show-grid").addEventListener("change", draw);
  $("show-contours").addEventListener("change", draw);
  $("refine").addEventListener("click", refine);
  $("cancel").addEventListener("click", () => call("/api/refine/cancel", {}).catch(() => {}));
  $("save").addEventListener("click", save);

  call("/api/state")
    .then((state) => {
      Object.assign(values, state.params);
      canSave = state.save;
      $("save").disabled = !canSave;
      requestUpdate();
    })
    .catch((error) => status(error.message, true));
})();
