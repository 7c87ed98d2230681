// Model output as markdown, built as DOM nodes with text content only: nothing the model writes
// is ever parsed as HTML, so `<script>` in an answer is shown as the text it is. Covers what chat
// answers use: fenced code blocks, headings, lists, quotes, paragraphs, and inline code, bold,
// italics and links (http and https only). A small hand-written renderer because a library
// would need a sanitizer as well, and no download at run time is allowed.

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\n]+\*|_[^_\n]+_)|(\[[^\]\n]+\]\(https?:\/\/[^)\s]+\))/;

/** `text` with inline markup, appended to `parent` as nodes. */
function inline(parent, text) {
  let rest = text;
  while (rest) {
    const found = rest.match(INLINE);
    if (!found) {
      parent.append(rest);
      return;
    }
    parent.append(rest.slice(0, found.index));
    const token = found[0];
    if (found[1]) parent.append(el("code", token.slice(1, -1)));
    else if (found[2]) parent.append(el("strong", token.slice(2, -2)));
    else if (found[3]) parent.append(el("em", token.slice(1, -1)));
    else {
      const [, label, href] = token.match(/^\[([^\]]+)\]\((.+)\)$/);
      const link = el("a", label);
      link.href = href;
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
      parent.append(link);
    }
    rest = rest.slice(found.index + token.length);
  }
}

/** A container of the rendered `text`. */
export function render(text) {
  const root = el("div", undefined, "text");
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```(\S*)/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s*```/.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of an answer still streaming)
      const pre = el("pre");
      const code = el("code", body.join("\n"));
      if (fence[1]) code.dataset.lang = fence[1];
      pre.append(code);
      root.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const node = el(`h${Math.min(6, heading[1].length + 2)}`);
      inline(node, heading[2]);
      root.append(node);
      i += 1;
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+/;
    if (item.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && item.test(lines[i])) {
        const li = el("li");
        inline(li, lines[i].replace(item, ""));
        list.append(li);
        i += 1;
      }
      root.append(list);
      continue;
    }
    if (/^>\s?/.test(line)) {
      const quote = el("blockquote");
      const quoted = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quoted.push(lines[i++].replace(/^>\s?/, ""));
      inline(quote, quoted.join(" "));
      root.append(quote);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|#{1,6}\s|[-*+]\s|\d+[.)]\s|>)/.test(lines[i])) {
      paragraph.push(lines[i++]);
    }
    if (!paragraph.length) paragraph.push(lines[i++]);
    const p = el("p");
    paragraph.forEach((part, n) => {
      if (n) p.append(el("br"));
      inline(p, part);
    });
    root.append(p);
  }
  return root;
}
