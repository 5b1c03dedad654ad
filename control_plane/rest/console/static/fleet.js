// Models and Nodes: the registry's versions and the fleet's capacity, with drain / uncordon for operators.
import { api } from "./api.js";
import { h, flash, short, when } from "./dom.js";
import { can } from "./app.js";

const head = (...titles) => h("thead", {}, h("tr", {}, titles.map((t) => h("th", { scope: "col" }, t))));

export async function modelsPage(view) {
  const { models } = await api("GET", "/api/v1/models");
  view.append(h("h1", {}, "Models"), h("div", { class: "scroll" }, h("table", { id: "models" },
    head("Model", "Version", "Format", "State", "Size", "Inputs", "Created"),
    h("tbody", {}, models.map((m) => h("tr", {}, h("td", {}, m.model_id), h("td", {}, `v${m.version}`),
      h("td", {}, short(m.format, "MODEL_FORMAT_")), h("td", {}, short(m.state, "MODEL_STATE_"), " ", m.state_reason),
      h("td", {}, `${(Number(m.model_bytes) / 1024).toFixed(1)} KiB`),
      h("td", {}, m.inputs.map((t) => `${t.name} ${t.datatype} [${t.shape.join(", ")}]`).join("; ")),
      h("td", {}, when(m.created_at))))))));
}

function capacity(c) {
  return c ? `${c.cpus} CPUs · ${(Number(c.memory_bytes || 0) / 2 ** 30).toFixed(1)} GiB · ${c.gpus || 0} GPUs` : "";
}

export async function nodesPage(view) {
  const body = h("tbody");
  const draw = async () => {
    const { nodes } = await api("GET", "/api/v1/nodes");
    body.replaceChildren(...nodes.map((n) => {
      const verb = n.schedulable ? "drain" : "uncordon";
      const button = can("manage_nodes") ? h("button", { type: "button", "aria-label": `${verb} ${n.node_id}`,
        onclick: async () => {
          try { await api("POST", `/api/v1/nodes/${encodeURIComponent(n.node_id)}/${verb}`); await draw(); }
          catch (err) { flash(err.message); }
        } }, n.schedulable ? "Drain" : "Uncordon") : null;
      return h("tr", {}, h("td", {}, n.node_id, h("div", { class: "reason" }, n.hostname)),
        h("td", {}, short(n.state, "NODE_STATE_"), n.schedulable ? "" : " (drained)"),
        h("td", {}, capacity(n.capacity)), h("td", {}, capacity(n.allocated)),
        h("td", {}, Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ")),
        h("td", {}, String(n.allocation_ids.length)), h("td", {}, when(n.last_heartbeat)), h("td", {}, button));
    }));
  };
  view.append(h("h1", {}, "Nodes"), h("div", { class: "scroll" }, h("table", { id: "nodes" },
    head("Node", "State", "Capacity", "Allocated", "Labels", "Allocations", "Last heartbeat", "Actions"), body)));
  await draw();
}
