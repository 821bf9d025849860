// W4A16 matmul on tensor cores for batch 1..16: y[M, N] = x[M, K] @ W[N, K]^T, W 4-bit grouped.
//
// Layout (built by kernels/w4a16/reference.py: mma_repack / mma_pair_rows, which document it): the
// weight is cut into stripes of 16 output rows and chunks of 64 K; a chunk of a stripe is 32 uint4
// (512 B), one per lane, and lane (g = lane / 4, t = lane % 4) finds in word i of its uint4 exactly
// its A fragment of an m16n8k16 tile: rows g and g + 8, the four K values 16t + 4i + {0..3}.
// The same permutation of K inside the chunk is applied to the activations by the B fragment:
// lane (g, t) reads x[batch g][chunk*64 + 16t .. +15] with two 16-byte loads.
// Scales (and zero-point offsets) are stored per stripe and group as 8 pairs: pair g holds rows
// g and g + 8, so a lane reads both of its scales with one load.
//
// Dequantization: (w >> 4j) & 0x000F000F | 0x43004300 is the bf16 pair (128 + u_lo, 128 + u_hi)
// (one LOP3); one bf16x2 FMA subtracts 136 + z exactly (q - z, small integers are exact in bf16).
// The group scale is applied in float32 to each chunk's partial sums (a chunk never straddles a
// group: the group size is a multiple of 64), so the products are exact and the precision is that
// of a float32 accumulation.
//
// Work split: one block per stripe (or NS = 2 adjacent stripes, XS only); warp w takes chunks w,
// w + warps, ... and keeps D - 1 of them in flight through a ring of D stages in shared memory, filled
// with cp.async (a chunk's weights of each stripe and this lane's scale pair; a lane only ever reads
// back what it copied itself, so cp.async.wait_group is all the synchronization there is). With small
// activations (XS: M x Kpad bf16 <= kXsMaxBytes) the block copies its stripes' scale pairs to shared
// memory in every thread's first cp.async group and, after the wait, x with plain loads (a cp.async group
// of its own would drain the ring), and a stage holds only weights, whose activation fragments the
// stripes share; otherwise the next chunk's activations go to registers before this one's mma. The
// warps' partial sums are added in shared memory in a fixed order (deterministic).
//
// Programmatic dependent launch (sm_90+, chosen at launch; mma.py's default from a weight's second
// call): the weights (and, XS, the scales) of the first chunks are requested before
// griddepcontrol.wait, so they stream in while the previous kernel of the stream finishes; activations
// are read and outputs written only after it. Safe only when the weights were not written by the
// kernel just before (true for a prepared, static weight after its first call). The kernel lets its
// own dependent launch only once it is past its wait, so that one kernel at a time streams ahead.

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

// Activations are reused by the block's warps: via L1.
__device__ __forceinline__ uint4 load_v4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
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

struct Args {
  const __nv_bfloat16* x;  // [M, Kpad], 16-byte aligned rows
  const uint4* w;          // [S][C][32] (mma_repack)
  const void* scale;       // [S][G][8] pairs of float32 or bf16 (mma_pair_rows)
  const uint2* zoff;       // [S][G][8] pairs of bf16x2 words -(136 + z), twice (ASYM only)
  __nv_bfloat16* y;        // [M, N]
  int M, N, S, Kpad, G, cpg_shift;  // S stripes of 16 rows; the group of chunk c is c >> cpg_shift
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int BYTES>
__device__ __forceinline__ void cp_async(uint32_t dst, const void* src) {
  if (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(dst), "l"(src));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(dst), "l"(src), "n"(BYTES));
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

__device__ __forceinline__ uint2 lds64(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}

__device__ __forceinline__ void sts128(uint32_t addr, const uint4& v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}

// The block copies `bytes` (a multiple of 16) from global to shared memory, four 16-byte loads in
// flight a thread, with plain loads and stores.
__device__ __forceinline__ void copy_to_shared(uint32_t dst, const char* src, uint32_t bytes) {
  const uint32_t step = blockDim.x * 16;
  for (uint32_t base = threadIdx.x * 16; base < bytes; base += 4 * step) {
    uint4 v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (base + j * step < bytes) v[j] = load_v4(src + base + j * step);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (base + j * step < bytes) sts128(dst + base + j * step, v[j]);
  }
}

// The same with cp.async (16 bytes a copy), committed with the caller's next group.
__device__ __forceinline__ void copy_to_shared_async(uint32_t dst, const char* src, uint32_t bytes) {
  for (uint32_t at = threadIdx.x * 16; at < bytes; at += blockDim.x * 16) cp_async<16>(dst + at, src + at);
}

// One stage of a warp's ring in shared memory: a chunk's 32 x 16 weight bytes of each of the block's NS
// stripes, then (unless the block holds the stripes' scales, XS) each lane's scale pair (4 B bf16 /
// 8 B float32) and, with zero points, offset pair (8 B). Every lane copies, and later reads back, only
// its own entries: no synchronization between lanes.
template <bool BF16S, bool ASYM, bool XS, int NS>
struct StageLayout {
  static constexpr uint32_t kScaleBytes = BF16S ? 4 : 8;
  static constexpr uint32_t kScales = 512, kOffsets = 512 + 32 * kScaleBytes;
  static constexpr uint32_t kBytes = XS ? NS * 512 : kOffsets + (ASYM ? 32 * 8 : 0);  // a multiple of 16
};

// B fragments of one chunk for NT tiles: lane (g, t) reads x[n*8 + g][c*64 + 16t .. +15] (p: its address for
// row g and chunk c). Rows past M are never loaded: their registers keep the zeros they start with.
template <int NT>
__device__ __forceinline__ void load_x(const __nv_bfloat16* p, int kpad, const bool (&valid)[NT], uint32_t (&xb)[NT][8]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    if (valid[n]) {
      const uint4* xp = reinterpret_cast<const uint4*>(p + (size_t)n * 8 * kpad);
      const uint4 v0 = load_v4(xp), v1 = load_v4(xp + 1);
      xb[n][0] = v0.x; xb[n][1] = v0.y; xb[n][2] = v0.z; xb[n][3] = v0.w;
      xb[n][4] = v1.x; xb[n][5] = v1.y; xb[n][6] = v1.z; xb[n][7] = v1.w;
    }
  }
}

