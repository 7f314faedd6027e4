"""One way to run NIFTy's variational inference (MGVI, geoVI, MAP) for the whole package.

:func:`variational_inference` takes NIFTy's own minimizers and iteration controllers, as
``ift.optimize_kl`` does; :func:`default_minimizers` builds the package's defaults. Latent
posteriors (:func:`~nifty_fishernet.nifty.infer_latents`) and the Matérn KDE's density fit
(:class:`~nifty_fishernet.density.MaternKDE`) both run through it.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import time
from pathlib import Path

import torch

from .blocks import BlockNewton, PreconditionedHamiltonian
from .compat import (describe, hamiltonian_options, ift, iteration_randomness, random_state,
                     restore_random_state)
from .kl_state import KLState, kl_problem, load_kl_state, save_kl_state
from .likelihood import LATENT_KEY

__all__ = ["METHODS", "default_minimizers", "variational_inference", "check_iterations",
           "LinearizedOnceKL"]

#: Metric Gaussian VI, geometric VI, maximum a posteriori (with a Laplace covariance).
METHODS = ("mgvi", "geovi", "map")


def check_iterations(total_iterations):
    """``total_iterations`` as an int >= 1, else a clear error."""
    if (isinstance(total_iterations, bool) or not isinstance(total_iterations, numbers.Integral)
            or total_iterations < 1):
        raise ValueError(f"total_iterations must be an integer >= 1, got {total_iterations!r}")
    return int(total_iterations)


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def default_minimizers(method, batch=1, tolerance=1e-4, newton_iterations=20,
                       sampling_iterations=100, nonlinear_iterations=10, blockwise=True):
    """The package's default minimizers for :func:`variational_inference`, as NIFTy objects.

    Parameters
    ----------
    method : {"mgvi", "geovi", "map"}
    batch : int
        Number of independent data points B in the problem: the absolute energy criteria
        are ``tolerance * B`` (``/ 10`` for the sampling CG), so the precision per datum does
        not depend on B.
    tolerance : float
        Energy change, in nats per datum, below which an iteration counts as converged.
    newton_iterations : int
        Iteration limit of the KL's (or the MAP's) Newton minimiser.
    sampling_iterations : int
        Iteration limit of the CG that draws the samples (MGVI, geoVI).
    nonlinear_iterations : int
        geoVI only: Newton-CG iterations of each nonlinear sample update, most of geoVI's
        cost. On the banana toy problem (30 data) 10 came as close to the grid posterior as
        20 (mean KL(p||q) 0.56 vs 0.58) in half the time; 5 did not (0.92).
    blockwise : bool
        :class:`~nifty_fishernet.nifty.blocks.BlockNewton` (exact per-datum Newton steps on
        the latent blocks) instead of ``ift.NewtonCG`` for the KL and the MAP.

    Returns
    -------
    dict
        ``kl_minimizer``, ``sampling_iteration_controller`` and
        ``nonlinear_sampling_minimizer`` (None for MGVI and MAP; the controller None for
        MAP), the keywords of ``ift.optimize_kl``.
    """
    _check_method(method)
    delta = float(tolerance) * batch
    if not delta > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    for name, value in (("newton_iterations", newton_iterations),
                        ("sampling_iterations", sampling_iterations),
                        ("nonlinear_iterations", nonlinear_iterations)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    kl_minimizer = (BlockNewton if blockwise else ift.NewtonCG)(ift.AbsDeltaEnergyController(
        delta, convergence_level=2, iteration_limit=newton_iterations, name=None))
    sampling = nonlinear = None
    if method != "map":
        sampling = ift.AbsDeltaEnergyController(delta / 10, iteration_limit=sampling_iterations,
                                                name=None)
    if method == "geovi":
        # geoVI's nonlinear sample updates keep NIFTy's Newton-CG on either path: exact
        # block Newton steps there moved geoVI away from optimize_kl's result (0.3-1.5 sigma
        # on the banana toy, KL(p||q) to the grid posterior 45 % worse).
        nonlinear = ift.NewtonCG(ift.AbsDeltaEnergyController(
            delta, convergence_level=2, iteration_limit=nonlinear_iterations, name=None))
    return {"kl_minimizer": kl_minimizer, "sampling_iteration_controller": sampling,
            "nonlinear_sampling_minimizer": nonlinear}


@contextlib.contextmanager
def _torch_threads(threads):
    """Run with ``threads`` intra-op torch threads (None: leave as is)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_nifty(verbose):
    if verbose:
        yield
        return
    logger = ift.logger
    level = logger.level
    # Iteration limits are reached by design; their warnings would drown the output.
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def variational_inference(likelihood, initial_position, method, n_samples, total_iterations,
                          kl_minimizer, sampling_iteration_controller=None,
                          nonlinear_sampling_minimizer=None, seed=0, threads=None,
                          verbose=False, callback=None, checkpoint=None):
    """MGVI, geoVI or MAP on a NIFTy likelihood, as ``ift.optimize_kl`` runs them.

    Where the likelihood has a ``"latent"`` key (B independent latent problems, maybe with
    further model parts) and the minimizer is a
    :class:`~nifty_fishernet.nifty.blocks.BlockNewton`, the samples are drawn by a
    conjugate gradient preconditioned with the latent blocks
    (:class:`~nifty_fishernet.nifty.blocks.PreconditionedHamiltonian`): the same samples,
    in a few iterations for any B. Otherwise this is ``ift.optimize_kl`` itself.

    Parameters
    ----------
    likelihood : ift.LikelihoodEnergyOperator
        On a MultiDomain; NIFTy adds the standard-normal prior on every key.
    initial_position : ift.MultiField
        Start of the optimisation, on ``likelihood.domain``.
    method : {"mgvi", "geovi", "map"}
    n_samples : int
        Antithetic sample pairs (NIFTy draws ``2 * n_samples`` mirrored samples); ignored
        for MAP.
    total_iterations : int
        Global KL iterations (new samples each).
    kl_minimizer, sampling_iteration_controller, nonlinear_sampling_minimizer
        As for ``ift.optimize_kl`` (:func:`default_minimizers` builds the defaults). geoVI
        needs the nonlinear minimizer, MGVI must not have one.
    seed : int or None
        NIFTy's random seed for the samples; None: the caller's random state (e.g. an
        ``ift.random.Context`` the caller opened).
    threads : int or None
        Intra-op torch threads during the inference (None: unchanged). NIFTy calls a torch
        network thousands of times on small inputs, between numpy operations; with several
        OpenMP threads each call pays for waking them (MGVI on one Fashion-MNIST image,
        2-core CPU: 36 s with 2 threads, 8 s with 1).
    verbose : bool
        Let NIFTy log its iterations and minisanity tables.
    callback : callable, optional
        Called after every global iteration (e.g. a progress bar's update; on a resumed run
        also once for each iteration done before).
    checkpoint : path-like, optional
        A file (HDF5, :mod:`~nifty_fishernet.nifty.kl_state`) that keeps the state after
        each global iteration but the last, so that a run stopped midway (a killed process,
        a session's end) resumes after its last finished iteration when called again on the
        same problem, with the result an uninterrupted run gives. Removed when the run
        finishes; a file of another problem is a
        :class:`~nifty_fishernet.errors.FileFormatError`. Only for the package's own KL
        loop (MGVI or geoVI on a ``"latent"`` key with a
        :class:`~nifty_fishernet.nifty.blocks.BlockNewton`); ``ift.optimize_kl`` keeps its
        own state in its ``output_directory``.

    Returns
    -------
    samples : ift.ResidualSampleList or None
        None for MAP.
    position : ift.MultiField
        The final expansion point.
    """
    _check_method(method)
    total_iterations = check_iterations(total_iterations)
    if not isinstance(initial_position, ift.MultiField) or (
            initial_position.domain != likelihood.domain):
        raise ValueError(f"the initial position must be a MultiField on the likelihood's "
                         f"domain {describe(likelihood.domain)}")
    if method == "map":
        if sampling_iteration_controller is not None or nonlinear_sampling_minimizer is not None:
            raise ValueError("MAP draws no samples: leave the sampling controllers out")
        n_samples = 0
    else:
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or \
                n_samples < 1:
            raise ValueError(f"{method} needs an integer n_samples >= 1, got {n_samples!r}")
        if sampling_iteration_controller is None:
            raise ValueError(f"{method} needs a sampling_iteration_controller")
        if (method == "geovi") != (nonlinear_sampling_minimizer is not None):
            raise ValueError("geoVI needs a nonlinear_sampling_minimizer; MGVI has none")
    random = contextlib.nullcontext() if seed is None else ift.random.Context(seed)
    blockwise = (isinstance(kl_minimizer, BlockNewton) and method != "map"
                 and LATENT_KEY in likelihood.domain.keys())
    if checkpoint is not None and not blockwise:
        raise ValueError("checkpoint resumes the package's own KL loop: MGVI or geoVI on a "
                         "likelihood with a 'latent' key and a BlockNewton kl_minimizer")
    with random, _quiet_nifty(verbose), _torch_threads(threads):
        if blockwise:
            problem = None if checkpoint is None else kl_problem(
                likelihood, initial_position, method, n_samples, total_iterations, seed)
            return _sampled_kl_loop(likelihood, initial_position, total_iterations, n_samples,
                                    kl_minimizer, sampling_iteration_controller,
                                    nonlinear_sampling_minimizer, callback,
                                    None if checkpoint is None else Path(checkpoint), problem)
        samples, position = ift.optimize_kl(
            likelihood, total_iterations, n_samples, kl_minimizer,
            sampling_iteration_controller,
            nonlinear_sampling_minimizer=nonlinear_sampling_minimizer,
            initial_position=initial_position, output_directory=None,
            plot_energy_history=False, plot_minisanity_history=False,
            return_final_position=True,
            inspect_callback=None if callback is None else (lambda *_: callback()))
    return (None if method == "map" else samples), position


