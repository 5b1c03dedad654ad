// Service detail: routing table per node, the event log, actions; live from the deployment's event stream.
import { api, watch } from "./api.js";
import { h, flash, short, when } from "./dom.js";
import { can } from "./app.js";

function routing(deployment) {
  const rows = [];
  for (const a of [...deployment.allocations, ...deployment.retiring]) {
    for (const [node, r] of Object.entries(a.routing_table)) {
      rows.push(h("tr", {}, h("td", {}, a.variant), h("td", {}, node),
        h("td", { "data-state": short(r.routing_state, "ROUTING_STATE_") }, short(r.routing_state, "ROUTING_STATE_")),
        h("td", {}, r.reason), h("td", {}, r.worker_address)));
    }
  }
  return h("table", { id: "routing" }, h("caption", {}, "Routing table"),
    h("thead", {}, h("tr", {}, ["Version", "Node", "State", "Reason", "Worker"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows));
}

function describe(e) {
  const kind = short(e.kind, "EVENT_KIND_").toLowerCase();
  if (kind === "status") return `status ${short(e.from_status, "DEPLOYMENT_STATUS_")} → ${short(e.status, "DEPLOYMENT_STATUS_")} ${e.reason}`;
  if (kind === "routing") return `${e.variant} on ${e.node_id}: ${short(e.from_routing_state, "ROUTING_STATE_")} → ${short(e.routing_state, "ROUTING_STATE_")} ${e.reason}`;
  return `${kind} ${e.reason}`;
}

function weightsForm(deployment) {
  const inputs = deployment.variants.map((v, i) => h("label", { for: `w-${i}`, class: "field" },
    h("span", {}, `${v.name} (${v.model_id} v${v.model_version}) weight %`),
    h("input", { id: `w-${i}`, type: "number", min: 0, max: 100, value: v.weight, "data-variant": v.name })));
  const sum = h("p", { role: "status" });
  const error = h("p", { class: "error", role: "alert" });
  const apply = h("button", { type: "submit", id: "apply-weights" }, "Change weights");
  const form = h("form", { id: "weights", class: "card" }, h("h2", {}, "Traffic weights"), inputs, sum, apply, error);
  const check = () => {
    const total = inputs.reduce((n, l) => n + Number(l.querySelector("input").value || 0), 0);
    sum.textContent = `Weights sum to ${total} %${total === 100 ? "." : "; they must sum to 100 %."}`;
    apply.disabled = total !== 100;
  };
  form.addEventListener("input", check);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const variants = deployment.variants.map((v, i) => ({ name: v.name, model_id: v.model_id,
      model_version: v.model_version, weight: Number(inputs[i].querySelector("input").value || 0) }));
    try {
      await api("PATCH", `/api/v1/deployments/${encodeURIComponent(deployment.deployment_id)}`,
        { spec: { variants }, update_mask: "variants" });
      flash("Weights changed.");
    } catch (err) { error.textContent = err.message; }
  });
  check();
  return form;
}

function actions(deployment) {
  const id = encodeURIComponent(deployment.deployment_id);
  const stopped = deployment.status === "DEPLOYMENT_STATUS_STOPPED";
  const act = (label, method, path, body, after) => h("button", { type: "button", id: label.toLowerCase(),
    onclick: async () => {
      try { await api(method, path, body); flash(`${label}: done.`); after?.(); } catch (err) { flash(err.message); }
    } }, label);
  return h("div", { class: "actions", id: "actions" },
    stopped ? null : act("Stop", "POST", `/api/v1/deployments/${id}/stop`, {}),
    stopped ? act("Delete", "DELETE", `/api/v1/deployments/${id}`, undefined, () => { location.hash = "#/services"; }) : null);
}

export async function detailPage(view, name, signal) {
  const head = h("div");
  const table = h("div", { class: "scroll" });
  const controls = h("div");
  const log = h("ol", { id: "events", class: "events" });
  view.append(h("p", {}, h("a", { href: "#/services" }, "← Real-time services")), head, table, controls,
    h("h2", {}, "Events"), log);
  const addEvents = (events) => {
    for (const e of events) log.append(h("li", {}, h("time", {}, when(e.time)), " ", describe(e)));
  };
  let shapeKey = "";
  watch(`/api/v1/deployments/${encodeURIComponent(name)}/watch`, (snapshot) => {
    const d = snapshot.deployment;
    const status = short(d.status, "DEPLOYMENT_STATUS_");
    head.replaceChildren(h("h1", {}, d.deployment_id),
      h("p", {}, h("span", { class: `status s-${status.toLowerCase()}`, id: "status", "data-status": status }, status),
        " ", d.status_reason, d.rollout ? ` — rollout: ${d.rollout}` : ""),
      h("p", { class: "hint" }, `owner ${d.owner} · created ${when(d.created_at)} · ${d.description}`));
    table.replaceChildren(routing(d));
    addEvents(snapshot.events);
    // rebuild the controls only when what they act on changes, so typing in them is not lost
    const key = JSON.stringify([d.status, d.variants.map((v) => [v.name, v.weight])]);
    if (key !== shapeKey && can("manage_deployments")) {
      shapeKey = key;
      controls.replaceChildren(actions(d), d.variants.length > 1 ? weightsForm(d) : "");
    }
  }, signal, (err) => head.replaceChildren(h("p", { class: "error", role: "alert" }, err.message)));
  try {
    addEvents((await api("GET", `/api/v1/deployments/${encodeURIComponent(name)}/events`)).events);
  } catch { /* the stream shows the error */ }
}
