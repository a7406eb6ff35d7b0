// The jobs page: every job's state, progress, best so far against its budget, start and elapsed time.
"use strict";

(() => {
  const { el, fmt } = AC;

  function progressCell(job) {
    const p = job.progress || {};
    const planned = p.num_trials || p.total || 0;
    const share = planned ? Math.min(1, p.done / planned) : 0;
    const extra = [p.running ? `${p.running} running` : null, p.failed ? `${p.failed} failed` : null].filter(Boolean);
    return el("td", {},
      el("span", { class: "bar", title: `${p.done} of ${planned || "?"} trials done` },
        el("span", { style: `width: ${(100 * share).toFixed(1)}%` })),
      `${p.done ?? 0} / ${planned || "?"}`,
      extra.length ? el("small", {}, ` (${extra.join(", ")})`) : null);
  }

  // "0.41 / 0.89" in green when within the bound, red when over it; the value alone without a bound
  function againstBudget(value, bound, digits) {
    if (!AC.isNumber(value)) return el("td", { class: "num" }, "–");
    if (!AC.isNumber(bound)) return el("td", { class: "num" }, fmt(value, digits));
    return el("td", { class: `num ${value <= bound ? "ok" : "bad"}` }, `${fmt(value, digits)} / ${fmt(bound, digits)}`);
  }

  function row(job) {
    const best = job.best || {};
    const budget = job.budget_resolved || {};
    const bestCell = job.best
      ? el("td", {}, fmt(best.valid_auc, 4), " ",
          el("small", { class: best.feasible ? "ok" : "bad" }, best.feasible ? "within budget" : "closest, over budget"),
          el("small", {}, ` (${best.trial_key})`))
      : el("td", {}, "–");
    return el("tr", { dataset: { jobId: job.id } },
      el("td", {}, el("a", { href: `/dashboard/jobs/${encodeURIComponent(job.id)}` }, job.name),
        el("br"), el("small", {}, job.id)),
      el("td", { title: job.reason || "" }, AC.badge(job.status), job.reason ? el("br") : null,
        job.reason ? el("small", {}, job.reason) : null),
      progressCell(job),
      bestCell,
      againstBudget(best.latency_ms, budget.latency_ms, 3),
      againstBudget(best.size_mb, budget.size_mb, 3),
      el("td", {}, AC.fmtTime(job.started_at)),
      el("td", { class: "num" }, AC.fmtDuration(AC.elapsed(job.started_at, job.finished_at))));
  }

  async function refresh() {
    const data = await AC.getJSON("/dashboard/api/jobs?limit=100");
    document.getElementById("jobs-total").textContent = `${data.total} in all, newest first`;
    document.getElementById("jobs-empty").hidden = data.jobs.length > 0;
    AC.replaceRows(document.querySelector("#jobs tbody"), data.jobs.map(row));
  }

  AC.poll(refresh);
})();
