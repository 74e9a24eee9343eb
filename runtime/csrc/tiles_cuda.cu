// CUDA tile library: kernels over the per-pixel functions of tiles.h, with C ABI launchers.
//
// Launchers take DEVICE pointers and a cudaStream_t passed as void* (NULL = legacy default
// stream); they only enqueue work and return 0 or a negative er::Status (er::kCudaError:
// er_cuda_last_error() holds the cudaError_t, er_cuda_error_string() its text). Geometry,
// layouts and arithmetic are those of tiles_cpu.cpp (see tiles.h): the two give the same bits.
//
//   int er_cuda_version(void)
//   int er_cuda_extract_u8 (const uint8_t* src, int64_t src_pitch, int height, int width, int channels,
//                           int tile, int overlap, float lo, float hi, float* tiles, void* stream)
//   int er_cuda_extract_f32(const float* src, int64_t src_pitch, <same>, float lo, float hi, float* tiles,
//                           void* stream)
//   int er_cuda_merge_f32  (const float* tiles, int height, int width, int channels, int tile, int overlap,
//                           int halo, int ramp, float* out, int64_t out_pitch, void* stream)
//   int er_cuda_merge_u8   (const float* tiles, <same geometry>, float lo, float hi, uint8_t* out,
//                           int64_t out_pitch, void* stream)
// Small host helpers so that ctypes callers (and the tests) need no other CUDA binding:
//   er_cuda_device_count, er_cuda_malloc, er_cuda_free, er_cuda_memcpy_htod, er_cuda_memcpy_dtoh,
//   er_cuda_synchronize, er_cuda_last_error, er_cuda_error_string.
#include <cuda_runtime.h>
#include <stdint.h>

#include "tiles.h"

#if defined(_WIN32)
#define ER_API extern "C" __declspec(dllexport)
#else
#define ER_API extern "C" __attribute__((visibility("default")))
#endif

#define ER_CUDA_ABI_VERSION 1

using er::TileGeometry;

namespace {

thread_local cudaError_t last_error = cudaSuccess;

int cuda_status(cudaError_t err) {
    last_error = err;
    return err == cudaSuccess ? er::kOk : er::kCudaError;
}

int check_pitch(const TileGeometry& g, int64_t pitch, int64_t elem) {
    if (pitch < (int64_t)g.width * g.channels * elem || pitch % elem) return er::kBadPitch;
    return er::kOk;
}

// One thread per tile element: x over the T*T elements of one (tile, channel) plane (column
// fastest: coalesced stores), y over the N*C planes (grid-stride beyond the grid's y limit).
__global__ void extract_u8_kernel(TileGeometry g, const uint8_t* __restrict__ src, int64_t pitch, float lo,
                                  float range, float* __restrict__ tiles, int planes) {
    const int T = g.tile, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= T * T) return;
    const int r = j / T, s = j - r * T;
    for (int p = blockIdx.y; p < planes; p += gridDim.y) {
        const int n = p / g.channels, c = p - n * g.channels;
        tiles[(int64_t)p * T * T + j] = er::extract_u8(g, src, pitch, n, c, r, s, lo, range);
    }
}

__global__ void extract_f32_kernel(TileGeometry g, const float* __restrict__ src, int64_t pitch, float lo,
                                   float range, float* __restrict__ tiles, int planes) {
    const int T = g.tile, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= T * T) return;
    const int r = j / T, s = j - r * T;
    for (int p = blockIdx.y; p < planes; p += gridDim.y) {
        const int n = p / g.channels, c = p - n * g.channels;
        tiles[(int64_t)p * T * T + j] = er::extract_f32(g, src, pitch, n, c, r, s, lo, range);
    }
}

// One thread per output pixel (all its channels): the gather of tiles.h, no atomics.
__global__ void merge_f32_kernel(TileGeometry g, const float* __restrict__ tiles, float* __restrict__ out,
                                 int64_t pitch) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= g.width || y >= g.height) return;
    float* row = (float*)((char*)out + y * pitch);
    er::merge_pixel_f32(g, tiles, y, x, row + (int64_t)x * g.channels);
}

__global__ void merge_u8_kernel(TileGeometry g, const float* __restrict__ tiles, float lo, float range,
                                uint8_t* __restrict__ out, int64_t pitch) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= g.width || y >= g.height) return;
    er::merge_pixel_u8(g, tiles, y, x, lo, range, out + y * pitch + (int64_t)x * g.channels);
}

