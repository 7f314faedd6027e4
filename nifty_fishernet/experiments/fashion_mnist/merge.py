"""Runs in parts: the record of a part merged into the output folder's ``results.json``.

A part is any subset of models x latent dimensions run with the same training setting. Its
training histories, Table 1 entries and calibration entries are added to those already in
the folder (a cell run again replaces its old entry), so separately run parts give the same
record as one run of them all; every part's command is kept under ``parts``.
"""

from __future__ import annotations

from .settings import CALIBRATION_VERSION, MODELS, TRAINING_KEYS
from ...errors import NiftyFishernetError
from ...io import jsonable

__all__ = ["RunMismatchError", "check_mergeable", "merge_records", "complete_cells",
           "cell_gaps", "paper_order"]

#: Must agree between parts: they determine the trained models.
RUN_KEYS = ("mode", "seed")
#: Must agree for Table 1 entries (and calibration entries) of two parts to stand side by side.
TABLE1_KEYS = ("features", "fid_images", "mkde", "inception_images", "estimators", "gmm",
               "flow")
CALIBRATION_KEYS = ("calibration", "calibration_nifty")


class RunMismatchError(NiftyFishernetError, ValueError):
    """The output folder holds a run with another training setting."""


def _differences(old, new, keys):
    return [f"{key} {old.get(key)!r} there, {new.get(key)!r} here"
            for key in keys if old.get(key) != new.get(key)]


def check_mergeable(old, mode, setting, seed, folder, cells=(), sample_quality=False,
                    calibration_models=()):
    """Raise :class:`RunMismatchError` naming every difference when the stored record ``old``
    was trained with another mode, seed or training setting than this part, or when this
    part's Table 1 (if ``sample_quality``) or calibration entries (for its ``cells`` of
    models in ``calibration_models``) would be measured with other settings than entries
    of ``old`` for other cells: those could not stand beside them and would be dropped
    (:func:`merge_records`)."""
    differences = _differences(old, dict(mode=mode, seed=seed), RUN_KEYS)
    differences += _differences(old["setting"], setting, TRAINING_KEYS)
    if differences:
        raise RunMismatchError(
            f"{folder} holds a run with other settings ({'; '.join(differences)}); its parts "
            f"cannot be merged with this one. Use another --out, or --force to replace it.")
    part = {(name, str(int(d))) for name, d in cells}
    setting = jsonable(setting)  # as stored: string keys, lists
    table1 = old.get("table1", {})
    stored = {"Table 1": (sample_quality, TABLE1_KEYS, "--no-sample-quality",
                          [table1.get("results", {}),
                           table1.get("inception", {}).get("results", {})]),
              "calibration": (any(name in calibration_models for name, _ in cells),
                              CALIBRATION_KEYS, "--no-calibration",
                              [old.get("calibration", {})])}
    for label, (measured, keys, skip, tables) in stored.items():
        differences = _differences(old["setting"], setting, keys)
        others = sorted({(name, d) for by_model in tables for name, by_dim in by_model.items()
                         for d in by_dim} - part)
        if measured and differences and others:
            listed = ", ".join(f"{name} d={d}" for name, d in others)
            raise RunMismatchError(
                f"The {label} in {folder} holds entries of {listed} measured with other settings "
                f"({'; '.join(differences)}); this part's would replace them. Use the same "
                f"settings, {skip}, another --out, or --force to replace the record.")


def _cells(by_model):
    """``{name: {str(d): value}}``, models in the experiment's order, d ascending."""
    order = {name: i for i, name in enumerate(MODELS)}
    return {name: {str(d): by_dim[d] for d in sorted(by_dim, key=int)}
            for name, by_dim in sorted(by_model.items(),
                                       key=lambda item: (order.get(item[0], len(order)),
                                                         item[0]))}


def _merge_cells(old, new):
    merged = {name: dict(by_dim) for name, by_dim in (old or {}).items()}
    for name, by_dim in (new or {}).items():
        merged.setdefault(name, {}).update({str(d): value for d, value in by_dim.items()})
    return _cells(merged)


def _same(old_setting, new_setting, keys):
    return all(old_setting.get(key) == new_setting.get(key) for key in keys)


