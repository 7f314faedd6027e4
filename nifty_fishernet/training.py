"""Training loop: Adam on a model's ``loss``, per-epoch evaluation, checkpoints, resuming."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save
from .distributed import LossModule, distributed_context
from .metrics.mse import reconstruction_mse
from .models.base import check_data
from .errors import NiftyFishernetError

__all__ = ["train", "resolve_device", "as_images", "TrainingDivergedError"]

HISTORY_KEYS = ("epoch", "train_loss", "test_loss", "test_mse", "noise_std", "seconds")


class TrainingDivergedError(NiftyFishernetError, RuntimeError):
    """The training loss became non-finite; the model holds the last good state."""


def resolve_device(device="auto"):
    """``"auto"`` is CUDA when available, else CPU; anything else goes to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_images(images, model, name, value_range=(0.0, 1.0)):
    """``images`` (numpy, torch or a nested list) as a checked tensor in the model's dtype on
    the CPU, with every value in ``value_range`` (None: any finite values).

    Floating-point inputs of another precision are converted (numpy and torch alike); integer
    images are refused, and so are images on another scale (0-255, or -1 to 1), which would
    otherwise train silently against a decoder whose outputs lie in [0, 1].
    """
    if isinstance(images, (list, tuple)):
        images = np.asarray(images)
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(f"{name} must be floating point (scaled to [0, 1]), got dtype "
                            f"{images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images)).to(model.dtype)
    elif isinstance(images, torch.Tensor) and images.is_floating_point():
        images = images.to(model.dtype)
    check_data(images, model.data_dim, model.dtype, name)
    if value_range is not None:
        low, high = float(images.min()), float(images.max())
        if low < value_range[0] or high > value_range[1]:
            raise ValueError(f"{name} must be scaled to [{value_range[0]:g}, "
                             f"{value_range[1]:g}], got values in [{low:.4g}, {high:.4g}]: "
                             f"divide 8-bit images by 255, map [-1, 1] images by (x + 1) / 2 "
                             f"(value_range=None for data that are not images)")
    return images


def _epoch_generator(seed, epoch, device):
    # One stream per (seed, epoch): a resumed run draws exactly what an uninterrupted one does.
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return gen


@torch.no_grad()
def _mean_loss(model, images, n_data, generator, batch_size=1000):
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        total += float(model.loss(x, n_data=n_data, generator=generator)) * x.shape[0]
    return total / images.shape[0]


def _parameter_groups(model, lr, noise_lr):
    """Adam parameter groups: the network, and the learned noise parameter on its own lr."""
    noise = [p for name, p in model.named_parameters() if name.startswith("noise.")]
    network = [p for name, p in model.named_parameters() if not name.startswith("noise.")]
    groups = [{"params": network, "lr": float(lr)}]
    if noise:
        groups.append({"params": noise, "lr": float(lr if noise_lr is None else noise_lr)})
    return groups


def train(model, train_images, test_images, epochs, batch_size=64, lr=1e-4, device="auto",
          seed=0, checkpoint=None, progress=True, noise_lr=None, resume=True,
          value_range=(0.0, 1.0)):
    """Train a model with Adam and evaluate it on the test set after every epoch.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained in place (and left on ``device``).
    train_images, test_images : numpy.ndarray or torch.Tensor
        ``(p, k)`` floating-point images in [0, 1].
    epochs : int
        Total number of epochs; a resumed run continues up to this number.
    batch_size : int
        Minibatch size (64 in Table 2).
    lr : float
        Adam learning rate (1e-4 in Table 2).
    device : str or torch.device
        ``"auto"`` uses CUDA when present.
    seed : int
        Seeds the shuffling and the sampling noise of every epoch; same seed, same run.
    checkpoint : str or path-like, optional
        HDF5 file written atomically after every epoch. If it exists (and ``resume``),
        training resumes from it (weights, Adam state, history) and continues its history;
        a complete one means nothing is left to train.
    progress : bool
        Show a tqdm bar with the loss and the noise level.
    noise_lr : float, optional
        Learning rate of the learned noise parameter ``xi_N`` (default: ``lr``, as in the
        paper). Adam moves ``xi_N`` by about its learning rate per step from ``xi_N = 0``
        (noise std 1), while a trained Fashion-MNIST decoder's residuals have std ~0.17
        (``xi_N ~ -3.5``): at ``lr = 1e-3`` that takes ~3,500 steps, at the paper's 1e-4
        ~35,000 (37 of its 50 epochs). Until then the metric, and with it the latent
        covariance, is too small. A larger ``noise_lr`` (e.g. 1e-2) calibrates it within the
        first epoch; the fitted value is the same.
    resume : bool
        False starts afresh even if ``checkpoint`` exists (it is replaced after the first
        epoch, so an interrupted restart leaves the old file or a newer one, never none).
    value_range : tuple of float or None
        Every image value must lie in this range (default [0, 1], what the decoders' sigmoid
        outputs cover), so that 0-255 or [-1, 1] images are an error rather than a silently
        bad training. None accepts any finite data (e.g. simulated data with noise).

    Returns
    -------
    dict
        Lists over epochs: ``epoch``, ``train_loss``, ``test_loss`` (same objective, fixed
        noise), ``test_mse`` (Eq. 32-33, from the encoder mean), ``noise_std``, ``seconds``.

    Notes
    -----
    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), training is data-parallel with
    ``DistributedDataParallel`` (:mod:`nifty_fishernet.distributed`): every global minibatch
    of ``batch_size`` images is split across the processes, gradients are averaged, so the
    updates match a single process's (up to the noise draws, and the weighting of unequal
    shards); only rank 0 shows progress and writes the checkpoint.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite. The model and optimizer are restored to their state
        after the last completed epoch, which is also what the checkpoint file holds.
    """
    if int(epochs) < 0 or int(batch_size) < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    device = resolve_device(device)
    context = distributed_context(device)
    device = context.device(device)
    if int(batch_size) < context.world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {context.world} "
                         f"processes it is split across")
    train_x = as_images(train_images, model, "train_images", value_range).to(device)
    test_x = as_images(test_images, model, "test_images", value_range).to(device)
    model.to(device)
    optimizer = torch.optim.Adam(_parameter_groups(model, lr, noise_lr), lr=lr)
    history = {key: [] for key in HISTORY_KEYS}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint, model_type=type(model))
        if saved.model.config != model.config:
            raise ValueError(f"checkpoint {checkpoint} holds a {type(model).__name__} with "
                             f"config {saved.model.config}, not {model.config}")
        model.load_state_dict(saved.model.state_dict())
        if saved.optimizer_state is not None:
            groups = len(saved.optimizer_state["param_groups"])
            if groups != len(optimizer.param_groups):
                raise ValueError(f"checkpoint {checkpoint} holds an optimizer with {groups} "
                                 f"parameter groups, this version uses "
                                 f"{len(optimizer.param_groups)} (network, noise); it was "
                                 f"written by an older version: retrain or delete it")
            optimizer.load_state_dict(saved.optimizer_state)
        history = {key: list(saved.history.get(key, [])) for key in HISTORY_KEYS}

    step_loss = LossModule(model)
    if context.active:
        step_loss = torch.nn.parallel.DistributedDataParallel(
            step_loss, device_ids=[device.index] if device.type == "cuda" else None)
    progress = progress and context.is_main
    n_data = train_x.shape[0]
    n_batches = -(-n_data // batch_size)
    name = f"{type(model).__name__} d={model.latent_dim}"
    for epoch in range(len(history["epoch"]), int(epochs)):
        last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        shuffle = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
        order = torch.randperm(n_data, generator=shuffle).to(device)
        noise = _epoch_generator(seed, epoch, device)
        model.train()
        start, running = time.perf_counter(), 0.0
        bar = tqdm(range(n_batches), desc=f"{name} epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for step in bar:
            batch = train_x[order[step * batch_size:(step + 1) * batch_size]]
            if batch.shape[0] < context.world:
                continue  # a last partial batch too small to give every process a share
            loss = step_loss(context.shard(batch), n_data=n_data, generator=noise)
            value = context.mean(loss.item())
            if not np.isfinite(value):
                model.load_state_dict(last_good[0])
                optimizer.load_state_dict(last_good[1])
                kept = f"; checkpoint {checkpoint} keeps it" if checkpoint is not None else ""
                raise TrainingDivergedError(
                    f"{name}: non-finite loss ({value}) at epoch {epoch + 1}, step "
                    f"{step + 1}; model and optimizer restored to their state after epoch "
                    f"{epoch}{kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += value
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{value:.4g}", noise=f"{model.noise_std:.4g}")
        seconds = time.perf_counter() - start
        model.eval()
        test_loss = _mean_loss(model, test_x, n_data, _epoch_generator(seed, -1, device))
        for key, value in zip(HISTORY_KEYS, (epoch + 1, running / n_batches, test_loss,
                                             reconstruction_mse(model, test_x),
                                             model.noise_std, seconds)):
            history[key].append(value)
        if progress:
            tqdm.write(f"{name} epoch {epoch + 1}/{epochs}: train loss {running / n_batches:.5g}"
                       f"  test loss {test_loss:.5g}  test MSE {history['test_mse'][-1]:.5f}"
                       f"  noise std {model.noise_std:.4f}  ({seconds:.1f} s)")
        if checkpoint is not None and context.is_main:
            save(checkpoint, model, optimizer=optimizer, history=history,
                 training_state=dict(epochs_done=epoch + 1, seed=int(seed),
                                     batch_size=int(batch_size), lr=float(lr),
                                     noise_lr=float(lr if noise_lr is None else noise_lr)))
    return history
