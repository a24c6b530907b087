"""rmtkd: RMT-KD compression of neural networks (the method layer, built on ``rmtkd_kernels``).

- ``rmtkd.spectral``: Marchenko–Pastur law, noise estimators, thresholds, effective sample size, selection, plots.
- ``rmtkd.sites``: compression site kinds (one class each, a registry); ``rmtkd.layers``: the compressed layers.
- ``rmtkd.calibration`` / ``rmtkd.surgery``: calibrating and selecting sites, rewriting and rebuilding them.
- ``rmtkd.adapters``: the ModelAdapter protocol and its registry (Hugging Face classifiers and causal LMs, CNNs).
- ``rmtkd.distill`` / ``rmtkd.loop``: self-distillation and the iterative loop (``compress``), with resume.
- ``rmtkd.persistence``: save/load compressed models; ``rmtkd.baselines``: SVD and PCA baselines;
  ``rmtkd.training``: plain teacher training; ``rmtkd.data``: readers of text tables, text, BBC News, Fashion-MNIST.
- ``rmtkd.app``: the ``rmtkd`` command (the library never imports it).
"""
from rmtkd.spectral import MarchenkoPastur, SubspaceSelection, select_subspace
from rmtkd_kernels import CovarianceAccumulator, ProjectedLinear

__version__ = "0.1.0"
__all__ = ["CovarianceAccumulator", "MarchenkoPastur", "ProjectedLinear", "SubspaceSelection", "select_subspace",
           "__version__"]
