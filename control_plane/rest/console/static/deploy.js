// Deploy: a StartDeploymentRequest built from a form; "Preview" is its dry run.
import { api } from "./api.js";
import { h, clearErrors, showFieldError } from "./dom.js";

function field(id, label, input, name = id) {
  input.id = id;
  return h("label", { for: id, class: "field" }, h("span", {}, label), input,
    h("span", { class: "error", "data-field": name, role: "alert" }));
}

const number = (attrs) => h("input", { type: "number", inputmode: "numeric", ...attrs });

function versionRow(models, index, weight) {
  const ids = [...new Set(models.map((m) => m.model_id))];
  const model = h("select", { name: "model" }, ids.map((id) => h("option", { value: id }, id)));
  const version = h("select", { name: "version" });
  const fill = () => version.replaceChildren(...models.filter((m) => m.model_id === model.value)
    .map((m) => h("option", { value: m.version }, `v${m.version}`)));
  model.addEventListener("change", fill);
  fill();
  const row = h("fieldset", { class: "version" }, h("legend", {}, `Version ${index + 1}`),
    field(`model-${index}`, "Model", model, `variants[${index}].model_id`),
    field(`version-${index}`, "Version", version, `variants[${index}].model_version`),
    field(`weight-${index}`, "Traffic weight (%)", number({ name: "weight", min: 0, max: 100, value: weight }),
      `variants[${index}].weight`));
  return row;
}

function request(form, dryRun) {
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  const int = (id) => Number.parseInt(value(id) || "0", 10);
  const rows = [...form.querySelectorAll("fieldset.version")];
  const req = {
    deployment_id: value("name"), description: value("description"), dry_run: dryRun,
    queue_capacity: int("queue-capacity"), inference_threads: int("inference-threads"),
    model_threads: int("model-threads"), traffic_limit_qps: Number(value("traffic-limit") || 0),
    wait_for: value("wait-for"),
  };
  const instances = int("instances");
  const autoStop = value("auto-stop") === "custom" ? value("auto-stop-hours") : value("auto-stop");
  if (autoStop) req.auto_stop = `${Number(autoStop) * 3600}s`;
  const variants = rows.map((row) => ({
    model_id: row.querySelector("[name=model]").value,
    model_version: Number(row.querySelector("[name=version]").value),
    weight: Number(row.querySelector("[name=weight]").value || 0),
  }));
  if (variants.length === 1) {
    Object.assign(req, { model_id: variants[0].model_id, model_version: variants[0].model_version, instances });
  } else {
    req.variants = variants.map((v) => ({ ...v, instances, queue_capacity: req.queue_capacity,
      inference_threads: req.inference_threads, model_threads: req.model_threads }));
    delete req.queue_capacity; delete req.inference_threads; delete req.model_threads;
  }
  return req;
}

function planTable(deployment) {
  return h("div", { class: "plan" }, h("h2", {}, "Plan (dry run: nothing was started)"),
    deployment.allocations.map((a) => h("section", {},
      h("h3", {}, `${a.variant} — ${a.weight}% on ${a.target_nodes} node(s)`),
      h("ul", {}, Object.entries(a.routing_table).map(([node, r]) => h("li", {}, `${node}: ${r.routing_state.replace("ROUTING_STATE_", "")} ${r.reason}`))),
      a.not_chosen_summary.length ? h("p", {}, "Not chosen: ",
        a.not_chosen_summary.map((c) => `${c.count} × ${c.reason}`).join("; ")) : null)));
}

export async function deployPage(view, signal) {
  const models = (await api("GET", "/api/v1/models")).models.filter((m) => m.state === "MODEL_STATE_NORMAL");
  const versions = h("div", { class: "versions" });
  const sum = h("p", { id: "weights-sum", role: "status", "aria-live": "polite" });
  const result = h("div", { id: "deploy-result" });
  const autoHours = number({ min: 1, max: 24, value: 3 });
  const form = h("form", { id: "deploy-form", class: "card", novalidate: true },
    h("h1", {}, "Deploy a real-time service"),
    models.length ? null : h("p", { class: "error" }, "No NORMAL model to deploy: upload one first."),
    field("name", "Name", h("input", { required: true, autocomplete: "off" }), "deployment_id"),
    field("description", "Description", h("input", {})),
    versions, sum,
    h("button", { type: "button", id: "add-version" }, "Add a version"),
    h("div", { class: "grid" },
      field("instances", "Instances (0 = every node)", number({ min: 0, value: 1 })),
      field("inference-threads", "Inference threads", number({ min: 0, value: 1 }), "inference_threads"),
      field("model-threads", "Model threads", number({ min: 0, value: 1 }), "model_threads"),
      field("queue-capacity", "Queue capacity", number({ min: 0, value: 1024 }), "queue_capacity"),
      field("traffic-limit", "Traffic limit (calls/s, 0 = none)", number({ min: 0, value: 0 }), "traffic_limit_qps"),
      field("auto-stop", "Auto stop", h("select", {}, [["", "never"], ["1", "1 hour"], ["2", "2 hours"],
        ["4", "4 hours"], ["6", "6 hours"], ["custom", "custom"]].map(([v, t]) => h("option", { value: v }, t)))),
      field("auto-stop-hours", "Custom auto stop (1–24 h)", autoHours, "auto_stop"),
      field("wait-for", "Answer when", h("select", {}, [["WAIT_FOR_STARTING", "starting"],
        ["WAIT_FOR_STARTED", "started"], ["WAIT_FOR_FULLY_ALLOCATED", "fully allocated"]]
        .map(([v, t]) => h("option", { value: v }, t))))),
    h("span", { class: "error", "data-field": "form", role: "alert" }),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "preview" }, "Preview"),
      h("button", { type: "submit", id: "deploy" }, "Deploy")),
    result);
  const checkWeights = () => {
    const weights = [...versions.querySelectorAll("[name=weight]")].map((i) => Number(i.value || 0));
    const total = weights.reduce((a, b) => a + b, 0);
    const ok = total === 100 && weights.every((w) => w >= 0);
    sum.textContent = ok ? "Weights sum to 100 %." : `Weights sum to ${total} %; they must sum to 100 %.`;
    sum.className = ok ? "ok" : "error";
    form.querySelector("#deploy").disabled = !ok || !models.length;
    return ok;
  };
  const add = () => {
    const n = versions.children.length;
    versions.append(versionRow(models, n, n ? 0 : 100));
    checkWeights();
  };
  form.querySelector("#add-version").addEventListener("click", add);
  versions.addEventListener("input", checkWeights);
  add();
  const send = async (dryRun) => {
    clearErrors(form);
    result.replaceChildren();
    try {
      const reply = await api("POST", "/api/v1/deployments", request(form, dryRun));
      if (dryRun) result.append(planTable(reply.deployment));
      else location.hash = `#/services/${encodeURIComponent(reply.deployment.deployment_id)}`;
    } catch (err) {
      showFieldError(form, err.message);
    }
  };
  form.querySelector("#preview").addEventListener("click", () => send(true));
  form.addEventListener("submit", (event) => { event.preventDefault(); if (checkWeights()) send(false); });
  view.append(form);
  form.querySelector("#name").focus();
}
