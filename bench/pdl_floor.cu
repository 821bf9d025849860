// What streaming a weight costs a chain of kernels, with and without programmatic dependent launch
// (bench/trace_w4a16.py): each block reads its contiguous slice of `w` through a ring of D stages in
// shared memory (cp.async, one 16-byte piece a thread a stage, as the W4A16 kernel does), requesting
// the first D - 1 stages before griddepcontrol.wait; after the wait it reads a small activation vector
// and finally writes one word a warp. No arithmetic to speak of: the floor under the same protocol
// for a kernel that reads these bytes the way mma.cu does.

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int D>
__global__ void __launch_bounds__(1024) stream_kernel(const uint4* w, int steps, const uint4* x, uint32_t* y) {
  extern __shared__ __align__(16) uint4 ring[];
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  const int tid = threadIdx.x, nt = blockDim.x;
  const uint4* src = w + (size_t)blockIdx.x * steps * nt + tid;
  const uint32_t at = smem_addr(ring + tid), stage = nt * 16;
#pragma unroll
  for (int u = 0; u < D - 1; ++u) {
    if (u < steps) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(at + u * stage), "l"(src + (size_t)u * nt));
    asm volatile("cp.async.commit_group;");
  }
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  const uint4 xv = x[tid & 63];
  uint32_t acc = xv.x ^ xv.y;
  for (int j = 0; j < steps; ++j) {
    const int nxt = j + D - 1;
    if (nxt < steps)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(at + (nxt % D) * stage), "l"(src + (size_t)nxt * nt));
    asm volatile("cp.async.commit_group;");
    asm volatile("cp.async.wait_group %0;" ::"n"(D - 1));
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(at + (j % D) * stage));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
#pragma unroll
  for (int o = 16; o; o >>= 1) acc ^= __shfl_xor_sync(0xFFFFFFFFu, acc, o);
  if ((tid & 31) == 0) y[((size_t)blockIdx.x * nt + tid) >> 5] = acc;
}

template <int D>
int launch(const void* w, int blocks, int threads, int steps, const void* x, void* y, bool pdl, cudaStream_t s) {
  auto kernel = stream_kernel<D>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = (size_t)D * threads * 16;
  if (cfg.dynamicSmemBytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cfg.dynamicSmemBytes);
    if (e != cudaSuccess) return (int)e;
  }
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<const uint4*>(w), steps, static_cast<const uint4*>(x),
                                     static_cast<uint32_t*>(y));
  return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
}

}  // namespace

// blocks x threads x steps 16-byte pieces of w are read; depth in {2, 4, 8, 16, 32}.
extern "C" int presso_stream_floor(const void* w, int blocks, int threads, int steps, int depth, const void* x, void* y,
                                   int pdl, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (depth) {
    case 2: return launch<2>(w, blocks, threads, steps, x, y, pdl, s);
    case 4: return launch<4>(w, blocks, threads, steps, x, y, pdl, s);
    case 8: return launch<8>(w, blocks, threads, steps, x, y, pdl, s);
    case 16: return launch<16>(w, blocks, threads, steps, x, y, pdl, s);
    case 32: return launch<32>(w, blocks, threads, steps, x, y, pdl, s);
    default: return (int)cudaErrorInvalidValue;
  }
}
