"""The markdown summary of a Fashion-MNIST run: our measurements beside the paper's values.

The last step of the flow data -> models -> training -> evaluation -> report: it reads the
run's record (``results.json``, all parts merged) and writes ``summary.md``.
"""

from __future__ import annotations

from pathlib import Path

from ...calibration import NIFTY_METHODS, calibration_stages
from ...io import write_text
from .paper import PAPER_VAE_MSE_EXCESS, PAPER_VAE_MSE_PLATEAU
from .table1 import table1_markdown

__all__ = ["summary_markdown", "write_summary", "calibration_markdown",
           "status_markdown"]


def _table(rows, dims, header, fmt):
    lines = [f"| {header} | " + " | ".join(f"d={d}" for d in dims) + " |",
             "|---|" + "---|" * len(dims)]
    for name, values in rows.items():
        cells = ["–" if values.get(d) is None else fmt(values[d]) for d in dims]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _machine(part):
    # parts recorded before the CPU's kernel set was kept name the architecture alone
    return part["machine"] + (f" ({part['cpu']})" if part.get("cpu") else "")


def summary_markdown(report):
    """The summary of one run as markdown.

    Parameters
    ----------
    report : dict
        The run's record: ``mode``, ``command``, ``setting`` (``dims``, ``epochs``,
        ``n_train``, ``lr``, ``noise_lr``, ``batch_size``), ``seed``, ``device``, ``torch``,
        ``threads``, ``machine``, ``wall_seconds``, ``results`` (``{model: {str(d):
        {"test_mse", "seconds_per_epoch", "noise_std", "active_units"}}}``) and optionally
        ``table1`` (from :func:`~nifty_fishernet.evaluation.sample_quality`),
        ``calibration``, ``figures`` (file names) and ``parts`` (one record per separately
        run part: ``command``, ``cells``, ``device``, ``threads``, ``wall_seconds``).
    """
    setting, results = report["setting"], report["results"]
    dims = list(setting["dims"])

    def per_model(key):
        return {name: {d: runs.get(str(d), {}).get(key) for d in dims}
                for name, runs in results.items()}

    lines = [f"# FisherNet on Fashion-MNIST: {report['mode']} run", ""]
    parts = report.get("parts", [])
    if len(parts) > 1:
        lines += [f"Run in {len(parts)} parts, merged (each part's command below).", ""]
    else:
        lines += [f"Command: `{report.get('command', 'python demos/fashion_mnist.py')}`", ""]
    wall = (f"wall time {sum(p['wall_seconds'] for p in parts) / 60:.1f} min over all parts "
            f"(device and threads: the last part's; each part's in the table; "
            if len(parts) > 1 else f"wall time {report['wall_seconds'] / 60:.1f} min (")
    lines += [f"- {setting['epochs']} epochs on {setting['n_train']:,} training images, batch "
              f"{setting['batch_size']}, Adam lr {setting['lr']:g} (noise level: "
              f"{setting['lr'] if setting['noise_lr'] is None else setting['noise_lr']:g}), "
              f"seed {report['seed']}",
              f"- device {report['device']}, torch {report['torch']} ({report['threads']} "
              f"thread{'' if report['threads'] == 1 else 's'}), {_machine(report)}; {wall}"
              f"work found finished in the output folder is not redone and not counted)", ""]
    if len(parts) > 1:
        lines += ["| part | command | models × d | device, threads, CPU | wall time |",
                  "|---|---|---|---|---|"]
        for number, part in enumerate(parts, 1):
            cells = ", ".join(f"{name} d={d}" for name, d in part["cells"])
            lines.append(f"| {number} | `{part['command']}` | {cells or '–'} | "
                         f"{part['device']}, {part['threads']}, {_machine(part)} | "
                         f"{part['wall_seconds'] / 60:.1f} min |")
        lines.append("")
    lines += [f"## Test MSE (Eq. 32-33) after {setting['epochs']} epochs", ""]
    lines += _table(per_model("test_mse"), dims, "model", lambda v: f"{v:.5f}")
    both = [d for d in dims if str(d) in results.get("FisherNet", {})
            and str(d) in results.get("VAE", {})]
    if both:
        excess = {d: results["VAE"][str(d)]["test_mse"] - results["FisherNet"][str(d)]["test_mse"]
                  for d in both}
        cells = {d: f"{excess[d]:+.2e}" + (f" ({PAPER_VAE_MSE_EXCESS[d]:+.1e})"
                                           if d in PAPER_VAE_MSE_EXCESS else "") for d in both}
        lines += ["", "VAE minus FisherNet, ours (paper's in parentheses, Sect. 3.1.2, 50 epochs):",
                  ""]
        lines += _table({"test MSE of the VAE minus the FisherNet's": cells}, both, "", str)
        lines += ["", f"The paper's VAE plateaus near MSE {PAPER_VAE_MSE_PLATEAU} for larger d."]
    lines += ["", "## Seconds per training epoch", ""]
    lines += _table(per_model("seconds_per_epoch"), dims, "model", lambda v: f"{v:.1f}")
    lines += ["", "## Learned noise level sigma_N after training", ""]
    lines += _table(per_model("noise_std"), dims, "model", lambda v: f"{v:.4f}")
    usage = per_model("active_units")
    thresholds = {v["threshold"] for by_dim in usage.values() for v in by_dim.values() if v}
    if thresholds:
        lines += ["", f"## Active latent dimensions (Var_x E[z|x] > "
                      f"{' or '.join(f'{t:g}' for t in sorted(thresholds))} on the test images)",
                  ""]
        lines += _table(usage, dims, "model", lambda v: f"{v['active']} of {len(v['variance'])}")
    if report.get("table1"):
        quality = report["table1"]
        lines += ["", "## Table 1: FIDs", "", table1_markdown(quality).rstrip()]
        if quality.get("cached"):
            lines += ["", f"{len(quality['cached'])} of the entries were read from the cache "
                          f"(computed by an earlier run with the same models and settings)."]
    if report.get("calibration"):
        lines += ["", "## Calibration of the latent posteriors", "",
                  calibration_markdown(report["calibration"]).rstrip()]
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in report["figures"]]
    return "\n".join(lines) + "\n"


