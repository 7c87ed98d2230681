// Embeddings and rerank: documents ranked against a query (scores as bars), and the cosine
// similarity of several texts' embeddings as a matrix.

import { getJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
let ui;

function lines(id) {
  return $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
}

async function rerank(event) {
  event.preventDefault();
  const documents = lines("rerank-docs");
  $("rerank-go").disabled = true;
  const started = performance.now();
  try {
    const result = await getJSON("/v1/rerank", {
      method: "POST",
      json: { model: $("rerank-model").value, query: $("rerank-query").value, documents },
    });
    const scores = result.results.map((r) => r.relevance_score);
    const top = Math.max(...scores.map(Math.abs), 1e-9);
    $("rerank-results").replaceChildren(
      ...result.results.map((r) => {
        const item = document.createElement("li");
        const text = document.createElement("div");
        text.textContent = documents[r.index];
        const bar = document.createElement("div");
        bar.className = "bar";
        bar.style.width = `${Math.max(2, (100 * Math.abs(r.relevance_score)) / top)}%`;
        const score = document.createElement("div");
        score.className = "score";
        score.textContent = `score ${r.relevance_score.toFixed(4)} · document ${r.index + 1}`;
        item.append(text, bar, score);
        return item;
      }),
    );
    $("rerank-status").textContent = `${documents.length} documents in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (error) {
    ui.notice(`Rerank failed: ${error.message}`, true);
  } finally {
    $("rerank-go").disabled = false;
  }
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

async function embed(event) {
  event.preventDefault();
  const texts = lines("embed-texts");
  $("embed-go").disabled = true;
  try {
    const result = await getJSON("/v1/embeddings", {
      method: "POST",
      json: { model: $("embed-model").value, input: texts },
    });
    const vectors = result.data.map((d) => d.embedding);
    const head = document.createElement("tr");
    head.append(document.createElement("th"));
    texts.forEach((_, i) => {
      const th = document.createElement("th");
      th.textContent = String(i + 1);
      head.append(th);
    });
    const rows = vectors.map((a, i) => {
      const row = document.createElement("tr");
      const label = document.createElement("th");
      label.textContent = `${i + 1}. ${texts[i]}`;
      row.append(label);
      vectors.forEach((b) => {
        const similarity = cosine(a, b);
        const cell = document.createElement("td");
        cell.className = "cell";
        cell.textContent = similarity.toFixed(3);
        cell.style.background = `hsl(220 70% ${Math.round(75 - 45 * Math.max(0, similarity))}%)`;
        row.append(cell);
      });
      return row;
    });
    $("embed-matrix").replaceChildren(head, ...rows);
    $("embed-status").textContent = `${vectors.length} vectors of ${vectors[0]?.length || 0} dimensions`;
  } catch (error) {
    ui.notice(`Embeddings failed: ${error.message}`, true);
  } finally {
    $("embed-go").disabled = false;
  }
}

export function init(context) {
  ui = context;
  $("rerank-form").addEventListener("submit", rerank);
  $("embed-form").addEventListener("submit", embed);
}

export function setModels(list) {
  ui.offerModels("rerank-form", "rerank-model", list, "reranker");
  ui.offerModels("embed-form", "embed-model", list, "embedding");
}
