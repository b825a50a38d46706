"""Markdown (figures as PNG files beside it) and a single self-contained HTML file (figures inline)."""

import base64
import html
import re

from sdmcunet.reporting.document import Block, BulletList, Figure, Report, Table

_CODE = re.compile(r"`([^`]+)`")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
.wide { overflow-x: auto; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; white-space: nowrap; }
th { background: #eee; }
td.published, th.published { background: #fff6dd; font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def figure_file_name(figure: Figure) -> str:
    return f"{figure.name}.png"


# --- Markdown -------------------------------------------------------------------------------
def _markdown_table(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([row(table.header), row(["---"] * len(table.header)), *map(row, table.rows)])


def _markdown_block(block: Block) -> str:
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, Figure):
        return f"![{block.name}]({figure_file_name(block)})\n\n*{block.caption}*"
    if isinstance(block, BulletList):
        return "\n".join(f"- {item}" for item in block.items)
    return block


def render_markdown(report: Report) -> str:
    parts = [f"# {report.title}"]
    for section in report.sections:
        parts.append(f"## {section.title}")
        parts.extend(_markdown_block(block) for block in section.blocks)
    return "\n\n".join(parts) + "\n"


# --- HTML -----------------------------------------------------------------------------------
def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
    def cell(text: str, column: int, tag: str) -> str:
        attribute = ' class="published"' if column in table.published_columns else ""
        return f"<{tag}{attribute}>{_inline(text)}</{tag}>"

    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(cell(text, column, tag) for column, text in enumerate(cells)) + "</tr>"

    body = "\n".join(row(cells, "td") for cells in table.rows)
    # Table 3 has 17 columns: it scrolls sideways instead of widening the page
    return f'<div class="wide"><table>\n<thead>{row(table.header, "th")}</thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        source = "data:image/png;base64," + base64.b64encode(block.png).decode("ascii")
        caption = _inline(block.caption)
        return f'<figure><img src="{source}" alt="{html.escape(block.name)}"><figcaption>{caption}</figcaption></figure>'
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>"
    return f"<p>{_inline(block)}</p>"


def render_html(report: Report) -> str:
    body = [f"<h1>{_inline(report.title)}</h1>"]
    for section in report.sections:
        body.append(f"<h2>{_inline(section.title)}</h2>")
        body.extend(_html_block(block) for block in section.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(report.title)}'
            f"</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
