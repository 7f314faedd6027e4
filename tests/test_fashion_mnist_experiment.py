"""The Fashion-MNIST experiment (the main job) end to end on tiny settings: its files, reruns
that redo nothing, interrupted runs that resume, and parts that merge into one record."""

import json
import math
import platform

import pytest
import torch

import nifty_fishernet as nf
from nifty_fishernet.calibration import HPD_SUFFIX
from nifty_fishernet.experiments import fashion_mnist as fm
from nifty_fishernet.experiments.fashion_mnist import run as fm_run
from nifty_fishernet.nifty import ift
from nifty_fishernet.nifty.compat import random_state
from nifty_fishernet.nifty.kl_state import KLState, save_kl_state

TINY = ["--dims", "2", "--epochs", "1", "--n-train", "256", "--fid-images", "200",
        "--mkde-iterations", "1", "--mkde-samples", "1"]


def test_main_job_smoke(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["--out", str(out)] + TINY + [
        "--calibration-sims", "20", "--calibration-images", "3", "--calibration-models",
        "FisherNet", "VAE", "CalibratedVAE", "ConvVAE"]
    fm.main(args)
    for name in ("results.json", "summary.md", "mse_per_epoch.png", "reconstructions.png",
                 "table1.json", "table1.md", "latent_density.png", "fig1_fishernet_loss.png",
                 "fig2_mse_vs_d.png", "fig4_latent_means_d2.png", "fig5_ellipses_one_image.png",
                 "fig5_reconstructions_along_axes.png", "fig6_shoe_ellipses.png",
                 "fig7_normal_samples_d2.png", "fig8_normal_samples_d2.png",
                 "fig10_fishernet_samples_d2.png", "calibration.png", "calibration.json"):
        assert (out / name).stat().st_size > 500, name
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    for runs in report["results"].values():
        assert math.isfinite(runs["2"]["test_mse"]) and 0 < runs["2"]["test_mse"] < 0.3
        assert runs["2"]["seconds_per_epoch"] > 0
        usage = runs["2"]["active_units"]
        assert len(usage["variance"]) == 2 and usage["active"] == sum(
            v > usage["threshold"] for v in usage["variance"])
    for entry in report["table1"]["results"].values():
        assert all(math.isfinite(entry["2"][key]) for key in ("rec", "sample", "mkde", "gmm"))
    summary = (out / "summary.md").read_text()
    assert report["command"].endswith("ConvVAE") and report["command"] in summary
    assert [part["command"] for part in report["parts"]] == [report["command"]]
    assert set(report["calibration"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    assert "## Calibration of the latent posteriors" in summary
    assert "![calibration.png](calibration.png)" in summary
    for name, entry in report["calibration"].items():
        methods = entry["2"]["simulated"]
        nifty = {"mgvi", "geovi"} if name == "FisherNet" else set()  # quick: FisherNet only
        hpd = "refined (importance)" + HPD_SUFFIX
        assert set(methods) == {"amortized", "refined (Laplace)", "refined (importance)",
                                hpd} | nifty
        assert nifty | {hpd} <= set(entry["2"]["real"])
        assert f"| {name} | 2 | {hpd} |" in summary
        for method in methods.values():
            assert all(0 <= value <= 1 for value in method["coverage"].values())
        assert entry["2"]["real"]["exact"]["method"] == "grid"
        ess = methods["refined (importance)"]["ess"]
        assert (f"| {name} | 2 | refined (importance) |" in summary
                and f"| {ess['median']:.0f} ({ess['q10']:.0f}) |" in summary)
    fisher_mse = report["results"]["FisherNet"]["2"]["test_mse"]
    assert f"| FisherNet | {fisher_mse:.5f} |" in summary
    assert "## Active latent dimensions" in summary and (
        f"| FisherNet | {report['results']['FisherNet']['2']['active_units']['active']} of 2 |"
        in summary)
    assert "(+2.0e-04)" in summary and "## Table 1: FIDs" in summary
    assert "![fig6_shoe_ellipses.png](fig6_shoe_ellipses.png)" in summary

    # a rerun finds the checkpoints complete and every Table 1 entry stored: it trains nothing,
    # fits no density and computes no features, and reports the same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    monkeypatch.setattr(nf.evaluation, "feature_statistics", _forbidden)
    monkeypatch.setattr(nf.MaternKDE, "fit", _forbidden)
    monkeypatch.setattr(nf.GaussianMixtureDensity, "fit", _forbidden)
    monkeypatch.setattr(fm_run, "calibrate", _forbidden)
    again = fm.main(args)
    assert again["calibration"] == report["calibration"]
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes
    assert len(again["table1"]["cached"]) == 4
    assert again["table1"]["results"] == report["table1"]["results"]
    assert (out / "latent_density.png").stat().st_size > 500  # Fig. 9 from the stored density
    monkeypatch.undo()

    # --force retrains (new checkpoint files) and recomputes; a part without Table 1 has no
    # latent densities and leaves Fig. 10 (N(0,1) against the densities) as it was
    fig10 = (out / "fig10_fishernet_samples_d2.png").read_bytes()
    forced = fm.main(args[:8] + ["--models", "FisherNet", "--no-sample-quality",
                                 "--no-calibration", "--force"])
    assert (out / "fig10_fishernet_samples_d2.png").read_bytes() == fig10
    assert "fig10_fishernet_samples_d2.png" in forced["figures"]
    fisher = [p for p in mtimes if p.name.startswith("FisherNet")]
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in fisher)
    assert forced["results"]["FisherNet"]["2"]["test_mse"] == fisher_mse  # same seed


def _forbidden(*args, **kwargs):
    raise AssertionError("a cached result was computed again")


def _without_timings(value):
    """A record without what differs between runs of the same computation: wall times, the
    commands, which entries came from the cache."""
    timing = ("seconds", "seconds_per_epoch", "train_seconds", "wall_seconds", "command",
              "parts", "cached", "mkde_fit_seconds", "gmm_fit_seconds", "seconds_per_datum")
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in timing}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_parts_merge_into_the_record_of_one_run(tmp_path, monkeypatch):
    """FisherNet and VAE run as two parts, the first part's weights and cache deleted before
    the second (a fresh machine with the committed results): results.json, table1.json and
    calibration.json equal those of one run of both. A third run of both finds both complete
    in the record and trains nothing. After a harness change of the Gaussian rows alone, a
    part brings the stored calibration entries up to date from the cache."""
    common = TINY + ["--fid-images", "100", "--calibration-sims", "10",
                     "--calibration-images", "2", "--no-calibration-nifty"]
    one = fm.main(["--out", str(tmp_path / "one"), "--models", "FisherNet", "VAE"] + common)
    parts = tmp_path / "parts"
    fm.main(["--out", str(parts), "--models", "FisherNet"] + common)
    for folder in ("models", "cache"):
        for path in (parts / folder).iterdir():
            path.unlink()
    drawn = {name: (parts / name).read_bytes() for name in (
        "reconstructions.png", "fig5_ellipses_one_image.png", "fig7_normal_samples_d2.png")}
    merged = fm.main(["--out", str(parts), "--models", "VAE"] + common)
    # the VAE part has no FisherNet weights: the figures of both models are kept as the
    # first part drew them, not replaced by figures of the VAE alone
    assert {name: (parts / name).read_bytes() for name in drawn} == drawn
    assert [part["cells"] for part in merged["parts"]] == [[["FisherNet", 2]], [["VAE", 2]]]
    assert _without_timings(merged) == _without_timings(one)
    for name in ("table1.json", "calibration.json"):
        assert (_without_timings(json.loads((parts / name).read_text()))
                == _without_timings(json.loads((tmp_path / "one" / name).read_text()))), name
    assert "Run in 2 parts" in (parts / "summary.md").read_text()
    # each part names the CPU kernels it ran on: retraining on another set differs
    capability = torch.backends.cpu.get_cpu_capability()
    assert [part["cpu"] for part in merged["parts"]] == [capability, capability]
    assert f"{platform.machine()} ({capability})" in (parts / "summary.md").read_text()
    (parts / "summary.md").unlink()  # --report-only rewrites it from the record alone
    assert fm.main(["--out", str(parts), "--report-only"]) == json.loads(
        (parts / "results.json").read_text())
    assert "Run in 2 parts" in (parts / "summary.md").read_text()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        fm.main(["--out", str(tmp_path / "empty"), "--report-only"])

    for path in (parts / "models").iterdir():
        path.unlink()
    again = fm.main(["--out", str(parts), "--models", "FisherNet", "VAE"] + common)
    assert not any((parts / "models").iterdir())  # nothing trained
    assert _without_timings(again) == _without_timings(one)
    assert len(again["parts"]) == 3

    # another training setting in the same folder is refused, naming the difference
    with pytest.raises(fm.RunMismatchError, match=r"epochs 1 there, 2 here"):
        fm.main(["--out", str(parts), "--models", "VAE", "--epochs", "2"] + common[:2]
                + common[4:])
    # a part whose Table 1 or calibration would be measured otherwise than the stored
    # entries of other cells is refused before it trains, naming them: merged, it would
    # drop them
    others = common[:common.index("--fid-images")]
    with pytest.raises(fm.RunMismatchError, match=r"Table 1 in .* holds entries of FisherNet d=2, "
                                                  r"VAE d=2 .*fid_images 100 there, 50 here"):
        fm.main(["--out", str(parts), "--models", "CalibratedVAE", "--fid-images", "50"]
                + common[common.index("--calibration-sims"):] + others)
    with pytest.raises(fm.RunMismatchError, match=r"calibration in .* holds entries of "
                                                  r"FisherNet d=2 measured .*--no-calibration"):
        fm.main(["--out", str(parts), "--models", "VAE", "CalibratedVAE"] + common
                + ["--calibration-sims", "5"])
    assert not any((parts / "models").iterdir())

    # an entry of an older harness stays in the record, flagged for the next part to redo
    record = json.loads((parts / "results.json").read_text())
    assert record["calibration"]["VAE"]["2"]["version"] == fm.CALIBRATION_VERSION
    del record["calibration"]["VAE"]["2"]["version"]
    (parts / "results.json").write_text(json.dumps(record))
    status = fm.main(["--out", str(parts), "--models", "FisherNet", "VAE", "--status"] + common)
    assert [row["gaps"] for row in status] == [[], ["calibration (outdated)"]]

    # a harness version that changed only the Gaussian rows: the single run's folder (its
    # weights and cache kept) is brought up to date by recalibrating those rows from the
    # cached entries; nothing changed here, so every row equals the stored one
    version = fm.CALIBRATION_VERSION
    monkeypatch.setattr(fm_run, "CALIBRATION_VERSION", version + 1)
    monkeypatch.setattr(fm_run, "GAUSSIAN_ROWS_ONLY", (version + 1,))
    monkeypatch.setattr(fm.merge, "CALIBRATION_VERSION", version + 1)
    before = json.loads((tmp_path / "one" / "results.json").read_text())
    upgraded = fm.main(["--out", str(tmp_path / "one"), "--models", "FisherNet", "VAE"]
                       + common)
    for name in ("FisherNet", "VAE"):
        entry = dict(upgraded["calibration"][name]["2"])
        assert entry.pop("recalibrated")["from_version"] == version
        assert entry.pop("version") == version + 1
        old_entry = dict(before["calibration"][name]["2"])
        assert old_entry.pop("version") == version
        assert _without_timings(entry) == _without_timings(old_entry)
    assert upgraded["results"] == before["results"]  # nothing trained

    # a figure the record names but that is gone (with no weights to draw it again) is no
    # longer listed
    (parts / "fig7_normal_samples_d2.png").unlink()
    reported = fm.main(["--out", str(parts), "--report-only"])
    assert "fig7_normal_samples_d2.png" not in reported["figures"]
    assert "fig8_normal_samples_d2.png" in reported["figures"]
    assert not (parts / "fig7_normal_samples_d2.png").exists()


def test_merge_records_unions_dims_and_keeps_entries_measured_with_other_settings():
    def record(d, table1=True, fid_images=100):
        cell = {"test_mse": 0.1 * d, "history": {"epoch": [1]}}
        rec = {"mode": "quick", "seed": 0, "results": {"FisherNet": {str(d): cell}},
               "setting": {"dims": [d], "epochs": 1, "fid_images": fid_images},
               "figures": [], "part": {"cells": [["FisherNet", d]]}}
        if table1:
            rec["table1"] = {"floor": 1.0, "results": {"FisherNet": {str(d): {"rec": d}}}}
        return rec

    first = fm.merge_records(None, record(5))
    merged = fm.merge_records(first, record(2))
    assert merged["setting"]["dims"] == [2, 5]
    assert list(merged["results"]["FisherNet"]) == ["2", "5"]
    assert set(merged["table1"]["results"]["FisherNet"]) == {"2", "5"}
    # a part without Table 1 keeps the stored one; one with other FID settings replaces it
    kept = fm.merge_records(merged, record(3, table1=False))
    assert set(kept["table1"]["results"]["FisherNet"]) == {"2", "5"}
    replaced = fm.merge_records(merged, record(3, fid_images=50))
    assert set(replaced["table1"]["results"]["FisherNet"]) == {"3"}
    assert fm.complete_cells(kept, sample_quality=True, calibration_models=[]) == {
        ("FisherNet", 2), ("FisherNet", 5)}


class Interrupted(Exception):
    """Stands for the process being killed."""


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    """Killed after the third checkpoint write (VAE, epoch 1 of 2), then during Table 1's
    second entry: each rerun continues where the last one stopped, redoing nothing."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--dims", "2", "--epochs", "2", "--n-train", "256",
            "--models", "FisherNet", "VAE", "--fid-images", "100", "--mkde-iterations", "1",
            "--mkde-samples", "1", "--no-calibration"]
    saved, real_save = [], nf.training.callbacks.save

    def save_then_maybe_die(path, model, **kwargs):
        real_save(path, model, **kwargs)
        saved.append((type(model).__name__, kwargs["training_state"]["epochs_done"]))
        if len(saved) == 3:
            raise Interrupted

    monkeypatch.setattr(nf.training.callbacks, "save", save_then_maybe_die)
    with pytest.raises(Interrupted):
        fm.main(args)
    assert saved == [("FisherNet", 1), ("FisherNet", 2), ("VAE", 1)]

    # --status reads the folder: nothing recorded yet, the VAE's checkpoint at epoch 1
    status = {(row["model"], row["d"]): row for row in fm.main(args + ["--status"])}
    assert status[("FisherNet", 2)]["epochs"] == 2 and status[("VAE", 2)]["epochs"] == 1
    assert all(row["gaps"] == ["training", "Table 1"] for row in status.values())
    command = status[("VAE", 2)]["command"]  # the part, with the run's other options
    assert "--quick --models VAE --dims 2 --epochs 2 --n-train 256 --fid-images 100" in command
    assert command.endswith(f"--no-calibration --out {out}")
    assert saved == [("FisherNet", 1), ("FisherNet", 2), ("VAE", 1)]  # nothing trained

    entries, real_encode = [], nf.evaluation.encode_means

    def encode_then_maybe_die(model, images, *rest, **kwargs):
        if len(images) == 100:  # the test images: a Table 1 entry begins
            entries.append(type(model).__name__)
            if len(entries) == 2:
                raise Interrupted
        return real_encode(model, images, *rest, **kwargs)

    monkeypatch.setattr(nf.evaluation, "encode_means", encode_then_maybe_die)
    with pytest.raises(Interrupted):
        fm.main(args)
    assert saved[3:] == [("VAE", 2)]  # only the missing epoch was trained
    assert entries == ["FisherNet", "VAE"]

    report = fm.main(args)
    assert saved[4:] == [] and entries[2:] == ["VAE"]  # FisherNet's entry was stored
    assert report["table1"]["cached"] == [["FisherNet", 2]]
    for name in ("FisherNet", "VAE"):
        assert report["results"][name]["2"]["history"]["epoch"] == [1, 2]
        assert math.isfinite(report["table1"]["results"][name]["2"]["mkde"])
    assert (out / "summary.md").is_file()
    assert all(not row["gaps"] for row in fm.main(args + ["--status"]))
    # with calibration asked for, every cell still lacks it
    assert [row["gaps"] for row in fm.main(args[:-1] + ["--status"])] == [["calibration"]] * 2
    with pytest.raises(fm.RunMismatchError, match="holds a 'quick' run, not a 'paper' one"):
        fm.main(["--paper", "--out", str(out), "--status"])


def test_status_shows_the_weights_and_the_calibration_stages_a_part_resumes_from(
        tmp_path, monkeypatch, capsys):
    """A part killed in its calibration after the simulated stage: --status names the kept
    stage; after the cell is recorded and its weights are gone, it says the part trains
    anew."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--models", "FisherNet", "--calibration-sims", "10",
            "--calibration-images", "2", "--no-calibration-nifty"] + TINY

    def killed(*args, **kwargs):
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(nf.calibration.harness, "exact_posterior", killed)
        with pytest.raises(Interrupted):
            fm.main(args)
    capsys.readouterr()
    [row] = fm.main(args + ["--status"])
    assert row["gaps"] == ["training", "Table 1", "calibration"]
    assert row["epochs"] == row["weights"] == 1
    assert row["stages"] == ["simulated gaussian"]
    assert "| trained; needs T1, cal (kept: simulated gaussian) |" in capsys.readouterr().out
    # a NIFTy stage stopped midway keeps its state beside the kept stages
    [kept] = (out / "cache").glob("calibration_FisherNet_d2_stage-simulated-gaussian_*.json")
    folder = out / "cache" / kept.name.replace("stage-simulated-gaussian", "nifty-progress")
    folder = folder.with_suffix("")
    domain = ift.makeDomain({"latent": ift.UnstructuredDomain((2, 2))})
    save_kl_state(folder / "simulated-mgvi.h5", "a problem", KLState(
        3, ift.full(domain, 0.0), random_state(), 60.0))
    [row] = fm.main(args + ["--status"])
    assert row["progress"] == {"simulated mgvi": 3}
    assert ("| trained; needs T1, cal (kept: simulated gaussian; under way: simulated mgvi "
            "after 3 KL iterations) |") in capsys.readouterr().out
    (folder / "simulated-mgvi.h5").unlink()

    fm.main(args)  # resumes after the stage and records the cell
    assert not folder.exists()  # emptied by the finished stages, removed with the record
    [row] = fm.main(args + ["--status"])
    assert row["gaps"] == [] and row["weights"] is None and row["stages"] == []
    record = json.loads((out / "results.json").read_text())
    del record["calibration"]["FisherNet"]["2"]["version"]  # an older harness's entry
    (out / "results.json").write_text(json.dumps(record))
    for path in (out / "models").iterdir():
        path.unlink()
    capsys.readouterr()
    [row] = fm.main(args + ["--status"])
    assert row["gaps"] == ["calibration (outdated)"] and row["weights"] is None
    assert "| no weights (trains anew); needs cal (outdated) |" in capsys.readouterr().out