class _SampleAverage(ift.EndomorphicOperator):
    """The mean of self-adjoint operators (one metric per sample)."""

    def __init__(self, operators):
        self._domain = operators[0].domain
        self._operators = operators
        self._capability = self.TIMES | self.ADJOINT_TIMES

    def apply(self, x, mode):
        self._check_input(x, mode)
        total = self._operators[0](x)
        for operator in self._operators[1:]:
            total = total + operator(x)
        return total / len(self._operators)


class LinearizedOnceKL(ift.Energy):
    """A sampled KL (``ift.SampledKLEnergy``) whose metric is linearised once per position.

    NIFTy's sampled KL linearises the Hamiltonian at every sample for every application of
    its metric, so each conjugate-gradient iteration of a Newton step re-runs the whole model
    (decoder Jacobian, FFTs). The metric at a fixed position is one linear operator: here it
    is built once per position and reused by all iterations. Values, gradients and samples
    are the wrapped energy's.
    """

    def __init__(self, energy, hamiltonian):
        super().__init__(energy.position)
        self._energy = energy
        self._hamiltonian = hamiltonian
        self._metric = None

    @property
    def value(self):
        return self._energy.value

    @property
    def gradient(self):
        return self._energy.gradient

    @property
    def samples(self):
        return self._energy.samples

    def at(self, position):
        return LinearizedOnceKL(self._energy.at(position), self._hamiltonian)

    @property
    def metric(self):
        if self._metric is None:
            self._metric = _SampleAverage([
                self._hamiltonian(ift.Linearization.make_var(sample, want_metric=True)).metric
                for sample in self._energy.samples.iterator()])
        return self._metric

    def apply_metric(self, x):
        return self.metric(x)


