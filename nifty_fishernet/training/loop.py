"""Adam on a model's ``loss``: one epoch (:func:`train_epoch`), the per-epoch test
(:func:`evaluate`), and the whole run with resuming and callbacks (:func:`train`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import FORMAT_VERSION, load_checkpoint, save
from ..distributed import LossModule, distributed_session
from ..metrics.mse import reconstruction_mse
from ..validation import EVALUATION_BATCH, as_model_input
from .callbacks import CheckpointWriter, DivergenceGuard, ProgressReport, TrainingState
from .config import TrainingConfig, epoch_seed

__all__ = ["train", "train_epoch", "evaluate", "resolve_device", "HISTORY_KEYS"]

HISTORY_KEYS = ("epoch", "train_loss", "test_loss", "test_mse", "noise_std", "seconds")

#: The epoch index of the test loss's fixed random stream.
TEST_STREAM = -1


def resolve_device(device="auto"):
    """``"auto"`` is CUDA when available, else CPU; anything else goes to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _generator(seed, epoch, device):
    # One stream per (seed, epoch): a resumed run draws exactly what an uninterrupted one does.
    gen = torch.Generator(device=device)
    gen.manual_seed(epoch_seed(seed, epoch))
    return gen


def parameter_groups(model, lr, noise_lr):
    """Adam parameter groups: the network, and the learned noise parameter on its own lr."""
    noise = [p for name, p in model.named_parameters() if name.startswith("noise.")]
    network = [p for name, p in model.named_parameters() if not name.startswith("noise.")]
    groups = [{"params": network, "lr": float(lr)}]
    if noise:
        groups.append({"params": noise, "lr": float(lr if noise_lr is None else noise_lr)})
    return groups


