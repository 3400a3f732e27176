"""The report as one self-contained HTML page: inline CSS, no script, no external asset."""

from __future__ import annotations

from html import escape

from botvps.report.model import Report, Section, Table, when

ICON = {"pass": "✔", "warn": "!", "fail": "✘", "info": "i", "unknown": "?"}
WORD = {"pass": "pass", "warn": "warning", "fail": "fail", "info": "info", "unknown": "unknown"}

CSS = """
:root { --pass:#1a7f37; --warn:#9a6700; --fail:#cf222e; --info:#0969da; --unknown:#6e7781;
        --pass-bg:#dafbe1; --warn-bg:#fff8c5; --fail-bg:#ffebe9; --info-bg:#ddf4ff; --unknown-bg:#eaeef2; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:#1f2328;
       margin:0; background:#f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header.top { display:flex; align-items:center; gap:18px; flex-wrap:wrap; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0; }
h2 { font-size: 20px; margin: 34px 0 12px; border-bottom: 1px solid #d0d7de; padding-bottom: 6px; }
h3 { font-size: 17px; margin: 0; }
.badge { display:inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600; font-size: 13px;
         color:#fff; white-space: nowrap; }
.badge.pass { background: var(--pass); } .badge.warn { background: var(--warn); }
.badge.fail { background: var(--fail); }
.badge.info { background: var(--info); } .badge.unknown { background: var(--unknown); }
dl.facts { display:grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0 0; color:#59636e; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
a.card { display:block; text-decoration:none; color:inherit; background:#fff; border:1px solid #d0d7de;
         border-left: 6px solid var(--unknown); border-radius: 8px; padding: 10px 14px; }
a.card.pass { border-left-color: var(--pass); } a.card.warn { border-left-color: var(--warn); }
a.card.fail { border-left-color: var(--fail); } a.card.info { border-left-color: var(--info); }
a.card .title { font-size: 13px; color:#59636e; font-weight: 600; }
a.card .headline { font-size: 24px; font-weight: 700; margin: 2px 0; overflow-wrap:anywhere; }
a.card .state { font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }
a.card.pass .state { color: var(--pass); } a.card.warn .state { color: var(--warn); }
a.card.fail .state { color: var(--fail); } a.card.info .state { color: var(--info); }
a.card.unknown .state { color: var(--unknown); }
section.detail { background:#fff; border:1px solid #d0d7de; border-radius: 8px; padding: 14px 18px; margin: 14px 0; }
section.detail > header { display:flex; align-items:center; gap: 10px; flex-wrap: wrap; }
section.detail .headline { margin-left:auto; font-weight:700; font-size: 18px; }
p.summary { margin: 8px 0; }
p.note { margin: 6px 0; color:#59636e; font-size: 13px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 13.5px; }
caption { text-align:left; color:#59636e; font-size: 13px; padding: 2px 0 4px; }
th, td { text-align:left; padding: 5px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top;
         overflow-wrap:anywhere; }
th { background:#f6f8fa; font-weight:600; overflow-wrap: normal; }
table.pairs th { background: none; white-space: nowrap; width: 1%; padding-right: 24px; }
tr.pass > :first-child { box-shadow: inset 4px 0 var(--pass); }
tr.warn > :first-child { box-shadow: inset 4px 0 var(--warn); }
tr.fail > :first-child { box-shadow: inset 4px 0 var(--fail); }
tr.unknown > :first-child { box-shadow: inset 4px 0 var(--unknown); }
tr.warn { background: var(--warn-bg); } tr.fail { background: var(--fail-bg); }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.problems { background: var(--fail-bg); border:1px solid var(--fail); border-radius: 8px; padding: 10px 16px; }
footer { margin-top: 30px; color:#59636e; font-size: 13px; }
"""


def _cell(text: str) -> str:
    """Escaped text; `backticked` spans as code."""
    parts = escape(str(text)).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def _badge(status: str) -> str:
    return f'<span class="badge {status}">{ICON[status]} {WORD[status]}</span>'


def _table(table: Table) -> str:
    pairs = not any(table.columns)  # a key/value table: the first column names the row
    head = "" if pairs else "".join(f"<th>{_cell(c)}</th>" for c in table.columns)
    rows = []
    for i, row in enumerate(table.rows):
        status = table.statuses[i] if i < len(table.statuses) else ""
        cells = "".join(f'<th scope="row">{_cell(c)}</th>' if pairs and j == 0 else f"<td>{_cell(c)}</td>"
                        for j, c in enumerate(row))
        rows.append(f'<tr class="{status}">{cells}</tr>' if status else f"<tr>{cells}</tr>")
    caption = f"<caption>{_cell(table.caption)}</caption>" if table.caption else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    kind = ' class="pairs"' if pairs else ""
    return f"<table{kind}>{caption}{thead}<tbody>{''.join(rows)}</tbody></table>"


def _card(section: Section) -> str:
    return (f'<a class="card {section.status}" href="#{section.key}" data-key="{section.key}">'
            f'<div class="title">{_cell(section.title)}</div><div class="headline">{_cell(section.headline)}</div>'
            f'<div class="state">{WORD[section.status]}</div></a>')


def _section(section: Section) -> str:
    body = [f'<section class="detail {section.status}" id="{section.key}" data-status="{section.status}">',
            f"<header><h3>{_cell(section.title)}</h3>{_badge(section.status)}"
            f'<span class="headline">{_cell(section.headline)}</span></header>',
            f'<p class="summary">{_cell(section.summary)}</p>']
    body += [_table(t) for t in section.tables]
    body += [f'<p class="note">{_cell(n)}</p>' for n in section.notes]
    body.append("</section>")
    return "\n".join(body)


def render(report: Report) -> str:
    facts = "".join(f"<dt>{_cell(k)}</dt><dd>{_cell(v)}</dd>" for k, v in report.facts)
    problems = ""
    if report.problems:
        items = "".join(f"<li>{_cell(p)}</li>" for p in report.problems)
        problems = (f'<div class="problems" id="problems"><strong>Not everything could be read</strong>'
                    f"<ul>{items}</ul></div>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>botvps report: {escape(report.host)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header class="top"><h1>botvps report: {escape(report.host)}</h1>{_badge(report.status)}</header>
<dl class="facts">{facts}</dl>
{problems}
<h2 id="scorecard">Scorecard</h2>
<div class="cards">{''.join(_card(s) for s in report.scorecard)}</div>
{''.join(_section(s) for s in report.scorecard)}
<h2 id="review">Monthly log review: the last {report.days} days</h2>
<div class="cards">{''.join(_card(s) for s in report.review)}</div>
{''.join(_section(s) for s in report.review)}
<footer>Generated by <code>invoke report</code> on {escape(when(report.generated))} from one read-only look at the
host (and ssh-audit from the controller). No secret values: secrets files are never read, bot output is never
collected, and anything that looks like a secret in a command line is masked.</footer>
</main>
</body>
</html>
"""
