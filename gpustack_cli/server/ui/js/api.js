// The server's public API, as the page calls it: the user's key from session storage (never in
// the page or a URL), errors in the API's own shape turned into one message, and server-sent
// events read from a streamed answer.

const KEY = "gpustack.key";

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message || body?.message || message;
  } catch {
    // not JSON: the status says it
  }
  return new ApiError(response.status, message);
}

/** A request to the API; the response when it succeeded, an ApiError otherwise. */
export async function call(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers = headers({ "Content-Type": "application/json" });
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

/** The events of a server-sent event stream: {event, data} with data parsed as JSON (or the raw text). */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      const text = data.join("\n");
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // "[DONE]" and other plain data
      }
      if (parsed && typeof parsed === "object" && parsed.error) {
        throw new ApiError(500, parsed.error.message || "The stream ended with an error.");
      }
      yield { event, data: parsed };
    }
  }
}