def _sampled_kl_loop(likelihood, position, total_iterations, n_samples, kl_minimizer,
                     sampling, nonlinear, callback, checkpoint=None, problem=None):
    """``ift.optimize_kl``'s inference steps with a :class:`PreconditionedHamiltonian`.

    Each global iteration draws new samples at the current mean (``ift.SampledKLEnergy``,
    mirrored) and minimises the sampled KL, as ``optimize_kl`` does; ``optimize_kl`` builds
    its ``StandardHamiltonian`` itself, so the preconditioned one cannot be passed to it.
    With a ``checkpoint`` file the state after each iteration is kept there and a run
    resumes from it (:func:`variational_inference`).
    """
    hamiltonian = PreconditionedHamiltonian(likelihood, sampling,
                                            **hamiltonian_options(likelihood.domain))
    samples = None
    # nifty.cl spawns every iteration's seed sequence here, before any is used, so a resumed
    # run spawns the same ones; the random state is restored after that
    contexts = iteration_randomness(total_iterations)
    done = KLState(0, position, None, 0.0)
    if checkpoint is not None and checkpoint.is_file():
        done = load_kl_state(checkpoint, problem, likelihood.domain)
        position = done.position
        restore_random_state(done.random)
    began = time.perf_counter()
    for iteration, randomness in enumerate(contexts):
        if iteration >= done.finished:
            with randomness:
                energy = ift.SampledKLEnergy(position, hamiltonian, n_samples, nonlinear,
                                             mirror_samples=True)
                energy, _ = kl_minimizer(LinearizedOnceKL(energy, hamiltonian))
            position = energy.position
            samples = energy.samples
            if checkpoint is not None and iteration + 1 < total_iterations:
                save_kl_state(checkpoint, problem, KLState(
                    iteration + 1, position, random_state(),
                    done.seconds + time.perf_counter() - began))
        if callback is not None:
            callback()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return samples, position
