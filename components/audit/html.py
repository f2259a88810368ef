"""reports/audit.html: one self-contained page (thumbnails embedded as small base64 JPEGs) where each suspect image
stands beside its nearest neighbours, with its given and likely label: people look at these rather than read paths."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAIL = 96  # pixels, the longer side

STYLE = """body{font-family:sans-serif;margin:1.5em}h2{margin-top:1.5em}table{border-collapse:collapse}
td{border-top:1px solid #ddd;padding:6px;vertical-align:top;font-size:12px}figure{display:inline-block;margin:0 6px;
text-align:center;width:120px;vertical-align:top}img{display:block;margin:auto;height:96px;object-fit:contain}
figcaption{margin-top:4px}.path{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.suspect{background:#fff4f0}"""


def thumbnail_uri(path: Path) -> str:
    """A data: URI of a small JPEG of the image ("" when it cannot be read)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(image: dict, root: Path, caption: str, suspect: bool = False) -> str:
    uri = thumbnail_uri(root / image["path"])
    picture = f'<img src="{uri}" alt="{html.escape(image["path"])}">' if uri else "(unreadable)"
    name = html.escape(image["path"])
    return (f'<figure class="{"suspect" if suspect else ""}">{picture}<figcaption>'
            f'<span class="path" title="{name}">{name}</span>'
            f'{html.escape(caption)}</figcaption></figure>')


def _neighbours(image: dict, root: Path) -> str:
    return "".join(_figure(n, root, f"{n['label']} · d {n['distance']:.3f}") for n in image["neighbours"])


def _row(image: dict, root: Path, caption: str) -> str:
    """A suspect image, then its nearest neighbours."""
    return f"<tr><td>{_figure(image, root, caption, True)}</td><td>{_neighbours(image, root)}</td></tr>"


def _pair(pair: dict, root: Path, caption) -> str:
    figures = "".join(_figure(pair[m], root, caption(pair[m]), True) for m in ("a", "b"))
    return f"<tr><td>{figures}</td><td>distance {pair['distance']:.4f}</td></tr>"


def _section(title: str, note: str, rows: list[str]) -> list[str]:
    body = "".join(rows) or "<tr><td>none found</td></tr>"
    return [f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p><table>{body}</table>"]


def write_audit_html(path: Path, lists: dict, root: Path) -> Path:
    """The report of `lists` (Audit.lists) whose image paths are relative to `root` (data.root)."""
    from components.files import write_text_atomic

    counts = lists["counts"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ffx audit</title>",
             f"<style>{STYLE}</style></head><body><h1>Data audit</h1>",
             "<p>" + ", ".join(f"{html.escape(k)}: <b>{v}</b>" for k, v in counts.items()) + "</p>",
             "<p>Nothing was moved or relabelled. <code>ffx audit --write-exclusions FILE</code> lists these images "
             "for <code>data.exclude</code>.</p>"]
    parts += _section("Label issues", "Given label vs the label a cross-validated model on the features expects "
                      "(cleanlab), with each one's out-of-fold probability; surest first (lowest probability of "
                      "the given label). Neighbours with their labels on the right.",
                      [_row(i, root, f"given {i['label']} (p {i['score']:.2f}) → likely {i['likely']} "
                                   f"(p {i['likely_probability']:.2f})")
                       for i in lists["label_issues"]])
    pair_rows = [_pair(p, root, lambda image: f"{image['split']} · {image['label']}") for p in lists["leaks"]]
    parts += _section("Leaks: near-duplicates across splits", "A test image with a near-copy in train or valid makes "
                      "the test score optimistic.", pair_rows)
    parts += _section("Near-duplicates within a split", "", [
        _pair(p, root, lambda image: image["label"]) for p in lists["near_duplicates"]])
    parts += _section("Outliers", "Images unlike the rest (cleanlab outlier score, low = odd), beside their nearest "
                      "neighbours.", [_row(i, root, f"{i['label']} · score {i['score']:.3f}")
                                      for i in lists["outliers"]])
    if drift := lists.get("drift"):
        parts += [f"<h2>Drift</h2><p>{html.escape(drift['source'])}: {drift['outside']} of {drift['images']} images "
                  f"({100 * drift['share']:.1f}%) outside the training distribution; about "
                  f"{100 * drift['expected_share']:.0f}% expected without drift. Method: {html.escape(drift['method'])}."
                  "</p>"]
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return path