dim3 pixel_grid(const TileGeometry& g, dim3 block) {
    return dim3((g.width + block.x - 1) / block.x, (g.height + block.y - 1) / block.y);
}

dim3 plane_grid(const TileGeometry& g, int threads, int planes) {
    const int per_plane = g.tile * g.tile;
    return dim3((per_plane + threads - 1) / threads, planes < 65535 ? planes : 65535);
}

}  // namespace

ER_API int er_cuda_version(void) { return ER_CUDA_ABI_VERSION; }

ER_API int er_cuda_last_error(void) { return (int)last_error; }

ER_API const char* er_cuda_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

ER_API int er_cuda_extract_u8(const uint8_t* src, int64_t src_pitch, int height, int width, int channels, int tile,
                              int overlap, float lo, float hi, float* tiles, void* stream) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, 0, 0)) return status;
    if (!src || !tiles) return er::kNullPointer;
    if (int status = check_pitch(g, src_pitch, 1)) return status;
    const int64_t planes = er::tile_count(g) * channels;
    if (planes > INT32_MAX / 2 || er::tile_plane(g) > INT32_MAX / 2) return er::kBadGeometry;
    extract_u8_kernel<<<plane_grid(g, 256, (int)planes), 256, 0, (cudaStream_t)stream>>>(
        g, src, src_pitch, lo, er::fsub(hi, lo), tiles, (int)planes);
    return cuda_status(cudaGetLastError());
}

ER_API int er_cuda_extract_f32(const float* src, int64_t src_pitch, int height, int width, int channels, int tile,
                               int overlap, float lo, float hi, float* tiles, void* stream) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, 0, 0)) return status;
    if (!src || !tiles) return er::kNullPointer;
    if (int status = check_pitch(g, src_pitch, sizeof(float))) return status;
    const int64_t planes = er::tile_count(g) * channels;
    if (planes > INT32_MAX / 2 || er::tile_plane(g) > INT32_MAX / 2) return er::kBadGeometry;
    extract_f32_kernel<<<plane_grid(g, 256, (int)planes), 256, 0, (cudaStream_t)stream>>>(
        g, src, src_pitch, lo, er::fsub(hi, lo), tiles, (int)planes);
    return cuda_status(cudaGetLastError());
}

ER_API int er_cuda_merge_f32(const float* tiles, int height, int width, int channels, int tile, int overlap,
                             int halo, int ramp, float* out, int64_t out_pitch, void* stream) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, halo, ramp)) return status;
    if (!tiles || !out) return er::kNullPointer;
    if (int status = check_pitch(g, out_pitch, sizeof(float))) return status;
    const dim3 block(32, 8);
    merge_f32_kernel<<<pixel_grid(g, block), block, 0, (cudaStream_t)stream>>>(g, tiles, out, out_pitch);
    return cuda_status(cudaGetLastError());
}

ER_API int er_cuda_merge_u8(const float* tiles, int height, int width, int channels, int tile, int overlap,
                            int halo, int ramp, float lo, float hi, uint8_t* out, int64_t out_pitch, void* stream) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, halo, ramp)) return status;
    if (!tiles || !out) return er::kNullPointer;
    if (int status = check_pitch(g, out_pitch, 1)) return status;
    if (!(hi != lo)) return er::kBadRange;
    const dim3 block(32, 8);
    merge_u8_kernel<<<pixel_grid(g, block), block, 0, (cudaStream_t)stream>>>(g, tiles, lo, er::fsub(hi, lo), out,
                                                                              out_pitch);
    return cuda_status(cudaGetLastError());
}

// ---------------------------------------------------------------- host helpers
ER_API int er_cuda_device_count(void) {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

ER_API void* er_cuda_malloc(int64_t bytes) {
    void* ptr = nullptr;
    return cuda_status(cudaMalloc(&ptr, (size_t)bytes)) == er::kOk ? ptr : nullptr;
}

ER_API int er_cuda_free(void* ptr) { return cuda_status(cudaFree(ptr)); }

ER_API int er_cuda_memcpy_htod(void* dst, const void* src, int64_t bytes) {
    return cuda_status(cudaMemcpy(dst, src, (size_t)bytes, cudaMemcpyHostToDevice));
}

ER_API int er_cuda_memcpy_dtoh(void* dst, const void* src, int64_t bytes) {
    return cuda_status(cudaMemcpy(dst, src, (size_t)bytes, cudaMemcpyDeviceToHost));
}

ER_API int er_cuda_synchronize(void* stream) { return cuda_status(cudaStreamSynchronize((cudaStream_t)stream)); }
