// The REST client of the console: the API key lives in sessionStorage only (this tab, this session).
const KEY = "modelfleet.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const out = { ...extra };
  if (session.key) out.Authorization = `Bearer ${session.key}`;
  return out;
}

export async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || `${response.status} ${response.statusText}`);
  return data;
}

// Server-sent events read with fetch (EventSource cannot send the Authorization header).
// Calls onMessage(json) per event; reconnects after a dropped stream until the signal aborts.
export function watch(path, onMessage, signal, onError = () => {}) {
  (async () => {
    while (!signal.aborted) {
      try {
        const response = await fetch(path, { headers: headers(), signal });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          onError(new ApiError(response.status, data.error || response.statusText));
          return;
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (data) onMessage(JSON.parse(data));
          }
        }
      } catch (err) {
        if (signal.aborted) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
}
