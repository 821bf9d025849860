// W4A16 matmul on tensor cores for batch 1..64: y[M, N] = x[M, K] @ W[N, K]^T, W 4-bit grouped.
//
// Layout (built by kernels/w4a16/reference.py: mma_repack, which documents it): the weight is
// cut into stripes of 16 output rows and chunks of 64 K; a chunk of a stripe is 32 uint4 (512 B),
// one per lane, and lane (g = lane / 4, t = lane % 4) finds in word i of its uint4 exactly its
// A fragment of an m16n8k16 tile: rows g and g + 8, the four K values 16t + 4i + {0..3}.
// The same permutation of K inside the chunk is applied to the activations by the B fragment:
// lane (g, t) reads x[batch g][chunk*64 + 16t .. +15] with two 16-byte loads.
//
// Dequantization: (w >> 4j) & 0x000F000F | 0x43004300 is the bf16 pair (128 + u_lo, 128 + u_hi)
// (one LOP3); one bf16x2 FMA subtracts 136 + z exactly (q - z, small integers are exact in bf16).
// The group scale is applied in float32 to each chunk's partial sums (a chunk never straddles a
// group: the group size is a multiple of 64), so the products are exact and the precision is that
// of a float32 accumulation.
//
// Work split: one block per stripe, its warps split the chunks (warp w takes chunks w*U ..,
// then every warps*U), each warp keeps 2U 512-byte coalesced weight loads in flight (the next
// stage's while it computes this one), and the warps' partial sums are added in shared memory
// in a fixed order (deterministic).
// Batches of up to 8 rows share one mma per tile (batch row = g); NT tiles of 8 cover 64 rows.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}

__device__ __forceinline__ uint32_t fma_bf16x2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of one tile from one word: a0/a2 row g, a1/a3 row g + 8; off_* = -(136 + z) twice.
__device__ __forceinline__ void dequant(uint32_t w, uint32_t off_g, uint32_t off_g8, uint32_t (&a)[4]) {
  constexpr uint32_t kMask = 0x000F000Fu, kExp = 0x43004300u, kOne = 0x3F803F80u;
  a[0] = fma_bf16x2(lop3_and_or(w, kMask, kExp), kOne, off_g);
  a[1] = fma_bf16x2(lop3_and_or(w >> 4, kMask, kExp), kOne, off_g8);
  a[2] = fma_bf16x2(lop3_and_or(w >> 8, kMask, kExp), kOne, off_g);
  a[3] = fma_bf16x2(lop3_and_or(w >> 12, kMask, kExp), kOne, off_g8);
}

__device__ __forceinline__ uint32_t neg_pair(float v) {
  __nv_bfloat162 p = __float2bfloat162_rn(-v);
  return *reinterpret_cast<uint32_t*>(&p);
}

// B fragments of one chunk for NT tiles: lane (g, t) reads x[n*8 + g][c*64 + 16t .. +15] (zeros past M).
template <int NT>
__device__ __forceinline__ void load_x(const __nv_bfloat16* __restrict__ x, int M, int Kpad, int c, int g, int t,
                                       uint32_t (&xb)[NT][8]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int b = n * 8 + g;
    uint4 v0 = make_uint4(0, 0, 0, 0), v1 = v0;
    if (b < M) {
      const uint4* xp = reinterpret_cast<const uint4*>(x + (size_t)b * Kpad + c * 64 + 16 * t);
      v0 = __ldg(xp);
      v1 = __ldg(xp + 1);
    }
    xb[n][0] = v0.x; xb[n][1] = v0.y; xb[n][2] = v0.z; xb[n][3] = v0.w;
    xb[n][4] = v1.x; xb[n][5] = v1.y; xb[n][6] = v1.z; xb[n][7] = v1.w;
  }
}

