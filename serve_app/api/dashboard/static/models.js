// The models page: endpoint aliases (what each serves, its promote / rollback history) and every
// registered model with its version and lineage.
"use strict";

(() => {
  const { el, fmt } = AC;

  function modelName(byId, id) {
    const model = byId.get(id);
    return model ? `${model.name} v${model.version}` : id ? `model ${id}` : "nothing";
  }

  function endpointCard(endpoint, byId) {
    const serving = byId.get(endpoint.model_id);
    const steps = endpoint.history.map((event) => {
      const when = AC.fmtTime(event.time);
      if (event.action === "rollback") {
        return el("li", {}, `${when} rollback from ${modelName(byId, event.from_model_id)} to ${modelName(byId, event.model_id)}`);
      }
      return el("li", {}, `${when} ${event.action} ${modelName(byId, event.model_id)}`);
    });
    return el("div", { class: "card", dataset: { alias: endpoint.alias } },
      el("h3", {}, endpoint.alias),
      el("div", {}, "serves ", el("strong", {}, modelName(byId, endpoint.model_id)),
        serving ? el("small", {}, ` (${serving.id}; valid AUC ${fmt(serving.valid_auc, 4)})`) : null),
      el("ol", {}, steps));
  }

  function modelRow(model) {
    const job = model.job_id
      ? el("a", { href: `/dashboard/jobs/${encodeURIComponent(model.job_id)}` }, model.job_id)
      : "–";
    return el("tr", { dataset: { modelId: model.id } },
      el("td", {}, model.name),
      el("td", {}, `v${model.version}`),
      el("td", {}, el("small", {}, model.id)),
      el("td", {}, model.aliases.length ? model.aliases.join(", ") : "–"),
      el("td", {}, job),
      el("td", { class: "num" }, fmt(model.valid_auc, 4)),
      el("td", { class: "num" }, fmt(model.latency_ms, 3)),
      el("td", { class: "num" }, fmt(model.size_mb, 3)),
      el("td", {}, AC.fmtTime(model.created_at)));
  }

  async function refresh() {
    const data = await AC.getJSON("/dashboard/api/registry");
    const byId = new Map(data.models.map((m) => [m.id, m]));
    document.getElementById("endpoints").replaceChildren(...data.endpoints.map((e) => endpointCard(e, byId)));
    document.getElementById("endpoints-empty").hidden = data.endpoints.length > 0;
    AC.replaceRows(document.querySelector("#models tbody"), data.models.map(modelRow));
    document.getElementById("models-empty").hidden = data.models.length > 0;
  }

  AC.poll(refresh);
})();