// Activations staged in shared memory once a block (XS) when they are small: kXsMaxBytes at most.
constexpr int kXsMaxBytes = 48 * 1024;

// Per-block timeline for study (bench/trace_w4a16.py), compiled in only with -DPRESSO_W4A16_TRACE: thread 0
// of each block stamps %globaltimer at entry, after requesting its first weights, after
// griddepcontrol.wait, once its activations are at hand, after its chunk loop and at exit, and appends
// one record of kTraceWords words.
#ifdef PRESSO_W4A16_TRACE
constexpr int kTraceWords = 9;  // y address, block | smid << 32, six stamps, clock64 at exit - entry
__device__ unsigned long long* g_trace = nullptr;
__device__ unsigned int g_trace_next = 0, g_trace_cap = 0;
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#define TRACE_STAMP(i) \
  if (threadIdx.x == 0) trace_t[i] = global_ns()
#else
#define TRACE_STAMP(i)
#endif

template <int NT, int D, int NS, bool ASYM, bool BF16S, bool XS>
__global__ void __launch_bounds__(512) w4a16_mma_kernel(const Args a) {
  static_assert(XS || NS == 1, "several stripes a block only with staged activations");
  using L = StageLayout<BF16S, ASYM, XS, NS>;
  // With XS: [x: M x Kpad bf16][scale pairs: NS][G][8]([offset pairs: NS][G][8]); then [warps][D]
  // stages; after the loop [warps][32][NS * NT * 4] sums from the start
  extern __shared__ __align__(16) unsigned char smem[];
#ifdef PRESSO_W4A16_TRACE
  unsigned long long trace_t[6] = {};
  const long long trace_clk = clock64();
#endif
  TRACE_STAMP(0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int stripe = blockIdx.x * NS, nvalid = min(NS, a.S - stripe);  // the block's first stripe
  const int chunks = a.Kpad >> 6;
  const int mine = warp < chunks ? (chunks - warp + warps - 1) / warps : 0;  // chunks warp + j * warps
  constexpr uint32_t kSymOff = 0xC308C308u;  // -136, twice

  // This lane's sources (chunk c at wbase + 32c, its scales at sbase + group * 8 pairs), and its
  // entries in stage 0 of its warp's ring.
  // (the last block's missing stripes repeat the last one: read, never written)
  const uint4* wbase[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) wbase[s] = a.w + (size_t)min(stripe + s, a.S - 1) * chunks * 32 + lane;
  const char* sbase = static_cast<const char*>(a.scale) + ((size_t)stripe * a.G * 8 + g) * L::kScaleBytes;
  const uint2* zbase = a.zoff + (size_t)stripe * a.G * 8 + g;
  // With XS the block also holds x (M x Kpad bf16) and its stripes' scale (and offset) pairs.
  const uint32_t xs_bytes = XS ? (uint32_t)a.M * a.Kpad * 2 : 0u;
  const uint32_t sc_bytes = XS ? (uint32_t)a.G * 8 * L::kScaleBytes : 0u;  // a stripe's
  const uint32_t zo_bytes = XS && ASYM ? (uint32_t)a.G * 8 * 8 : 0u;
  const uint32_t blk = smem_addr(smem), zo_at = blk + xs_bytes + NS * sc_bytes;
  const uint32_t ring = zo_at + NS * zo_bytes + warp * D * L::kBytes;
  const uint32_t w_at = ring + lane * 16, s_at = ring + L::kScales + lane * L::kScaleBytes;
  const uint32_t z_at = ring + L::kOffsets + lane * 8;
  int c_next = warp;

  // Stage u holds the warp's chunks j = u (mod D). Groups are committed even when empty, so that
  // "all but the newest D - 1 groups are complete" always means "chunk j has landed".
  auto fetch = [&](int u) {
    const uint32_t off = u * L::kBytes;
#pragma unroll
    for (int s = 0; s < NS; ++s) cp_async<16>(w_at + off + s * 512, wbase[s] + (uint32_t)c_next * 32u);
    if constexpr (!XS) {
      const uint32_t gi = ((uint32_t)c_next >> a.cpg_shift) * 8u;
      cp_async<L::kScaleBytes>(s_at + off, sbase + gi * L::kScaleBytes);
      if (ASYM) cp_async<8>(z_at + off, zbase + gi);
    }
    c_next += warps;
  };
  // With XS the stripes' scales and offsets (adjacent in memory; static, so before the wait) ride in the
  // first copy group of every thread, with the warp's first chunk: the loop waits for that group first
  // anyway, so nothing waits for them alone.
  if constexpr (XS) {
    copy_to_shared_async(blk + xs_bytes, static_cast<const char*>(a.scale) + (size_t)stripe * sc_bytes,
                         nvalid * sc_bytes);
    if (ASYM)
      copy_to_shared_async(zo_at, reinterpret_cast<const char*>(a.zoff) + (size_t)stripe * zo_bytes,
                           nvalid * zo_bytes);
  }
#pragma unroll
  for (int u = 0; u < D - 1; ++u) {
    if (u < mine) fetch(u);
    cp_async_commit();
  }
  TRACE_STAMP(1);
  grid_dependency_wait();  // x is the previous kernel's output
  // Only now may the next kernel of the stream launch (and only its pre-wait part overlap this one): at
  // most one kernel's early weight requests compete with the running one's, never a cascade of them.
  grid_launch_dependents();
  TRACE_STAMP(2);

  float acc[NS][NT][4];
#pragma unroll
  for (int s = 0; s < NS; ++s)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[s][n][i] = 0.f;

  bool xvalid[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) xvalid[n] = n * 8 + g < a.M;
  const __nv_bfloat16* xsrc = a.x + (size_t)g * a.Kpad + 16 * t + warp * 64;
  const size_t xstep = (size_t)warps * 64;
  uint32_t xb[2][NT][8];  // this chunk's B fragments and the next one's
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 8; ++i) xb[0][n][i] = xb[1][n][i] = 0u;
  // With XS the block copies x to shared memory once, with plain loads (not cp.async: waiting for a
  // copy group would also wait for the ring's chunks in flight before it, and drain the ring), and
  // lanes read their B fragments from there.
  uint32_t xs_at = smem_addr(smem) + ((uint32_t)g * a.Kpad + 16 * t + warp * 64) * 2;
  const uint32_t xs_step = (uint32_t)warps * 128;
  if constexpr (XS) {
    copy_to_shared(blk, reinterpret_cast<const char*>(a.x), xs_bytes);
    cp_async_wait<D - 2>();  // this thread's first group: its part of the scales
    __syncthreads();
  } else {
    if (mine > 0) load_x<NT>(xsrc, a.Kpad, xvalid, xb[0]);
    xsrc += xstep;
  }
  TRACE_STAMP(3);

  for (int j0 = 0; j0 < mine; j0 += D) {
#pragma unroll
    for (int u = 0; u < D; ++u) {
      const int j = j0 + u;
      if (j >= mine) break;  // uniform across the warp
      if (j + D - 1 < mine) fetch((u + D - 1) % D);
      cp_async_commit();
      if constexpr (XS) {
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          if (xvalid[n]) {
            const uint32_t at = xs_at + (uint32_t)n * 8 * a.Kpad * 2;
            const uint4 v0 = lds128(at), v1 = lds128(at + 16);
            xb[u & 1][n][0] = v0.x; xb[u & 1][n][1] = v0.y; xb[u & 1][n][2] = v0.z; xb[u & 1][n][3] = v0.w;
            xb[u & 1][n][4] = v1.x; xb[u & 1][n][5] = v1.y; xb[u & 1][n][6] = v1.z; xb[u & 1][n][7] = v1.w;
          }
        }
        xs_at += xs_step;
      } else if (j + 1 < mine) {
        load_x<NT>(xsrc, a.Kpad, xvalid, xb[(u + 1) & 1]);
        xsrc += xstep;
      }
      cp_async_wait<D - 1>();
      const uint32_t off = u * L::kBytes;
      // this lane's scale pair of chunk c = warp + j * warps: in the stage, or in the block's copy
      const uint32_t pair = ((uint32_t)(warp + j * warps) >> a.cpg_shift) * 8 + g;
      const uint32_t (&xc)[NT][8] = xb[u & 1];
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        const uint4 wv = lds128(w_at + off + s * 512);
        const uint32_t s_from = XS ? blk + xs_bytes + s * sc_bytes + pair * L::kScaleBytes : s_at + off;
        float s0, s1;
        if constexpr (BF16S) {
          const uint32_t raw = lds32(s_from);
          s0 = __uint_as_float(raw << 16);
          s1 = __uint_as_float(raw & 0xFFFF0000u);
        } else {
          const uint2 raw = lds64(s_from);
          s0 = __uint_as_float(raw.x);
          s1 = __uint_as_float(raw.y);
        }
        uint32_t o0 = kSymOff, o1 = kSymOff;
        if constexpr (ASYM) {
          const uint2 z = lds64(XS ? zo_at + s * zo_bytes + pair * 8 : z_at + off);
          o0 = z.x;
          o1 = z.y;
        }
        const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
        float part[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[n][i] = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t fa[4];
          dequant(words[i], o0, o1, fa);
#pragma unroll
          for (int n = 0; n < NT; ++n) mma_bf16(part[n], fa, xc[n][2 * i], xc[n][2 * i + 1]);
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          acc[s][n][0] = fmaf(s0, part[n][0], acc[s][n][0]);
          acc[s][n][1] = fmaf(s0, part[n][1], acc[s][n][1]);
          acc[s][n][2] = fmaf(s1, part[n][2], acc[s][n][2]);
          acc[s][n][3] = fmaf(s1, part[n][3], acc[s][n][3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  TRACE_STAMP(4);
  __syncthreads();  // the sums below reuse the stages' memory

  constexpr int kPer = NS * NT * 4;
  float* red = reinterpret_cast<float*>(smem);
  float* out = red + ((size_t)warp * 32 + lane) * kPer;
#pragma unroll
  for (int s = 0; s < NS; ++s)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) out[(s * NT + n) * 4 + i] = acc[s][n][i];
  __syncthreads();
  const int total = 32 * kPer;
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    float sum = 0.f;
    for (int v = 0; v < warps; ++v) sum += red[(size_t)v * total + j];
    const int ln = j / kPer, r = j % kPer, st = r / (NT * 4), n = (r >> 2) % NT, ci = r & 3;
    const int out_row = (stripe + st) * 16 + (ln >> 2) + ((ci & 2) ? 8 : 0);
    const int b = n * 8 + 2 * (ln & 3) + (ci & 1);
    if (out_row < a.N && b < a.M) a.y[(size_t)b * a.N + out_row] = __float2bfloat16_rn(sum);
  }
#ifdef PRESSO_W4A16_TRACE
  TRACE_STAMP(5);
  if (threadIdx.x == 0) {
    const unsigned int slot = atomicAdd(&g_trace_next, 1u);
    if (slot < g_trace_cap) {
      unsigned long long* r = g_trace + (size_t)slot * kTraceWords;
      unsigned int smid;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
      r[0] = reinterpret_cast<unsigned long long>(a.y);
      r[1] = blockIdx.x | (unsigned long long)smid << 32;
      for (int i = 0; i < 6; ++i) r[2 + i] = trace_t[i];
      r[8] = (unsigned long long)(clock64() - trace_clk);
    }
  }
#endif
}

template <int NT, int D, int NS, bool ASYM, bool BF16S, bool XS>
int launch(const Args& a, int warps, bool pdl, cudaStream_t stream) {
  auto kernel = w4a16_mma_kernel<NT, D, NS, ASYM, BF16S, XS>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((a.S + NS - 1) / NS);
  cfg.blockDim = dim3(warps * 32);
  using L = StageLayout<BF16S, ASYM, XS, NS>;
  const size_t block =
      XS ? (size_t)a.M * a.Kpad * 2 + (size_t)NS * a.G * 8 * (L::kScaleBytes + (ASYM ? 8 : 0)) : 0;
  const size_t ring = block + (size_t)warps * D * L::kBytes;
  const size_t sums = (size_t)warps * 32 * NS * NT * 4 * sizeof(float);
  cfg.dynamicSmemBytes = ring > sums ? ring : sums;
  if (cfg.dynamicSmemBytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cfg.dynamicSmemBytes);
    if (e != cudaSuccess) return (int)e;
  }
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, a);
  return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
}

