"""The site protocol: what one projection serves, how it is found, observed, counted and rewritten.

A site is a group of modules that one rank-k projection of a d-dimensional activation serves (a transformer's
Q/K/V read one tensor and share one basis). Each kind of site is one subclass of :class:`Site`, registered with
:func:`register_site_kind`; nothing outside a kind's own file asks which kind a site is.

Sites are found from one traced forward pass (:class:`Trace`: every module called, in order, with the identity
of the tensor it read) and from the model's structure (which modules hold the same parameter, as a tied
embedding and LM head do). Each kind's :meth:`Site.find` turns the trace into its sites.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from rmtkd_kernels.registries import Registry


Include = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class Call:
    """A module's first call in the traced forward pass."""

    name: str
    module: nn.Module
    order: int  # position among the calls
    input_key: Optional[tuple]  # identity of the tensor it read first: (data pointer, shape, strides)


@dataclass
class Trace:
    """The modules one forward pass called, in call order, and which modules share a parameter."""

    calls: list[Call]
    shared: dict[str, list[str]]  # module name → the other modules holding one of its own parameters

    def called(self, include: Include, accepts: Callable[[nn.Module], bool]) -> list[Call]:
        """The calls of included modules that ``accepts`` takes, in call order."""
        return [c for c in self.calls if accepts(c.module) and include(c.name, c.module)]

    def is_tied(self, name: str) -> bool:
        return bool(self.shared.get(name))


def _shared_parameters(model: nn.Module) -> dict[str, list[str]]:
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(name)
    shared: dict[str, list[str]] = {}
    for names in holders.values():
        for name in names:
            shared.setdefault(name, []).extend(other for other in names if other != name)
    return {name: others for name, others in shared.items() if others}


def trace(model: nn.Module, run: Callable[[], object]) -> Trace:
    """Run ``run()`` (one forward pass of ``model``) with every module's first call recorded.

    Every input seen is kept alive until the pass ends, so the allocator cannot hand a freed tensor's memory (and
    data pointer) to a later layer's input, which would make two different inputs look like one.
    """
    calls: dict[str, Call] = {}
    alive: list[Tensor] = []
    handles = []

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if name in calls:
                return
            x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            key = None if x is None else (x.data_ptr(), tuple(x.shape), x.stride())
            if x is not None:
                alive.append(x)
            calls[name] = Call(name, module, len(calls), key)
        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return Trace(list(calls.values()), _shared_parameters(model))


def group_by_input(cls: type["Site"], calls: list[Call], dim: Callable[[nn.Module], int]) -> list["Site"]:
    """Sites of ``cls``, one per tensor read: the calls that read the same tensor share one site."""
    groups: dict[tuple, Site] = {}
    for call in calls:
        if call.input_key is not None:
            site = groups.setdefault(call.input_key, cls(names=[], dim=dim(call.module), order=call.order))
            site.names.append(call.name)
    return list(groups.values())


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Site(ABC):
    """Modules that one projection of a ``dim``-dimensional activation serves, in model order.

    Subclasses set ``kind`` (the registry name, also stored in saved models) and ``observes`` (whether the
    projected activation is the first member's input or its output), and implement the abstract methods.
    """

    kind: ClassVar[str]
    observes: ClassVar[Literal["input", "output"]] = "input"

    names: list[str]
    dim: int
    order: int = 0  # call position of the first member in the traced pass (sites are listed in this order)

    @classmethod
    @abstractmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list["Site"]:
        """This kind's sites among the included modules of a traced forward pass."""

    @property
    def name(self) -> str:
        """The module's name, or for a shared input the common prefix and the members: "a.self.{query,key}"."""
        if len(self.names) == 1:
            return self.names[0]
        parts = [name.split(".") for name in self.names]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        prefix = ".".join(parts[0][:common])
        members = ",".join(".".join(p[common:]) for p in parts)
        return f"{prefix}.{{{members}}}" if prefix else "{" + members + "}"

    @property
    def file_stem(self) -> str:
        """The site's name as a file name (for its spectrum plot)."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")

    def rows(self, observed: Tensor) -> Tensor:
        """The observed activation as (..., dim) rows (a Conv2d's channels move last)."""
        return observed

    @abstractmethod
    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        """(parameters of the site's modules now, parameters after a rank-k rewrite)."""

    @abstractmethod
    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        """Replace the site's modules in ``model`` by their projections onto ``basis`` (dim × k), ``mean`` folded in."""

    @abstractmethod
    def rebuild(self, model: nn.Module, k: int) -> None:
        """Give an uncompressed ``model`` the rank-k rewrite's module shapes (values are loaded afterwards)."""

    @abstractmethod
    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        """A data-free rank-k basis (dim × k) from the site's weights, for the SVD baseline."""

    def members(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(name) for name in self.names]


KINDS: Registry[type[Site]] = Registry("site kind", "kind")


def register_site_kind(cls: type[Site]) -> type[Site]:
    """Add a Site subclass to the registry (usable as a class decorator); registration order breaks ties between
    sites that start at the same call (a narrowing Linear's input side before its output side)."""
    if not (isinstance(cls, type) and issubclass(cls, Site)) or not isinstance(getattr(cls, "kind", None), str):
        raise ValueError(f"cls: expected a Site subclass with a `kind` name, got {cls!r}")
    return KINDS.add(cls.kind, cls)


def site_kinds() -> tuple[type[Site], ...]:
    """Every registered site kind, in registration order."""
    return KINDS.entries()


def site_kind(name: str) -> type[Site]:
    return KINDS.get(name)


def find_sites(model: nn.Module, run: Callable[[], object], include: Include = lambda n, m: True) -> list[Site]:
    """Every registered kind's sites in ``model``, in forward order, from one traced pass ``run()``."""
    traced = trace(model, run)
    rank = {cls: index for index, cls in enumerate(site_kinds())}
    sites = [site for cls in site_kinds() for site in cls.find(model, traced, include)]
    if not sites:
        kinds = ", ".join(sorted(KINDS.names()))
        raise ValueError(f"model: no compressible layer was called in a forward pass (site kinds: {kinds}); "
                         "nothing to compress")
    return sorted(sites, key=lambda site: (site.order, rank[type(site)]))
