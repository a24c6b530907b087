"""Random-matrix spectral analysis: the Marchenko–Pastur law, noise estimators, detection thresholds,
effective sample size, subspace selection and the spectrum plot."""
from rmtkd.spectral.effective_samples import DesignEffectEstimator
from rmtkd.spectral.marchenko_pastur import MarchenkoPastur
from rmtkd.spectral.noise import NOISE_ESTIMATORS, estimate_noise
from rmtkd.spectral.selection import SubspaceSelection, select_subspace
from rmtkd.spectral.thresholds import THRESHOLDS, tracy_widom1_cdf, tracy_widom1_quantile

__all__ = [
    "NOISE_ESTIMATORS",
    "THRESHOLDS",
    "DesignEffectEstimator",
    "MarchenkoPastur",
    "SubspaceSelection",
    "estimate_noise",
    "select_subspace",
    "tracy_widom1_cdf",
    "tracy_widom1_quantile",
]