template <int NT, int D, bool ASYM, bool BF16S>
int launch_stripes(const Args& a, int warps, int stripes, bool pdl, cudaStream_t s) {
  if (a.M * a.Kpad * 2 > kXsMaxBytes)
    return stripes == 1 ? launch<NT, D, 1, ASYM, BF16S, false>(a, warps, pdl, s) : (int)cudaErrorInvalidValue;
  switch (stripes) {
    case 1: return launch<NT, D, 1, ASYM, BF16S, true>(a, warps, pdl, s);
    case 2: return launch<NT, D, 2, ASYM, BF16S, true>(a, warps, pdl, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

template <int NT, int D>
int launch_flags(const Args& a, int warps, int stripes, bool asym, bool bf16s, bool pdl, cudaStream_t s) {
  if (asym)
    return bf16s ? launch_stripes<NT, D, true, true>(a, warps, stripes, pdl, s)
                 : launch_stripes<NT, D, true, false>(a, warps, stripes, pdl, s);
  return bf16s ? launch_stripes<NT, D, false, true>(a, warps, stripes, pdl, s)
               : launch_stripes<NT, D, false, false>(a, warps, stripes, pdl, s);
}

template <int NT>
int launch_depth(const Args& a, int warps, int depth, int stripes, bool asym, bool bf16s, bool pdl, cudaStream_t s) {
  switch (depth) {
    case 4: return launch_flags<NT, 4>(a, warps, stripes, asym, bf16s, pdl, s);
    case 8: return launch_flags<NT, 8>(a, warps, stripes, asym, bf16s, pdl, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

}  // namespace

// Returns a cudaError_t value (0 = success). zoff may be null (symmetric). M in 1..16, warps in 1..16,
// depth 4 or 8, stripes a block 1, or 2 when M x Kpad x 2 <= kXsMaxBytes; chunks_per_group a power of
// two unless G == 1; flags: bit 0 = bf16 scales (else float32), bit 1 = programmatic dependent launch.
extern "C" int presso_w4a16_mma(const void* x, const void* w, const void* scale, const void* zoff, void* y, int M,
                                int N, int Kpad, int Npad, int G, int chunks_per_group, int warps, int depth,
                                int stripes, int flags, void* stream) {
  const bool pow2 = chunks_per_group > 0 && (chunks_per_group & (chunks_per_group - 1)) == 0;
  if (M < 1 || M > 16 || Kpad % 64 || Npad % 16 || warps < 1 || warps > 16 || G < 1 || (G > 1 && !pow2))
    return (int)cudaErrorInvalidValue;
  const int shift = G == 1 ? 30 : __builtin_ctz(chunks_per_group);
  Args a{static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(w), scale, static_cast<const uint2*>(zoff),
         static_cast<__nv_bfloat16*>(y), M, N, Npad / 16, Kpad, G, shift};
  const bool bf16s = flags & 1, pdl = flags & 2, asym = zoff != nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (M <= 8) return launch_depth<1>(a, warps, depth, stripes, asym, bf16s, pdl, s);
  return launch_depth<2>(a, warps, depth, stripes, asym, bf16s, pdl, s);
}

#ifdef PRESSO_W4A16_TRACE
// Points the trace at `buf` (cap records of kTraceWords uint64) and restarts it; the number of records
// written so far is read back with presso_w4a16_trace_count.
extern "C" int presso_w4a16_trace_reset(void* buf, unsigned int cap) {
  const unsigned int zero = 0;
  cudaError_t e = cudaMemcpyToSymbol(g_trace, &buf, sizeof(buf));
  if (e == cudaSuccess) e = cudaMemcpyToSymbol(g_trace_cap, &cap, sizeof(cap));
  if (e == cudaSuccess) e = cudaMemcpyToSymbol(g_trace_next, &zero, sizeof(zero));
  return (int)e;
}

extern "C" unsigned int presso_w4a16_trace_count() {
  unsigned int n = 0;
  cudaMemcpyFromSymbol(&n, g_trace_next, sizeof(n));
  return n;
}
#endif

extern "C" const char* presso_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
