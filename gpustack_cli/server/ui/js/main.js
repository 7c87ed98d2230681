// The playground's frame: the key, the models this key may use, and one tab per kind of model
// the server has (chat, images, speech, embeddings and rerank), plus the models' state.

import { ApiError, getJSON, getKey, setKey } from "./api.js";
import * as chat from "./chat.js";
import * as images from "./images.js";
import * as models from "./models.js";
import * as rank from "./rank.js";
import * as speech from "./speech.js";

const TABS = [
  { id: "chat", label: "Chat", kinds: ["llm"], module: chat },
  { id: "images", label: "Images", kinds: ["image"], module: images },
  { id: "speech", label: "Speech", kinds: ["text_to_speech", "speech_to_text"], module: speech },
  { id: "rank", label: "Embeddings & rerank", kinds: ["embedding", "reranker"], module: rank },
  { id: "models", label: "Models", kinds: null, module: models },
];

const $ = (id) => document.getElementById(id);
const started = new Set();

export function notice(text, isError = false) {
  const node = $("notice");
  node.textContent = text;
  node.classList.toggle("error", isError);
  node.hidden = !text;
}

/** Fill a <select> with model names; keeps the current choice when it is still there. */
export function fillModels(select, list) {
  const current = select.value;
  select.replaceChildren(...list.map((m) => new Option(m.id, m.id)));
  if (list.some((m) => m.id === current)) select.value = current;
}

/** A form's models: those of one category in its <select>, the form hidden when there are none. */
export function offerModels(formId, selectId, list, category) {
  const chosen = list.filter((m) => m.categories.includes(category));
  fillModels($(selectId), chosen);
  $(formId).hidden = !chosen.length;
  return chosen;
}

function askForKey(message) {
  $("key-message").textContent = message;
  $("key-input").value = "";
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

function selectTab(id, focus = false) {
  for (const tab of TABS) {
    const button = $(`tab-${tab.id}`);
    if (!button) continue;
    const chosen = tab.id === id;
    button.setAttribute("aria-selected", String(chosen));
    button.tabIndex = chosen ? 0 : -1;
    $(`panel-${tab.id}`).hidden = !chosen;
    if (chosen) {
      if (focus) button.focus();
      tab.module.show?.();
    }
  }
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
}

function buildTabs(list) {
  const nav = $("tabs");
  const shown = TABS.filter((tab) => !tab.kinds || list.some((m) => m.categories.some((c) => tab.kinds.includes(c))));
  nav.replaceChildren(
    ...shown.map((tab) => {
      const button = document.createElement("button");
      button.type = "button";
      button.id = `tab-${tab.id}`;
      button.setAttribute("role", "tab");
      button.setAttribute("aria-controls", `panel-${tab.id}`);
      button.textContent = tab.label;
      button.addEventListener("click", () => selectTab(tab.id));
      return button;
    }),
  );
  // Arrow keys move between tabs, as in any tab list.
  nav.onkeydown = (event) => {
    const buttons = [...nav.querySelectorAll("[role=tab]")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) selectTab(buttons[(at + step + buttons.length) % buttons.length].id.slice(4), true);
  };
  for (const tab of shown) {
    if (!started.has(tab.id)) {
      tab.module.init({ notice, fillModels, offerModels });
      started.add(tab.id);
    }
    tab.module.setModels(list.filter((m) => !tab.kinds || m.categories.some((c) => tab.kinds.includes(c))));
  }
  const wanted = location.hash.slice(1);
  selectTab(shown.some((t) => t.id === wanted) ? wanted : shown[0].id);
}

async function load() {
  try {
    const { data } = await getJSON("/v1/models");
    notice(data.length ? "" : "This key may use no model.");
    $("key-button").textContent = getKey() ? "API key ✓" : "API key";
    buildTabs(data);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForKey(getKey() ? `That key was refused: ${error.message}` : "This server asks for an API key.");
      notice(getKey() ? "The API key was refused." : "An API key is needed.", true);
    } else {
      notice(`Could not reach the server: ${error.message}`, true);
    }
  }
}

$("key-form").addEventListener("submit", () => {
  setKey($("key-input").value.trim());
  load();
});
$("key-forget").addEventListener("click", () => {
  setKey("");
  $("key-dialog").close();
  load();
});
$("key-button").addEventListener("click", () => askForKey("Give the API key to use with this server."));
addEventListener("gpustack:unauthorized", (event) => {
  askForKey(`The server refused the key: ${event.detail}`);
});

load();
