"""rmtkd: RMT-KD compression of neural networks (the method layer).

Built on the kernels in ``rmtkd_kernels`` (never the reverse). Available now: the random-matrix spectral
analysis (``rmtkd.spectral``: Marchenko–Pastur law, noise estimators, thresholds, effective sample size,
subspace selection, spectrum plots). Model surgery, self-distillation, the loop and the CLI come next.
"""
from rmtkd.spectral import MarchenkoPastur, SubspaceSelection, select_subspace
from rmtkd_kernels import CovarianceAccumulator, ProjectedLinear

__version__ = "0.1.0"
__all__ = ["CovarianceAccumulator", "MarchenkoPastur", "ProjectedLinear", "SubspaceSelection", "select_subspace",
           "__version__"]
