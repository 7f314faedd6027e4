"""One model's latent posteriors judged against the truth: the calibration harness.

:func:`calibrate` measures, for one trained model, every posterior approximation asked for

- by simulation-based calibration on the model's own generative process (coverage of the
  true ``z`` by the 68 % / 95 % regions, SBC rank histograms per latent dimension), and
- against the exact posterior of the model's own decoder on real images (the exact mass
  inside the approximation's regions, KL both ways, the mean's error in posterior sigma),

and, for importance-sampled refinements, the same on the posterior's own highest-density
regions (level sets of the model's energy, thresholds from the weighted draws), which follow
a non-Gaussian posterior's shape where the Gaussian of its moments cannot,

and tests the paper's lower-bound claim (generalised eigenvalues of the exact covariance
against ``M(MAP)^{-1}``). NIFTy's MGVI and geoVI (sampled posteriors) take part through
:func:`nifty_fishernet.latent_posterior`.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import fingerprint
from ..errors import FileFormatError
from ..io import jsonable
from .exact import (compare_to_exact, exact_mass_below, exact_posterior, load_exact_posterior,
                    lower_bound_eigenvalues, save_exact_posterior)
from .sbc import (LEVELS, gaussian_coverage, hpd_ranks, rank_histogram, sample_coverage,
                  sbc_ranks, simulate)

__all__ = ["calibrate", "recalibrate", "calibration_stages", "DEFAULT_METHODS",
           "NIFTY_METHODS", "HPD_SUFFIX"]

#: Gaussian posteriors measured by default: name -> keyword arguments of ``model.posterior``.
DEFAULT_METHODS = {
    "amortized": dict(refine=False),
    "refined (Laplace)": dict(refine=True),
    "refined (importance)": dict(refine=True, correction="importance"),
}
#: Sampled posteriors through NIFTy.
NIFTY_METHODS = ("mgvi", "geovi")
#: Appended to an importance-sampled refinement's name for the row that judges its
#: highest-density regions (its weighted draws ranked by the model's energy) instead of the
#: Gaussian of its moments.
HPD_SUFFIX = ", HPD regions"


def _quantiles(values):
    values = np.asarray(values, dtype=float)
    return {"mean": float(np.mean(values)), "median": float(np.median(values)),
            "q10": float(np.quantile(values, 0.1)), "q90": float(np.quantile(values, 0.9))}


def _coverage(covered):
    return {str(round(100 * level)): float(np.mean(covered[:, i]))
            for i, level in enumerate(LEVELS)}


def _gaussian_draws(mean, covariance, n, generator):
    chol = torch.linalg.cholesky(covariance.double())
    eps = torch.randn(n, *mean.shape, generator=generator, dtype=torch.float64)
    return mean.double() + torch.einsum("bij,sbj->sbi", chol, eps)


def _batched(tensors, batch_size, function, desc=None, progress=False):
    """``function`` on batches of the same rows of every tensor in ``tensors``; its outputs
    concatenated."""
    starts = range(0, tensors[0].shape[0], batch_size)
    # a nested bar: one method on 1,000 simulations can take half an hour (a ConvVAE's
    # importance-sampled refinement)
    parts = [function(*(t[start:start + batch_size] for t in tensors))
             for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2,
                               leave=False)]
    return [torch.cat(values) for values in zip(*parts)]


def _posterior_of(model, method):
    """``x -> (mean, covariance)`` of a method: options of ``model.posterior`` or a callable
    (e.g. a :class:`~nifty_fishernet.models.PosteriorNetwork`'s ``posterior``)."""
    if callable(method):
        return method
    if not isinstance(method, dict):
        raise TypeError(f"a method is a dict of model.posterior options or a callable "
                        f"x -> (mean, covariance), got {type(method).__name__}")
    return lambda part: model.posterior(part, **method)


def _refined(model, method):
    """``x -> RefinedPosterior`` for a method that refines (None for any other method)."""
    if not isinstance(method, dict) or method.get("refine", False) is False:
        return None
    options = dict(method)
    refine = options.pop("refine")
    return lambda part: model.refined_posterior(part, refine, **options)


def _summaries(model, method):
    """``(x, truth_energy) -> (mean, covariance, ess, hpd_rank)``: ``ess`` the
    importance-sampled refinement's effective sample size per datum, the warning sign of a
    posterior too hard for its draws, and ``hpd_rank`` the truth's rank among its draws by
    energy (:func:`~.sbc.hpd_ranks`); both NaN for other methods."""
    refined = _refined(model, method)
    if refined is None:
        posterior = _posterior_of(model, method)

        def function(part, truth_energy):
            mean, cov = posterior(part)
            nan = torch.full(mean.shape[:1], float("nan"), dtype=torch.float64)
            return mean, cov, nan, nan
        return function

    def summary(part, truth_energy):
        result = refined(part)
        nan = torch.full(result.mean.shape[:1], float("nan"), dtype=torch.float64)
        if result.ess is None:
            return result.mean, result.covariance, nan, nan
        rank = torch.from_numpy(hpd_ranks(result.draw_energy, truth_energy,
                                          result.log_weights.exp()))
        return result.mean, result.covariance, result.ess.double(), rank
    return summary


def calibrate(model, real_images, methods=None, nifty=(), n_simulated=500, n_real=100,
              n_nifty=64, n_reference=100, seed=0, rank_draws=99, bins=10, batch_size=256,
              exact_options=None, nifty_options=None, progress=True, finished=None,
              reference_file=None, only=None, nifty_checkpoints=None):
    """Measure how honest each posterior approximation of ``model`` is.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        A trained model; put in eval mode here.
    real_images : array-like
        ``(n, k)`` test images in [0, 1]; the first ``n_real`` are used.
    methods : dict, optional
        ``{name: keyword arguments of model.posterior}`` (default :data:`DEFAULT_METHODS`);
        a value may also be a callable ``x -> (mean, covariance)``.
    nifty : sequence of {"mgvi", "geovi"}
        NIFTy methods (:func:`nifty_fishernet.latent_posterior`, from the encoder's mean) to
        run on the first ``n_nifty`` simulated data (SBC of their samples) and on the
        ``n_real`` images (against the exact posterior, by the Gaussian of the samples'
        moments).
    n_simulated, n_real : int
        Simulated data for SBC, real images for the exact comparison (0 skips it).
    n_reference : int
        For ``d > 3``, the exact (importance-sampled) posterior's own SBC on this many of
        the simulated data (0: skipped): it shows whether the reference finds the
        posterior.
    seed : int
        Seeds the simulation, the rank draws and the importance samplers.
    rank_draws : int
        Draws per Gaussian posterior for the SBC ranks.
    bins : int
        Bins of the rank histograms.
    exact_options : dict, optional
        Keyword arguments of :func:`~nifty_fishernet.calibration.exact_posterior`.
    nifty_options : dict, optional
        Keyword arguments of :func:`nifty_fishernet.latent_posterior` (default 3 KL
        iterations and ``max(10, d + 2)`` sample pairs, since the mirrored samples of
        ``n_samples`` pairs span only ``n_samples`` directions).
    progress : bool
        Show a progress bar over the stages.
    finished : MutableMapping, optional
        Rows of stages already measured (read with ``get``), by stage name (e.g. ``"simulated mgvi"``), read
        before and written after each stage whose rows do not depend on another's random
        numbers: the Gaussian methods on the simulated and on the real data (one stage
        each), each NIFTy method on the simulated and on the real data, and the exact
        reference's SBC (:func:`calibration_stages` names them). A run killed midway
        and given the same mapping again (e.g. a
        :meth:`~nifty_fishernet.cache.ResultCache.stages`, kept on disk) resumes after its
        last finished stage with the result a single run gives. The caller keys it to
        everything the rows depend on (model, images, these arguments).
    reference_file : path-like, optional
        An HDF5 file that keeps the exact posterior of the real images
        (:func:`~.exact.save_exact_posterior`): read back where it holds the one of this
        model, these images and ``exact_options``, else computed and written there (a file
        of other data or a damaged one is recomputed, with a warning). With ``finished``, a
        part killed in a NIFTy stage on the real images resumes without computing it again
        (20 minutes or more for a ConvVAE on 200 images).
    nifty_checkpoints : path-like, optional
        A folder in which each NIFTy stage keeps its state after every global KL iteration
        (``<stage>.h5``, e.g. ``simulated-geovi.h5``; removed when the stage finishes), so
        that a part killed midway through a stage of hours resumes after its last finished
        iteration with the rows an uninterrupted run gives (their ``seconds_per_datum``
        count the earlier runs' time too). The caller keys it like ``finished``.
    only : collection of str, optional
        Measure just these stages (names of :func:`calibration_stages`, e.g.
        ``{"simulated exact reference", "real mgvi"}``) where ``finished`` lacks them, keep
        them there (``"real exact reference"`` in ``reference_file``) and return None: one
        calibration's stages run in separate processes (one per core), and a later call
        without ``only`` reads them all back, giving the result a single run gives. Stages
        this calibration has not (the exact reference's SBC at ``d <= 3``, the real stages
        with ``n_real=0``) are passed over.

    Returns
    -------
    dict or None
        ``latent_dim``, ``noise_std``, ``simulated`` (per method: ``coverage`` at 68 / 95,
        ``rank_histogram`` ``(d, bins)``, ``seconds_per_datum``, and for importance-sampled
        refinements the ``ess`` quantiles of their draws, and a further entry named
        ``name + HPD_SUFFIX`` for the posterior's own highest-density regions given by the
        same weighted draws (the truth's rank by energy, :func:`~.sbc.hpd_ranks`; its
        ``rank_histogram`` has one row); plus ``exact reference``,
        the SBC of the exact posterior itself for ``d > 3`` where it is importance-sampled),
        ``real`` (per method: ``mass_68``, ``mass_95``, ``kl_pq``, ``kl_qp``,
        ``mean_error_sigma`` as mean / median / 10 % / 90 % over images; the HPD entries
        only ``mass_68``, ``mass_95``, the exact mass inside those regions; plus the exact
        posterior's ``method``, ``edge_mass`` or ``ess``, how many images have a lower mode
        than the encoder's or other modes, and for the grid the mass of modes outside it)
        and ``lower_bound`` (quantiles of
        the generalised eigenvalues, the fraction below 1). The rows of the stages kept in
        ``finished`` are JSON values (:func:`~nifty_fishernet.io.jsonable`: NaN as None),
        whether measured now or read back. None where ``only`` is given.
    """
    methods = dict(DEFAULT_METHODS if methods is None else methods)
    unknown = set(nifty) - set(NIFTY_METHODS)
    if unknown:
        raise ValueError(f"unknown NIFTy methods {sorted(unknown)}; known: {NIFTY_METHODS}")
    with_reference = model.latent_dim > 3 and int(n_reference) > 0
    if only is not None:
        only = {only} if isinstance(only, str) else set(only)
        known = calibration_stages(nifty)
        if only - set(known):
            raise ValueError(f"unknown calibration stages {sorted(only - set(known))}; with "
                             f"nifty={tuple(nifty)} the stages are {known}")
        if finished is None:
            raise ValueError("only= measures stages to keep: pass the finished mapping "
                             "that keeps them")
        if "real exact reference" in only and n_real and reference_file is None:
            raise ValueError("only= 'real exact reference' is kept in reference_file: "
                             "pass one")
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    out = {"latent_dim": model.latent_dim, "noise_std": model.noise_std,
           "n_simulated": int(n_simulated), "n_real": int(n_real), "simulated": {}, "real": {}}
    truth, x = simulate(model, n_simulated, seed)
    total = (len(methods) + len(nifty) + int(with_reference)
             + (1 + len(nifty) if n_real else 0))
    bar = tqdm(total=total,
               desc=f"calibration {type(model).__name__} d={model.latent_dim}",
               disable=not progress, leave=False)
    with torch.no_grad():
        truth_energy = _batched((x, truth), batch_size,
                                lambda part, z: (model.energy(part, z),))[0]
    finished = {} if finished is None else finished

    def stage(name, measure, steps=1):
        # a stage's rows are measured once and kept in ``finished`` (with ``only``: just
        # the stages named there; the others stay None)
        rows = finished.get(name)
        if rows is None and (only is None or name in only):
            rows = finished[name] = jsonable(measure())
        bar.update(steps)
        return rows

    def gaussian_rows():
        # one stage: the methods draw from one generator in turn
        rows = {}
        for name, options in methods.items():
            began = time.perf_counter()
            with torch.no_grad():
                mean, cov, ess, hpd = _batched((x, truth_energy), batch_size,
                                               _summaries(model, options), name, progress)
            seconds = (time.perf_counter() - began) / x.shape[0]
            draws = _gaussian_draws(mean, cov, rank_draws, generator)
            rows[name] = {
                "coverage": _coverage(gaussian_coverage(mean, cov, truth)),
                "rank_histogram": rank_histogram(sbc_ranks(draws, truth), bins).tolist(),
                "seconds_per_datum": seconds}
            if torch.isfinite(ess).all():
                rows[name]["ess"] = _quantiles(ess.cpu().numpy())
            if torch.isfinite(hpd).all():
                # the same draws, judged by the posterior's own highest-density regions
                ranks = hpd.numpy()[:, None]
                rows[name + HPD_SUFFIX] = {
                    "coverage": _coverage(ranks < np.asarray(LEVELS)),
                    "rank_histogram": rank_histogram(ranks, bins).tolist(),
                    "seconds_per_datum": seconds}
        return rows

    out["simulated"].update(stage("simulated gaussian", gaussian_rows, len(methods)) or {})
    # mirrored samples span n_samples directions: the real-image comparison needs a
    # covariance of full rank
    nifty_settings = dict(n_samples=max(10, model.latent_dim + 2), total_iterations=3,
                          seed=int(seed))
    nifty_settings.update(nifty_options or {})
    if nifty and n_real and nifty_settings["n_samples"] < model.latent_dim:
        raise ValueError(f"NIFTy's {2 * nifty_settings['n_samples']} mirrored samples span "
                         f"only {nifty_settings['n_samples']} of the {model.latent_dim} latent "
                         f"directions: pass nifty_options n_samples >= {model.latent_dim} "
                         f"(or n_real=0)")

    def run_nifty(method, data, name):
        # returns the posterior and the seconds earlier runs of the stage spent on it
        from ..nifty import latent_posterior
        from ..nifty.kl_state import kl_progress

        checkpoint = (None if nifty_checkpoints is None else
                      Path(nifty_checkpoints) / f"{name.replace(' ', '-')}.h5")
        earlier = 0.0 if checkpoint is None else kl_progress(checkpoint)[1]
        settings = dict(nifty_settings)
        given = settings.pop("callback", None)
        # a stage runs for hours at large d: show its global KL iterations
        iterations = tqdm(total=settings["total_iterations"], desc=f"{name}, KL iterations",
                          disable=not progress, leave=False)

        def callback():
            iterations.update()
            if given is not None:
                given()

        try:
            return latent_posterior(model, data.double().cpu().numpy(), method,
                                    checkpoint=checkpoint, callback=callback,
                                    **settings), earlier
        finally:
            iterations.close()

    def nifty_simulated_row(method):
        began = time.perf_counter()
        subset = slice(0, min(int(n_nifty), x.shape[0]))
        result, earlier = run_nifty(method, x[subset], f"simulated {method}")
        seconds = (earlier + time.perf_counter() - began) / (subset.stop or 1)
        draws = torch.from_numpy(result.latent_draws())
        return {
            "coverage": _coverage(sample_coverage(draws, truth[subset])),
            "rank_histogram": rank_histogram(sbc_ranks(draws, truth[subset]), bins).tolist(),
            "seconds_per_datum": seconds, "n": int(subset.stop), "draws": int(draws.shape[0])}

    for method in nifty:
        out["simulated"][method] = stage(f"simulated {method}",
                                         lambda: nifty_simulated_row(method))
    options = dict(exact_options or {})
    options.setdefault("seed", int(seed))

    def reference_row():
        # the exact reference itself: does importance sampling find the posterior?
        subset = slice(0, min(int(n_reference), x.shape[0]))
        reference = exact_posterior(model, x[subset], **options)
        weights = reference.log_weights.exp()
        return {
            "coverage": _coverage(sample_coverage(reference.points, truth[subset],
                                                  weights=weights)),
            "rank_histogram": rank_histogram(sbc_ranks(reference.points, truth[subset],
                                                       weights), bins).tolist(),
            "ess": _quantiles(reference.ess.numpy()), "n": int(subset.stop)}

    if with_reference:
        out["simulated"]["exact reference"] = stage("simulated exact reference",
                                                    reference_row)
    real_stages = {name for name in calibration_stages(nifty) if name.startswith("real ")}
    if n_real and (only is None or only & real_stages):
        real = torch.as_tensor(np.asarray(real_images[:n_real]), dtype=model.dtype,
                               device=model.device)
        exact = _real_reference(model, real, options, reference_file)
        out["real"]["exact"] = {
            "method": exact.method,
            # modes the encoder's mean does not lead to: the reference is centred on the
            # lowest found, and samples around the others within its margin
            "images_with_lower_mode": int(exact.lower_mode.sum()),
            "images_with_other_modes": int((exact.other_modes > 0).sum())}
        if exact.off_grid_mass is not None:
            out["real"]["exact"].update(
                off_grid_mass_max=float(exact.off_grid_mass.max()),
                images_with_off_grid_mass_over_1_percent=int(
                    (exact.off_grid_mass > 0.01).sum()))
        if exact.edge_mass is not None:
            out["real"]["exact"].update(
                edge_mass_max=float(exact.edge_mass.max()),
                images_with_edge_mass_over_1_percent=int((exact.edge_mass > 0.01).sum()),
                spacing_sigma=exact.spacing)
        if exact.ess is not None:
            out["real"]["exact"]["ess"] = _quantiles(exact.ess.numpy())

        def real_gaussian_rows():
            # one stage: the refinements' draws on the real images (half an hour or more
            # for a ConvVAE at d >= 15), kept so that a part killed later resumes after it
            rows = {}
            for name, method_options in methods.items():
                refined = _refined(model, method_options)
                with torch.no_grad():
                    result = None if refined is None else refined(real)
                    mean, cov = ((result.mean, result.covariance) if result is not None else
                                 _posterior_of(model, method_options)(real))
                metrics = compare_to_exact(model, real, exact, mean, cov, seed=seed)
                rows[name] = {key: _quantiles(value) for key, value in metrics.items()}
                if result is not None and result.draw_energy is not None:
                    rows[name + HPD_SUFFIX] = {
                        f"mass_{round(100 * level)}": _quantiles(exact_mass_below(
                            exact, result.energy_threshold(level))) for level in LEVELS}
            return rows

        out["real"].update(stage("real gaussian", real_gaussian_rows) or {})

        def nifty_real_row(method):
            # a sampled posterior, judged here by the Gaussian of its samples' moments
            result, _ = run_nifty(method, real, f"real {method}")
            metrics = compare_to_exact(model, real, exact, torch.from_numpy(result.mean),
                                       torch.from_numpy(result.covariance), seed=seed)
            return {key: _quantiles(value) for key, value in metrics.items()}

        for method in nifty:
            out["real"][method] = stage(f"real {method}", lambda: nifty_real_row(method))
        eigenvalues = lower_bound_eigenvalues(exact.covariance, exact.laplace_covariance)
        out["lower_bound"] = {**_quantiles(eigenvalues),
                              "fraction_below_1": float(np.mean(eigenvalues < 1))}
    bar.close()
    return None if only is not None else out


def calibration_stages(nifty=NIFTY_METHODS, reference=True, real=True):
    """The names of :func:`calibrate`'s stages, in the order it runs them.

    Parameters
    ----------
    nifty : sequence of {"mgvi", "geovi"}
        The NIFTy methods calibrated.
    reference : bool
        Whether the exact reference's own SBC runs (``d > 3`` and ``n_reference > 0``).
    real : bool
        Whether real images are compared with their exact posteriors (``n_real > 0``).

    Returns
    -------
    list of str
        The names under which :func:`calibrate` keeps the stages in ``finished`` (and
        ``"real exact reference"``, kept in its ``reference_file``), as its ``only`` takes
        them.
    """
    names = ["simulated gaussian", *(f"simulated {method}" for method in nifty)]
    if reference:
        names.append("simulated exact reference")
    if real:
        names += ["real exact reference", "real gaussian", *(f"real {m}" for m in nifty)]
    return names


def _real_reference(model, real, options, path):
    """The exact posterior of the real images, kept in the file ``path`` (None: not kept)."""
    key = None
    if path is not None:
        key = fingerprint("exact posterior", model, real, options)
        try:
            return load_exact_posterior(path, key)
        except FileNotFoundError:
            pass
        except FileFormatError as err:
            warnings.warn(f"{err}; computing it again", RuntimeWarning, stacklevel=3)
    exact = exact_posterior(model, real, refined=model.refined_posterior(real), **options)
    if path is not None:
        save_exact_posterior(path, exact, key)
    return exact


def recalibrate(model, real_images, entry, methods=None, seed=0, **options):
    """``entry``, a :func:`calibrate` result of the same ``model``, images, ``seed`` and
    options, with its Gaussian ``methods`` (default :data:`DEFAULT_METHODS`) measured
    again and its NIFTy rows and the exact reference's own SBC kept: for a change that
    alters only the Gaussian methods' rows (a refinement's default, a row they gain), at a
    fraction of the cost, since MGVI and geoVI dominate a full run.

    Every method of ``methods`` runs again, in order, before anything else, as in
    :func:`calibrate`: they draw the same random numbers, so their rows (and the exact
    posterior of the real images, the lower-bound eigenvalues) equal those of a full run.

    Parameters
    ----------
    model, real_images, seed
        As in :func:`calibrate`.
    methods : dict, optional
        The Gaussian methods ``entry`` was measured with (default :data:`DEFAULT_METHODS`):
        all of them, in their order, or their random numbers differ from a full run's.
    entry : dict
        The stored result; not modified.
    **options
        Further keyword arguments of :func:`calibrate` (``n_simulated``, ``n_real``,
        ``exact_options``, ...) as the stored result was measured with; ``nifty`` and
        ``n_reference`` are not among them (their rows are kept).

    Returns
    -------
    dict
        A new result: ``entry`` with the rows of ``methods`` (and their highest-density rows),
        the real images' ``exact`` summary and ``lower_bound`` replaced.
    """
    for name in ("nifty", "n_reference", "n_nifty", "nifty_options"):
        if name in options:
            raise ValueError(f"recalibrate keeps the NIFTy rows and the exact reference of "
                             f"the stored entry: {name!r} is not an option here")
    for count in ("n_simulated", "n_real"):
        if count in options and int(options[count]) != entry[count]:
            raise ValueError(f"the stored entry was measured with {count} = {entry[count]}, "
                             f"not {options[count]}")
    if model.latent_dim != entry["latent_dim"]:
        raise ValueError(f"the stored entry is of a d = {entry['latent_dim']} model, this one "
                         f"has d = {model.latent_dim}")
    fresh = calibrate(model, real_images, methods=methods, nifty=(), n_reference=0,
                      seed=seed, **options)
    updated = copy.deepcopy(entry)
    for part in ("simulated", "real"):
        updated[part].update(fresh[part])
    if "lower_bound" in fresh:
        updated["lower_bound"] = fresh["lower_bound"]
    return updated
