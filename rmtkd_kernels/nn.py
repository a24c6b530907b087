"""Drop-in layers built on the fused ops."""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmtkd_kernels.ops import projected_linear_unchecked
from rmtkd_kernels.validation import allocate


class SharedInputProjection:
    """Lets the ProjectedLinears of one site (Linears that read the same tensor and share one basis, like a
    transformer's Q/K/V) compute ``x @ basis`` once per input instead of once per layer.

    Used in inference only (no autograd graph is kept alive) and in eager mode (under torch.compile each layer
    runs its fused op). The members must read the same, unmodified tensor object, which is how such sites are
    found (by tensor identity during calibration). Holds a weak reference to the last input and its projection;
    copies and pickles start empty.
    """

    def __init__(self) -> None:
        self._key: Optional[tuple] = None  # (weak ref to the input, basis parameter, its version, dtype)
        self._projected: Optional[Tensor] = None

    def project(self, source: Tensor, x: Tensor, parameter: Tensor, basis: Tensor) -> Tensor:
        """``x @ basis``, reused while the layer input ``source`` (x before any autocast cast) and the basis
        ``parameter`` (unchanged since: same version) are the same; ``basis`` is the parameter as computed with."""
        key = self._key
        if key is not None and key[0]() is source and key[1] is parameter and key[2] == parameter._version \
                and key[3] == basis.dtype:
            return self._projected
        projected = x @ basis
        self._key, self._projected = (weakref.ref(source), parameter, parameter._version, basis.dtype), projected
        return projected

    def __deepcopy__(self, memo: dict) -> "SharedInputProjection":
        return memo.setdefault(id(self), SharedInputProjection())

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _checked_basis(linear: nn.Linear, basis: Tensor, mean: Optional[Tensor], side: str) -> Tensor:
    """The basis as float64 after checking it: (d, k >= 1) with orthonormal columns, d the Linear's number of
    ``side`` ("inputs" or "outputs"); and the mean: (d,)."""
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
    dim = linear.in_features if side == "inputs" else linear.out_features
    if not isinstance(basis, Tensor) or basis.dim() != 2 or basis.shape[0] != dim or basis.shape[1] < 1:
        got = tuple(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__
        raise ValueError(f"basis: expected shape ({dim}, k) with k >= 1 for a Linear with {dim} {side}, got {got}")
    p = basis.detach().to(torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError(f"basis: expected finite values, got {int((~torch.isfinite(p)).sum())} NaN/Inf entries")
    gram_error = (p.T @ p - torch.eye(p.shape[1], dtype=torch.float64, device=p.device)).abs().max().item()
    tolerance = max(1e-4, 50 * torch.finfo(basis.dtype).eps)
    if gram_error > tolerance:
        raise ValueError(f"basis: expected orthonormal columns (PᵀP = I), max |PᵀP − I| = {gram_error:.3g}")
    if mean is not None and (not isinstance(mean, Tensor) or tuple(mean.shape) != (dim,)):
        got = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
        raise ValueError(f"mean: expected shape ({dim},), got {got}")
    if mean is not None and not torch.isfinite(mean).all():
        raise ValueError("mean: expected finite values, got NaN/Inf")
    return p


class ProjectedLinear(nn.Module):
    """y = (x @ basis) @ weightᵀ + bias: a Linear(d_in → d_out) that runs on a k-dimensional projection of x.

    Parameters: basis (d_in, k), weight (d_out, k), bias (d_out,). Built from a trained nn.Linear with
    :meth:`from_linear`; :meth:`to_linear` multiplies it back into an nn.Linear. ``backend`` forces a
    projected_linear backend (None: automatic). Under torch.autocast the layer computes in the autocast dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.backend = backend
        dtype = dtype or torch.get_default_dtype()
        self.basis = nn.Parameter(allocate("in_features", f"a {in_features} × {rank} basis", (in_features, rank),
                                           dtype, device))
        self.weight = nn.Parameter(allocate("out_features", f"a {out_features} × {rank} weight", (out_features, rank),
                                            dtype, device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.shared_input: Optional[SharedInputProjection] = None  # set for members of a shared-basis site
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random orthonormal basis and nn.Linear's default init of weight and bias (fan-in = rank)."""
        with torch.no_grad():
            nn.init.orthogonal_(self.basis)
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
            if self.bias is not None:
                bound = 1 / self.rank**0.5
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, basis: Tensor, mean: Optional[Tensor] = None, *, backend: Optional[str] = None
    ) -> "ProjectedLinear":
        """Fold an orthonormal basis P (d_in, k) into a trained Linear: y ≈ W (μ + P Pᵀ (x − μ)) + b.

        With the activation mean μ the projection acts on centered inputs, and the constant part
        W (I − P Pᵀ) μ goes into the bias, so a layer whose inputs stay near span(P) + μ is reproduced.
        """
        p = _checked_basis(linear, basis, mean, "inputs")
        d_in = linear.in_features
        w = linear.weight.detach().to(torch.float64)
        p = p.to(w.device)
        bias = linear.bias.detach().to(torch.float64) if linear.bias is not None else None
        if mean is not None:
            mu = mean.detach().to(device=w.device, dtype=torch.float64)
            residual = w @ (mu - p @ (p.T @ mu))
            bias = residual if bias is None else bias + residual
        layer = cls(d_in, linear.out_features, p.shape[1], bias=bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, backend=backend)
        with torch.no_grad():
            layer.basis.copy_(p)
            layer.weight.copy_(w @ p)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear_output(
        cls, linear: nn.Linear, basis: Tensor, mean: Optional[Tensor] = None, *, backend: Optional[str] = None
    ) -> "ProjectedLinear":
        """Keep a trained Linear's output in span(Q) around μ: y ≈ μ + Q Qᵀ (W x + b − μ), Q = basis (d_out, k).

        For a Linear that narrows (d_out < d_in) whose outputs span few directions: as a ProjectedLinear its
        basis is Wᵀ Q (d_in, k, not orthonormal), its weight Q and its bias Q Qᵀ (b − μ) + μ.
        """
        q = _checked_basis(linear, basis, mean, "outputs")
        w = linear.weight.detach().to(torch.float64)
        q = q.to(w.device)
        b = linear.bias.detach().to(torch.float64) if linear.bias is not None else torch.zeros_like(w[:, 0])
        mu = mean.detach().to(device=w.device, dtype=torch.float64) if mean is not None else torch.zeros_like(b)
        layer = cls(linear.in_features, linear.out_features, q.shape[1], bias=True, device=linear.weight.device,
                    dtype=linear.weight.dtype, backend=backend)
        with torch.no_grad():
            layer.basis.copy_(w.T @ q)
            layer.weight.copy_(q)
            layer.bias.copy_(q @ (q.T @ (b - mu)) + mu)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        # Each parameter is read once: a module attribute lookup costs ~0.5 µs, and at batch 1 a layer's whole
        # CPU time is ~30 µs, so the forward's overhead is a visible share of a compressed model's latency.
        parameter, weight, bias = self.basis, self.weight, self.bias
        fits = isinstance(x, Tensor) and x.ndim > 0 and x.shape[-1] == self.in_features and x.device == parameter.device
        autocast = fits and torch.is_autocast_enabled(x.device.type)
        if not fits or (x.dtype != parameter.dtype and not autocast):
            raise self._bad_input(x, parameter)
        source, basis = x, parameter
        if autocast:
            dtype = torch.get_autocast_dtype(x.device.type)
            x, basis, weight = x.to(dtype), basis.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        if self.shared_input is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return F.linear(self.shared_input.project(source, x, parameter, basis), weight, bias)
        return projected_linear_unchecked(x, basis, weight, bias, self.backend)

    def _bad_input(self, x: object, parameter: Tensor) -> ValueError:
        """The error for an input that does not fit this layer's parameters (shape, device, dtype)."""
        if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[-1] != self.in_features:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            return ValueError(f"x: expected a tensor of shape (..., {self.in_features}), got {got}")
        if x.device != parameter.device:
            return ValueError(f"x: expected a tensor on {parameter.device} (the layer's device), got {x.device}")
        return ValueError(f"x: expected dtype {parameter.dtype} (the layer's dtype; torch.autocast mixes dtypes), "
                          f"got {x.dtype}")

    def to_linear(self) -> nn.Linear:
        """The equivalent nn.Linear (weight = W Pᵀ), e.g. to compare against or to export."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight.double() @ self.basis.double().T)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def num_parameters(self) -> int:
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None else 0)

    def flops(self, rows: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of a forward over ``rows`` rows; the bias add is not counted."""
        return 2 * rows * self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
