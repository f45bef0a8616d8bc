import type { DataTable } from './types.js';

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Renders `code` spans written with backticks inside otherwise plain text. */
export function prose(text: string): string {
  return escapeHtml(text).replace(/`([^`]+)`/g, '<code>$1</code>');
}

/** A data table as HTML. */
export function tableHtml(t: DataTable): string {
  const head = t.head.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const rows = t.rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(String(c))}</td>`).join('')}</tr>`).join('\n');
  return `<table><caption>${escapeHtml(t.caption)}</caption><thead><tr>${head}</tr></thead><tbody>\n${rows}\n</tbody></table>`;
}

/** The style sheet shared by the report and the dashboard pages (inline: no external resources). */
export const PAGE_CSS = `
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #dadce0; --accent: #1a5fb4; --warn-bg: #fff8e1; --warn-line: #f0c36d; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #fafafa; }
header.page { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 32px; }
header.page h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header.page p { margin: 2px 0; color: var(--muted); }
nav.toc { padding: 8px 32px; background: #fff; border-bottom: 1px solid var(--line); font-size: 14px; }
nav.toc a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
nav.toc a.missing { color: var(--muted); }
main { padding: 8px 32px 48px; max-width: 1500px; }
section { margin-top: 28px; }
section h2 { font-size: 18px; font-weight: 600; margin: 0 0 4px; }
section > p.desc { margin: 0 0 12px; color: var(--muted); max-width: 920px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure.chart { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
.missing-box, .note { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 6px; padding: 8px 12px; margin: 8px 0; max-width: 980px; }
.note { background: #f1f3f4; border-color: var(--line); }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); }
table { border-collapse: collapse; margin: 8px 0 14px; background: #fff; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f1f3f4; font-weight: 600; }
pre, code { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
a { color: var(--accent); }
`;

/** Marks a page dynn wrote: a later report or comparison may replace such a file without --force. */
export const GENERATOR_META = '<meta name="generator" content="dynn">';

/** A complete HTML page around a body: inline style only, nothing fetched. */
export function pageHtml(title: string, body: string, extraHead = ''): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
${GENERATOR_META}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style>${PAGE_CSS}</style>
${extraHead}
</head>
<body>
${body}
</body>
</html>
`;
}
