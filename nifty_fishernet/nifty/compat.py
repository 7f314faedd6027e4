"""Which NIFTy the bridge runs on: ``nifty8`` 8.5.x (the default) or NIFTy 9's ``nifty.cl``.

Both generations have the same classic API; the bridge imports NIFTy from here only::

    from nifty_fishernet.nifty import ift

Choose with the environment variable ``NIFTY_FISHERNET_NIFTY`` (``nifty8`` or ``nifty.cl``),
set before the package is imported. Unset, ``nifty8`` is used when it is installed, else
``nifty.cl``. The two differences the bridge meets:

- a ``nifty.cl`` Field holds an ``AnyArray`` (numpy or cupy), read with ``.asnumpy()``, where a
  ``nifty8`` Field holds a numpy array: :func:`values` reads either;
- ``nifty.cl``'s ``optimize_kl`` takes ``nonlinear_sampling_minimizer`` by keyword only.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np

__all__ = ["ift", "NIFTY", "NIFTY_VERSION", "ENVIRONMENT_VARIABLE", "values", "is_field", "describe",
           "hamiltonian_options", "iteration_randomness", "random_state", "restore_random_state"]

#: The environment variable that picks the NIFTy generation.
ENVIRONMENT_VARIABLE = "NIFTY_FISHERNET_NIFTY"
_CHOICES = ("nifty8", "nifty.cl")


def _import_nifty():
    wanted = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if wanted and wanted not in _CHOICES:
        raise ImportError(f"{ENVIRONMENT_VARIABLE}={wanted!r}; choose one of {_CHOICES}")
    failures = []
    for name in (wanted,) if wanted else _CHOICES:
        try:
            return name, importlib.import_module(name)
        except ImportError as error:
            failures.append(f"{name}: {error}")
    raise ImportError("no NIFTy found (" + "; ".join(failures) + "). Install nifty8 "
                      "(`pip install nifty8`) or NIFTy 9 (`pip install nifty ducc0`, then "
                      f"{ENVIRONMENT_VARIABLE}=nifty.cl)")


#: The module name of the NIFTy in use: ``"nifty8"`` or ``"nifty.cl"``.
NIFTY, ift = _import_nifty()
#: Its version (``nifty.cl`` carries the version of its package ``nifty``).
NIFTY_VERSION = importlib.import_module(NIFTY.split(".")[0]).__version__


def is_field(value):
    """True for a NIFTy Field or MultiField."""
    return isinstance(value, (ift.Field, ift.MultiField))


def values(field):
    """The values of a Field as a numpy array (a read-only view where NIFTy allows one).

    A MultiField gives a dict of arrays; anything else goes through ``numpy.asarray``.
    """
    if isinstance(field, ift.MultiField):
        return {key: values(value) for key, value in field.items()}
    value = field.val if isinstance(field, ift.Field) else field
    # nifty.cl's AnyArray may live on a GPU; asnumpy copies it to the host.
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def describe(domain):
    """A one-line description of a domain for error messages (NIFTy's repr spans lines)."""
    if isinstance(domain, ift.MultiDomain):
        return "{" + ", ".join(f"{key!r}: {describe(value)}"
                               for key, value in domain.items()) + "}"
    if isinstance(domain, ift.DomainTuple):
        return "(" + ", ".join(repr(space) for space in domain) + ")"
    return repr(domain)


def hamiltonian_options(domain):
    """Keywords of ``ift.StandardHamiltonian`` for drawing prior samples on ``domain``.

    ``nifty.cl`` draws prior samples only with ``prior_sampling_dtype`` given (its
    ``optimize_kl`` passes the position's dtypes); ``nifty8`` has no such argument.
    """
    if NIFTY == "nifty8":
        return {}
    if isinstance(domain, ift.MultiDomain):
        return {"prior_sampling_dtype": {key: np.float64 for key in domain.keys()}}
    return {"prior_sampling_dtype": np.float64}


def iteration_randomness(total_iterations):
    """One random context per global KL iteration, as this NIFTy's ``optimize_kl`` has.

    ``nifty.cl``'s ``optimize_kl`` spawns a seed sequence per iteration up front and pushes
    it while the iteration runs; ``nifty8``'s draws from the running state. A loop that
    replaces ``optimize_kl`` draws the same samples only if it does the same.
    """
    if NIFTY == "nifty8":
        return [contextlib.nullcontext() for _ in range(total_iterations)]
    return [_pushed(sseq) for sseq in ift.random.spawn_sseq(total_iterations)]


@contextlib.contextmanager
def _pushed(sseq):
    ift.random.push_sseq(sseq)
    try:
        yield
    finally:
        ift.random.pop_sseq()


def random_state():
    """NIFTy's innermost random state (the top of ``ift.random``'s stack) as JSON values.

    The seed sequence on top (its entropy, spawn key, pool size and the number of children
    spawned: NIFTy draws each sample from a spawned child) and its generator's bit state.
    :func:`restore_random_state` puts it back, so that a loop continued in another process
    draws the numbers an uninterrupted one would. Read through public ``ift.random``
    functions on both NIFTy generations.
    """
    generator = ift.random.current_rng()
    sseq = generator.bit_generator.seed_seq  # the sequence push_sseq made the generator from
    if not isinstance(sseq, np.random.SeedSequence):
        raise TypeError(f"NIFTy's generator was seeded by a {type(sseq).__name__}, not a "
                        f"numpy SeedSequence: its state cannot be written down")
    entropy = sseq.entropy
    return {"entropy": entropy if isinstance(entropy, int) else [int(e) for e in entropy],
            "spawn_key": [int(k) for k in sseq.spawn_key], "pool_size": int(sseq.pool_size),
            "n_children_spawned": int(sseq.n_children_spawned),
            "generator": generator.bit_generator.state}


def restore_random_state(state):
    """Replace the top of ``ift.random``'s stack by the state :func:`random_state` read.

    The stack keeps its depth, so an enclosing ``ift.random.Context`` closes as usual.
    """
    sseq = np.random.SeedSequence(state["entropy"], spawn_key=tuple(state["spawn_key"]),
                                  pool_size=state["pool_size"],
                                  n_children_spawned=state["n_children_spawned"])
    ift.random.pop_sseq()
    ift.random.push_sseq(sseq)
    ift.random.current_rng().bit_generator.state = state["generator"]
