// Chat: conversations kept in this browser, streamed answers rendered as safe markdown, the
// model's reasoning folded apart, token counts and speed from `usage`, a Stop button that
// aborts the request (the server frees the slot), edit-and-resend, and the request as code.
// A model that sees (`capabilities` holds "vision") takes images: attached or pasted, sent as
// data URLs before the message's text, and shown in the conversation.

import { call, events } from "./api.js";
import { render } from "./markdown.js";
import { showCode } from "./code.js";

const $ = (id) => document.getElementById(id);
const STORE = "gpustack.conversations";
let ui;
let conversations = [];
let current = null;
let running = null; // the AbortController of the answer being streamed
let models = []; // the chat models, with their capabilities
let attached = []; // data URLs of the images for the next message

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(conversations));
  } catch {
    // The browser's storage is full (images are large): the conversation lives on in this tab.
    ui.notice("This conversation is too large to keep in the browser's storage; it stays until the page closes.", true);
  }
}

function sees() {
  return models.find((m) => m.id === $("chat-model").value)?.capabilities?.includes("vision") || false;
}

function drawAttached() {
  $("chat-attach").hidden = !sees();
  $("chat-attached").replaceChildren(
    ...attached.map((url, index) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = url;
      img.alt = `Image ${index + 1} for the next message`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "quiet";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", `Remove image ${index + 1}`);
      remove.addEventListener("click", () => {
        attached.splice(index, 1);
        drawAttached();
      });
      figure.append(img, remove);
      return figure;
    }),
  );
}

function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      attached.push(reader.result);
      drawAttached();
    });
    reader.readAsDataURL(file);
  }
}

function newConversation() {
  // Not crypto.randomUUID: it exists only in secure contexts, and a LAN address over http is none.
  current = { id: `${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`, title: "New chat", messages: [] };
  conversations.unshift(current);
  save();
  drawList();
  drawLog();
  $("chat-input").focus();
}

function drawList() {
  $("chat-list").replaceChildren(
    ...conversations.map((c) => {
      const li = document.createElement("li");
      li.setAttribute("aria-current", String(c === current));
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = c.title;
      open.title = c.title;
      open.addEventListener("click", () => {
        current = c;
        drawList();
        drawLog();
      });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", `Delete conversation ${c.title}`);
      remove.addEventListener("click", () => {
        conversations = conversations.filter((x) => x !== c);
        if (current === c) current = conversations[0] || null;
        save();
        if (!current) newConversation();
        else {
          drawList();
          drawLog();
        }
      });
      li.append(open, remove);
      return li;
    }),
  );
}

