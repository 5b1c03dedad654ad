// The console's shell: sign-in, the privileges of the key, and hash routing to the pages.
import { api, session } from "./api.js";
import { h, flash } from "./dom.js";
import { servicesPage } from "./services.js";
import { deployPage } from "./deploy.js";
import { detailPage } from "./detail.js";
import { modelsPage, nodesPage } from "./fleet.js";

const state = { me: null, page: null };
export const can = (privilege) => Boolean(state.me && state.me.privileges.includes(privilege));

function signInPage(view) {
  const error = h("p", { class: "error", "data-field": "form", role: "alert" });
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("label", { for: "api-key" }, "API key"), input,
    h("p", { class: "hint" }, "Kept in this browser tab's session only."),
    h("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.key = input.value.trim();
    try {
      state.me = await api("GET", "/api/v1/whoami");
      location.hash = "#/services";
      render();
    } catch (err) {
      session.key = "";
      error.textContent = err.message;
    }
  });
  view.append(form);
  input.focus();
}

function chrome() {
  const signedIn = Boolean(state.me);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `${state.me.user} (${state.me.privileges.join(", ")})` : "";
  for (const link of document.querySelectorAll("#nav [data-needs]")) link.hidden = !can(link.dataset.needs);
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", location.hash.startsWith(link.getAttribute("href")));
  }
}

async function render() {
  state.page?.abort();
  state.page = new AbortController();
  const view = document.getElementById("view");
  view.replaceChildren();
  flash("");
  if (session.key && !state.me) {
    try { state.me = await api("GET", "/api/v1/whoami"); } catch { session.key = ""; }
  }
  chrome();
  if (!state.me) return signInPage(view);
  const [, page, name] = location.hash.split("/").map(decodeURIComponent);
  const signal = state.page.signal;
  if (page === "services" && name) return detailPage(view, name, signal);
  if (page === "deploy" && can("manage_deployments")) return deployPage(view, signal);
  if (page === "models") return modelsPage(view, signal);
  if (page === "nodes") return nodesPage(view, signal);
  return servicesPage(view, signal);
}

document.getElementById("signout").addEventListener("click", () => {
  session.key = "";
  state.me = null;
  location.hash = "";
  render();
});
window.addEventListener("hashchange", render);
render();
