// CUDA backend of projected_linear: y = (x @ P) @ W^T + b, the k-wide intermediate kept in shared memory.
//
// A block owns 16 rows x 64 outputs. It walks k in 32-wide slices: the slice h = x_blk @ P[:, slice] is built
// in shared memory (fp32 accumulation over d_in in 64-wide panels), rounded to the input dtype as the
// two-matmul path rounds its intermediate, and folded into the block's outputs at once. SIMT FMA; blocks that
// share rows recompute h, which pays off only at small row counts (the dispatcher's fused-rows limit).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kRowsBlk = 16, kOutBlk = 64, kDBlk = 64, kKBlk = 32, kThreads = 256;

template <typename scalar_t>
__global__ void projected_linear_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ p,
                                        const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                                        scalar_t* __restrict__ y, int64_t m, int64_t d_in, int64_t k,
                                        int64_t d_out, int64_t sxm, int64_t sxd, int64_t spd, int64_t spk,
                                        int64_t swo, int64_t swk) {
  __shared__ float xs[kRowsBlk][kDBlk + 1];
  __shared__ float ps[kDBlk][kKBlk + 1];
  __shared__ float hs[kRowsBlk][kKBlk + 1];
  __shared__ float ws[kKBlk][kOutBlk + 1];
  const int tid = threadIdx.x;
  const int64_t row0 = int64_t(blockIdx.x) * kRowsBlk, out0 = int64_t(blockIdx.y) * kOutBlk;
  const int my_row = tid / 16, my_out = (tid % 16) * 4;  // 4 outputs per thread
  float acc[4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kKBlk) {
    float h[2] = {};  // hidden entries (tid / 32 + 8 * e, tid % 32) for e in {0, 1}
    for (int64_t d0 = 0; d0 < d_in; d0 += kDBlk) {
      for (int e = tid; e < kRowsBlk * kDBlk; e += kThreads) {
        const int r = e / kDBlk, c = e % kDBlk;
        const int64_t gr = row0 + r, gc = d0 + c;
        xs[r][c] = (gr < m && gc < d_in) ? static_cast<float>(x[gr * sxm + gc * sxd]) : 0.f;
      }
      for (int e = tid; e < kDBlk * kKBlk; e += kThreads) {
        const int r = e / kKBlk, c = e % kKBlk;
        const int64_t gr = d0 + r, gc = k0 + c;
        ps[r][c] = (gr < d_in && gc < k) ? static_cast<float>(p[gr * spd + gc * spk]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int r = tid / kKBlk + 8 * e, c = tid % kKBlk;
        float s = h[e];
        for (int dd = 0; dd < kDBlk; ++dd) s = fmaf(xs[r][dd], ps[dd][c], s);
        h[e] = s;
      }
      __syncthreads();
    }
    for (int e = 0; e < 2; ++e) {
      hs[tid / kKBlk + 8 * e][tid % kKBlk] = static_cast<float>(static_cast<scalar_t>(h[e]));
    }
    for (int e = tid; e < kKBlk * kOutBlk; e += kThreads) {
      const int c = e % kKBlk, o = e / kKBlk;  // consecutive threads read consecutive k of one W row
      const int64_t go = out0 + o, gc = k0 + c;
      ws[c][o] = (go < d_out && gc < k) ? static_cast<float>(w[go * swo + gc * swk]) : 0.f;
    }
    __syncthreads();
    for (int c = 0; c < kKBlk; ++c) {
      const float hv = hs[my_row][c];
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[j] = fmaf(hv, ws[c][my_out + j], acc[j]);
    }
    __syncthreads();
  }
  const int64_t gr = row0 + my_row;
  if (gr >= m) return;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t go = out0 + my_out + j;
    if (go < d_out) {
      const float b = bias != nullptr ? static_cast<float>(bias[go]) : 0.f;
      y[gr * d_out + go] = static_cast<scalar_t>(acc[j] + b);
    }
  }
}

at::Tensor projected_linear_cuda(const at::Tensor& x, const at::Tensor& basis, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && basis.dim() == 2 && weight.dim() == 2, "projected_linear: bad shapes");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0), d_in = x.size(1), k = basis.size(1), d_out = weight.size(0);
  at::Tensor y = at::empty({m, d_out}, x.options());
  if (m == 0) return y;
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const dim3 grid(static_cast<unsigned>((m + kRowsBlk - 1) / kRowsBlk),
                  static_cast<unsigned>((d_out + kOutBlk - 1) / kOutBlk));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projected_linear_cuda", [&] {
    projected_linear_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), basis.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        b.defined() ? b.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), m, d_in, k, d_out, x.stride(0),
        x.stride(1), basis.stride(0), basis.stride(1), weight.stride(0), weight.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(rmtkd_C, CUDA, m) { m.impl("projected_linear", &projected_linear_cuda); }
