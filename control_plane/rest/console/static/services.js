// Real-time services: one row per deployment, live from the list's event stream.
import { watch } from "./api.js";
import { h, short, when } from "./dom.js";

export const STATUSES = ["DEPLOYING", "RUNNING", "CONCERNING", "ABNORMAL", "FAILED", "STOPPING", "STOPPED"];

function started(allocations) {
  let have = 0, want = 0;
  for (const a of allocations) {
    have += a.route_counts?.started || 0;
    want += a.target_nodes || 0;
  }
  return `${have} / ${want}`;
}

function row(d) {
  const status = short(d.status, "DEPLOYMENT_STATUS_");
  return h("tr", { "data-name": d.deployment_id },
    h("td", {}, h("a", { href: `#/services/${encodeURIComponent(d.deployment_id)}` }, d.deployment_id)),
    h("td", {}, h("span", { class: `status s-${status.toLowerCase()}`, "data-status": status }, status),
      d.status_reason ? h("div", { class: "reason" }, d.status_reason) : null),
    h("td", {}, d.variants.map((v) => h("div", {}, `${v.model_id} v${v.model_version} — ${v.weight}%`))),
    h("td", { class: "instances" }, started(d.allocations)),
    h("td", {}, d.auto_stop_at ? when(d.auto_stop_at) : "—"),
    h("td", {}, d.traffic_limit_qps ? `${d.traffic_limit_qps}/s` : "none"),
    h("td", {}, d.owner),
    h("td", {}, when(d.created_at)));
}

export function servicesPage(view, signal) {
  const statusFilter = h("select", { id: "filter-status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  const nameFilter = h("input", { id: "filter-name", type: "search", placeholder: "part of a name" });
  const body = h("tbody");
  const count = h("p", { class: "hint", role: "status" });
  let latest = [];
  const draw = () => {
    const wanted = statusFilter.value, part = nameFilter.value.trim().toLowerCase();
    const rows = latest.filter((d) => (!wanted || d.status === `DEPLOYMENT_STATUS_${wanted}`)
      && d.deployment_id.toLowerCase().includes(part));
    body.replaceChildren(...rows.map(row));
    count.textContent = `${rows.length} of ${latest.length} services`;
  };
  statusFilter.addEventListener("change", draw);
  nameFilter.addEventListener("input", draw);
  view.append(h("h1", {}, "Real-time services"),
    h("div", { class: "filters" },
      h("label", { for: "filter-status" }, "Status"), statusFilter,
      h("label", { for: "filter-name" }, "Name"), nameFilter),
    count,
    h("div", { class: "scroll" }, h("table", { id: "services" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Versions and weights", "Instances started / wanted",
        "Auto stop", "Traffic limit", "Owner", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      body)));
  watch("/api/v1/watch/deployments", (list) => { latest = list.deployments; draw(); }, signal);
}
