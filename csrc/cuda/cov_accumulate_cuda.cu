// CUDA backend of cov_accumulate: a tensor-core SYRK over upper-triangle 64 x 64 tiles, split over rows.
//
// Why a CUDA kernel next to the Triton one: Triton is not available everywhere PyTorch's CUDA build is (Windows,
// some containers), and this kernel needs nothing but the extension. Automatic choice times both against the
// cuBLAS reference on the user's GPU and keeps the fastest correct one.
//
// Grid (upper tiles, row splits): block p owns the p-th upper tile (i <= j) and one slice of the rows. Its four
// warps each hold a 32 x 32 quarter of the tile as 2 x 2 WMMA accumulators in fp32 registers. Each step stages
// 32 rows of the two column panels in shared memory (masked rows and columns past d as 0) and multiplies
//   fp16 / bf16: m16n16k16 tensor-core MMAs (products exact in fp32),
//   fp32:        m16n16k8 TF32 MMAs in the 3xTF32 split (a = big + small; big·big + big·small + small·big),
//                which recovers near-fp32 accuracy; plain TF32 would fail the verification against the reference.
// At the end the tile is added into the float64/float32 accumulator with atomicAdd (relaxed: no memory fence).
// Column sums and NaN/Inf row flags are a separate memory-bound pass with coalesced reads. Float64 input is not
// taken (the products would be rounded to fp32: the dispatch refuses it); needs compute capability 8.0 (bf16 and
// TF32 MMAs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

using namespace nvcuda;

constexpr int kTile = 64;     // output tile edge
constexpr int kRows = 32;     // rows staged per step
constexpr int kThreads = 128; // four warps in a 2 x 2 layout, 32 x 32 of the tile each
constexpr int kColsumThreads = 128;
constexpr int64_t kMinRowsPerSplit = 4 * kRows;

// Per input type: the element type in shared memory and the WMMA shape's k.
template <typename T> struct MmaTraits;
template <> struct MmaTraits<at::Half> {
  using elem = half;
  using frag_t = half;
  static constexpr int k = 16;
};
template <> struct MmaTraits<at::BFloat16> {
  using elem = __nv_bfloat16;
  using frag_t = __nv_bfloat16;
  static constexpr int k = 16;
};
template <> struct MmaTraits<float> {
  using elem = float;
  using frag_t = wmma::precision::tf32;
  static constexpr int k = 8;
};

// Row stride of the staged panels: 32 bytes of padding keeps every fragment 256-bit aligned, as WMMA requires.
template <typename elem> constexpr int kLd = kTile + 32 / int(sizeof(elem));
constexpr int kLdC = kTile + 8;

template <typename elem> __device__ __forceinline__ elem to_elem(float v);
template <> __device__ __forceinline__ half to_elem<half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_elem<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float to_elem<float>(float v) { return v; }

template <typename scalar_t> __device__ __forceinline__ typename MmaTraits<scalar_t>::elem load_elem(const scalar_t* p) {
  // 16-bit inputs are copied bit for bit (at::Half / at::BFloat16 share the layout of half / __nv_bfloat16).
  return *reinterpret_cast<const typename MmaTraits<scalar_t>::elem*>(p);
}