function messageNode(message, index) {
  const node = document.createElement("article");
  node.className = `message ${message.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.append(message.role === "user" ? "You" : message.model || "Assistant");
  if (message.role === "user") {
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "quiet";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", "Edit this message and resend");
    edit.addEventListener("click", () => editMessage(node, index));
    who.append(edit);
  }
  node.append(who);
  if (message.images?.length) {
    const images = document.createElement("div");
    images.className = "images";
    images.append(
      ...message.images.map((url, index) => {
        const img = document.createElement("img");
        img.src = url;
        img.alt = `Image ${index + 1}`;
        return img;
      }),
    );
    node.append(images);
  }
  if (message.reasoning) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const body = document.createElement("div");
    body.className = "reasoning";
    body.textContent = message.reasoning;
    details.append(summary, body);
    node.append(details);
  }
  node.append(render(message.content || ""));
  if (message.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = message.error;
    node.append(error);
  }
  if (message.stats) {
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = message.stats;
    node.append(stats);
  }
  return node;
}

function drawLog() {
  $("chat-log").replaceChildren(...(current?.messages || []).map(messageNode));
  $("chat-log").lastElementChild?.scrollIntoView({ block: "end" });
}

function editMessage(node, index) {
  if (running) return;
  const area = document.createElement("textarea");
  area.value = current.messages[index].content;
  area.rows = 3;
  area.setAttribute("aria-label", "Edited message");
  const resend = document.createElement("button");
  resend.type = "button";
  resend.textContent = "Resend";
  resend.addEventListener("click", () => {
    const images = current.messages[index].images || [];
    current.messages = current.messages.slice(0, index);
    save();
    ask(area.value, images);
  });
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "quiet";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", drawLog);
  node.querySelector(".text").replaceWith(area);
  node.append(resend, cancel);
  area.focus();
}

/** The chat completions request the settings and the conversation make. */
function request() {
  const messages = [];
  const system = $("chat-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of current.messages) {
    if (!m.content && m.role !== "user") continue;
    // Images go before the text, as the official clients' examples put them.
    const content = m.images?.length
      ? [...m.images.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text: m.content }]
      : m.content;
    messages.push({ role: m.role, content });
  }
  const body = {
    model: $("chat-model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("chat-temperature").value),
    max_tokens: Number($("chat-max-tokens").value) || undefined,
  };
  const stop = $("chat-stop-words").value.split("\n").filter((s) => s);
  if (stop.length) body.stop = stop;
  if ($("chat-json").checked) {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse($("chat-schema").value) } };
  }
  return body;
}

function busy(on) {
  $("chat-send").disabled = on;
  $("chat-stop").disabled = !on;
}

async function ask(text, images = []) {
  if (!current) newConversation();
  current.messages.push(images.length ? { role: "user", content: text, images } : { role: "user", content: text });
  if (current.title === "New chat") current.title = text.slice(0, 40) || "New chat";
  let body;
  try {
    body = request();
  } catch (error) {
    ui.notice(`The JSON schema is not valid JSON: ${error.message}`, true);
    current.messages.pop();
    return;
  }
  const answer = { role: "assistant", content: "", reasoning: "", model: body.model };
  current.messages.push(answer);
  save();
  drawList();
  drawLog();
  let node = $("chat-log").lastElementChild;
  running = new AbortController();
  busy(true);
  const started = performance.now();
  let first = 0;
  let usage = null;
  let redraw = 0;
  try {
    const response = await call("/v1/chat/completions", { method: "POST", json: body, signal: running.signal });
    for await (const { data } of events(response)) {
      if (data === "[DONE]") break;
      if (data.usage) usage = data.usage;
      const delta = data.choices?.[0]?.delta;
      if (!delta) continue;
      if (delta.content || delta.reasoning_content) first ||= performance.now();
      answer.content += delta.content || "";
      answer.reasoning += delta.reasoning_content || "";
      // Re-render at most every animation frame: markdown of the whole answer so far.
      if (!redraw) {
        redraw = requestAnimationFrame(() => {
          redraw = 0;
          const fresh = messageNode(answer, current.messages.indexOf(answer));
          node.replaceWith(fresh);
          node = fresh;
          fresh.scrollIntoView({ block: "end" });
        });
      }
    }
    if (usage) {
      const seconds = (performance.now() - (first || started)) / 1000;
      const speed = usage.completion_tokens > 1 && seconds > 0 ? (usage.completion_tokens / seconds).toFixed(1) : "–";
      const wait = first ? ` · first token after ${((first - started) / 1000).toFixed(2)} s` : "";
      answer.stats = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens · ${speed} tokens/s${wait}`;
    }
  } catch (error) {
    if (error.name === "AbortError") answer.stats = "Stopped.";
    else {
      answer.error = error.message;
      if (error.status === 401) dispatchEvent(new CustomEvent("gpustack:unauthorized", { detail: error.message }));
    }
  } finally {
    cancelAnimationFrame(redraw);
    running = null;
    busy(false);
    save();
    drawLog();
  }
}

export function init(context) {
  ui = context;
  try {
    conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
  } catch {
    conversations = [];
  }
  current = conversations[0] || null;
  if (!current) newConversation();
  drawList();
  drawLog();
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value;
    if (!text.trim() || running) return;
    $("chat-input").value = "";
    const images = attached;
    attached = [];
    drawAttached();
    ask(text, images);
  });
  $("chat-image").addEventListener("change", () => {
    attach($("chat-image").files);
    $("chat-image").value = "";
  });
  $("chat-input").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length || !sees()) return;
    event.preventDefault();
    attach(files);
  });
  $("chat-model").addEventListener("change", drawAttached);
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => running?.abort());
  $("chat-new").addEventListener("click", newConversation);
  $("chat-temperature").addEventListener("input", () => {
    $("chat-temperature-value").textContent = $("chat-temperature").value;
  });
  $("chat-json").addEventListener("change", () => {
    $("chat-schema-label").hidden = !$("chat-json").checked;
  });
  $("chat-code").addEventListener("click", () => {
    const body = request();
    const pending = $("chat-input").value.trim();
    if (pending) body.messages.push({ role: "user", content: pending });
    showCode("/v1/chat/completions", body);
  });
}

export function setModels(list) {
  models = list;
  ui.fillModels($("chat-model"), list);
  drawAttached();
}
