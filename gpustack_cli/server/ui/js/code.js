// "View code": a request the page would send, as curl, Python (the openai package) and
// JavaScript. The key is never written out: the snippets read it from GPUSTACK_API_KEY.

const $ = (id) => document.getElementById(id);
let snippets = {};
let shown = "curl";

/** A JSON value as a Python literal (JSON's string escapes are Python's too). */
function py(value, indent = "    ") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value !== "object") return JSON.stringify(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) {
    return value.length ? `[\n${value.map((v) => inner + py(v, inner)).join(",\n")},\n${indent}]` : "[]";
  }
  const entries = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${py(v, inner)}`);
  return entries.length ? `{\n${entries.join(",\n")},\n${indent}}` : "{}";
}

function python(path, body) {
  const { stream, stream_options: _, ...rest } = body;
  const args = Object.entries(rest)
    .map(([k, v]) => `    ${k}=${py(v)},`)
    .join("\n");
  const method = path === "/v1/chat/completions" ? "chat.completions.create" : path.replace("/v1/", "").replaceAll("/", ".") + ".create";
  const lines = [
    "import os",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${location.origin}/v1", api_key=os.environ["GPUSTACK_API_KEY"])`,
  ];
  if (stream) {
    lines.push(`stream = client.${method}(`, args, "    stream=True,", ")", "for chunk in stream:", '    print(chunk.choices[0].delta.content or "", end="", flush=True)');
  } else {
    lines.push(`reply = client.${method}(`, args, ")", "print(reply)");
  }
  return lines.join("\n");
}

function javascript(path, body) {
  return [
    `const response = await fetch("${location.origin}${path}", {`,
    '  method: "POST",',
    '  headers: { "Content-Type": "application/json", Authorization: `Bearer ${process.env.GPUSTACK_API_KEY}` },',
    `  body: JSON.stringify(${JSON.stringify(body, null, 2).replaceAll("\n", "\n  ")}),`,
    "});",
    body.stream
      ? "for await (const chunk of response.body.pipeThrough(new TextDecoderStream())) process.stdout.write(chunk);"
      : "console.log(await response.json());",
  ].join("\n");
}

function curl(path, body) {
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  return [
    `curl ${body.stream ? "-N " : ""}${location.origin}${path} \\`,
    '  -H "Content-Type: application/json" \\',
    '  -H "Authorization: Bearer $GPUSTACK_API_KEY" \\',
    `  -d '${json}'`,
  ].join("\n");
}

function draw() {
  for (const button of $("code-tabs").children) button.setAttribute("aria-selected", String(button.dataset.kind === shown));
  $("code-body").textContent = snippets[shown];
}

export function showCode(path, body) {
  snippets = { curl: curl(path, body), Python: python(path, body), JavaScript: javascript(path, body) };
  $("code-tabs").replaceChildren(
    ...Object.keys(snippets).map((kind) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiet";
      button.setAttribute("role", "tab");
      button.dataset.kind = kind;
      button.textContent = kind;
      button.addEventListener("click", () => {
        shown = kind;
        draw();
      });
      return button;
    }),
  );
  draw();
  $("code-dialog").showModal();
}

$("code-close").addEventListener("click", () => $("code-dialog").close());
$("code-copy").addEventListener("click", () => navigator.clipboard?.writeText(snippets[shown]));
