"""Dense ReLU network with a fused forward pass for its Jacobian."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fisher import FusedJacobian

__all__ = ["MLP"]


class MLP(nn.Module, FusedJacobian):
    """``in_features -> hidden x layers -> out_features`` with ReLU between dense layers.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden : int
        Width of each hidden layer (448 in the paper's Table 2).
    layers : int
        Number of hidden layers (3 in Table 2).
    output_activation : {None, "sigmoid"}
        Applied to the last dense layer's output.
    """

    def __init__(self, in_features, out_features, hidden=448, layers=3, output_activation=None):
        super().__init__()
        if output_activation not in (None, "sigmoid"):
            raise ValueError(f"output_activation must be None or 'sigmoid', "
                             f"got {output_activation!r}")
        widths = [in_features] + [hidden] * layers + [out_features]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output_activation = output_activation

    def forward(self, x):
        for linear in self.linears[:-1]:
            x = torch.relu(linear(x))
        x = self.linears[-1](x)
        return torch.sigmoid(x) if self.output_activation == "sigmoid" else x

    def forward_with_jacobian(self, x):
        """Value and transposed Jacobian in one pass, by explicit batched tangents.

        Row ``j`` of the tangent block carries ``dh/dx_j`` through the network next to the
        value, so each dense layer costs one ``(B*d, n_in) @ (n_in, n_out)`` product instead
        of ``d`` separate forward-mode passes (about half the cost of ``jacfwd`` + ``vmap``).

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, d)``.

        Returns
        -------
        value : torch.Tensor
            Shape ``(B, k)``.
        jt : torch.Tensor
            ``J^T``, shape ``(B, d, k)``; differentiable like any other torch expression.
        """
        last = len(self.linears) - 1
        h = x
        tangent = None
        for i, linear in enumerate(self.linears):
            h = linear(h)
            # First layer: d/dx (W x) = W^T for every batch element; no product needed.
            tangent = (linear.weight.t().unsqueeze(0) if tangent is None
                       else F.linear(tangent, linear.weight))
            if i < last:
                h = torch.relu(h)
                # ReLU'(a) = 1[a > 0], matching torch's relu gradient at 0. In place: the
                # product's backward needs its inputs, not this output.
                active = (h > 0).to(h.dtype).unsqueeze(1)
                tangent = tangent * active if i == 0 else tangent.mul_(active)
        if self.output_activation == "sigmoid":
            h = torch.sigmoid(h)
            slope = (h * (1 - h)).unsqueeze(1)
            # With no hidden layer the tangent is still a view of the weight: never write to it.
            tangent = tangent * slope if last == 0 else tangent.mul_(slope)
        return h, tangent.expand(x.shape[0], -1, -1)
