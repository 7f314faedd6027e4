"""Table 1 of the paper as we measure it: markdown and JSON beside the paper's values."""

from __future__ import annotations

import json
from pathlib import Path

from ...io import jsonable, write_text
from .paper import PAPER_TABLE1

__all__ = ["QUANTITIES", "table1_markdown", "write_table1"]

#: The FIDs of one Table 1 entry, by key (see :func:`nifty_fishernet.sample_quality`).
QUANTITIES = {"rec": "test reconstructions", "sample": "N(0,1) samples",
              "mkde": "Matérn KDE samples", "gmm": "Gaussian-mixture samples",
              "flow": "normalizing-flow samples"}


def _cell(ours, paper):
    text = "–" if ours is None else f"{ours:.1f}"
    return text if paper is None else f"{text} ({paper})"


def table1_markdown(quality):
    """Table 1 as markdown: our FIDs with the paper's in parentheses.

    Parameters
    ----------
    quality : dict
        :func:`nifty_fishernet.sample_quality`'s result (or its JSON form, keys as strings).
    """
    dims = sorted({int(d) for by_dim in quality["results"].values() for d in by_dim})
    lines = [f"FID against {quality['n_images']} test images, {quality['features']} features "
             f"(paper's values in parentheses: Inception features, 10,000 images; comparable "
             f"only with features='inception'). Real-vs-real floor (train vs test): "
             f"{quality['floor']:.2f}.", ""] + _header("FID of", dims)
    lines += _fid_rows(quality["results"], dims, QUANTITIES)
    lines += _instance_lines(quality)
    heldout = _heldout_lines(quality["results"], dims)
    if heldout:
        lines += ["", "Held-out mean log-density of the test images' encoder means under each "
                  "latent density (nats; higher is better; the mixture's size in "
                  "parentheses, * where its search ended at the largest candidate):", ""]
        lines += _header("density", dims) + heldout
    inception = quality.get("inception")
    if inception:
        lines += ["", f"Inception features (pool3, 2048-d; torch bilinear resize to 299, "
                  f"pytorch-fid's convention), {inception['n_images']} images per set "
                  f"(the paper's values in parentheses: 10,000 images; an FID's small-sample "
                  f"bias falls roughly as 1/N). Real-vs-real floor at this size: "
                  f"{inception['floor']:.2f}.", ""] + _header("FID of", dims)
        lines += _fid_rows(inception["results"], dims, ("rec", "sample"))
        lines += _instance_lines(inception)
    return "\n".join(lines) + "\n"


def _fid_rows(results, dims, keys):
    """A row per model and FID of ``keys`` (ours, the paper's in parentheses), where either
    has a value."""
    lines = []
    for name, by_dim in results.items():
        by_dim = {int(d): entry for d, entry in by_dim.items()}
        paper = PAPER_TABLE1.get(name, {})
        for key in keys:
            values = [by_dim.get(d, {}).get(key) for d in dims]
            papers = [paper.get(key, {}).get(d) for d in dims]
            if all(v is None for v in values) and all(p is None for p in papers):
                continue
            cells = [_cell(v, p) for v, p in zip(values, papers)]
            lines.append(f"| {name} | {QUANTITIES[key]} | " + " | ".join(cells) + " |")
    return lines


def _instance_lines(quality):
    """Where the entries' FIDs come from more than one instance of the feature network (the
    FID classifier is trained per machine): which entries each instance scored. FIDs of
    different instances differ by up to ~20 % for the same images."""
    groups = {}
    for name, by_dim in quality["results"].items():
        for d, entry in sorted(by_dim.items(), key=lambda item: int(item[0])):
            groups.setdefault(entry.get("feature_weights"), []).append(f"{name} d={d}")
    if len(groups) < 2:
        return []
    floors = quality.get("floors", {})
    lines = ["", "Feature-network instances (hash of the weights; FIDs of different instances "
             "are comparable only to ~20 %, see benchmarks/fid_classifier_spread.py):", ""]
    for weights, cells in groups.items():
        label = "not recorded (entries measured before instances were recorded)" \
            if weights is None else f"`{weights}`" + (
                f" (floor {floors[weights]:.3f})" if weights in floors else "")
        lines.append(f"- {label}: {', '.join(cells)}")
    return lines


def _header(what, dims):
    return ["| model | " + what + " | " + " | ".join(f"d={d}" for d in dims) + " |",
            "|---|---|" + "---|" * len(dims)]


def _heldout_lines(results, dims):
    lines = []
    for name, by_dim in results.items():
        by_dim = {int(d): entry for d, entry in by_dim.items()}
        for key, label in (("mkde", "Matérn KDE"), ("gmm", "Gaussian mixture"),
                           ("flow", "normalizing flow")):
            values = [by_dim.get(d, {}).get(f"{key}_heldout_log_density") for d in dims]
            if all(v is None for v in values):
                continue
            cells = []
            for d, value in zip(dims, values):
                text = "–" if value is None else f"{value:.2f}"
                if key == "gmm" and value is not None:
                    entry = by_dim[d]
                    text += f" ({entry['gmm_components']}{'*' if entry['gmm_at_limit'] else ''})"
                cells.append(text)
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


def write_table1(quality, folder):
    """Write ``table1.json`` and ``table1.md`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "table1.json", folder / "table1.md"
    record = dict(quality, paper=PAPER_TABLE1)
    write_text(json_path, json.dumps(jsonable(record), indent=1))
    write_text(md_path, table1_markdown(quality))
    return json_path, md_path
