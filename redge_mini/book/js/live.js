/*
 * Live figures of the ReDGE book, recomputed in the reader's browser (no kernel, no network).
 *
 * A small port of redge_mini.diffusion for one categorical variable (time_grid, the exact
 * denoiser, the DDIM move, the hard sample by inversion) and of the Gumbel-Softmax sample, plus
 * three figures drawn as SVG: the sampler explorer (chapter 4), the Gumbel-Softmax temperature
 * (chapter 3) and the bias map of the hard sample over t_1 x n_steps (chapter 5).
 * tests/test_live_js.py runs this file in Node.js and checks it against redge_mini for the same
 * noise. The page draws its own noise from a seeded generator (mulberry32 and Box-Muller), so a
 * seed gives other draws here than torch gives in Python.
 */
(function (root, factory) {
  "use strict";
  const api = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else if (!root.RedgeLive) {
    root.RedgeLive = api;
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  // ---------------------------------------------------------------------------------------
  // The sampler (redge_mini.diffusion), for one variable: arrays of K numbers
  // ---------------------------------------------------------------------------------------

  const ALPHA_END = 1e-4;

  function checkArgs(nSteps, t1) {
    if (!Number.isInteger(nSteps) || nSteps < 2) {
      throw new RangeError(`n_steps must be an integer >= 2, got ${nSteps}`);
    }
    if (!(t1 > 0 && t1 <= 1)) throw new RangeError(`t_1 must be in (0, 1], got ${t1}`);
  }

  /** The authors' grid, as redge_mini.diffusion.time_grid: alphas[1] = 1 - t_1 ... 1e-4. */
  function timeGrid(nSteps, t1) {
    checkArgs(nSteps, t1);
    const start = 1 - t1;
    const alphas = [1];
    if (nSteps === 2) {
      alphas.push(start);
    } else {
      const step = (ALPHA_END - start) / (nSteps - 2);
      for (let j = 0; j < nSteps - 2; j++) alphas.push(start + j * step);
      alphas.push(ALPHA_END);
    }
    return { alphas, sigmas: alphas.map((a) => 1 - a) };
  }

  function softmax(z) {
    const m = Math.max(...z);
    const e = z.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  }

  /** Log-posterior logits + alpha x / sigma^2; its softmax is the denoiser D_t(x). */
  function posteriorLogits(x, logits, alpha, sigma) {
    const c = alpha / (sigma * sigma);
    return logits.map((l, k) => l + c * x[k]);
  }

  /** One DDIM move from level t to s: alpha_s x0 + sigma_s (x - alpha_t x0) / sigma_t. */
  function ddimStep(x, x0, alphaS, sigmaS, alphaT, sigmaT) {
    const r = sigmaS / sigmaT;
    return x.map((v, k) => x0[k] * (alphaS - r * alphaT) + r * v);
  }

  /**
   * ReDGE's sampler from `noise` (the state at the last grid index) down to t_1.
   * Returns the states and denoiser outputs at grid indices n_steps - 1, ..., 1 (as
   * ddim_sample(..., trajectory=True)), the log-weights at t_1 and the soft sample S.
   */
  function ddimSample(logits, noise, nSteps, t1) {
    if (noise.length !== logits.length) {
      throw new RangeError(`noise must have ${logits.length} entries, got ${noise.length}`);
    }
    const { alphas, sigmas } = timeGrid(nSteps, t1);
    const states = [];
    const denoised = [];
    let x = noise.slice();
    for (let j = nSteps - 1; j > 1; j--) {
      const d = softmax(posteriorLogits(x, logits, alphas[j], sigmas[j]));
      states.push(x);
      denoised.push(d);
      x = ddimStep(x, d, alphas[j - 1], sigmas[j - 1], alphas[j], sigmas[j]);
    }
    const logWeights = posteriorLogits(x, logits, alphas[1], sigmas[1]);
    const soft = softmax(logWeights);
    states.push(x);
    denoised.push(soft);
    return { states, denoised, logWeights, soft };
  }

  /** Category drawn by inversion: the first k whose cumulative sum reaches (1 - u) * total. */
  function inverseCdf(probs, u) {
    let total = 0;
    for (const p of probs) total += p;
    const level = (1 - u) * total;
    let cdf = 0;
    for (let k = 0; k < probs.length; k++) {
      cdf += probs[k];
      if (cdf >= level) return k;
    }
    return probs.length - 1;
  }

  /** Gumbel-Softmax sample softmax((logits + g) / tau) and its hard class argmax(logits + g). */
  function gumbelSoftmax(logits, gumbel, tau) {
    if (!(tau > 0)) throw new RangeError(`tau must be positive, got ${tau}`);
    const z = logits.map((l, k) => l + gumbel[k]);
    return { soft: softmax(z.map((v) => v / tau)), hard: z.indexOf(Math.max(...z)) };
  }

  // ---------------------------------------------------------------------------------------
  // Seeded noise: mulberry32 uniforms in (0, 1), Box-Muller normals, Gumbel noise
  // ---------------------------------------------------------------------------------------

  function rng(seed) {
    let a = seed >>> 0;
    const uniform = () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
    };
    const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
    const gumbel = () => -Math.log(-Math.log(uniform()));
    const vector = (draw, k) => Array.from({ length: k }, draw);
    return { uniform, normal, gumbel, vector };
  }

  /** Frequencies of the hard sample H ~ Cat(S) over n runs of the sampler. */
  function hardLaw(logits, nSteps, t1, n, gen) {
    const counts = new Array(logits.length).fill(0);
    for (let i = 0; i < n; i++) {
      const s = ddimSample(logits, gen.vector(gen.normal, logits.length), nSteps, t1).soft;
      counts[inverseCdf(s, gen.uniform())] += 1;
    }
    return counts.map((c) => c / n);
  }

  function tv(p, q) {
    return 0.5 * p.reduce((acc, v, k) => acc + Math.abs(v - q[k]), 0);
  }

  /** Mean TV of n exact draws of pi from pi: the Monte-Carlo noise floor of hardLaw's TV. */
  function noiseFloor(probs, n, reps, gen) {
    let total = 0;
    for (let r = 0; r < reps; r++) {
      const counts = new Array(probs.length).fill(0);
      for (let i = 0; i < n; i++) counts[inverseCdf(probs, gen.uniform())] += 1;
      total += tv(counts.map((c) => c / n), probs);
    }
    return total / reps;
  }

  // ---------------------------------------------------------------------------------------
  // Drawing: SVG elements, the triangle, bars, controls
  // ---------------------------------------------------------------------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  const CORNER_COLORS = ["#E69F00", "#0072B2", "#009E73"]; // as redge_mini.book.widgets
  const CORNERS = [[0, 0], [1, 0], [0.5, Math.sqrt(3) / 2]];

  function el(tag, attrs, parent, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function simplexXY(p) {
    return [p[1] + 0.5 * p[2], (Math.sqrt(3) / 2) * p[2]];
  }

  /** Orthogonal projection of x onto the plane sum = 1 (widgets.project_to_plane). */
  function projectToPlane(x) {
    const mean = x.reduce((a, b) => a + b, 0) / x.length;
    return x.map((v) => v - mean + 1 / x.length);
  }

  /** A panel with data coordinates [x0, x1] x [y0, y1] mapped into a w x h box. */
  function panel(svg, box, range, title) {
    const [left, top, w, h] = box;
    const [x0, x1, y0, y1] = range;
    const k = Math.min(w / (x1 - x0), h / (y1 - y0)); // equal aspect
    const ox = left + (w - k * (x1 - x0)) / 2;
    const oy = top + (h + k * (y1 - y0)) / 2;
    const g = el("g", {}, svg);
    if (title) {
      el("text", { x: left + w / 2, y: top - 8, "text-anchor": "middle", "font-size": 16 },
        svg, title);
    }
    const at = ([x, y]) => [ox + k * (x - x0), oy - k * (y - y0)];
    return { g, at };
  }

  function triangle(p, labels) {
    const pts = CORNERS.concat([CORNERS[0]]).map((c) => p.at(c).join(",")).join(" ");
    el("polyline", { points: pts, fill: "none", stroke: "#4d4d4d", "stroke-width": 1 }, p.g);
    const offsets = [[-0.07, -0.06], [0.02, -0.06], [-0.02, 0.04]];
    CORNERS.forEach((c, k) => {
      const [x, y] = p.at([c[0] + offsets[k][0], c[1] + offsets[k][1]]);
      el("text", { x, y, "font-size": 14 }, p.g, (labels || ["e₁", "e₂", "e₃"])[k]);
    });
  }

  function star(p, xy) {
    const [cx, cy] = p.at(xy);
    const pts = [];
    for (let i = 0; i < 10; i++) {
      const r = i % 2 ? 3 : 8;
      const a = -Math.PI / 2 + (i * Math.PI) / 5;
      pts.push(`${cx + r * Math.cos(a)},${cy + r * Math.sin(a)}`);
    }
    el("polygon", { points: pts.join(" "), fill: "#000" }, p.g);
  }

  /** Bars of pi (grey) and of a second law (corner colours), with optional error bars. */
  function bars(svg, box, probs, other, errors, title, otherName) {
    const [left, top, w, h] = box;
    const g = el("g", {}, svg);
    el("text", { x: left + w / 2, y: top - 8, "text-anchor": "middle", "font-size": 16 },
      svg, title);
    const y = (v) => top + h - v * h;
    el("line", { x1: left, x2: left + w, y1: y(0), y2: y(0), stroke: "#4d4d4d" }, g);
    for (const v of [0, 0.5, 1]) {
      el("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 12 }, g,
        v.toFixed(1));
    }
    const slot = w / probs.length;
    probs.forEach((p, k) => {
      const cx = left + slot * (k + 0.5);
      el("rect", { x: cx - 0.36 * slot, y: y(p), width: 0.34 * slot, height: h - (y(p) - top),
        fill: "#000", "fill-opacity": 0.35 }, g);
      const q = other[k];
      el("rect", { x: cx + 0.02 * slot, y: y(q), width: 0.34 * slot, height: h - (y(q) - top),
        fill: CORNER_COLORS[k % 3] }, g);
      if (errors) {
        const lo = Math.max(0, q - errors[k]);
        const hi = Math.min(1, q + errors[k]);
        el("line", { x1: cx + 0.19 * slot, x2: cx + 0.19 * slot, y1: y(lo), y2: y(hi),
          stroke: "#000" }, g);
      }
      el("text", { x: cx, y: y(0) + 14, "text-anchor": "middle", "font-size": 14 }, g,
        `e${"₁₂₃"[k] || k + 1}`);
    });
    el("text", { x: left + w, y: top + 10, "text-anchor": "end", "font-size": 13 }, g,
      `grey: π, colour: ${otherName}`);
  }

  const SLIDER_KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End",
    "PageUp", "PageDown"]);

  /** Sliders in a grid; `specs` maps a name to [label, min, max, step, value]. */
  function controls(root, specs, onChange) {
    const form = document.createElement("div");
    form.className = "redge-live-controls";
    form.style.cssText =
      "display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:4px 16px;" +
      "font-size:0.9em;margin-bottom:6px";
    // The keys a slider answers stay with it: JupyterLab (Lumino) reads keydown events on the
    // document for its notebook shortcuts (the arrows select another cell) unless the target
    // carries data-lm-suppress-shortcuts; stopping them at the form covers other front ends.
    form.setAttribute("data-lm-suppress-shortcuts", "true");
    form.addEventListener("keydown", (event) => {
      if (SLIDER_KEYS.has(event.key)) event.stopPropagation();
    });
    const values = {};
    let pending = false;
    for (const [name, [label, min, max, step, value]] of Object.entries(specs)) {
      const row = document.createElement("label");
      row.style.cssText = "display:flex;align-items:center;gap:6px";
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min, max, step, value });
      input.name = name;
      input.setAttribute("aria-label", label);
      input.setAttribute("data-lm-suppress-shortcuts", "true");
      input.style.cssText = "flex:1;min-width:80px";
      const shown = document.createElement("output");
      shown.style.cssText = "min-width:3.5em;font-variant-numeric:tabular-nums";
      const name_ = document.createElement("span");
      name_.textContent = label;
      name_.style.cssText = "min-width:4.5em";
      row.append(name_, input, shown);
      form.appendChild(row);
      const update = () => {
        values[name] = Number(input.value);
        shown.textContent = input.value;
      };
      update();
      input.addEventListener("input", () => {
        update();
        // one redraw per frame however fast the slider moves
        if (!pending) {
          pending = true;
          requestAnimationFrame(() => {
            pending = false;
            onChange(values);
          });
        }
      });
    }
    root.appendChild(form);
    return values;
  }

  function figure(root, width, height, label) {
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": label, style: "width:100%;max-width:" + width + "px;height:auto" });
    svg.style.fontFamily = "sans-serif";
    root.appendChild(svg);
    return svg;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function logitSliders(logits) {
    const specs = {};
    logits.forEach((v, k) => {
      specs[`theta${k + 1}`] = [`θ${"₁₂₃"[k]}`, -3, 3, 0.1, v];
    });
    return specs;
  }

  const logitsOf = (v) => [v.theta1, v.theta2, v.theta3];

  // ---------------------------------------------------------------------------------------
  // The three live figures
  // ---------------------------------------------------------------------------------------

  /** Chapter 4: trajectories of the sampler on the simplex and the law of the hard sample. */
  function samplerExplorer(root, opts) {
    const n = opts.n || 12;
    const nLaw = opts.n_law || 4000;
    const specs = Object.assign(logitSliders(opts.logits), {
      t_1: ["t₁", 0.05, 1, 0.05, opts.t_1],
      n_steps: ["n_steps", 2, 12, 1, opts.n_steps],
      seed: ["seed", 0, 50, 1, opts.seed],
    });
    const svg = figure(root, 960, 330,
      "Trajectories of ReDGE's sampler on the probability triangle and the law of the hard " +
      "sample, recomputed when a slider moves");
    const draw = (v) => {
      clear(svg);
      const logits = logitsOf(v);
      const probs = softmax(logits);
      const gen = rng(v.seed);
      const runs = [];
      for (let i = 0; i < n; i++) {
        const r = ddimSample(logits, gen.vector(gen.normal, 3), v.n_steps, v.t_1);
        runs.push({ r, hard: inverseCdf(r.soft, gen.uniform()) });
      }
      const projected = runs.map(({ r }) => r.states.map((x) => simplexXY(projectToPlane(x))));
      const xs = projected.flat().map((p) => p[0]);
      const ys = projected.flat().map((p) => p[1]);
      const range = [Math.min(-0.1, ...xs) - 0.05, Math.max(1.1, ...xs) + 0.05,
        Math.min(-0.1, ...ys) - 0.05, Math.max(0.95, ...ys) + 0.05];
      const panels = [
        [panel(svg, [10, 40, 330, 270], range, "states xₜ (projected)"), projected],
        [panel(svg, [350, 40, 300, 270], [-0.1, 1.1, -0.1, 0.95], "denoiser outputs Dₜ(xₜ)"),
          runs.map(({ r }) => r.denoised.map(simplexXY))],
      ];
      for (const [p, paths] of panels) {
        triangle(p);
        paths.forEach((path, i) => {
          const color = CORNER_COLORS[runs[i].hard];
          el("polyline", { points: path.map((q) => p.at(q).join(",")).join(" "), fill: "none",
            stroke: color, "stroke-width": 1.2, "stroke-opacity": 0.8 }, p.g);
          const [cx, cy] = p.at(path[path.length - 1]);
          el("circle", { cx, cy, r: 3, fill: color }, p.g);
        });
        star(p, simplexXY(probs));
      }
      const freq = hardLaw(logits, v.n_steps, v.t_1, nLaw, rng(v.seed + 1));
      const se = freq.map((f) => 2 * Math.sqrt((f * (1 - f)) / nLaw));
      bars(svg, [710, 40, 240, 250], probs, freq, se,
        `law of H (${nLaw} draws), TV ${tv(freq, probs).toFixed(3)}`, "law of H ± 2 s.e.");
    };
    const values = controls(root, specs, draw);
    root.appendChild(svg);
    draw(values);
  }

  /** Chapter 3: Gumbel-Softmax samples on the simplex as the temperature moves. */
  function gumbelExplorer(root, opts) {
    const n = opts.n || 500;
    const specs = Object.assign(logitSliders(opts.logits), {
      log10_tau: ["log₁₀ τ", -1.5, 1, 0.05, Math.log10(opts.tau)],
      seed: ["seed", 0, 50, 1, opts.seed],
    });
    const svg = figure(root, 720, 330,
      "Gumbel-Softmax samples on the probability triangle and their mean against pi, " +
      "recomputed when the temperature moves");
    const draw = (v) => {
      clear(svg);
      const logits = logitsOf(v);
      const probs = softmax(logits);
      const tau = 10 ** v.log10_tau;
      const gen = rng(v.seed);
      const p = panel(svg, [10, 40, 360, 270], [-0.1, 1.1, -0.1, 0.95],
        `${n} samples, τ = ${tau.toPrecision(2)}`);
      triangle(p);
      const mean = [0, 0, 0];
      for (let i = 0; i < n; i++) {
        const s = gumbelSoftmax(logits, gen.vector(gen.gumbel, 3), tau);
        s.soft.forEach((q, k) => { mean[k] += q / n; });
        const [cx, cy] = p.at(simplexXY(s.soft));
        el("circle", { cx, cy, r: 2, fill: CORNER_COLORS[s.hard], "fill-opacity": 0.5 }, p.g);
      }
      star(p, simplexXY(probs));
      bars(svg, [440, 40, 260, 250], probs, mean, null,
        `E[P] vs π, TV ${tv(mean, probs).toFixed(3)}`, "mean of P");
    };
    const values = controls(root, specs, draw);
    root.appendChild(svg);
    draw(values);
  }

  function viridis(t) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
    const i = Math.min(Math.floor(x), stops.length - 2);
    const f = x - i;
    const c = stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
    return `rgb(${c.join(",")})`;
  }

  /** Chapter 5: TV between the law of H and pi over a grid of t_1 x n_steps, for K = 3. */
  function biasMap(root, opts) {
    const t1s = opts.t1s;
    const steps = opts.n_steps;
    const specs = Object.assign(logitSliders(opts.logits), {
      draws: ["draws", 500, 8000, 500, opts.draws || 2000],
      seed: ["seed", 0, 50, 1, opts.seed],
    });
    const svg = figure(root, 560, 380,
      "Heat map of the total-variation distance between the law of the hard sample and pi " +
      "over the stopping time and the number of steps, recomputed when a slider moves");
    const draw = (v) => {
      clear(svg);
      const logits = logitsOf(v);
      const probs = softmax(logits);
      const [left, top, cw, ch] = [70, 40, 64, 40];
      const floor = noiseFloor(probs, v.draws, 20, rng(10 ** 6 + v.seed));
      el("text", { x: left + (cw * steps.length) / 2, y: 22, "text-anchor": "middle",
        "font-size": 16 }, svg,
      `TV(law of H, π), ${v.draws} draws per cell; noise floor ≈ ${floor.toFixed(3)}`);
      t1s.forEach((t1, i) => {
        steps.forEach((nSteps, j) => {
          const gen = rng(1000 * v.seed + 100 * i + j);
          const d = tv(hardLaw(logits, nSteps, t1, v.draws, gen), probs);
          const x = left + j * cw;
          const y = top + i * ch;
          el("rect", { x, y, width: cw, height: ch, fill: viridis(d / 0.7) }, svg);
          el("text", { x: x + cw / 2, y: y + ch / 2 + 4, "text-anchor": "middle",
            "font-size": 13, fill: d < 0.4 ? "#fff" : "#000" }, svg, d.toFixed(2));
        });
        el("text", { x: left - 6, y: top + i * ch + ch / 2 + 4, "text-anchor": "end",
          "font-size": 13 }, svg, String(t1));
      });
      steps.forEach((nSteps, j) => {
        el("text", { x: left + j * cw + cw / 2, y: top + t1s.length * ch + 16,
          "text-anchor": "middle", "font-size": 13 }, svg, String(nSteps));
      });
      el("text", { x: left + (cw * steps.length) / 2, y: top + t1s.length * ch + 34,
        "text-anchor": "middle", "font-size": 14 }, svg, "n_steps");
      el("text", { x: 16, y: top + (t1s.length * ch) / 2, "font-size": 14 }, svg, "t₁");
      if (opts.box) {
        const [t1Low, t1High, stepsLow, stepsHigh] = opts.box;
        const rows = t1s.map((t, i) => (t >= t1Low && t <= t1High ? i : -1))
          .filter((i) => i >= 0);
        const cols = steps.map((s, j) => (s >= stepsLow && s <= stepsHigh ? j : -1))
          .filter((j) => j >= 0);
        if (rows.length && cols.length) {
          el("rect", { x: left + cols[0] * cw, y: top + rows[0] * ch, width: cols.length * cw,
            height: rows.length * ch, fill: "none", stroke: "#fff", "stroke-width": 2,
            "stroke-dasharray": "6 4" }, svg);
        }
      }
    };
    const values = controls(root, specs, draw);
    root.appendChild(svg);
    draw(values);
  }

  const FIGURES = { sampler: samplerExplorer, gumbel_softmax: gumbelExplorer, bias_map: biasMap };

  /** Draw the live figure `kind` into the element `root` with the options `opts`. */
  function mount(root, kind, opts) {
    if (!FIGURES[kind]) throw new RangeError(`unknown live figure ${kind}`);
    root.classList.add("redge-live");
    root.dataset.kind = kind;
    FIGURES[kind](root, opts);
  }

  return {
    timeGrid, softmax, posteriorLogits, ddimStep, ddimSample, inverseCdf, gumbelSoftmax, rng,
    hardLaw, tv, noiseFloor, projectToPlane, simplexXY, mount,
  };
});