def merge_records(old, new):
    """The record of ``old`` (a stored ``results.json``, or None) and the part ``new``.

    Both are JSON-form records (``jsonable``: string keys). Training cells of ``new`` replace
    those of ``old``; Table 1 and calibration entries merge where both parts measured them with
    the same settings, else the newer replace the older. ``setting["dims"]`` becomes every d
    with a cell; ``parts`` lists the parts in the order they ran.
    """
    part = new.pop("part")
    merged = dict(new)
    merged["results"] = _merge_cells(old and old["results"], new["results"])
    dims = sorted({int(d) for by_dim in merged["results"].values() for d in by_dim})
    merged["setting"] = dict(new["setting"], dims=dims)
    merged["parts"] = list(old.get("parts", [])) if old else []
    merged["parts"].append(part)
    if old is None:
        return merged
    if "table1" in old and "table1" not in new:
        merged["table1"] = old["table1"]
        _copy_keys(old["setting"], merged["setting"], TABLE1_KEYS)
    elif "table1" in old and _same(old["setting"], new["setting"], TABLE1_KEYS):
        merged["table1"] = _merge_table1(old["table1"], new["table1"])
    if "calibration" in old and "calibration" not in new:
        merged["calibration"] = old["calibration"]
        _copy_keys(old["setting"], merged["setting"], CALIBRATION_KEYS)
    elif "calibration" in old and _same(old["setting"], new["setting"], CALIBRATION_KEYS):
        merged["calibration"] = _merge_cells(old["calibration"], new["calibration"])
    merged["figures"] = sorted(set(old.get("figures", [])) | set(new.get("figures", [])),
                               key=paper_order)
    return merged


def _copy_keys(source, target, keys):
    """The settings an entry kept from an older part was measured with."""
    for key in keys:
        if key in source:
            target[key] = source[key]
        else:
            target.pop(key, None)


def _merge_table1(old, new):
    """Table 1 records (and their nested Inception tables) with the cells of both."""
    merged = dict(new, results=_merge_cells(old["results"], new["results"]))
    floors = {**old.get("floors", {}), **new.get("floors", {})}
    if floors:  # the feature networks' instances of every part, each with its floor
        merged["floors"] = floors
    if "inception" in old and "inception" in new:
        merged["inception"] = _merge_table1(old["inception"], new["inception"])
    elif "inception" in old:
        merged["inception"] = old["inception"]
    return merged


def cell_gaps(record, name, d, sample_quality, calibration_models):
    """What cell ``(name, d)`` of ``record`` still lacks, in the order a part fills it: some
    of ``"training"`` (fewer than the setting's epochs recorded), ``"Table 1"`` (if
    ``sample_quality``; with its Inception FIDs where the setting has them) and
    ``"calibration"`` (for models in ``calibration_models``; ``"calibration (outdated)"``
    where the stored entry is of an older :data:`~.settings.CALIBRATION_VERSION`). Empty:
    the cell is complete."""
    if record is None:
        return ["training", *(["Table 1"] if sample_quality else []),
                *(["calibration"] if name in calibration_models else [])]
    d = str(int(d))
    gaps = []
    cell = record["results"].get(name, {}).get(d)
    if cell is None or len(cell["history"]["epoch"]) != record["setting"]["epochs"]:
        gaps.append("training")
    table1 = record.get("table1", {})
    tables = [table1] + ([table1.get("inception", {})]
                         if record["setting"].get("inception_images") else [])
    if sample_quality and any(d not in table.get("results", {}).get(name, {})
                              for table in tables):
        gaps.append("Table 1")
    if name in calibration_models:
        entry = record.get("calibration", {}).get(name, {}).get(d)
        if entry is None:
            gaps.append("calibration")
        elif entry.get("version", 0) < CALIBRATION_VERSION:
            # measured by an older harness (e.g. version 3: exact references centred on the
            # encoder's mode alone): kept in the record until a part measures it again
            gaps.append("calibration (outdated)")
    return gaps


def complete_cells(record, sample_quality, calibration_models):
    """Cells ``(name, d)`` of ``record`` that need nothing more (:func:`cell_gaps`): every
    epoch trained, and their Table 1 entry (if ``sample_quality``) and calibration entry (for
    models in ``calibration_models``) stored. A later part need not retrain them even
    without their weights."""
    if record is None:
        return set()
    return {(name, int(d)) for name, by_dim in record["results"].items() for d in by_dim
            if not cell_gaps(record, name, d, sample_quality, calibration_models)}


def paper_order(name):
    """Sort key: the figures in the paper's order (Fig. 3 = ``mse_per_epoch``, Fig. 9 =
    ``latent_density``), the reconstructions first and the calibration last."""
    number = {"reconstructions.png": 0, "mse_per_epoch.png": 3, "latent_density.png": 9,
              "calibration.png": 11}.get(name)
    return (number if number is not None else int(name[3:].split("_")[0]), name)