def test_calibration_stages_run_as_a_part_of_their_own_and_are_read_back(
        tmp_path, monkeypatch, capsys):
    """``--calibration-stages``: the named stages are kept and no record is written; the part
    that records the cell reads them back instead of measuring them."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--models", "FisherNet", "--calibration-sims", "10",
            "--calibration-images", "2", "--no-calibration-nifty"] + TINY
    assert fm.main(args + ["--calibration-stages", "real exact reference",
                           "real gaussian"]) is None
    assert not (out / "results.json").exists()
    [row] = fm.main(args + ["--status"])
    assert row["gaps"] == ["training", "Table 1", "calibration"]
    assert row["stages"] == ["real exact reference", "real gaussian"]

    def measured_again(*args, **kwargs):
        raise AssertionError("a kept stage measured again")

    with monkeypatch.context() as patch:
        # the real images' exact posterior and their Gaussian rows are read back
        patch.setattr(nf.calibration.harness, "exact_posterior", measured_again)
        patch.setattr(nf.calibration.harness, "compare_to_exact", measured_again)
        report = fm.main(args)
    real = report["calibration"]["FisherNet"]["2"]["real"]
    assert {"amortized", "refined (Laplace)", "refined (importance)"} <= set(real)
    assert all(not row["gaps"] for row in fm.main(args + ["--status"]))
    for refused in ("--no-calibration", "--force", "--status"):
        with pytest.raises(SystemExit, match="not with --status, --report-only, --force"):
            fm.main(args + ["--calibration-stages", "real mgvi", refused])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        fm.main(args + ["--calibration-stages", "real nothing"])


def test_a_models_nifty_options_reach_its_calibration_entry_and_key(tmp_path, monkeypatch):
    """A setting's ``calibration_nifty_options`` for one model: its NIFTy rows run with them
    (recorded in the entry), its cache key includes them, and a model without any keeps the
    key it had before (its stored entry is read, not measured again)."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--models", "FisherNet", "--calibration-sims", "10",
            "--calibration-images", "2", "--no-sample-quality"] + TINY
    monkeypatch.setitem(fm.SETTINGS["quick"], "calibration_nifty", {"FisherNet": ["mgvi"]})
    plain = fm.main(args)["calibration"]["FisherNet"]["2"]
    assert "nifty_options" not in plain
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("nifty_options"))
        return calibrate(*args, **kwargs)

    calibrate = fm_run.calibrate
    monkeypatch.setattr(fm_run, "calibrate", recording)
    options = {"FisherNet": {"jacobian_dtype": "float32"}}
    monkeypatch.setitem(fm.SETTINGS["quick"], "calibration_nifty_options", options)
    rounded = fm.main(args)["calibration"]["FisherNet"]["2"]
    assert seen == [{"jacobian_dtype": "float32"}]  # another key: measured anew
    assert rounded["nifty_options"] == {"jacobian_dtype": "float32"}
    # MGVI with a float32 Jacobian: the same coverage of the 10 simulated data
    assert rounded["simulated"]["mgvi"]["coverage"] == plain["simulated"]["mgvi"]["coverage"]
    monkeypatch.setitem(fm.SETTINGS["quick"], "calibration_nifty_options",
                        {"VAE": {"jacobian_dtype": "float32"}})
    again = fm.main(args)["calibration"]["FisherNet"]["2"]
    assert seen == [{"jacobian_dtype": "float32"}]  # the first key again: read back
    assert "nifty_options" not in again


def test_trained_model_path_is_where_the_main_job_writes(tmp_path):
    path = fm.trained_model_path("VAE", 3, "paper", seed=1, out=tmp_path)
    assert path.parent == tmp_path / "models" and path.name.startswith("VAE_d3_")
    assert path != fm.trained_model_path("VAE", 3, "quick", seed=1, out=tmp_path)
    with pytest.raises(ValueError, match="unknown model 'AE'"):
        fm.build_model("AE", 2)
    with pytest.raises(ValueError, match="unknown setting 'slow'"):
        fm.setting_for("slow")
