"""The pieces every report page shares: one self-contained document (no network, no CDN), data embedded
as JSON that scripts read with ``JSON.parse``, and atomic writing."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..io import atomic_open

# Shared look: system fonts only (nothing to fetch), readable in light and dark schemes.
BASE_CSS = """
:root { color-scheme: light dark; --fg: #1d2330; --muted: #5b6475; --bg: #f6f7f9; --card: #fff;
  --line: #d9dde4; --accent: #2f6fde; --bar: #7aa5f0; --bad: #c0392b; --good: #1e8449; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ef; --muted: #a3abba; --bg: #14171c; --card: #1e232b;
  --line: #353c47; --accent: #78a6ff; --bar: #3f6fc4; --bad: #ff7b6b; --good: #58d68d; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header, main, section, nav { padding: 0 20px; }
header h1 { font-size: 20px; margin: 16px 0 4px; }
.muted { color: var(--muted); }
h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; background: var(--card); }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \\2195"; color: var(--muted); }
.best { font-weight: 700; }
img.plot { max-width: 100%; background: #fff; border: 1px solid var(--line); }
code { font-size: 12px; }
"""


def json_for_script(data: Any) -> str:
    """JSON that can sit inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` are escaped
    so no value (a file named ``</script>.jpg``) can end the element; NaN and infinities become null,
    since ``JSON.parse`` rejects them."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def document(title: str, body: str, css: str = "", script: str = "", data: Any = None) -> str:
    """A complete HTML page. A strict Content-Security-Policy makes "self-contained" checkable: the
    browser refuses any request the page might make except the thumbnails in a folder beside it."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data: 'self' file:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="generator" content="absclip report">',
        f"<title>{esc(title)}</title>",
        f"<style>{BASE_CSS}{css}</style>",
        "</head>",
        "<body>",
        body,
    ]
    if data is not None:
        parts.append(f'<script type="application/json" id="absclip-data">{json_for_script(data)}</script>')
    if script:
        parts.append(f"<script>{script}</script>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_page(path: Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    # the temporary file behind atomic_open is private (0600); a report is meant to be opened, shared or
    # served like any file the user writes, so give it the permissions the umask allows
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def figure_png(fig: Any) -> str:
    """A matplotlib figure as a ``data:`` URI (PNG), closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (a report never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