template <int NT, int U, bool ASYM>
__global__ void __launch_bounds__(NT >= 4 ? 256 : 512) w4a16_mma_kernel(
    const __nv_bfloat16* __restrict__ x,  // [M, Kpad], 16-byte aligned rows
    const uint4* __restrict__ w,          // [S][C][32] (mma_repack)
    const float* __restrict__ scale,      // [G, Npad]
    const float* __restrict__ zoff,       // [G, Npad] = 136 + z (ASYM only)
    __nv_bfloat16* __restrict__ y,        // [M, N]
    int M, int N, int Kpad, int Npad, int chunks_per_group) {
  extern __shared__ float red[];  // [warps][32][NT * 4]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int stripe = blockIdx.x;
  const int chunks = Kpad >> 6;
  const uint4* wp = w + (size_t)stripe * chunks * 32 + lane;
  const int row = stripe * 16 + g;
  constexpr uint32_t kSymOff = 0xC308C308u;  // -136, twice
  constexpr bool kHoist = NT <= 2;  // registers: hoisting 8 x-words per chunk and tile only for small batches

  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[n][c] = 0.f;

  // Software pipeline: the next stage's U weight loads are in flight while this stage computes,
  // and the stage's activations and scales (L1/L2 hits) are all requested before the first mma,
  // so each warp waits on DRAM once per stage at most and never on L2 chunk by chunk.
  const int step = warps * U;
  uint4 wv[U];
#pragma unroll
  for (int u = 0; u < U; ++u)
    wv[u] = (warp * U + u < chunks) ? load_stream(wp + (size_t)(warp * U + u) * 32) : make_uint4(0, 0, 0, 0);
  for (int base = warp * U; base < chunks; base += step) {
    uint4 wn[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = base + step + u;
      wn[u] = (c < chunks) ? load_stream(wp + (size_t)c * 32) : make_uint4(0, 0, 0, 0);
    }
    float s0[U], s1[U];
    uint32_t o0[U], o1[U];
    uint32_t xb[kHoist ? U : 1][NT][8];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = min(base + u, chunks - 1);
      const size_t gi = (size_t)(c / chunks_per_group) * Npad + row;
      s0[u] = scale[gi];
      s1[u] = scale[gi + 8];
      o0[u] = ASYM ? neg_pair(zoff[gi]) : kSymOff;
      o1[u] = ASYM ? neg_pair(zoff[gi + 8]) : kSymOff;
      if (kHoist) load_x<NT>(x, M, Kpad, c, g, t, xb[kHoist ? u : 0]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = base + u;
      if (c >= chunks) break;  // uniform across the warp
      uint32_t (&xc)[NT][8] = xb[kHoist ? u : 0];
      if (!kHoist) load_x<NT>(x, M, Kpad, c, g, t, xc);
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
      float part[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[n][j] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t a[4];
        dequant(words[i], o0[u], o1[u], a);
#pragma unroll
        for (int n = 0; n < NT; ++n) mma_bf16(part[n], a, xc[n][2 * i], xc[n][2 * i + 1]);
      }
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        acc[n][0] = fmaf(s0[u], part[n][0], acc[n][0]);
        acc[n][1] = fmaf(s0[u], part[n][1], acc[n][1]);
        acc[n][2] = fmaf(s1[u], part[n][2], acc[n][2]);
        acc[n][3] = fmaf(s1[u], part[n][3], acc[n][3]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) wv[u] = wn[u];
  }

  constexpr int kPer = NT * 4;
  float* mine = red + ((size_t)warp * 32 + lane) * kPer;
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) mine[n * 4 + c] = acc[n][c];
  __syncthreads();
  const int total = 32 * kPer;
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    float s = 0.f;
    for (int v = 0; v < warps; ++v) s += red[(size_t)v * total + j];
    const int ln = j / kPer, r = j % kPer, n = r >> 2, ci = r & 3;
    const int out_row = stripe * 16 + (ln >> 2) + ((ci & 2) ? 8 : 0);
    const int b = n * 8 + 2 * (ln & 3) + (ci & 1);
    if (out_row < N && b < M) y[(size_t)b * N + out_row] = __float2bfloat16_rn(s);
  }
}

template <int NT, int U, bool ASYM>
int launch(const void* x, const void* w, const float* scale, const float* zoff, void* y, int M, int N,
           int Kpad, int Npad, int chunks_per_group, int warps, cudaStream_t stream) {
  auto kernel = w4a16_mma_kernel<NT, U, ASYM>;
  const size_t smem = (size_t)warps * 32 * NT * 4 * sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
  }
  kernel<<<Npad / 16, warps * 32, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(w), scale, zoff,
      static_cast<__nv_bfloat16*>(y), M, N, Kpad, Npad, chunks_per_group);
  return (int)cudaGetLastError();
}

template <int NT, int U>
int launch_zp(const void* x, const void* w, const float* scale, const float* zoff, void* y, int M, int N,
              int Kpad, int Npad, int cpg, int warps, cudaStream_t s) {
  return zoff ? launch<NT, U, true>(x, w, scale, zoff, y, M, N, Kpad, Npad, cpg, warps, s)
              : launch<NT, U, false>(x, w, scale, zoff, y, M, N, Kpad, Npad, cpg, warps, s);
}

template <int NT>
int launch_u(const void* x, const void* w, const float* scale, const float* zoff, void* y, int M, int N,
             int Kpad, int Npad, int cpg, int warps, int unroll, cudaStream_t s) {
  switch (unroll) {
    case 2: return launch_zp<NT, 2>(x, w, scale, zoff, y, M, N, Kpad, Npad, cpg, warps, s);
    case 4: return launch_zp<NT, 4>(x, w, scale, zoff, y, M, N, Kpad, Npad, cpg, warps, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

}  // namespace

// Returns a cudaError_t value (0 = success). zoff may be null (symmetric). M in 1..64; warps <= 16
// (<= 8 for M > 16, whose kernels keep 255 registers a thread).
extern "C" int presso_w4a16_mma(const void* x, const void* w, const float* scale, const float* zoff, void* y,
                                int M, int N, int Kpad, int Npad, int chunks_per_group, int warps, int unroll,
                                void* stream) {
  if (M < 1 || M > 64 || Kpad % 64 || Npad % 16 || warps < 1 || warps > (M > 16 ? 8 : 16) || chunks_per_group < 1)
    return (int)cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (M <= 8) return launch_u<1>(x, w, scale, zoff, y, M, N, Kpad, Npad, chunks_per_group, warps, unroll, s);
  if (M <= 16) return launch_u<2>(x, w, scale, zoff, y, M, N, Kpad, Npad, chunks_per_group, warps, unroll, s);
  if (M <= 32) return launch_u<4>(x, w, scale, zoff, y, M, N, Kpad, Npad, chunks_per_group, warps, unroll, s);
  return launch_u<8>(x, w, scale, zoff, y, M, N, Kpad, Npad, chunks_per_group, warps, unroll, s);
}

extern "C" const char* presso_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
