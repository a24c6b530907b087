// CPU backend of cov_accumulate: a blocked SYRK on top of ATen's BLAS GEMM.
//
// For each block of B columns starting at i0 it computes X[:, i0:i0+B]^T X[:, i0:] with one fp32 GEMM, so
// only the upper block triangle is multiplied: (T + 1) / (2 T) of the full GEMM's FLOPs for T blocks. Each
// fp32 partial (written into one scratch buffer reused by every panel: fresh megabyte allocations fault their
// pages in each time) is added into the accumulator's dtype. Column sums are fp32 partials too (torch's cascade
// sum: a BLAS product with a vector of ones is twice as fast here but sums sequentially, 50x less accurate over a
// chunk with a large mean; a float64-converting sum costs 10x more) added into float64. The NaN/Inf row count is
// computed only when those sums show a non-finite value, so the check costs d comparisons, not a pass over X.
// Block width: GEMMs narrower than ~192 columns lose BLAS efficiency faster than they save FLOPs (measured
// with benchmarks/kernels.py on 2 AMD EPYC cores: 128 -> 133 GFLOP/s, 384 -> 175, full 1536 -> 200).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

constexpr int64_t kMinBlock = 192;
constexpr int64_t kMaxBlocks = 16;

void cov_accumulate_cpu(const at::Tensor& x, at::Tensor& gram, at::Tensor& colsum, at::Tensor& nonfinite_rows,
                        const std::optional<at::Tensor>& row_mask) {
  TORCH_CHECK(x.dim() == 2 && gram.dim() == 2 && gram.is_contiguous(), "cov_accumulate: bad shapes");
  const int64_t d = x.size(1);
  if (x.size(0) == 0) return;
  const auto partial_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xp = x.to(partial_type);
  if (row_mask.has_value()) {
    xp = at::where(row_mask->unsqueeze(1), xp, at::zeros({}, xp.options()));
  }
  at::Tensor sums = xp.sum(0).to(at::kDouble);
  colsum.add_(sums);
  if (!sums.isfinite().all().item<bool>()) {
    at::Tensor bad = x.isfinite().all(1).logical_not();
    if (row_mask.has_value()) bad.logical_and_(*row_mask);
    nonfinite_rows.add_(bad.sum());
  }
  const int64_t block = std::max(kMinBlock, (d + kMaxBlocks - 1) / kMaxBlocks);
  at::Tensor scratch = at::empty({std::min(block, d) * d}, xp.options());
  for (int64_t i0 = 0; i0 < d; i0 += block) {
    const int64_t bi = std::min(block, d - i0);
    at::Tensor partial = scratch.narrow(0, 0, bi * (d - i0)).view({bi, d - i0});
    at::mm_out(partial, xp.narrow(1, i0, bi).t(), xp.narrow(1, i0, d - i0));
    gram.narrow(0, i0, bi).narrow(1, i0, d - i0).add_(partial);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rmtkd_C, CPU, m) { m.impl("cov_accumulate", &cov_accumulate_cpu); }
