"""The model-adapter protocol: everything rmtkd needs to know about a family of models, and the registry.

An adapter plays two roles, each its own protocol: :class:`~rmtkd.adapters.format.ModelFormat` (how the
family's model folders are described, built, loaded and saved) and :class:`~rmtkd.adapters.behaviour.ModelBehaviour`
(which modules are compression sites and how they group into blocks, how to run the model on a batch, the
task and distillation losses, the metric). The loop, distillation, baselines and the command line reach the
model only through them. Adapters with a ``name`` are registered (:func:`register_adapter`): a saved model
folder records that name, and loading it finds the adapter again.
"""
from __future__ import annotations

from abc import ABC

from rmtkd.adapters.behaviour import ClassifierBehaviour, ModelBehaviour, soft_target_loss
from rmtkd.adapters.format import ModelFormat, model_type
from rmtkd.adapters.metric import ACCURACY, PERPLEXITY, Metric, MetricItems
from rmtkd_kernels.registries import Registry


class ModelAdapter(ModelFormat, ModelBehaviour, ABC):
    """Both roles of one model family: its folder format and its behaviour."""


class ClassifierAdapter(ClassifierBehaviour, ModelAdapter, ABC):
    """An adapter of models that map a batch to class logits (batch, classes); labels under ``labels``."""


ADAPTERS: Registry[type[ModelAdapter]] = Registry("adapter", "adapter")


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Add a named ModelAdapter subclass to the registry (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)) or not cls.name:
        raise ValueError(f"cls: expected a ModelAdapter subclass with a non-empty `name`, got {cls!r}")
    return ADAPTERS.add(cls.name, cls)


def registered_adapters() -> tuple[type[ModelAdapter], ...]:
    """Every registered adapter class, in registration order."""
    return ADAPTERS.entries()


def get_adapter(name: str) -> type[ModelAdapter]:
    return ADAPTERS.get(name)


__all__ = ["ACCURACY", "PERPLEXITY", "ADAPTERS", "ClassifierAdapter", "Metric", "MetricItems", "ModelAdapter", "ModelBehaviour",
           "ModelFormat", "get_adapter", "model_type", "register_adapter", "registered_adapters", "soft_target_loss"]