def calibration_markdown(results):
    """A table of coverage (simulated) and exact mass (real images) per model, method, d.

    Parameters
    ----------
    results : dict
        ``{model: {d: calibrate(...) result}}``.
    """
    lines = ["Coverage of the true latent by the 68 % / 95 % credible regions on data "
             "simulated from each model itself, and the exact posterior's mass inside them "
             "on real test images (ideal: 0.68 / 0.95); the mean error in exact posterior "
             "sigma (median over images); for importance-sampled refinements the effective "
             "sample size of their draws on the simulated data, median (10 % quantile): a "
             "low one warns of a posterior too hard for the draws. Rows ending in "
             "'HPD regions' judge the same draws by the posterior's own highest-density "
             "regions (level sets of the model's energy) instead of the Gaussian of their "
             "moments.", "",
             "| model | d | method | coverage 68 / 95 (simulated) | exact mass 68 / 95 (real) "
             "| mean error [sigma] | ESS | s / datum |", "|---|---|---|---|---|---|---|---|"]
    for name, by_dim in results.items():
        for d, entry in sorted(by_dim.items(), key=lambda item: int(item[0])):
            for method, sim in entry["simulated"].items():
                real = entry["real"].get(method)
                mass = ("–" if real is None else
                        f"{real['mass_68']['mean']:.2f} / {real['mass_95']['mean']:.2f}")
                error = ("–" if real is None or "mean_error_sigma" not in real else
                         f"{real['mean_error_sigma']['median']:.2f}")
                seconds = sim.get("seconds_per_datum")
                ess = ("–" if "ess" not in sim else
                       f"{sim['ess']['median']:.0f} ({sim['ess']['q10']:.0f})")
                lines.append(f"| {name} | {d} | {method} | {sim['coverage']['68']:.2f} / "
                             f"{sim['coverage']['95']:.2f} | {mass} | {error} | {ess} | "
                             + ("–" if seconds is None else f"{seconds:.1e}") + " |")
    return "\n".join(lines) + "\n"


def write_summary(report, folder):
    """Write :func:`summary_markdown` to ``folder/summary.md``; returns the path."""
    path = Path(folder) / "summary.md"
    write_text(path, summary_markdown(report))
    return path


def status_markdown(rows, out, mode, epochs):
    """The grid's state (rows of :func:`~.run.grid_status`) as markdown: a table of what each
    cell lacks, then the commands of the parts still to run, one cell each."""
    dims = sorted({row["d"] for row in rows})
    by_model = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["d"]] = row
    short = {"Table 1": "T1", "calibration": "cal", "calibration (outdated)": "cal (outdated)"}

    def cell(row):
        if not row["gaps"]:
            return "done"
        needs = [short[gap] for gap in row["gaps"] if gap != "training"]
        notes = []
        if row.get("stages"):
            notes.append("kept: " + ", ".join(row["stages"]))
        if row.get("progress"):
            notes.append("under way: " + ", ".join(
                f"{stage} after {done} KL iteration{'s' if done != 1 else ''}"
                for stage, done in row["progress"].items()))
        if notes:
            needs = [f"{need} ({'; '.join(notes)})" if need.startswith("cal") else need
                     for need in needs]
        prefix = ""
        weights = row.get("weights")
        if "training" in row["gaps"]:
            if row["epochs"] == epochs:
                prefix = "trained; "  # finished weights, not yet in the record
            else:
                needs.insert(0, "train")
                prefix = f"{row['epochs']}/{epochs} ep; " if row["epochs"] else ""
        elif needs and weights != epochs:
            # recorded, but Table 1 or the calibration needs weights that are not all here
            prefix = (f"weights {weights}/{epochs} ep; " if weights
                      else "no weights (trains anew); ")
        return prefix + "needs " + ", ".join(needs) if needs else prefix.rstrip("; ")

    lines = [f"{out}, {mode} setting (ep: epochs trained so far; T1: Table 1; cal: "
             f"calibration; outdated: measured by an older harness):", "",
             "| model | " + " | ".join(f"d={d}" for d in dims) + " |",
             "|---|" + "---|" * len(dims)]
    for name, by_dim in by_model.items():
        lines.append(f"| {name} | " + " | ".join(
            cell(by_dim[d]) if d in by_dim else "–" for d in dims) + " |")
    todo = [row for row in rows if row["gaps"]]
    lines += ["", f"{len(rows) - len(todo)} of {len(rows)} cells complete."]
    if todo:
        lines += ["Parts still to run (one per core; an interrupted part resumes):", ""]
        lines += [f"    {row['command']}" for row in todo]
        if any(gap.startswith("calibration") for row in todo for gap in row["gaps"]):
            stages = ", ".join(f"'{name}'" for name in calibration_stages(NIFTY_METHODS))
            lines += ["", "A cell's calibration stages can also run apart, one process per "
                      "core: add `--calibration-stages STAGE ...` to its command (stages: "
                      f"{stages}); the part without it then records the cell."]
    return "\n".join(lines)
