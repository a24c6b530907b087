"""Model adapters: the protocol (``ModelAdapter``: a ``ModelFormat`` and a ``ModelBehaviour``), its registry,
and the built-in adapters.

- ``hf-sequence-classification`` (:class:`HFSequenceClassifier`): BERT-family encoders with a classification head;
- ``hf-causal-lm`` (:class:`HFCausalLM`): GPT-2 and Llama-family (Llama, Mistral, Qwen2) decoder language models;
- ``rmtkd-small-resnet`` and ``torchvision-mobilenet-v2``: CNN image classifiers.
A new adapter is one module defining a ModelAdapter subclass, decorated with :func:`register_adapter`.
"""
from rmtkd.adapters.base import (
    ACCURACY, PERPLEXITY, ClassifierAdapter, Metric, MetricItems, ModelAdapter, ModelBehaviour, ModelFormat,
    get_adapter, register_adapter, registered_adapters,
)
from rmtkd.adapters.hf_text import HFSequenceClassifier
from rmtkd.adapters.hf_causal_lm import HFCausalLM  # noqa: I001  (registration order: the order folders are tried)
from rmtkd.adapters.vision import MobileNetV2Adapter, SmallResNetAdapter
from rmtkd.adapters.loading import LoadedModel, load_model

__all__ = ["ACCURACY", "PERPLEXITY", "ClassifierAdapter", "HFCausalLM", "HFSequenceClassifier", "LoadedModel",
           "Metric", "MetricItems", "MobileNetV2Adapter", "ModelAdapter", "ModelBehaviour", "ModelFormat", "SmallResNetAdapter", "get_adapter", "load_model",
           "register_adapter", "registered_adapters"]
