"""A KL minimisation's state between its global iterations, kept on disk to resume from.

MGVI or geoVI on a ConvVAE's 200 images at d = 20 runs for hours in one call. With a
``checkpoint`` file, :func:`~nifty_fishernet.nifty.variational_inference` writes what the
next global iteration starts from after each one (the expansion point, NIFTy's random state
and the time spent) and a later call on the same problem resumes there, drawing the samples
an uninterrupted run draws: the result is the same, bit for bit, on the same machine.

The file names its problem by a fingerprint of the method, the number of samples and
iterations, the seed, the start and the likelihood's energy there (so the data and the
model are part of it); a file of another problem is an error, not a silent restart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..cache import fingerprint
from ..errors import FileFormatError
from ..io import read_hdf5, read_tensors, write_hdf5, write_tensors
from .compat import describe, ift, values

__all__ = ["KLState", "kl_problem", "save_kl_state", "load_kl_state", "kl_progress"]

FORMAT = "nifty_fishernet.kl_state"
VERSION = 1


@dataclasses.dataclass
class KLState:
    """Where a KL minimisation stands after ``finished`` of its global iterations.

    Attributes
    ----------
    finished : int
        Global iterations done.
    position : ift.MultiField
        The expansion point the next iteration starts from.
    random : dict
        NIFTy's random state (:func:`~nifty_fishernet.nifty.compat.random_state`).
    seconds : float
        Wall time of the finished iterations, summed over the runs that did them.
    """

    finished: int
    position: object
    random: dict | None
    seconds: float


def kl_problem(likelihood, initial_position, method, n_samples, total_iterations, seed):
    """The fingerprint (a hex string) that ties a state file to one KL minimisation.

    It evaluates the likelihood once, at the start: its energy there stands for the data,
    the model and its weights.
    """
    energy = np.asarray(values(likelihood(initial_position)), dtype=np.float64)
    start = values(initial_position)
    return fingerprint("kl state", method, int(n_samples), int(total_iterations),
                       None if seed is None else int(seed),
                       *[part for key in sorted(start) for part in (key, np.asarray(start[key]))],
                       energy)


def save_kl_state(path, problem, state):
    """Write ``state`` (a :class:`KLState`) of ``problem`` to ``path``, atomically."""
    arrays = values(state.position)
    with write_hdf5(path, FORMAT, VERSION) as f:
        f.attrs["problem"] = str(problem)
        f.attrs["finished_iterations"] = state.finished
        f.attrs["seconds"] = state.seconds
        f.attrs["random_state"] = json.dumps(state.random)
        write_tensors(f.create_group("position"),
                      {key: np.array(arrays[key]) for key in sorted(arrays)})
    return Path(path)


def kl_progress(path):
    """``(finished iterations, seconds)`` of the state file at ``path``; ``(0, 0.0)`` if
    there is none. Checks the file as :func:`load_kl_state` does, bar its problem."""
    if not Path(path).is_file():
        return 0, 0.0
    with read_hdf5(path, FORMAT, VERSION, what="KL state file") as f:
        return int(f.attrs["finished_iterations"]), float(f.attrs["seconds"])


def load_kl_state(path, problem, domain):
    """The :class:`KLState` at ``path``, checked to be one of ``problem`` on ``domain``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FileFormatError
        Not a KL state file, damaged or edited, or the state of another problem.
    """
    with read_hdf5(path, FORMAT, VERSION, what="KL state file") as f:
        if str(f.attrs["problem"]) != str(problem):
            raise FileFormatError(
                f"{path} holds the state of another KL minimisation (other data, model, "
                f"start, method, samples, iterations or seed): remove it to start afresh")
        finished = int(f.attrs["finished_iterations"])
        seconds = float(f.attrs["seconds"])
        random = json.loads(str(f.attrs["random_state"]))
        arrays = {key: tensor.numpy() for key, tensor in read_tensors(f["position"]).items()}
    if set(arrays) != set(domain.keys()) or any(
            arrays[key].shape != domain[key].shape for key in arrays):
        raise FileFormatError(
            f"{path} holds a position with keys and shapes "
            f"{ {key: a.shape for key, a in arrays.items()} }, not on {describe(domain)}")
    position = ift.MultiField.from_dict(
        {key: ift.makeField(domain[key], arrays[key]) for key in arrays}, domain=domain)
    return KLState(finished, position, random, seconds)
