// Small DOM helpers: every value goes in as text (never as HTML).
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function short(enumName, prefix) {
  return (enumName || "").replace(prefix, "").replaceAll("_", " ");
}

export function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString() : "";
}

export function flash(message) {
  document.getElementById("flash").textContent = message;
}

// Show a server error beside the field it names (the first field name that occurs in the message).
export function showFieldError(form, message) {
  const slots = [...form.querySelectorAll("[data-field]")];
  const named = slots
    .map((slot) => ({ slot, at: message.search(new RegExp(`\\b${slot.dataset.field.replace(/[[\].]/g, "\\$&")}\\b`)) }))
    .filter((m) => m.at >= 0)
    .sort((a, b) => a.at - b.at || b.slot.dataset.field.length - a.slot.dataset.field.length);
  const slot = named.length ? named[0].slot : form.querySelector("[data-field='form']");
  slot.textContent = message;
  slot.closest("label, fieldset, form")?.querySelector("input, select")?.setAttribute("aria-invalid", "true");
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-field]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}