// The p-th upper-triangle tile (row-major order over i <= j) of a tiles x tiles grid.
__device__ __forceinline__ void upper_tile(int p, int tiles, int& ti, int& tj) {
  ti = 0;
  while (p >= tiles - ti) {
    p -= tiles - ti;
    ++ti;
  }
  tj = ti + p;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) cov_syrk_kernel(
    const scalar_t* __restrict__ x, const bool* __restrict__ mask, acc_t* __restrict__ gram, int64_t n, int64_t d,
    int64_t sxn, int64_t sxd, int64_t rows_per_split, int tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Traits = MmaTraits<scalar_t>;
  using elem = typename Traits::elem;
  using frag_t = typename Traits::frag_t;
  constexpr int ld = kLd<elem>;
  __shared__ __align__(32) elem as[kRows][ld];
  __shared__ __align__(32) elem bs[kRows][ld];
  __shared__ __align__(32) float cs[kTile][kLdC];

  int ti, tj;
  upper_tile(blockIdx.x, tiles, ti, tj);
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t r1 = min(n, r0 + rows_per_split);
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;

  wmma::fragment<wmma::accumulator, 16, 16, Traits::k, float> acc[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.0f);

  for (int64_t r = r0; r < r1; r += kRows) {
    for (int e = threadIdx.x; e < kRows * kTile; e += kThreads) {
      const int rr = e / kTile, cc = e % kTile;
      const int64_t row = r + rr;
      const bool row_ok = row < r1 && (mask == nullptr || mask[row]);
      const int64_t ca = int64_t(ti) * kTile + cc, cb = int64_t(tj) * kTile + cc;
      as[rr][cc] = row_ok && ca < d ? load_elem(x + row * sxn + ca * sxd) : to_elem<elem>(0.f);
      bs[rr][cc] = row_ok && cb < d ? load_elem(x + row * sxn + cb * sxd) : to_elem<elem>(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int k0 = 0; k0 < kRows; k0 += Traits::k) {
      // A = X[:, i-panel]^T: A(m, k) = as[k][m], column-major; B = X[:, j-panel]: B(k, n) = bs[k][n], row-major.
      using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Traits::k, frag_t, wmma::col_major>;
      using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Traits::k, frag_t, wmma::row_major>;
      FragA fa[2];
      FragB fb[2];
#pragma unroll
      for (int a = 0; a < 2; ++a) wmma::load_matrix_sync(fa[a], &as[k0][wm * 32 + a * 16], ld);
#pragma unroll
      for (int b = 0; b < 2; ++b) wmma::load_matrix_sync(fb[b], &bs[k0][wn * 32 + b * 16], ld);
      if constexpr (std::is_same_v<elem, float>) {
        // 3xTF32: split each operand into a TF32 "big" part and the TF32 rounding of the rest.
        FragA fa_small[2];
        FragB fb_small[2];
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
          for (int t = 0; t < fa[a].num_elements; ++t) {
            const float v = fa[a].x[t], big = wmma::__float_to_tf32(v);
            fa[a].x[t] = big;
            fa_small[a].x[t] = wmma::__float_to_tf32(v - big);
          }
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
          for (int t = 0; t < fb[b].num_elements; ++t) {
            const float v = fb[b].x[t], big = wmma::__float_to_tf32(v);
            fb[b].x[t] = big;
            fb_small[b].x[t] = wmma::__float_to_tf32(v - big);
          }
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            wmma::mma_sync(acc[a][b], fa_small[a], fb[b], acc[a][b]);
            wmma::mma_sync(acc[a][b], fa[a], fb_small[b], acc[a][b]);
            wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
          }
      } else {
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
          for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b)
      wmma::store_matrix_sync(&cs[wm * 32 + a * 16][wn * 32 + b * 16], acc[a][b], kLdC, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int ii = e / kTile, jj = e % kTile;
    const int64_t gi = int64_t(ti) * kTile + ii, gj = int64_t(tj) * kTile + jj;
    if (gi < d && gj < d) atomicAdd(&gram[gi * d + gj], static_cast<acc_t>(cs[ii][jj]));
  }
#endif
}

// colsum += fp32 partial column sums of the counted rows of one row slice; flags[row] = 1 for counted rows
// holding NaN/Inf. Thread c of a block reads column c of consecutive rows: coalesced for row-major x.
template <typename scalar_t>
__global__ void __launch_bounds__(kColsumThreads) colsum_kernel(
    const scalar_t* __restrict__ x, const bool* __restrict__ mask, double* __restrict__ colsum,
    int* __restrict__ flags, int64_t n, int64_t d, int64_t sxn, int64_t sxd, int64_t rows_per_split) {
  const int64_t c = int64_t(blockIdx.x) * kColsumThreads + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t r1 = min(n, r0 + rows_per_split);
  if (c >= d) return;
  float sum = 0.f;
  for (int64_t row = r0; row < r1; ++row) {
    if (mask != nullptr && !mask[row]) continue;
    const float v = static_cast<float>(x[row * sxn + c * sxd]);
    if (!isfinite(v)) flags[row] = 1;  // benign race: every writer stores 1
    sum += v;
  }
  atomicAdd(&colsum[c], static_cast<double>(sum));
}

// Row splits so that upper_tiles x splits blocks fill whole waves of `slots` resident blocks: the fewest splits
// within 5% of full waves, each split keeping at least kMinRowsPerSplit rows.
int64_t split_count(int64_t upper_tiles, int64_t n, int64_t slots) {
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(64, n / kMinRowsPerSplit));
  int64_t best = 1;
  double best_idle = 1e30;
  for (int64_t s = 1; s <= most; ++s) {
    const double blocks = double(upper_tiles * s);
    const double idle = std::ceil(blocks / slots) * slots / blocks - 1.0;
    if (idle <= 0.05) return s;
    if (idle < best_idle) best_idle = idle, best = s;
  }
  return best;
}

// Column sums into scratch first, the SYRK (the only launch that writes a caller's buffer) last: a launch that
// fails leaves the caller's accumulator untouched, so automatic choice can fall back without adding twice.
template <typename in_t>
void launch(const at::Tensor& x, at::Tensor& gram, at::Tensor& colsum, const at::Tensor& flags, const bool* mask,
            int sms, cudaStream_t stream) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor sums = at::zeros({d}, colsum.options());
  const int64_t colsum_splits = std::min<int64_t>(64, (n + kMinRowsPerSplit - 1) / kMinRowsPerSplit);
  const int64_t colsum_rows = (n + colsum_splits - 1) / colsum_splits;
  const dim3 grid(static_cast<unsigned>((d + kColsumThreads - 1) / kColsumThreads),
                  static_cast<unsigned>((n + colsum_rows - 1) / colsum_rows));
  colsum_kernel<in_t><<<grid, kColsumThreads, 0, stream>>>(x.data_ptr<in_t>(), mask, sums.data_ptr<double>(),
                                                           flags.data_ptr<int>(), n, d, x.stride(0), x.stride(1),
                                                           colsum_rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int tiles = static_cast<int>((d + kTile - 1) / kTile);
  const int64_t upper_tiles = int64_t(tiles) * (tiles + 1) / 2;
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "cov_accumulate_cuda_acc", [&] {
    auto* kernel = cov_syrk_kernel<in_t, scalar_t>;
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    const int64_t slots = int64_t(sms) * std::max(per_sm, 1);
    int64_t splits = split_count(upper_tiles, n, slots);
    const int64_t rows_per_split = (n + splits - 1) / splits;
    splits = (n + rows_per_split - 1) / rows_per_split;
    kernel<<<dim3(static_cast<unsigned>(upper_tiles), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        x.data_ptr<in_t>(), mask, gram.data_ptr<scalar_t>(), n, d, x.stride(0), x.stride(1), rows_per_split,
        tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  colsum.add_(sums);
}

void cov_accumulate_cuda(const at::Tensor& x, at::Tensor& gram, at::Tensor& colsum, at::Tensor& nonfinite_rows,
                         const std::optional<at::Tensor>& row_mask) {
  TORCH_CHECK(x.dim() == 2 && gram.dim() == 2 && gram.is_contiguous(), "cov_accumulate: bad shapes");
  const c10::cuda::CUDAGuard guard(x.device());
  int major = 0, minor = 0, sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, x.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  TORCH_CHECK(major >= 8, "x: the cuda backend needs compute capability 8.0 or newer (bf16 and TF32 tensor "
              "cores), this GPU has ", major, ".", minor);
  if (x.size(0) == 0) return;
  at::Tensor flags = at::zeros({x.size(0)}, x.options().dtype(at::kInt));
  at::Tensor mask = row_mask.has_value() ? row_mask->contiguous() : at::Tensor();
  const bool* mask_ptr = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(x.scalar_type(), "cov_accumulate_cuda",
      AT_DISPATCH_CASE(at::kFloat, [&] { launch<float>(x, gram, colsum, flags, mask_ptr, sms, stream); })
      AT_DISPATCH_CASE(at::kHalf, [&] { launch<at::Half>(x, gram, colsum, flags, mask_ptr, sms, stream); })
      AT_DISPATCH_CASE(at::kBFloat16, [&] { launch<at::BFloat16>(x, gram, colsum, flags, mask_ptr, sms, stream); }));
  nonfinite_rows.add_(flags.sum());
}

}  // namespace

TORCH_LIBRARY_IMPL(rmtkd_C, CUDA, m) { m.impl("cov_accumulate", &cov_accumulate_cuda); }