def train_epoch(state, step_loss, images, context, callbacks, progress=True):
    """One pass over ``images`` in a seeded order; returns the mean training loss.

    Parameters
    ----------
    state : TrainingState
        Model, optimizer, config and the epoch to run (``state.epoch``).
    step_loss : torch.nn.Module
        The model's loss as a module (possibly wrapped by DistributedDataParallel).
    images : torch.Tensor
        All training data on the training device.
    context : nifty_fishernet.distributed.DistributedContext
    callbacks : sequence of Callback
        Told when the loss becomes non-finite (before anything is updated with it).
    """
    model, optimizer, config = state.model, state.optimizer, state.config
    n_data, batch_size = images.shape[0], config.batch_size
    n_batches = -(-n_data // batch_size)
    order = torch.randperm(n_data, generator=torch.Generator().manual_seed(
        epoch_seed(config.seed, state.epoch))).to(images.device)
    noise = _generator(config.seed, state.epoch, images.device)
    model.train()
    running = 0.0
    bar = tqdm(range(n_batches), desc=f"{state.name} epoch {state.epoch + 1}/{config.epochs}",
               disable=not progress, leave=False)
    for step in bar:
        batch = images[order[step * batch_size:(step + 1) * batch_size]]
        if batch.shape[0] < context.world:
            continue  # a last partial batch too small to give every process a share
        loss = step_loss(context.shard(batch), n_data=n_data, generator=noise)
        value = context.mean(loss.item())
        if not np.isfinite(value):
            for callback in callbacks:
                callback.diverged(state, step, value)
            raise RuntimeError(f"{state.name}: non-finite loss ({value}) and no callback "
                               f"stopped the training")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += value
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{value:.4g}", noise=f"{model.noise_std:.4g}")
    return running / n_batches


@torch.no_grad()
def evaluate(model, images, n_data, seed, batch_size=EVALUATION_BATCH):
    """The test loss (the training objective with a fixed random stream, per datum) and the
    test MSE (Eq. 32-33, from the encoder mean) of ``model`` on ``images``."""
    model.eval()
    generator = _generator(seed, TEST_STREAM, images.device)
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        total += float(model.loss(x, n_data=n_data, generator=generator)) * x.shape[0]
    return dict(test_loss=total / images.shape[0], test_mse=reconstruction_mse(model, images))


def _resume(model, optimizer, config, checkpoint, change_settings, writes):
    """Load ``checkpoint`` into model and optimizer; returns ``(history, changes)``. A file
    of an older format is written again as it is (if this process ``writes``), so that its
    next reader gets the integrity hash and no warning."""
    saved = load_checkpoint(checkpoint, model_type=type(model))
    if saved.model.config != model.config:
        raise ValueError(f"checkpoint {checkpoint} holds a {type(model).__name__} with "
                         f"config {saved.model.config}, not {model.config}")
    record = saved.training_state or {}
    # version 0.1 stored the settings at the top level, without the number of data
    saved_config = record.get("config", record)
    differences = config.differences(saved_config)
    if differences and not change_settings:
        raise ValueError(
            f"checkpoint {checkpoint} was trained with other settings: "
            f"{'; '.join(differences)}. Pass the checkpoint's settings to continue it, "
            f"resume=False to start afresh, or change_settings=True to continue with the new "
            f"ones (recorded in the checkpoint)")
    model.load_state_dict(saved.model.state_dict())
    if saved.optimizer_state is not None:
        groups = len(saved.optimizer_state["param_groups"])
        if groups != len(optimizer.param_groups):
            raise ValueError(f"checkpoint {checkpoint} holds an optimizer with {groups} "
                             f"parameter groups, this version uses "
                             f"{len(optimizer.param_groups)} (network, noise); it was "
                             f"written by an older version: retrain or delete it")
        wanted = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(saved.optimizer_state)  # Adam's moments and step counts
    if writes and saved.format_version < FORMAT_VERSION:
        save(checkpoint, model, optimizer if saved.optimizer_state is not None else None,
             history=saved.history, training_state=saved.training_state)
    if saved.optimizer_state is not None:
        for group, lr in zip(optimizer.param_groups, wanted):
            group["lr"] = lr  # the rates of this run, also where they changed
    history = {key: list(saved.history.get(key, [])) for key in HISTORY_KEYS}
    changes = list(record.get("changes", []))
    if differences:
        changes.append(dict(after_epoch=len(history["epoch"]), changed=differences))
    return history, changes


def train(model, train_images, test_images, epochs, batch_size=64, lr=1e-4, device="auto",
          seed=0, checkpoint=None, progress=True, noise_lr=None, resume=True,
          value_range=(0.0, 1.0), change_settings=False, callbacks=()):
    """Train a model with Adam and evaluate it on the test set after every epoch.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained in place (and left on ``device``).
    train_images, test_images : numpy.ndarray, torch.Tensor or nested lists
        ``(p, k)`` floating-point images in [0, 1] (numpy and torch alike, any float dtype).
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
        Show a tqdm bar with the loss and the noise level, and a line per epoch.
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
    change_settings : bool
        Resuming a checkpoint trained with another ``batch_size``, ``lr``, ``noise_lr``,
        ``seed`` or number of training data is an error naming the differences, unless this
        is True: then training continues with the new settings (the optimizer uses the new
        learning rates, Adam's moments are kept) and the checkpoint records each change with
        the epoch it took effect (``training_state["changes"]``).
    callbacks : sequence of Callback
        Called after the defaults (:class:`DivergenceGuard`, :class:`ProgressReport` if
        ``progress``, :class:`CheckpointWriter` if ``checkpoint``) at every epoch's start and
        end.

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
    shards); only rank 0 shows progress and writes the checkpoint. The process group is
    joined here and left at the end unless the caller had joined it already.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite. The model and optimizer are restored to their state
        after the last completed epoch, which is also what the checkpoint file holds.
    """
    device = resolve_device(device)
    train_x = as_model_input(train_images, model, "train_images", value_range)
    test_x = as_model_input(test_images, model, "test_images", value_range)
    config = TrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr, noise_lr=noise_lr,
                            seed=seed, n_train=train_x.shape[0])
    with distributed_session(device) as context:
        device = context.device(device)
        if config.batch_size < context.world:
            raise ValueError(f"batch_size {batch_size} is smaller than the {context.world} "
                             f"processes it is split across")
        train_x, test_x = train_x.to(device), test_x.to(device)
        model.to(device)
        optimizer = torch.optim.Adam(parameter_groups(model, config.lr, config.noise_lr),
                                     lr=config.lr)
        history, changes = {key: [] for key in HISTORY_KEYS}, []
        if resume and checkpoint is not None and Path(checkpoint).exists():
            history, changes = _resume(model, optimizer, config, checkpoint, change_settings,
                                       writes=context.is_main)
        state = TrainingState(model, optimizer, config, history, changes=changes)
        progress = progress and context.is_main
        everyone = [DivergenceGuard(checkpoint)]
        everyone += [ProgressReport()] if progress else []
        everyone += [CheckpointWriter(checkpoint)] if checkpoint is not None and \
            context.is_main else []
        everyone += list(callbacks)

        step_loss = LossModule(model)
        if context.active:
            step_loss = torch.nn.parallel.DistributedDataParallel(
                step_loss, device_ids=[device.index] if device.type == "cuda" else None)
        for epoch in range(len(history["epoch"]), config.epochs):
            state.epoch = epoch
            for callback in everyone:
                callback.epoch_started(state)
            start = time.perf_counter()
            train_loss = train_epoch(state, step_loss, train_x, context, everyone, progress)
            seconds = time.perf_counter() - start
            tested = evaluate(model, test_x, config.n_train, config.seed)
            for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, tested["test_loss"],
                                                 tested["test_mse"], model.noise_std, seconds)):
                history[key].append(value)
            for callback in everyone:
                callback.epoch_finished(state)
    return history
