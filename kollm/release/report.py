"""The release report: one self-contained HTML page (no external files, no network) per release.

It is rendered from the manifest alone, so it says exactly what the manifest says: every artifact with its
size, sha256 and checks, the gate table when the manifest has one, every PNG plot the release recorded
(embedded as base64), and the command that runs each artifact.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,'Noto Sans KR',sans-serif;margin:2rem;color:#1b1b1b;max-width:72rem}
table{border-collapse:collapse;margin:1rem 0;width:100%}th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}code{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}img{max-width:100%;border:1px solid #ddd}
"""


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def run_command(artifact: dict[str, Any]) -> str:
    """The shell command that serves one artifact (llama.cpp for GGUF, vLLM for safetensors)."""
    if artifact["kind"] == "gguf":
        return f"llama-server -m {artifact['path']} --port 8080"
    if artifact["kind"] in ("safetensors", "gptq", "bnb-4bit"):
        return f"vllm serve {artifact['path']} --api-key $KOLLM_API_KEY"
    return f"ls {artifact['path']}"


def _artifact_rows(manifest: dict[str, Any]) -> str:
    rows = []
    for artifact in manifest.get("artifacts", []):
        files = artifact["files"]
        size = sum(f["size"] for f in files)
        sums = "<br>".join(f"<code>{escape(f['path'])}</code>: <code>{f['sha256']}</code>" for f in files)
        verdict = artifact.get("details", {}).get("verdict") or ", ".join(f"{k}" for k in artifact.get("checks", {}))
        rows.append(
            f'<tr class="artifact" data-name="{escape(artifact["name"])}"><td>{escape(artifact["name"])}</td>'
            f'<td>{escape(artifact["kind"])}</td><td data-bytes="{size}">{_size(size)}</td><td>{sums}</td>'
            f"<td>{escape(str(verdict))}</td><td><code>{escape(run_command(artifact))}</code></td></tr>"
        )
    return "".join(rows)


def _gate_rows(manifest: dict[str, Any]) -> str:
    # Gates come from the eval step (when the release has one): name, threshold, actual, pass.
    rows = []
    for gate in manifest.get("gates") or []:
        ok = bool(gate.get("passed"))
        rows.append(
            f'<tr class="gate"><td>{escape(str(gate.get("name")))}</td><td>{gate.get("threshold")}</td>'
            f'<td>{gate.get("actual")}</td><td class="{"pass" if ok else "fail"}">{"pass" if ok else "FAIL"}</td></tr>'
        )
    return "".join(rows)


def _plots(manifest: dict[str, Any], out_dir: Path) -> str:
    figures = []
    for plot in manifest.get("plots") or []:
        path = out_dir / plot["path"]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        title = escape(plot.get("title", path.stem))
        figures.append(
            f'<figure><img alt="{title}" src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'
        )
    return "".join(figures)


def render(manifest: dict[str, Any], *, out_dir: Path) -> str:
    """Render the release report for a manifest.

    Args:
        manifest: the parsed kollm-manifest.json; optional keys ``gates`` (list of name, threshold, actual,
            passed) and ``plots`` (list of path relative to ``out_dir``, title) add a gate table and figures.
        out_dir: the release output directory (plots are read from it and embedded).

    Returns:
        The HTML page as a string.
    """
    name = escape(manifest["release"])
    base = manifest.get("base", {})
    adapters = "".join(
        f"<li><code>{escape(str(a.get('source')))}</code> sha256 <code>{a.get('sha256')}</code></li>"
        for a in manifest.get("adapters", [])
    )
    gates = _gate_rows(manifest)
    gate_table = (
        '<h2>Gates</h2><table id="gates"><tr><th>gate</th><th>threshold</th><th>score</th><th>result</th></tr>'
        f"{gates}</table>"
        if gates
        else ""
    )
    plots = _plots(manifest, out_dir)
    tools = ", ".join(f"{escape(k)} {escape(str(v))}" for k, v in sorted(manifest.get("tools", {}).items()))
    return (
        f'<!DOCTYPE html><html lang="ko"><head><meta charset="utf-8"><title>kollm release {name}</title>'
        f"<style>{_CSS}</style></head><body>"
        f'<h1 id="title">Release {name}</h1>'
        f"<p>Created {escape(str(manifest.get('created')))} from base <code>{escape(str(base.get('source')))}</code>"
        f' (revision {escape(str(base.get("revision")))}).</p><ul id="adapters">{adapters}</ul>'
        '<h2>Artifacts</h2><table id="artifacts"><tr><th>artifact</th><th>format</th><th>size</th><th>sha256</th>'
        f"<th>checks</th><th>run it</th></tr>{_artifact_rows(manifest)}</table>"
        f"{gate_table}"
        f"{'<h2>Plots</h2>' + plots if plots else ''}"
        f'<h2>Tools</h2><p id="tools">{tools}</p>'
        # Marks each figure with its decoded width once loaded, so a headless browser can prove plots render.
        "<script>addEventListener('load',()=>{for(const i of document.images)i.dataset.width=i.naturalWidth})"
        "</script></body></html>\n"
    )
