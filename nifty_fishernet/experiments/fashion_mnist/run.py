"""The Fashion-MNIST experiment end to end: train the model grid, Table 1, calibration,
figures and the summary; one part at a time if need be (see :mod:`.merge`).

Writes into the output folder:

- ``results.json``: settings, every part's command, and per model and latent dimension the
  training history (test MSE, test loss, noise level, seconds per epoch);
- ``mse_per_epoch.png``: test MSE (Eq. 32-33) per epoch, one panel per latent dimension;
- ``reconstructions.png``: test images beside each model's reconstruction from ``mu``;
- ``table1.json``, ``table1.md``: the paper's Table 1 measured by us (FIDs of test
  reconstructions, of N(0,1) samples, of Matérn-KDE samples for d <= 5 and of Gaussian-mixture
  samples for every d), beside the paper's values; with ``inception_images`` also the
  reconstructions' and N(0,1) samples' FIDs with Inception features on that many images;
- ``latent_density.png``: the paper's Fig. 9, the FisherNet's d = 2 Matérn KDE with the
  test means, and samples drawn from it;
- the paper's other figures: ``fig1_fishernet_loss.png`` (loss against d),
  ``fig2_mse_vs_d.png``, ``mse_per_epoch.png`` (Fig. 3), ``fig4_latent_means_d2.png``,
  ``fig5_ellipses_one_image.png`` and ``fig5_reconstructions_along_axes.png``,
  ``fig6_shoe_ellipses.png``, ``fig7/fig8_normal_samples_d<d>.png`` (d = 2 and 15, or the
  largest d run), ``fig10_fishernet_samples_d5.png`` (N(0,1) against the density estimators);
- ``calibration.json``, ``calibration.png``: every model's latent posteriors (amortized,
  refined by Laplace and by importance sampling; the FisherNet's also by NIFTy's MGVI and
  geoVI, ``--no-calibration-nifty`` to skip them) against the truth: coverage of the true
  latent on data simulated from the model itself, and the exact posterior's mass inside
  their credible regions on real test images (``nifty_fishernet.calibration``; quick: all
  models but the ConvVAE, ``--calibration-models`` to choose);
- ``summary.md``: the run's command(s) and settings, test MSE, seconds per epoch and noise
  level per model and d, Table 1, the figures; the paper's values beside ours;
- ``models/<model>_d<d>_<key>.h5``: the trained models, ``key`` a hash of the training
  configuration (rerunning resumes and skips finished ones; another setting trains anew);
- ``cache/``: Table 1's entries (and fitted latent densities) under a hash of the model's
  weights and the evaluation settings, so a rerun recomputes nothing it has; ``--force``
  retrains every model of the run and recomputes its entries.

An interrupted run resumes: training from the last completed epoch's checkpoint, Table 1
from the first entry not yet stored. A run of some ``--models`` and ``--dims`` is a part:
its cells are merged into the folder's ``results.json``, ``table1.json`` and
``calibration.json``, and a cell whose record there is complete is not run again, even
where its weights are gone (e.g. a fresh machine with the committed results), so the
paper's setting can run one part per session.

Under ``torchrun --nproc_per_node=N demos/fashion_mnist.py ...`` training is data-parallel
(``nifty_fishernet.train`` with DistributedDataParallel); rank 0 alone evaluates and writes.

Settings (:data:`~nifty_fishernet.experiments.fashion_mnist.SETTINGS`):

- ``--quick`` (default): d in {2, 5}, 5 epochs on 12,000 training images, lr 1e-3 (ten times
  Table 2's, to make up for the fewer steps) and 1e-2 for the noise level (which otherwise
  lags behind, see ``nifty_fishernet.train``); FIDs on 2,000 images with the Fashion-MNIST
  classifier's features; MKDE on 32 x 32 (d = 2) and 5^5 (d = 5) cells.
- ``--paper``: Table 2 (batch 64, lr 1e-4 for the networks and the noise level, Adam), 50
  epochs on all 60,000 images, d in {2, 3, 5, 10, 15, 20}; FIDs on 10,000 images with the
  Fashion-MNIST classifier's features and, for reconstructions and N(0,1) samples, on 1,000
  images with Inception features (``--inception-images``); MKDE on the default grids.

    python demos/fashion_mnist.py [--quick | --paper] [--out output/fashion_mnist]
        [--models ...] [--dims ...] [--features fmnist|inception] [--fid-images N]
        [--no-sample-quality] [--no-calibration] [--force]
    python demos/fashion_mnist.py --paper --status --out docs/results/paper   # what is left

A cell's calibration runs in stages (``--status`` lists those kept); ``--calibration-stages``
runs just the named ones and writes no record, so one cell's stages can run in separate
processes, one per core; a later part without it reads them back and records the cell.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ...cache import ResultCache, fingerprint
from ...checkpoint import load_checkpoint
from ...errors import FileFormatError
from ...io import write_text
from ...calibration import NIFTY_METHODS, calibrate, calibration_stages, recalibrate
from ...data import load_fashion_mnist
from ...distributed import distributed_session
from ...evaluation import active_units, encode_means, sample_quality
from ...memory import keep_freed_memory
from ...io import jsonable
from ...plotting import plot_calibration, plot_latent_density
from ...training import resolve_device, train
from ..._version import __version__
from .figures import model_figures, record_figures
from .merge import (RunMismatchError, cell_gaps, check_mergeable, complete_cells, merge_records,
                    paper_order)
from .report import status_markdown, write_summary
from .settings import (CALIBRATION_VERSION, DEFAULT_MODELS, DEFAULT_OUT, GAUSSIAN_ROWS_ONLY,
                       MODELS, build_model, setting_for, trained_model_path)
from .table1 import table1_markdown, write_table1

__all__ = ["parse_args", "main"]


def parse_args(argv=None):
    """The command line of ``demos/fashion_mnist.py`` (see the module's documentation)."""
    parser = argparse.ArgumentParser(
        prog="demos/fashion_mnist.py",
        description="Train FisherNet, VAE, calibrated VAE and ConvVAE on Fashion-MNIST and "
                    "compare them (the paper's Sect. 3).")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="reduced setting for 2 CPU cores (default)")
    mode.add_argument("--paper", dest="mode", action="store_const", const="paper",
                      help="the paper's Table 2 setting")
    parser.set_defaults(mode="quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="folder with the IDX .gz files")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                        help="models to train (default: the paper's three and the calibrated "
                             "VAE; VAEHalfVariance: the VAE with decoder variance 1/2)")
    parser.add_argument("--dims", type=int, nargs="+", help="override the latent dimensions")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--n-train", type=int, help="override the number of training images")
    parser.add_argument("--features", choices=["fmnist", "inception"],
                        help="FID features of Table 1 (default fmnist)")
    parser.add_argument("--fid-images", type=int, help="images per FID")
    parser.add_argument("--inception-images", type=int,
                        help="images per Inception FID of reconstructions and N(0,1) samples "
                             "(paper: 1,000; 0 skips them)")
    parser.add_argument("--mkde-iterations", type=int, help="MKDE KL iterations")
    parser.add_argument("--mkde-samples", type=int, help="MKDE antithetic sample pairs")
    parser.add_argument("--no-sample-quality", dest="sample_quality", action="store_false",
                        help="skip Table 1 (FIDs) and the latent density figure")
    parser.add_argument("--no-calibration", dest="calibration", action="store_false",
                        help="skip the calibration of the latent posteriors")
    parser.add_argument("--calibration-sims", type=int,
                        help="simulated data per model for the coverage (SBC)")
    parser.add_argument("--calibration-images", type=int,
                        help="test images per model compared with the exact posterior")
    parser.add_argument("--no-calibration-nifty", dest="calibration_nifty",
                        action="store_false",
                        help="calibrate without NIFTy's MGVI and geoVI")
    parser.add_argument("--calibration-stages", nargs="+", metavar="STAGE",
                        choices=calibration_stages(NIFTY_METHODS),
                        help="measure just these stages of the cells' calibrations (quoted, "
                             "as --status names them, e.g. 'real mgvi'), keep them in the "
                             "folder's cache and write no record: a cell's stages run in "
                             "separate processes, one per core, and a later part without "
                             "this option records the cell")
    parser.add_argument("--calibration-models", nargs="+", choices=list(MODELS),
                        help="models to calibrate (quick: all but the ConvVAE, whose exact "
                             "posteriors cost ~10^6 convolutional decoder calls)")
    parser.add_argument("--report-only", action="store_true",
                        help="compute nothing: redraw the record's figures (Figs. 1-3, "
                             "calibration) and rewrite table1.md and summary.md from the "
                             "folder's results.json")
    parser.add_argument("--status", action="store_true",
                        help="compute nothing: list each cell of the setting's grid (the "
                             "--models, default the four compared, at every d) with what the "
                             "folder's record still lacks, and the commands of the parts "
                             "still to run")
    parser.add_argument("--force", action="store_true",
                        help="retrain this run's models and recompute their metrics, even "
                             "where the output folder holds them for this configuration")
    return parser.parse_args(argv)


def resolve_setting(args):
    """The run's setting: :data:`SETTINGS` ``[args.mode]`` with the command line's overrides."""
    setting = setting_for(args.mode)
    for key in ("dims", "epochs", "n_train", "features", "fid_images", "inception_images"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    for key, option in (("n_simulated", "calibration_sims"), ("n_real", "calibration_images")):
        if getattr(args, option) is not None:
            setting["calibration"][key] = getattr(args, option)
    if args.calibration_models is not None:
        setting["calibration_models"] = args.calibration_models
    if not args.calibration_nifty:
        setting["calibration_nifty"] = {}
    for key, option in (("iterations", "mkde_iterations"), ("n_samples", "mkde_samples")):
        if getattr(args, option) is not None:
            setting["mkde"][key] = getattr(args, option)
    return setting


def read_record(out):
    """The folder's ``results.json``, or None where there is none."""
    path = Path(out) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def record_lock(out):
    """Hold an exclusive lock on ``out``'s record while a part merges into it, so parts that
    finish at the same moment merge one after the other."""
    path = Path(out) / ".results.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def training_images(setting, args):
    """The run's training images: the first ``n_train`` of a seeded permutation."""
    train_x, _ = load_fashion_mnist("train", root=args.data_root)
    return train_x[np.random.default_rng(args.seed).permutation(len(train_x))
                   [:setting["n_train"]]]


def train_models(args, setting, cells, device, context, stored, train_x, test_x):
    """Train (or resume, or find finished) every cell ``(name, d)``; cells complete in the
    stored record (``stored``: ``{cell: its record}``) without weights here are taken from
    it. Returns ``(results, trained)``."""
    results, trained = {}, {}
    for name, d in cells:
        path = trained_model_path(name, d, setting, args.seed, args.out)
        if (name, d) in stored and not path.exists():
            results.setdefault(name, {})[str(d)] = stored[name, d]
            if context.is_main:
                print(f"{name:>14} d={d:<2} complete in {args.out / 'results.json'}: not rerun")
            continue
        torch.manual_seed(args.seed)
        model = build_model(name, d)
        history = train(model, train_x, test_x, epochs=setting["epochs"],
                        batch_size=setting["batch_size"], lr=setting["lr"],
                        noise_lr=setting["noise_lr"], device=device, seed=args.seed,
                        checkpoint=path, resume=not args.force, progress=context.is_main)
        trained.setdefault(name, {})[d] = model
        results.setdefault(name, {})[str(d)] = dict(
            test_mse=history["test_mse"][-1], test_loss=history["test_loss"][-1],
            noise_std=history["noise_std"][-1],
            seconds_per_epoch=float(np.mean(history["seconds"])),
            active_units=active_units(model, test_x), history=history)
        if context.is_main:
            print(f"{name:>14} d={d:<2} test MSE {history['test_mse'][-1]:.5f}")
    return results, trained


def table1(trained, setting, args, train_x, test_x):
    """FIDs of Table 1 (with the Inception table if the setting asks for it), and the fitted
    latent densities ``{(name, d, kind): density}``."""
    densities = {}
    quality = sample_quality(
        trained, train_x, test_x, n_images=setting["fid_images"], features=setting["features"],
        seed=args.seed, device="cpu", mkde_options=setting["mkde"], densities=densities,
        cache_dir=args.out / "cache", force=args.force,
        estimators=setting.get("estimators", ("mkde", "gmm")), gmm_options=setting.get("gmm"),
        flow_options=setting.get("flow"))
    if setting.get("inception_images"):
        quality["inception"] = sample_quality(
            trained, train_x, test_x, n_images=setting["inception_images"],
            features="inception", estimators=(), seed=args.seed, device="cpu",
            cache_dir=args.out / "cache", force=args.force)
    return quality, densities


def calibration(trained, test_x, setting, args):
    """Every model's posteriors against the truth (``nifty_fishernet.calibration``): coverage
    on simulated data, exact-posterior mass on real test images; cached under a hash of the
    model's weights and the settings. An entry of the version before a change of the
    Gaussian rows alone (:data:`~.settings.GAUSSIAN_ROWS_ONLY`) cached for the same weights
    is brought up to date by ``recalibrate`` instead of measured anew."""
    cache = ResultCache(args.out / "cache", force=args.force)
    options = setting["calibration"]
    results = {}
    for name, by_dim in trained.items():
        if name not in setting["calibration_models"]:
            continue
        for d, model in sorted(by_dim.items()):
            model = model.cpu().eval()
            nifty = setting["calibration_nifty"].get(name, [])
            nifty_options = _nifty_options(setting, name)
            label = f"calibration_{name}_d{d}"

            def key_of(version):
                return calibration_key(model, name, setting, args.seed, test_x, version)
            key = key_of(CALIBRATION_VERSION)
            entry = cache.get(label, key)
            if entry is None:
                began = time.perf_counter()
                # a part of chosen stages measures them alone (no older entry brought up
                # to date)
                only = (set(args.calibration_stages) & set(calibration_stages(nifty))
                        if args.calibration_stages else None)
                older = None if only is not None else _older_entry(cache, label, key_of)
                if older is None:
                    # each finished stage is kept: a killed part resumes after it
                    stages = cache.stages(label, key)
                    reference = stages.file("real exact reference", ".h5")
                    # and a NIFTy stage (hours at d = 20) resumes after its last finished
                    # global iteration
                    checkpoints = nifty_progress_folder(cache, label, key)
                    if cache.force:
                        reference.unlink(missing_ok=True)
                        shutil.rmtree(checkpoints, ignore_errors=True)
                    entry = calibrate(model, test_x, seed=args.seed, nifty=nifty,
                                      nifty_options=nifty_options, finished=stages,
                                      reference_file=reference, only=only,
                                      nifty_checkpoints=checkpoints, **options)
                    if entry is None:  # only the chosen stages: nothing to record
                        print(f"{name:>14} d={d:<2} calibration stages kept: "
                              + ", ".join(stages.names()))
                        continue
                    if nifty_options:
                        entry["nifty_options"] = nifty_options
                    entry["seconds"] = time.perf_counter() - began
                    # every stage is kept and each removed its state file: the folder is
                    # empty, unless another part is still writing there (then it stays)
                    with contextlib.suppress(OSError):
                        checkpoints.rmdir()
                else:
                    # the NIFTy rows (most of a run's time) stay as measured
                    kept = ("n_reference", "n_nifty", "nifty_options")
                    entry = recalibrate(model, test_x, older, seed=args.seed, **{
                        k: v for k, v in options.items() if k not in kept})
                    entry["recalibrated"] = dict(from_version=older["version"],
                                                 seconds=time.perf_counter() - began)
                entry["version"] = CALIBRATION_VERSION  # an older entry is recomputed
                entry = jsonable(entry)
                cache.put(label, key, entry)
            results.setdefault(name, {})[d] = entry
            coverage = {m: v["coverage"] for m, v in entry["simulated"].items()}
            print(f"{name:>14} d={d:<2} coverage 68/95 %: " + "; ".join(
                f"{m} {c['68']:.2f}/{c['95']:.2f}" for m, c in coverage.items()))
    return results


def calibration_key(model, name, setting, seed, test_x, version=CALIBRATION_VERSION):
    """The cache key of a model's calibration entry and of its finished stages: its weights,
    the settings, the NIFTy methods (and their options, where the model has any), the seed
    and the real images it uses."""
    options = setting["calibration"]
    nifty_options = _nifty_options(setting, name)
    # a model without NIFTy options keeps the key it had before they existed
    return fingerprint("calibration", version, model, options,
                       setting["calibration_nifty"].get(name, []), seed,
                       test_x[:options["n_real"]], *([nifty_options] if nifty_options else []))


def nifty_progress_folder(cache, label, key):
    """The folder in which a calibration's NIFTy stages keep their state between global KL
    iterations (``calibrate(..., nifty_checkpoints=...)``), beside its kept stages."""
    return cache.path(f"{label}_nifty-progress", key, "")


def nifty_progress(folder):
    """``{stage name: global KL iterations finished}`` of the NIFTy stages under way in
    ``folder`` (:func:`nifty_progress_folder`); a damaged file is left out (the stage then
    fails with its error when it runs)."""
    from ...nifty.kl_state import kl_progress

    progress = {}
    for path in sorted(Path(folder).glob("*.h5")):
        try:
            progress[path.stem.replace("-", " ")] = kl_progress(path)[0]
        except FileFormatError:
            continue
    return progress


def _nifty_options(setting, name):
    """The keyword arguments of ``latent_posterior`` the setting gives model ``name``'s NIFTy
    calibration rows (e.g. the ConvVAE's float32 Jacobian), or None."""
    return setting.get("calibration_nifty_options", {}).get(name) or None


def _older_entry(cache, label, key_of):
    """The cached entry of the same weights and settings from the version just before a
    run of versions that changed only the Gaussian rows; None if there is none."""
    version = CALIBRATION_VERSION
    while version in GAUSSIAN_ROWS_ONLY:
        version -= 1
        entry = cache.get(label, key_of(version))
        if entry is not None:
            return entry
    return None


def main(argv=None):
    """Run the experiment (or one part of it) from a command line; returns the merged record.

    A run (not ``--status`` or ``--report-only``) calls
    :func:`~nifty_fishernet.memory.keep_freed_memory`, which holds for the rest of the calling
    process.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``); see :func:`parse_args`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.calibration_stages and (args.status or args.report_only or args.force
                                    or not args.calibration):
        # --force would retrain the models of each process running a cell's stages
        raise SystemExit("--calibration-stages measures calibration stages: not with "
                         "--status, --report-only, --force or --no-calibration")
    if args.report_only:
        return write_reports(args.out)
    setting = resolve_setting(args)
    if args.status:
        rows = grid_status(args.out, args.mode, setting, args.models, args.seed,
                           args.sample_quality, args.calibration, _part_options(argv))
        print(status_markdown(rows, args.out, args.mode, setting["epochs"]))
        return rows
    out = args.out
    (out / "models").mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    # hours of the same large tensors made again: reuse freed memory instead of faulting in
    # fresh pages for each (no effect on any number)
    keep_freed_memory()
    # under torchrun: one training process per rank, the group left at the end
    with distributed_session(device) as context:
        return _run(args, argv, setting, device, context)


def _run(args, argv, setting, device, context):
    out = args.out
    old = read_record(out)
    cells = [(name, d) for name in args.models for d in setting["dims"]]
    calibration_models = setting["calibration_models"] if args.calibration else []
    mergeable = dict(cells=cells, sample_quality=args.sample_quality,
                     calibration_models=calibration_models)
    if old is not None:
        try:
            check_mergeable(old, args.mode, setting, args.seed, out, **mergeable)
        except ValueError:
            if not args.force:
                raise
            old = None  # --force: this run replaces the other setting's record
    done = set() if args.force else complete_cells(old, args.sample_quality, calibration_models)
    start = time.perf_counter()
    stored = {cell: old["results"][cell[0]][str(cell[1])] for cell in cells if cell in done}
    train_x = training_images(setting, args)
    test_x, test_labels = load_fashion_mnist("test", root=args.data_root)
    results, trained = train_models(args, setting, cells, device, context, stored, train_x,
                                    test_x)
    if not context.is_main:
        return None  # rank 0 evaluates and writes
    record = dict(mode=args.mode, command=("python demos/fashion_mnist.py " + shlex.join(argv)
                                           ).strip(),
                  setting=setting, seed=args.seed, device=str(device), torch=torch.__version__,
                  threads=torch.get_num_threads(), machine=platform.machine(),
                  # the kernels torch picks: trained with another set, the same seeds give
                  # other weights (a fresh machine does not retrain the same model)
                  cpu=torch.backends.cpu.get_cpu_capability(),
                  package_version=__version__, train_seconds=time.perf_counter() - start,
                  results=results)
    densities, figures = {}, []
    if args.sample_quality and trained:
        quality, densities = table1(trained, setting, args, train_x, test_x)
        record["table1"] = quality
        density = densities.get(("FisherNet", 2, "mkde"))
        if density is not None:
            means = encode_means(trained["FisherNet"][2], test_x)
            plot_latent_density(density, means, out / "latent_density.png", labels=test_labels,
                                title="FisherNet d=2: Matérn KDE of the training means")
            figures.append("latent_density.png")
        print("\n" + table1_markdown(quality))
    if args.calibration and trained:
        record["calibration"] = calibration(trained, test_x, setting, args)
        if args.calibration_stages:
            return None  # the stages are kept; a part without the option records the cells
    shown = _stored_models(old, out, setting, args.seed, skip=cells)
    for name, by_dim in trained.items():
        shown.setdefault(name, {}).update(by_dim)
    figures += model_figures(shown, densities, test_x, test_labels, args.seed, out,
                             cells=_record_cells(old, results))
    record["figures"] = figures
    record["wall_seconds"] = time.perf_counter() - start
    record["part"] = dict(command=record["command"], cells=[list(c) for c in cells],
                          device=record["device"], threads=record["threads"],
                          machine=record["machine"], cpu=record["cpu"],
                          wall_seconds=record["wall_seconds"],
                          date=time.strftime("%Y-%m-%d"))
    with record_lock(out):
        # Parts may run at the same time (one per core): merge with the record as it is now,
        # not as it was when this part started, so no finished part's cells are lost.
        latest = None if args.force else read_record(out)  # --force replaces the record
        if latest is not None:
            check_mergeable(latest, args.mode, setting, args.seed, out, **mergeable)
        record = merge_records(latest, jsonable(record))
        return _write_record(record, out)


def _write_record(record, out):
    """Figures of the record, calibration.json, table1.json/.md, summary.md, results.json."""
    drawn = record_figures(record["results"], record["setting"]["dims"], out)
    if record.get("calibration"):
        drawn.append(plot_calibration(
            record["calibration"], out / "calibration.png",
            f"Latent posteriors against the truth ({record['mode']} models)").name)
        _write_json(out / "calibration.json",
                    {"settings": record["setting"]["calibration"], "seed": record["seed"],
                     "results": record["calibration"]})
    # the record lists the figures there are: one a part named that is gone since (an older
    # part's figure of another latent dimension, deleted) is not listed
    record["figures"] = sorted((name for name in set(record["figures"]) | set(drawn)
                                if (out / name).exists()), key=paper_order)
    if record.get("table1"):
        write_table1(record["table1"], out)
    write_summary(record, out)
    _write_json(out / "results.json", record)  # last: the record of a finished part
    _print_mse(record)
    print(f"\nwrote {out}/summary.md, results.json, figures"
          + (", table1.json, table1.md" if record.get("table1") else ""))
    return record


def _record_cells(record, results=None):
    """``{name: [d, ...]}`` of a record's cells and of this part's ``results``: the models
    the figures show."""
    cells = {}
    for by_name in ((record or {}).get("results", {}), results or {}):
        for name, by_dim in by_name.items():
            cells.setdefault(name, set()).update(int(d) for d in by_dim)
    return {name: sorted(dims) for name, dims in cells.items()}


def _stored_models(record, out, setting, seed, skip=()):
    """``{name: {d: model}}`` of the record's cells (but those in ``skip``, the ones at hand)
    whose finished checkpoints are in ``out/models``, on the CPU: for the figures that need
    models, every part's that is still here."""
    models = {}
    if record is None:
        return models
    for name, by_dim in record["results"].items():
        for d in by_dim:
            if (name, int(d)) in skip:
                continue
            path = trained_model_path(name, int(d), setting, seed, out)
            try:
                saved = load_checkpoint(path)
            except (FileNotFoundError, FileFormatError):
                continue
            if len(saved.history.get("epoch", [])) == setting["epochs"]:
                models.setdefault(name, {})[int(d)] = saved.model.eval()
    return models


def _part_options(argv):
    """``argv`` without the options that pick the cells, the mode, the folder and
    ``--status``: what every part's command must repeat (e.g. ``--epochs``)."""
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            skipping = name in ("--models", "--dims", "--out") and "=" not in token
            if name in ("--models", "--dims", "--out", "--status", "--paper", "--quick"):
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


def grid_status(out, mode, setting, models, seed=0, sample_quality=True, calibration=True,
                options=()):
    """Each cell of ``models`` x ``setting["dims"]`` with what ``out``'s record lacks.

    Parameters
    ----------
    options : sequence of str
        Further command-line options of every part (e.g. ``--epochs 2``), for the commands.

    Returns
    -------
    list of dict
        Per cell: ``model``, ``d``, ``gaps`` (:func:`~.merge.cell_gaps`; empty: complete),
        ``epochs`` (recorded, or those of a checkpoint in ``out/models`` that training would
        resume from; 0 without either), ``weights`` (for a cell with gaps: the epochs of its
        checkpoint in ``out/models``, which Table 1 and the calibration need; None without
        one), ``stages`` (the calibration stages kept for those weights, when finished:
        the part resumes after them), ``progress`` (``{stage: global KL iterations}`` of
        the NIFTy stages stopped midway, which resume there) and ``command``, the part
        that fills the gaps.
    """
    out = Path(out)
    record = read_record(out)
    if record is not None and record["mode"] != mode:
        raise RunMismatchError(f"{out} holds a {record['mode']!r} run, not a {mode!r} one")
    calibration_models = setting["calibration_models"] if calibration else []
    cache, test_x = ResultCache(out / "cache"), None
    rows = []
    for name in models:
        for d in setting["dims"]:
            gaps = cell_gaps(record, name, d, sample_quality, calibration_models)
            cell = (record or {}).get("results", {}).get(name, {}).get(str(d))
            epochs = len(cell["history"]["epoch"]) if cell else 0
            weights, stages, progress = None, [], {}
            if gaps:  # training resumes from the weights, Table 1 and calibration need them
                try:
                    saved = load_checkpoint(trained_model_path(name, d, setting, seed, out))
                except (FileNotFoundError, FileFormatError):
                    saved = None
                if saved is not None:
                    weights = len(saved.history.get("epoch", []))
                    if "training" in gaps:
                        epochs = weights
                    if weights == setting["epochs"] and any(
                            gap.startswith("calibration") for gap in gaps):
                        if test_x is None:
                            test_x = load_fashion_mnist("test")[0]
                        key = calibration_key(saved.model.cpu().eval(), name, setting, seed,
                                              test_x)
                        label = f"calibration_{name}_d{d}"
                        stages = cache.stages(label, key).names()
                        progress = nifty_progress(nifty_progress_folder(cache, label, key))
            command = "OMP_NUM_THREADS=1 python demos/fashion_mnist.py " + shlex.join(
                [f"--{mode}", "--models", name, "--dims", str(d), *options, "--out", str(out)])
            rows.append(dict(model=name, d=int(d), gaps=gaps, epochs=epochs, weights=weights,
                             stages=stages, progress=progress, command=command))
    return rows


def write_reports(out):
    """Rewrite everything derived from ``out/results.json`` (``--report-only``), and the
    figures that need models from the finished checkpoints still in ``out/models``."""
    out = Path(out)
    record = read_record(out)
    if record is None:
        raise FileNotFoundError(f"no results.json in {out}: nothing to report")
    models = _stored_models(record, out, record["setting"], record["seed"])
    if models:
        test_x, test_labels = load_fashion_mnist("test")
        record["figures"] = sorted(set(record.get("figures", [])) | set(model_figures(
            models, {}, test_x, test_labels, record["seed"], out,
            cells=_record_cells(record))), key=paper_order)
    return _write_record(record, out)


def _write_json(path, value):
    write_text(path, json.dumps(value, indent=1))


def _print_mse(record):
    dims = record["setting"]["dims"]
    print(f"\ntest MSE after {record['setting']['epochs']} epochs ({record['mode']} setting):")
    print(f"{'model':>14} " + " ".join(f"{'d=' + str(d):>9}" for d in dims))
    for name, by_dim in record["results"].items():
        print(f"{name:>14} " + " ".join(
            f"{by_dim[str(d)]['test_mse']:>9.5f}" if str(d) in by_dim else f"{'–':>9}"
            for d in dims))
