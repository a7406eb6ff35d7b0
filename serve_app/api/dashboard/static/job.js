// One job, live: its facts, the Pareto chart (with the baselines and the budget), the searched
// parameters against AUC, learning curves, the sortable trials table and the log.
// Every chart trace carries meta.role ("trials", "front", "winner", "baseline", "budget") so that a
// reader of the figure (the browser test) can tell them apart.
"use strict";

(() => {
  const { el, fmt, isNumber } = AC;
  const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const PLOT_CONFIG = { displaylogo: false, responsive: true };
  const BASELINE_LABELS = { onnx_fp32: "reference (fp32 ONNX)", ort_dynamic_int8: "ONNX Runtime dynamic int8" };
  const MAX_MARKER_PX = 60;
  const state = { sortKey: "trial_key", sortDir: 1, drawn: null, afterId: 0, trials: [] };

  // -- facts ------------------------------------------------------------------------------------

  function facts(job) {
    const p = job.progress || {};
    const planned = p.num_trials || p.total || 0;
    const best = job.best;
    const budgetText = ((job.result || {}).budget || {}).text;
    const budget = budgetText ? Object.values(budgetText).join("; ") : job.budget ? JSON.stringify(job.budget) : "–";
    const items = [
      ["state", job.reason ? `${job.status}: ${job.reason}` : job.status],
      ["progress", `${p.done} of ${planned || "?"} trials done, ${p.running} running, ${p.failed} failed, ${p.skipped} skipped`],
      ["best so far", best ? `${best.trial_key}: valid AUC ${fmt(best.valid_auc, 4)}, ${fmt(best.latency_ms, 3)} ms, ${fmt(best.size_mb, 3)} MB (${best.feasible ? "within budget" : "closest, over budget"})` : "–"],
      ["budget", budget],
      ["started", AC.fmtTime(job.started_at)],
      ["elapsed", AC.fmtDuration(AC.elapsed(job.started_at, job.finished_at))],
    ];
    const nodes = items.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]);
    if (job.model_ids && job.model_ids.length) {
      nodes.push(el("dt", {}, "models"), el("dd", {}, el("a", { href: "/dashboard/models" }, job.model_ids.join(", "))));
    }
    if ((job.result || {}).report) {
      nodes.push(el("dt", {}, "report"), el("dd", {}, el("a", { href: `${base}/report` }, "HTML report")));
    }
    document.getElementById("job-facts").replaceChildren(...nodes);
    document.getElementById("job-name").textContent = job.name;
    const badge = document.getElementById("job-state");
    badge.textContent = job.status;
    badge.className = `badge ${job.status}`;
    document.title = `autocompress · ${job.name}`;
  }

  // -- the Pareto chart -------------------------------------------------------------------------

  // what the search ranks: COMPLETED with a final report (autocompress.search.pareto.finished_candidates)
  function finishedTrials(trials) {
    return trials.filter((t) => t.status === "COMPLETED" && "feasible" in t.metrics
      && isNumber(t.metrics.valid_auc) && isNumber(t.metrics.latency_ms) && isNumber(t.metrics.size_mb));
  }

  // the reference's valid AUC, from any final report (delta_auc = candidate - reference)
  function referenceAuc(finished) {
    const t = finished.find((x) => isNumber(x.metrics.delta_auc));
    return t ? t.metrics.valid_auc - t.metrics.delta_auc : null;
  }

  function span(values, pad, fallback) {
    const xs = values.filter(isNumber);
    if (!xs.length) return fallback;
    const lo = Math.min(...xs), hi = Math.max(...xs);
    const margin = Math.max((hi - lo) * pad, Math.abs(hi) * 0.002, 1e-3);
    return [lo - margin, hi + margin];
  }

  function paretoFigure(job, trials, pareto) {
    const budget = job.budget_resolved || {};
    const baselines = (((job.result || {}).budget) || {}).baselines || {};
    const finished = finishedTrials(trials);
    const reference = referenceAuc(finished);
    const floor = isNumber(reference) && isNumber(budget.max_auc_drop) ? reference - budget.max_auc_drop : null;
    const sizes = [...finished.map((t) => t.metrics.size_mb), ...Object.values(baselines).map((b) => b.size_mb)].filter(isNumber);
    const sizeref = (2 * Math.max(...sizes, 1e-9)) / (MAX_MARKER_PX * MAX_MARKER_PX);
    const [ylo, yhi] = span([...finished.map((t) => t.metrics.valid_auc), reference, floor], 0.08, [0.5, 1.0]);
    const xmax = Math.max(...[...finished.map((t) => t.metrics.latency_ms), ...Object.values(baselines).map((b) => b.latency_ms), budget.latency_ms].filter(isNumber), 0);
    const xRange = [0, xmax > 0 ? xmax * 1.1 : 1];
    const data = [];

    data.push({
      type: "scatter", mode: "markers", name: "trials (grey: over budget)", meta: { role: "trials" },
      x: finished.map((t) => t.metrics.latency_ms),
      y: finished.map((t) => t.metrics.valid_auc),
      customdata: finished.map((t) => t.trial_key),
      text: finished.map((t) => `${t.trial_key}<br>${fmt(t.metrics.size_mb, 3)} MB<br>${(t.metrics.techniques || []).join(" → ") || "no technique"}`),
      hovertemplate: "%{text}<br>%{x:.3f} ms, AUC %{y:.4f}<extra></extra>",
      marker: {
        size: finished.map((t) => t.metrics.size_mb), sizemode: "area", sizeref, sizemin: 5,
        color: finished.map((t) => (t.metrics.feasible ? "#2f6fb3" : "#9aa5b1")), opacity: 0.8,
        line: { width: 1, color: "#ffffff" },
      },
    });
    const front = [...(pareto.front || [])].sort((a, b) => a.latency_ms - b.latency_ms);
    if (front.length) {
      data.push({
        type: "scatter", mode: "lines", name: "Pareto front", meta: { role: "front" }, hoverinfo: "skip",
        x: front.map((c) => c.latency_ms), y: front.map((c) => c.valid_auc), line: { color: "#dd6b20", width: 2 },
      });
    }
    if (pareto.winner) {
      const w = pareto.winner;
      data.push({
        type: "scatter", mode: "markers", name: `winner ${w.trial_key}`, meta: { role: "winner" },
        x: [w.latency_ms], y: [w.valid_auc], hovertemplate: `winner ${w.trial_key}<extra></extra>`,
        marker: { symbol: "star", size: 18, color: "#c53030", line: { width: 1, color: "#ffffff" } },
      });
    }
    for (const [name, figures] of Object.entries(baselines)) {
      const label = BASELINE_LABELS[name] || name;
      const meta = { role: "baseline", baseline: name };
      const hover = `${label}<br>${fmt(figures.latency_ms, 3)} ms, ${fmt(figures.size_mb, 3)} MB`;
      if (name === "onnx_fp32" && isNumber(reference)) {
        data.push({
          type: "scatter", mode: "markers", name: label, meta, x: [figures.latency_ms], y: [reference],
          hovertemplate: `${hover}<br>valid AUC %{y:.4f}<extra></extra>`,
          marker: { symbol: "diamond", size: [figures.size_mb], sizemode: "area", sizeref, sizemin: 8, color: "#1f2933" },
        });
      } else {  // its valid AUC is not measured: a line at its latency
        data.push({
          type: "scatter", mode: "lines", name: `${label} (latency)`, meta, x: [figures.latency_ms, figures.latency_ms], y: [ylo, yhi],
          hovertemplate: `${hover}<extra></extra>`, line: { color: "#1f2933", width: 1.5, dash: "dot" },
        });
      }
    }
    if (isNumber(budget.latency_ms)) {
      data.push({
        type: "scatter", mode: "lines", name: `latency budget ≤ ${fmt(budget.latency_ms, 3)} ms`, meta: { role: "budget", bound: "latency_ms" },
        x: [budget.latency_ms, budget.latency_ms], y: [ylo, yhi], hoverinfo: "name", line: { color: "#c53030", width: 1.5, dash: "dash" },
      });
    }
    if (isNumber(floor)) {
      data.push({
        type: "scatter", mode: "lines", name: `AUC floor (reference − ${budget.max_auc_drop})`, meta: { role: "budget", bound: "max_auc_drop" },
        x: xRange, y: [floor, floor], hoverinfo: "name", line: { color: "#c53030", width: 1, dash: "dot" },
      });
    }
    const at = isNumber(budget.batch_size) ? ` p${budget.percentile} at batch ${budget.batch_size}` : "";
    const layout = {
      margin: { l: 60, r: 16, t: 8, b: 44 }, uirevision: jobId, hovermode: "closest",
      xaxis: { title: { text: `latency${at} (ms)` }, range: xRange, zeroline: false },
      yaxis: { title: { text: "valid AUC" }, range: [ylo, yhi] },
      legend: { orientation: "h", y: -0.18, itemsizing: "constant" },
    };
    const notes = [];
    if (isNumber(budget.size_mb)) notes.push(`Size budget ≤ ${fmt(budget.size_mb, 3)} MB (grey markers break a bound).`);
    if (!Object.keys(baselines).length) notes.push("The baselines are drawn once the job has measured them.");
    else if (!isNumber(reference)) notes.push("The reference's valid AUC is known once a trial has finished; until then its latency is drawn as a line.");
    if (Object.keys(baselines).some((name) => name !== "onnx_fp32")) notes.push("ONNX Runtime dynamic int8 is not scored on the valid split: its latency is drawn as a dotted line.");
    return { data, layout, note: notes.join(" ") };
  }

  // -- searched parameters and learning curves --------------------------------------------------

  function label(value) {
    return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function parcoordsFigure(trials) {
    const rows = trials.filter((t) => isNumber(t.metrics.valid_auc) && t.config && t.config.sampled);
    const keys = [...new Set(rows.flatMap((t) => Object.keys(t.config.sampled)))].sort();
    const dimensions = [];
    for (const key of keys) {
      const values = rows.map((t) => t.config.sampled[key]);
      if (new Set(values.map(label)).size < 2) continue;  // a fixed value says nothing
      if (values.every((v) => isNumber(v))) {
        dimensions.push({ label: key, values });
      } else if (values.every((v) => typeof v === "boolean")) {
        dimensions.push({ label: key, values: values.map(Number), tickvals: [0, 1], ticktext: ["off", "on"], range: [0, 1] });
      } else {
        const names = [...new Set(values.map(label))].sort();
        dimensions.push({ label: key, values: values.map((v) => names.indexOf(label(v))), tickvals: names.map((_, i) => i), ticktext: names });
      }
    }
    if (rows.length < 2 || !dimensions.length) return null;
    const auc = rows.map((t) => t.metrics.valid_auc);
    dimensions.push({ label: "valid AUC", values: auc });
    return {
      data: [{
        type: "parcoords", meta: { role: "parameters" }, dimensions,
        line: { color: auc, colorscale: "Viridis", showscale: true, colorbar: { title: { text: "AUC" }, thickness: 10 } },
      }],
      layout: { margin: { l: 60, r: 60, t: 40, b: 24 } },
    };
  }

  // the stored learning curves: every per-epoch report, from /trials?curves=true
  function curvesFigure(trials) {
    const histories = trials.filter((t) => Array.isArray(t.curve) && t.curve.some((e) => isNumber(e.valid_auc)));
    const layout = {
      margin: { l: 60, r: 16, t: 8, b: 44 }, uirevision: jobId,
      xaxis: { title: { text: "epoch" }, dtick: 1 }, yaxis: { title: { text: "valid AUC" } }, legend: { orientation: "h", y: -0.2 },
    };
    if (histories.length) {
      return {
        data: histories.map((t) => {
          const points = t.curve.filter((e) => isNumber(e.valid_auc));
          return {
            type: "scatter", mode: "lines+markers", name: t.trial_key, meta: { role: "curve", trial: t.trial_key },
            x: points.map((e) => e.epoch), y: points.map((e) => e.valid_auc),
            text: points.map((e) => (isNumber(e.train_loss) ? `train loss ${fmt(e.train_loss, 4)}` : "")),
            hovertemplate: `${t.trial_key}: epoch %{x}, valid AUC %{y:.4f}<br>%{text}<extra></extra>`,
          };
        }),
        layout, note: null,
      };
    }
    const points = trials.map((t) => {
      const m = t.metrics;
      const final = m.stage === "final";
      const epoch = final ? (m.best_epoch ?? m.epochs_trained) : m.epoch;
      const auc = final ? (m.train_valid_auc ?? m.valid_auc) : m.valid_auc;
      return isNumber(epoch) && isNumber(auc) ? { key: t.trial_key, epoch, auc, final } : null;
    }).filter(Boolean);
    return {
      data: [{
        type: "scatter", mode: "markers", name: "last reported epoch", meta: { role: "curve" },
        x: points.map((p) => p.epoch), y: points.map((p) => p.auc), text: points.map((p) => p.key),
        hovertemplate: "%{text}: epoch %{x}, AUC %{y:.4f}<extra></extra>",
        marker: { color: points.map((p) => (p.final ? "#2f6fb3" : "#dd6b20")), size: 9 },
      }],
      layout,
      note: "No learning curve is stored for these trials (recorded before curves were kept): each point is one trial's last reported epoch "
        + "(orange: still training or stopped) or its best epoch (blue: finished).",
    };
  }

  function draw(id, figure, noteId, emptyNote) {
    const node = document.getElementById(id);
    const note = document.getElementById(noteId);
    if (!figure) {
      Plotly.purge(node);
      node.hidden = true;
      note.hidden = false;
      note.textContent = emptyNote;
      return;
    }
    node.hidden = false;
    Plotly.react(node, figure.data, figure.layout, PLOT_CONFIG);
    note.hidden = !figure.note;
    note.textContent = figure.note || "";
  }

  // -- trials table -----------------------------------------------------------------------------

  function cellValue(trial, key) {
    const m = trial.metrics || {};
    switch (key) {
      case "trial_key": case "status": case "seconds": return trial[key];
      case "stage": return m.stage ?? null;
      case "techniques": return Array.isArray(m.techniques) ? m.techniques.join(" → ") : null;
      case "latency_ms": return m.latency_ms ?? m.predicted_latency_ms ?? null;
      default: return m[key] ?? null;
    }
  }

  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;  // missing values last, whichever the direction
    if (b === null || b === undefined) return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function renderTrials() {
    const { sortKey, sortDir } = state;
    const rows = [...state.trials].sort((x, y) => {
      const a = cellValue(x, sortKey), b = cellValue(y, sortKey);
      if (a === null || a === undefined || b === null || b === undefined) return compare(a, b);
      return sortDir * compare(a, b);
    });
    for (const th of document.querySelectorAll("#trials th")) {
      th.classList.toggle("asc", th.dataset.key === sortKey && sortDir > 0);
      th.classList.toggle("desc", th.dataset.key === sortKey && sortDir < 0);
    }
    AC.replaceRows(document.querySelector("#trials tbody"), rows.map((t) => {
      const m = t.metrics || {};
      const predicted = !isNumber(m.latency_ms) && isNumber(m.predicted_latency_ms);
      const feasible = "feasible" in m
        ? el("span", { class: m.feasible ? "ok" : "bad", title: (m.violations || []).join("; ") }, m.feasible ? "within" : "over")
        : "–";
      return el("tr", { dataset: { trialKey: t.trial_key } },
        el("td", {}, t.trial_key),
        el("td", {}, m.stage ?? "–"),
        el("td", { title: t.error || "" }, AC.badge(t.status)),
        el("td", { class: "num" }, fmt(m.valid_auc, 4)),
        el("td", { class: "num", title: predicted ? "predicted by the latency model" : "" }, predicted ? `~${fmt(m.predicted_latency_ms, 3)}` : fmt(m.latency_ms, 3)),
        el("td", { class: "num" }, fmt(m.size_mb, 3)),
        el("td", {}, feasible),
        el("td", {}, cellValue(t, "techniques") ?? "–"),
        el("td", { class: "num" }, fmt(t.seconds, 1)));
    }));
    document.getElementById("trials-count").textContent = `${state.trials.length} recorded`;
  }

  for (const th of document.querySelectorAll("#trials th")) {
    th.addEventListener("click", () => {
      state.sortDir = state.sortKey === th.dataset.key ? -state.sortDir : 1;
      state.sortKey = th.dataset.key;
      renderTrials();
    });
  }

  // -- the log ----------------------------------------------------------------------------------

  async function followLog() {
    const data = await AC.getJSON(`${base}/logs?after_id=${state.afterId}`);
    if (!data.events.length) return;
    const box = document.getElementById("log");
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.querySelector("tbody").append(...data.events.map((e) =>
      el("tr", { class: e.kind }, el("td", {}, AC.fmtTime(e.time)), el("td", {}, e.kind), el("td", {}, e.message))));
    state.afterId = data.next_after_id;
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // -- polling ----------------------------------------------------------------------------------

  async function refresh() {
    const [job, trials, pareto] = await Promise.all([
      AC.getJSON(base), AC.getJSON(`${base}/trials?curves=true`), AC.getJSON(`${base}/pareto`),
    ]);
    facts(job);
    const key = JSON.stringify([trials, pareto, job.budget_resolved, job.result && job.result.budget]);
    if (key !== state.drawn) {  // redraw only what changed, so hover and zoom survive a quiet poll
      state.drawn = key;
      state.trials = trials.trials;
      renderTrials();
      const pf = paretoFigure(job, trials.trials, pareto);
      draw("pareto", pf, "pareto-note", "");
      draw("parcoords", parcoordsFigure(trials.trials), "parcoords-note",
        "Nothing to draw yet: it needs two trials with a valid AUC whose searched parameters (config.sampled) differ.");
      draw("curves", curvesFigure(trials.trials), "curves-note", "");
    }
    await followLog();
    return AC.TERMINAL.has(job.status);
  }

  AC.poll(refresh, 10000);
})();
