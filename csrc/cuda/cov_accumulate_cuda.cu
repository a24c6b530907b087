// CUDA backend of cov_accumulate: SIMT SYRK over upper-triangle 64 x 64 tiles, split over rows.
//
// Grid (tiles, tiles, splits); blocks below the diagonal exit at once. Each block stages 16-row slices of its
// two column panels in shared memory as fp32 (masked rows and out-of-range columns as 0), each of its 256
// threads accumulates a 4 x 4 sub-tile in fp32 registers, and at the end the partial is atomically added into
// the float64/float32 accumulator. Diagonal blocks also sum their columns and flag rows holding NaN/Inf, so
// nothing makes a second pass over X. Plain FMA, not tensor cores: this is the portable baseline next to the
// Triton kernel; see README "Backends" for which one is the default where.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kTile = 64;
constexpr int kRows = 16;
constexpr int kThreads = 256;
constexpr int64_t kMinRowsPerSplit = 512;

template <typename scalar_t, typename acc_t>
__global__ void cov_syrk_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask,
                                acc_t* __restrict__ gram, double* __restrict__ colsum,
                                int* __restrict__ flags, int64_t n, int64_t d, int64_t sxn, int64_t sxd,
                                int64_t rows_per_split) {
  const int ti = blockIdx.x, tj = blockIdx.y;
  if (ti > tj) return;
  const bool diag = ti == tj;
  const int64_t r0 = blockIdx.z * rows_per_split;
  const int64_t r1 = min(n, r0 + rows_per_split);
  __shared__ float as[kRows][kTile + 1];
  __shared__ float bs[kRows][kTile + 1];
  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  float acc[4][4] = {};
  float col_acc = 0.f;
  for (int64_t r = r0; r < r1; r += kRows) {
    for (int e = tid; e < kRows * kTile; e += kThreads) {
      const int rr = e / kTile, cc = e % kTile;
      const int64_t row = r + rr;
      const bool row_ok = row < r1 && (mask == nullptr || mask[row]);
      const int64_t ca = (int64_t)ti * kTile + cc, cb = (int64_t)tj * kTile + cc;
      float va = 0.f, vb = 0.f;
      if (row_ok && ca < d) va = static_cast<float>(x[row * sxn + ca * sxd]);
      if (row_ok && cb < d) vb = static_cast<float>(x[row * sxn + cb * sxd]);
      if (diag && !isfinite(va)) flags[row] = 1;  // benign race: every writer stores 1
      as[rr][cc] = va;
      bs[rr][cc] = vb;
    }
    __syncthreads();
    if (diag && tid < kTile) {
      for (int rr = 0; rr < kRows; ++rr) col_acc += as[rr][tid];
    }
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = as[rr][ty * 4 + i];
        b[i] = bs[rr][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gi = (int64_t)ti * kTile + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gj = (int64_t)tj * kTile + tx * 4 + j;
      if (gi < d && gj < d) atomicAdd(&gram[gi * d + gj], static_cast<acc_t>(acc[i][j]));
    }
  }
  if (diag && tid < kTile) {
    const int64_t c = (int64_t)ti * kTile + tid;
    if (c < d) atomicAdd(&colsum[c], static_cast<double>(col_acc));
  }
}

void cov_accumulate_cuda(const at::Tensor& x, at::Tensor& gram, at::Tensor& colsum, at::Tensor& nonfinite_rows,
                         const std::optional<at::Tensor>& row_mask) {
  TORCH_CHECK(x.dim() == 2 && gram.dim() == 2 && gram.is_contiguous(), "cov_accumulate: bad shapes");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), d = x.size(1);
  if (n == 0) return;
  at::Tensor flags = at::zeros({n}, x.options().dtype(at::kInt));
  at::Tensor mask = row_mask.has_value() ? row_mask->contiguous() : at::Tensor();
  const int tiles = static_cast<int>((d + kTile - 1) / kTile);
  const int64_t upper_tiles = int64_t(tiles) * (tiles + 1) / 2;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>((2 * sms + upper_tiles - 1) / upper_tiles,
                                                          (n + kMinRowsPerSplit - 1) / kMinRowsPerSplit));
  const int64_t rows_per_split = (n + splits - 1) / splits;
  splits = (n + rows_per_split - 1) / rows_per_split;
  const dim3 grid(tiles, tiles, static_cast<unsigned>(splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cov_accumulate_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "cov_accumulate_cuda_acc", [&] {
      cov_syrk_kernel<in_t, scalar_t><<<grid, kThreads, 0, stream>>>(
          x.data_ptr<in_t>(), mask.defined() ? mask.data_ptr<bool>() : nullptr, gram.data_ptr<scalar_t>(),
          colsum.data_ptr<double>(), flags.data_ptr<int>(), n, d, x.stride(0), x.stride(1), rows_per_split);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  nonfinite_rows.add_(flags.sum());
}

}  // namespace

TORCH_LIBRARY_IMPL(rmtkd_C, CUDA, m) { m.impl("cov_accumulate", &cov_accumulate_cuda); }
