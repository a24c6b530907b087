"""rmtkd: RMT-KD compression of neural networks (the method layer).

The method (Marchenko–Pastur spectral analysis, model surgery, self-distillation, the iterative loop, CLI)
arrives in its own modules; it builds on the kernels in ``rmtkd_kernels`` and never the reverse.
"""
from rmtkd_kernels import CovarianceAccumulator, ProjectedLinear

__version__ = "0.1.0"
__all__ = ["CovarianceAccumulator", "ProjectedLinear", "__version__"]
