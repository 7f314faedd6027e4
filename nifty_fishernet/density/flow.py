"""A normalizing flow in latent space (zuko's neural spline flow), trained by held-out likelihood."""

from __future__ import annotations

import numpy as np
import torch

from .base import LatentDensity, register_density

__all__ = ["FlowDensity"]


@register_density
class FlowDensity(LatentDensity):
    """A neural spline flow (``zuko.flows.NSF``) fitted by maximum likelihood.

    The latents are standardised (per-axis mean and std, kept with the fit), a fraction is
    held out, and training stops at the epoch of the best held-out log-likelihood, whose
    weights are kept. Costs grow with ``d`` only through the network width, so it serves
    every d (the paper's open problem at d = 10-20).

    Parameters
    ----------
    transforms : int
        Autoregressive spline transforms.
    bins : int
        Spline bins per transform.
    hidden : int
        Width of each of the two hidden layers of the transforms' networks.
    epochs : int
        At most this many passes over the training part.
    batch_size : int
    lr : float
        Adam's learning rate.
    held_out : float
        Fraction of the latents for early stopping.
    patience : int
        Epochs without a better held-out likelihood before stopping.
    seed : int
        Seeds the split, the initial weights, the minibatches and nothing else (sampling
        takes its own generator).

    Attributes
    ----------
    history : list of float
        Held-out mean log-density (standardised coordinates) per epoch.
    best_epoch : int
    """

    def __init__(self, transforms=3, bins=8, hidden=64, epochs=200, batch_size=256, lr=3e-3,
                 held_out=0.2, patience=20, seed=0):
        for name, value in (("transforms", transforms), ("bins", bins), ("hidden", hidden),
                            ("epochs", epochs), ("batch_size", batch_size),
                            ("patience", patience)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.transforms, self.bins, self.hidden = int(transforms), int(bins), int(hidden)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.held_out, self.patience, self.seed = float(held_out), int(patience), int(seed)
        self._flow = None

    def _build(self, d):
        import zuko

        # zuko draws its autoregressive orders from torch's global generator: seed it here
        # so that a loaded flow has the structure of the saved one
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return zuko.flows.NSF(d, transforms=self.transforms, bins=self.bins,
                                  hidden_features=(self.hidden, self.hidden)).double()

    def _fit(self, latents):
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(latents))
        n_held = max(1, int(round(self.held_out * len(latents))))
        if len(latents) - n_held < 2:
            raise ValueError(f"{len(latents)} latents are too few to fit a flow")
        self.shift = latents.mean(0)
        self.scale = latents.std(0) + 1e-12
        white = torch.from_numpy((latents - self.shift) / self.scale)
        train, held = white[order[n_held:]], white[order[:n_held]]
        flow = self._build(latents.shape[1])
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr)
        best, best_state, waited = -np.inf, None, 0
        self.history = []
        for epoch in range(self.epochs):
            flow.train()
            for batch in torch.randperm(len(train), generator=generator).split(self.batch_size):
                loss = -flow().log_prob(train[batch]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                score = float(flow().log_prob(held).mean())
            self.history.append(score)
            if score > best:
                best, waited, self.best_epoch = score, 0, epoch
                best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        flow.load_state_dict(best_state)
        self._flow = flow.eval()

    def _log_density(self, latents):
        white = torch.from_numpy((latents - self.shift) / self.scale)
        with torch.no_grad():
            log_p = self._flow().log_prob(white).numpy()
        return log_p - np.log(self.scale).sum()

    def _sample(self, n, rng):
        # the caller's numpy generator decides the draws: base noise from it, pushed through
        # the flow's inverse
        distribution = self._flow()
        eps = torch.from_numpy(rng.standard_normal((n, self.latent_dim)))
        with torch.no_grad():
            white = distribution.transform.inv(eps)
        return white.numpy() * self.scale + self.shift

    def _state(self):
        settings = dict(transforms=self.transforms, bins=self.bins, hidden=self.hidden,
                        epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                        held_out=self.held_out, patience=self.patience, seed=self.seed)
        arrays = {"shift": self.shift, "scale": self.scale,
                  "history": np.asarray(self.history, dtype=float)}
        arrays.update({f"flow:{key}": value.detach().numpy()
                       for key, value in self._flow.state_dict().items()})
        return settings, {"best_epoch": int(self.best_epoch)}, arrays

    def _restore(self, scalars, arrays):
        self.best_epoch = int(scalars["best_epoch"])
        self.shift, self.scale = arrays["shift"], arrays["scale"]
        self.history = arrays["history"].tolist()
        flow = self._build(self.latent_dim)
        flow.load_state_dict({key[len("flow:"):]: torch.from_numpy(np.array(value))
                              for key, value in arrays.items() if key.startswith("flow:")})
        self._flow = flow.eval()
