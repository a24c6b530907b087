"""rmtkd: RMT-KD compression of neural networks (the method layer, built on ``rmtkd_kernels``).

- ``rmtkd.spectral``: Marchenko–Pastur law, noise estimators, thresholds, effective sample size, selection, plots.
- ``rmtkd.calibration`` / ``rmtkd.surgery`` / ``rmtkd.layers``: compression sites, their calibration and rewriting.
- ``rmtkd.distill`` / ``rmtkd.loop``: self-distillation and the iterative loop (``compress``), with resume.
- ``rmtkd.persistence``: save/load compressed models; ``rmtkd.baselines``: SVD and PCA baselines.
- ``rmtkd.adapters``: Hugging Face text classifiers, CNNs; ``rmtkd.cli``: the ``rmtkd`` command (``rmtkd.tasks``, ``rmtkd.report``).
"""
from rmtkd.spectral import MarchenkoPastur, SubspaceSelection, select_subspace
from rmtkd_kernels import CovarianceAccumulator, ProjectedLinear

__version__ = "0.1.0"
__all__ = ["CovarianceAccumulator", "MarchenkoPastur", "ProjectedLinear", "SubspaceSelection", "select_subspace",
           "__version__"]
