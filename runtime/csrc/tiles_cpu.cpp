// CPU tile library: C ABI over the per-pixel functions of tiles.h, parallel with OpenMP.
//
// All functions return 0 (er::kOk) or a negative er::Status; er_status_string() names it.
// Layouts: frames are HWC with rows `pitch` bytes apart (pitch >= width * channels * element
// size; a crop of a larger frame is passed as its first pixel plus the parent's pitch);
// tiles are a dense float32 array (N, C, T, T), N = er_tile_count(), tile n = ty * tiles_x + tx.
//
//   int     er_version(void)                ABI version of this library (bumped on any change)
//   int     er_max_threads(void)            OpenMP threads a call will use (1 without OpenMP)
//   const char* er_status_string(int status)
//   int64_t er_tile_count(height, width, tile, overlap)      tiles of the grid, or < 0
//   int er_extract_u8 (const uint8_t* src, int64_t src_pitch, int height, int width, int channels,
//                      int tile, int overlap, float lo, float hi, float* tiles)
//           value = lo + (hi - lo) * (pixel / 255)
//   int er_extract_f32(const float* src, int64_t src_pitch, <same geometry>, float lo, float hi,
//                      float* tiles)
//           value = lo + (hi - lo) * pixel   (lo = 0, hi = 1: an exact copy)
//   int er_merge_f32(const float* tiles, int height, int width, int channels, int tile,
//                    int overlap, int halo, int ramp, float* out, int64_t out_pitch, int flags)
//           out = weighted average of the covering tiles (unclipped)
//   int er_merge_u8 (const float* tiles, <same geometry>, float lo, float hi, uint8_t* out,
//                    int64_t out_pitch, int flags)
//           out = rint(clamp((average - lo) / (hi - lo), 0, 1) * 255)
//   flags: ER_MERGE_PIXELWISE (1) evaluates er::merge_pixel_* once per output pixel, exactly as
//   the CUDA kernels do; the default path evaluates the same gather for a run of pixels that
//   share their covering tiles with the pixel loop innermost (SIMD). Both give the same bits.
//   int er_cpu_isa(void)                    merge kernels in use: 0 portable, 1 x86 AVX2
//   int er_planes_from_u8(const uint8_t* src, int64_t src_pitch, int height, int width,
//                         int channels, float lo, float hi, float* planes)
//           a whole frame as float32 planes (C, height, width): extract's value per pixel
//   int er_planes_to_u8(const float* planes, int plane_height, int plane_width, int height,
//                       int width, int channels, float lo, float hi, uint8_t* out, int64_t out_pitch)
//           planes (C, plane_height, plane_width) -> the top-left height x width of the frame:
//           the merge's uint8 value for a pixel one tile covers (a padded frame is cropped)
//
// The merge kernels (second half of this file) are compiled twice on x86-64 with GCC: once
// for the baseline ISA and once for AVX2 (this file includes itself), picked at run time by
// CPU detection; EDGERESTORE_TILES_ISA=generic forces the portable ones. The AVX2 build adds
// intrinsic forms of the uint8 finalization and of the RGB float interleave, and a fused uint8
// merge for 1 and 3 channels (gather, finalize and HWC store in one pass over registers),
// operation for operation those of tiles.h. Same bits either way (no FMA contraction, IEEE
// single operations only; tests/test_tile_kernels.py compares the paths and a numpy float32
// reference bit for bit).
#ifndef ER_TILES_CPU_KERNELS
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#include "tiles.h"

#if defined(_WIN32)
#define ER_API extern "C" __declspec(dllexport)
#else
#define ER_API extern "C" __attribute__((visibility("default")))
#endif

#define ER_ABI_VERSION 2
#define ER_MERGE_PIXELWISE 1

using er::TileGeometry;

namespace {

int check_pitch(const TileGeometry& g, int64_t pitch, int64_t elem) {
    if (pitch < (int64_t)g.width * g.channels * elem || pitch % elem) return er::kBadPitch;
    return er::kOk;
}

// Extract: one (tile, channel, row) per iteration, the row's T values from one source row.
template <typename Src, typename Normalize>
void extract_rows(const TileGeometry& g, const Src* src, int64_t pitch, float* tiles, Normalize normalize) {
    const int64_t rows = er::tile_count(g) * g.channels * g.tile;
    const int T = g.tile, C = g.channels;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        const int r = (int)(i % T);
        const int c = (int)((i / T) % C);
        const int64_t n = i / ((int64_t)T * C);
        int y, x0;
        er::tile_source(g, n, r, 0, &y, &x0);
        const Src* row = (const Src*)((const char*)src + y * pitch) + (int64_t)x0 * C + c;
        float* dst = tiles + er::tile_index(g, n, c, r, 0);
        for (int s = 0; s < T; ++s) dst[s] = normalize(row[(int64_t)s * C]);
    }
}

// A run [p0, p1) of positions along an axis that are covered by the same tiles.
struct Segment {
    int p0, p1;
    er::AxisSpan span;
};

std::vector<Segment> axis_segments(int length, int tile, int stride, int count) {
    std::vector<Segment> segments;
    for (int p = 0; p < length; ++p) {
        const er::AxisSpan s = er::axis_span(p, length, tile, stride, count);
        if (segments.empty() || s.first != segments.back().span.first || s.last != segments.back().span.last ||
            s.flush != segments.back().span.flush)
            segments.push_back({p, p + 1, s});
        else
            segments.back().p1 = p + 1;
    }
    return segments;
}

// What the merge writes: finalize(acc, wsum) and, for pixels whose only covering tile has
// weight 1, unit(v) == finalize(0 + 1 * v, 0 + 1) with the exact IEEE identities 1 * v == v,
// x / 1 == x and x - 0 == x applied. Same bits as the full form; tiles.h functions only.
struct FinalF32 {
    using Out = float;
    Out operator()(float acc, float wsum) const { return er::finalize_f32(acc, wsum); }
    Out unit(float v) const { return er::fadd(0.0f, v); }
};
struct FinalU8 {  // any [lo, hi]
    using Out = uint8_t;
    float lo, range;
    Out operator()(float acc, float wsum) const { return (Out)(int)er::finalize_u8_value(acc, wsum, lo, range); }
    Out unit(float v) const { return (Out)(int)er::finalize_u8_value(er::fadd(0.0f, v), 1.0f, lo, range); }
};
struct FinalU8Unit {  // [lo, hi] = [0, 1]
    using Out = uint8_t;
    Out operator()(float acc, float wsum) const { return (Out)(int)er::finalize_u8_value_unit(acc, wsum); }
    Out unit(float v) const { return (Out)(int)er::finalize_u8_value_unit(er::fadd(0.0f, v), 1.0f); }
};

}  // namespace

#define ER_TILES_CPU_KERNELS 1
namespace generic {
#include "tiles_cpu.cpp"
}  // namespace generic
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define ER_KERNELS_AVX2 1
namespace avx2 {
#include "tiles_cpu.cpp"
}  // namespace avx2
#undef ER_KERNELS_AVX2
#pragma GCC pop_options
#define ER_HAVE_AVX2 1
#endif

namespace {

// 1: the AVX2 kernels (when built and the CPU has AVX2, unless EDGERESTORE_TILES_ISA=generic).
int merge_isa() {
#ifdef ER_HAVE_AVX2
    static const bool has_avx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2") != 0);
    const char* force = getenv("EDGERESTORE_TILES_ISA");
    return has_avx2 && !(force && strcmp(force, "generic") == 0) ? 1 : 0;
#else
    return 0;
#endif
}

template <typename Final>
void merge_dispatch(const TileGeometry& g, const float* tiles, typename Final::Out* out, int64_t pitch,
                    const Final& final_value) {
#ifdef ER_HAVE_AVX2
    if (merge_isa() == 1) return avx2::merge_blocks(g, tiles, out, pitch, final_value);
#endif
    generic::merge_blocks(g, tiles, out, pitch, final_value);
}

}  // namespace


ER_API int er_version(void) { return ER_ABI_VERSION; }

ER_API int er_cpu_isa(void) { return merge_isa(); }

ER_API int er_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

ER_API const char* er_status_string(int status) {
    switch (status) {
        case er::kOk: return "ok";
        case er::kBadGeometry: return "invalid tiling (need tile > 0, 0 <= overlap < tile, halo >= 0, ramp >= 0, image >= tile)";
        case er::kBadChannels: return "invalid channel count";
        case er::kNullPointer: return "null pointer";
        case er::kBadPitch: return "row pitch smaller than a row or not a multiple of the element size";
        case er::kBadRange: return "hi must differ from lo";
        case er::kCudaError: return "CUDA error";
        default: return "unknown status";
    }
}

ER_API int64_t er_tile_count(int height, int width, int tile, int overlap) {
    TileGeometry g;
    const int status = er::make_geometry(&g, height, width, 1, tile, overlap, 0, 0);
    return status ? status : er::tile_count(g);
}

ER_API int er_extract_u8(const uint8_t* src, int64_t src_pitch, int height, int width, int channels, int tile,
                         int overlap, float lo, float hi, float* tiles) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, 0, 0)) return status;
    if (!src || !tiles) return er::kNullPointer;
    if (int status = check_pitch(g, src_pitch, 1)) return status;
    const float range = er::fsub(hi, lo);
    extract_rows(g, src, src_pitch, tiles, [=](uint8_t p) { return er::normalize_u8(p, lo, range); });
    return er::kOk;
}

ER_API int er_extract_f32(const float* src, int64_t src_pitch, int height, int width, int channels, int tile,
                          int overlap, float lo, float hi, float* tiles) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, 0, 0)) return status;
    if (!src || !tiles) return er::kNullPointer;
    if (int status = check_pitch(g, src_pitch, sizeof(float))) return status;
    const float range = er::fsub(hi, lo);
    extract_rows(g, src, src_pitch, tiles, [=](float v) { return er::normalize_f32(v, lo, range); });
    return er::kOk;
}

ER_API int er_planes_from_u8(const uint8_t* src, int64_t src_pitch, int height, int width, int channels, float lo,
                             float hi, float* planes) {
    if (height < 1 || width < 1) return er::kBadGeometry;
    if (channels < 1) return er::kBadChannels;
    if (!src || !planes) return er::kNullPointer;
    if (src_pitch < (int64_t)width * channels) return er::kBadPitch;
    const float range = er::fsub(hi, lo);
    const int64_t plane = (int64_t)height * width;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < height; ++y) {
        const uint8_t* row = src + y * src_pitch;
        for (int c = 0; c < channels; ++c) {
            float* dst = planes + c * plane + (int64_t)y * width;
            for (int x = 0; x < width; ++x) dst[x] = er::plane_value_u8(row[(int64_t)x * channels + c], lo, range);
        }
    }
    return er::kOk;
}

ER_API int er_planes_to_u8(const float* planes, int plane_height, int plane_width, int height, int width,
                           int channels, float lo, float hi, uint8_t* out, int64_t out_pitch) {
    if (height < 1 || width < 1 || height > plane_height || width > plane_width) return er::kBadGeometry;
    if (channels < 1) return er::kBadChannels;
    if (!planes || !out) return er::kNullPointer;
    if (out_pitch < (int64_t)width * channels) return er::kBadPitch;
    if (!(hi != lo)) return er::kBadRange;
    const float range = er::fsub(hi, lo);
    const int64_t plane = (int64_t)plane_height * plane_width;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < height; ++y) {
        uint8_t* row = out + y * out_pitch;
        for (int c = 0; c < channels; ++c) {
            const float* src = planes + c * plane + (int64_t)y * plane_width;
            for (int x = 0; x < width; ++x) row[(int64_t)x * channels + c] = er::frame_value_u8(src[x], lo, range);
        }
    }
    return er::kOk;
}

ER_API int er_merge_f32(const float* tiles, int height, int width, int channels, int tile, int overlap, int halo,
                        int ramp, float* out, int64_t out_pitch, int flags) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, halo, ramp)) return status;
    if (!tiles || !out) return er::kNullPointer;
    if (int status = check_pitch(g, out_pitch, sizeof(float))) return status;
    if (flags & ER_MERGE_PIXELWISE) {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < g.height; ++y) {
            float* row = (float*)((char*)out + y * out_pitch);
            for (int x = 0; x < g.width; ++x) er::merge_pixel_f32(g, tiles, y, x, row + (int64_t)x * g.channels);
        }
    } else {
        merge_dispatch(g, tiles, out, out_pitch, FinalF32{});
    }
    return er::kOk;
}

ER_API int er_merge_u8(const float* tiles, int height, int width, int channels, int tile, int overlap, int halo,
                       int ramp, float lo, float hi, uint8_t* out, int64_t out_pitch, int flags) {
    TileGeometry g;
    if (int status = er::make_geometry(&g, height, width, channels, tile, overlap, halo, ramp)) return status;
    if (!tiles || !out) return er::kNullPointer;
    if (int status = check_pitch(g, out_pitch, 1)) return status;
    if (!(hi != lo)) return er::kBadRange;
    const float range = er::fsub(hi, lo);
    if (flags & ER_MERGE_PIXELWISE) {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < g.height; ++y) {
            uint8_t* row = out + y * out_pitch;
            for (int x = 0; x < g.width; ++x)
                er::merge_pixel_u8(g, tiles, y, x, lo, range, row + (int64_t)x * g.channels);
        }
    } else {
        if (lo == 0.0f && range == 1.0f)
            merge_dispatch(g, tiles, out, out_pitch, FinalU8Unit{});
        else
            merge_dispatch(g, tiles, out, out_pitch, FinalU8{lo, range});
    }
    return er::kOk;
}

#else  // ER_TILES_CPU_KERNELS

// ====================================================================== merge kernels
// Compiled once per instruction set (see the top of the file): everything in here lands in
// namespace generic / avx2.
// Pixel loops run over a whole number of kLanes (the scratch rows are padded): no scalar
// remainder iterations; results past the run's end are computed and never stored.
constexpr int kLanes = 16;
inline int round_up(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

#if defined(__GNUC__)
#define ER_INLINE inline __attribute__((always_inline))
#define ER_PREFETCH(p) __builtin_prefetch(p)
#define ER_PREFETCH_L2(p) __builtin_prefetch(p, 0, 2)
#define ER_PREFETCH_W(p) __builtin_prefetch(p, 1)
#else
#define ER_INLINE inline
#define ER_PREFETCH(p) ((void)0)
#define ER_PREFETCH_L2(p) ((void)0)
#define ER_PREFETCH_W(p) ((void)0)
#endif

// Rows ahead that a block prefetches from each tile it reads: the tile rows of a narrow
// block (an overlap band) are 4 cache lines apart, too far for the hardware prefetchers.
#ifndef ER_PREFETCH_ROWS
#define ER_PREFETCH_ROWS 6
#endif
constexpr int kPrefetchRows = ER_PREFETCH_ROWS;

// Prefetch the cache lines of p[0, n) that lie before end; Far: into L2 only (read later).
template <bool Far = false>
ER_INLINE void prefetch_run(const float* p, int n, const float* end) {
    for (int i = 0; i < n; i += 16)
        if (p + i < end) Far ? ER_PREFETCH_L2(p + i) : ER_PREFETCH(p + i);
    if (p + n - 1 < end) Far ? ER_PREFETCH_L2(p + n - 1) : ER_PREFETCH(p + n - 1);
}

// Per-thread scratch for one block row (rows of `stride` = tile rounded up to kLanes):
// acc[c][i], wsum[i] and the finalized values out[c][i] (float, or uint8 in the same storage).
struct Scratch {
    int stride;
    std::vector<float> acc, wsum, out;
    explicit Scratch(int tile)
        : stride(round_up(tile)),
          acc((size_t)er::kChannelChunk * stride),
          wsum(stride),
          out((size_t)er::kChannelChunk * stride) {}
};

// The pixel loops (restrict parameters: no run-time alias checks, straight SIMD).
// One covering tile's terms for a run of n pixels: w = min(wy, wx), then, per pixel,
// wsum = wsum + w and acc[c] = acc[c] + w * v (First: the accumulators start at 0).
template <int NC, bool First>
ER_INLINE void k_pair(float* __restrict acc, float* __restrict ws, const float* __restrict wrow, float wy,
                      const float* __restrict src, int64_t plane, int stride, int n) {
    for (int i = 0; i < n; ++i) {
        const float w = er::fmin_(wy, wrow[i]);
        ws[i] = er::fadd(First ? 0.0f : ws[i], w);
        for (int c = 0; c < NC; ++c) {
            float a = First ? 0.0f : acc[c * stride + i];
            er::accumulate(a, w, src[c * plane + i]);
            acc[c * stride + i] = a;
        }
    }
}
template <int NC, typename F>
ER_INLINE void k_finalize(typename F::Out* __restrict out, const float* __restrict acc, const float* __restrict ws,
                          int stride, int n, const F& f) {
    for (int c = 0; c < NC; ++c)
        for (int i = 0; i < n; ++i) out[c * stride + i] = f(acc[c * stride + i], ws[i]);
}
template <int NC, typename F>
ER_INLINE void k_unit(typename F::Out* __restrict out, const float* __restrict src, int64_t plane, int stride, int n,
                      const F& f) {
    for (int c = 0; c < NC; ++c)
        for (int i = 0; i < n; ++i) out[c * stride + i] = f.unit(src[c * plane + i]);
}
#ifdef ER_KERNELS_AVX2
// AVX2 forms of the uint8 finalization, 8 pixels at a time, operation for operation those of
// tiles.h: vmaxps(x, 0) is x > 0 ? x : 0 and vminps(x, 1) is x < 1 ? x : 1 (er::fmax_ / fmin_,
// NaN -> 0 included); the value is integral. Used by the block kernels (planar scratch rows)
// and the fused merge below.
// round(clamp01(v) * 255) as int32 lanes in [0, 255]. vcvtps2dq rounds in the MXCSR mode,
// round-half-to-even unless a caller changed it: the mode er::round_even's 2^23 trick (the
// portable kernels) relies on as well, so both give np.rint's bits under the same condition.
ER_INLINE __m256i v_u8_lanes(__m256 v) {
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
    return _mm256_cvtps_epi32(_mm256_mul_ps(v, _mm256_set1_ps(255.0f)));
}
template <int NC>
ER_INLINE void v_store_pixels(uint8_t* o, const __m256i (&q)[NC]) {  // 8 pixels, NC bytes each, exactly
    if constexpr (NC == 1) {
        const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q[0]), _mm256_extracti128_si256(q[0], 1));
        _mm_storel_epi64((__m128i*)o, _mm_packus_epi16(w, w));
    } else {
        // per 128-bit lane (pixels 0-3 | 4-7): bytes r0-3 g0-3 b0-3 b0-3 -> r0 g0 b0 ... b3, then
        // the two 12-byte halves made contiguous: 24 bytes.
        const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[2]));
        const __m256i order = _mm256_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1,  //
                                               0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1);
        const __m256i dense = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(bytes, order),
                                                          _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7));
        _mm_storeu_si128((__m128i*)o, _mm256_castsi256_si128(dense));
        _mm_storel_epi64((__m128i*)(o + 16), _mm256_extracti128_si256(dense, 1));
    }
}
ER_INLINE void v_store_u8(uint8_t* out, __m256 v) {  // round(clamp01(v) * 255) -> 8 bytes
    const __m256i q[1] = {v_u8_lanes(v)};
    v_store_pixels<1>(out, q);
}
ER_INLINE __m256 v_mapped(const FinalU8Unit&, __m256 average) { return average; }  // (x - 0) / 1 == x
ER_INLINE __m256 v_mapped(const FinalU8& f, __m256 average) {
    return _mm256_div_ps(_mm256_sub_ps(average, _mm256_set1_ps(f.lo)), _mm256_set1_ps(f.range));
}
template <int NC, typename F>
ER_INLINE void k_finalize_u8(uint8_t* __restrict out, const float* __restrict acc, const float* __restrict ws,
                             int stride, int n, const F& f) {
    for (int c = 0; c < NC; ++c) {
        int i = 0;
        for (; i + 8 <= n; i += 8)
            v_store_u8(out + c * stride + i,
                       v_mapped(f, _mm256_div_ps(_mm256_loadu_ps(acc + c * stride + i), _mm256_loadu_ps(ws + i))));
        for (; i < n; ++i) out[c * stride + i] = f(acc[c * stride + i], ws[i]);
    }
}
template <int NC, typename F>
ER_INLINE void k_unit_u8(uint8_t* __restrict out, const float* __restrict src, int64_t plane, int stride, int n,
                         const F& f) {  // finalize(0 + 1 * v, 0 + 1)
    for (int c = 0; c < NC; ++c) {
        int i = 0;
        for (; i + 8 <= n; i += 8)
            v_store_u8(out + c * stride + i,
                       v_mapped(f, _mm256_add_ps(_mm256_setzero_ps(), _mm256_loadu_ps(src + c * plane + i))));
        for (; i < n; ++i) out[c * stride + i] = f.unit(src[c * plane + i]);
    }
}
template <int NC>
ER_INLINE void k_finalize(uint8_t* out, const float* acc, const float* ws, int stride, int n, const FinalU8Unit& f) {
    k_finalize_u8<NC>(out, acc, ws, stride, n, f);
}
template <int NC>
ER_INLINE void k_finalize(uint8_t* out, const float* acc, const float* ws, int stride, int n, const FinalU8& f) {
    k_finalize_u8<NC>(out, acc, ws, stride, n, f);
}
template <int NC>
ER_INLINE void k_unit(uint8_t* out, const float* src, int64_t plane, int stride, int n, const FinalU8Unit& f) {
    k_unit_u8<NC>(out, src, plane, stride, n, f);
}
template <int NC>
ER_INLINE void k_unit(uint8_t* out, const float* src, int64_t plane, int stride, int n, const FinalU8& f) {
    k_unit_u8<NC>(out, src, plane, stride, n, f);
}
#endif
// planar [c][i] (rows `stride` apart) -> n pixels of an HWC row with C channels (C == NC: dense)
template <int NC, bool Dense, typename T>
ER_INLINE void k_interleave(T* __restrict row, const T* __restrict planar, int stride, int C, int n) {
    const int step = Dense ? NC : C;
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < NC; ++c) row[(int64_t)i * step + c] = planar[c * stride + i];
}
#ifdef ER_KERNELS_AVX2
// RGB float32: 4 pixels (three planar vectors) -> 12 interleaved floats with 7 shuffles.
template <>
ER_INLINE void k_interleave<3, true, float>(float* __restrict row, const float* __restrict planar, int stride, int,
                                            int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m128 r = _mm_loadu_ps(planar + i), g = _mm_loadu_ps(planar + stride + i),
                     b = _mm_loadu_ps(planar + 2 * stride + i);
        const __m128 rg_lo = _mm_unpacklo_ps(r, g), rg_hi = _mm_unpackhi_ps(r, g);  // r0 g0 r1 g1, r2 g2 r3 g3
        const __m128 b0r1 = _mm_shuffle_ps(b, r, _MM_SHUFFLE(1, 1, 0, 0));         // b0 b0 r1 r1
        const __m128 g1b1 = _mm_shuffle_ps(g, b, _MM_SHUFFLE(1, 1, 1, 1));         // g1 g1 b1 b1
        const __m128 b2r3 = _mm_shuffle_ps(b, rg_hi, _MM_SHUFFLE(3, 2, 3, 2));     // b2 b3 r3 g3
        float* o = row + (int64_t)3 * i;
        _mm_storeu_ps(o, _mm_shuffle_ps(rg_lo, b0r1, _MM_SHUFFLE(2, 0, 1, 0)));      // r0 g0 b0 r1
        _mm_storeu_ps(o + 4, _mm_shuffle_ps(g1b1, rg_hi, _MM_SHUFFLE(1, 0, 2, 0)));  // g1 b1 r2 g2
        _mm_storeu_ps(o + 8, _mm_shuffle_ps(b2r3, b2r3, _MM_SHUFFLE(1, 3, 2, 0)));   // b2 r3 g3 b3
    }
    for (; i < n; ++i)
        for (int c = 0; c < 3; ++c) row[(int64_t)3 * i + c] = planar[c * stride + i];
}
#endif

// Geometry shared by all blocks of one merge call.
struct MergePlan {
    std::vector<Segment> ysegs, xsegs;
    std::vector<char> xunit;    // per x segment: one covering tile, weight 1 all along
    std::vector<float> wx, wy;  // per tile column / row: its T weights, rows w_stride apart
    int w_stride;
    const float* tiles_end;     // one past the last tile element (guards the padded reads)
};

#ifdef ER_KERNELS_AVX2
// ---------------------------------------------------------------- fused uint8 merge (AVX2)
// The uint8 merge of 1 or 3 channels in one pass: for 8 pixels at a time the covering tiles'
// terms are summed in registers (tile order, the operations of er::gather_pixel), finalized
// (v_mapped / clamp / x255 / round half to even, those of er::finalize_u8_value) and stored
// interleaved straight into the frame, with no scratch rows in between. A run whose length is
// not a multiple of 8 writes up to 7 pixels past its end; they belong to x segments to the
// right, which the same thread writes later (segments of a block row are done in order); a run
// whose padded end would pass the frame's right edge ends with per-pixel gathers instead.

constexpr int kMaxTerms = 16;  // covering tiles per pixel handled by the fused loop
constexpr int kOutAhead = 2;   // frame rows ahead whose bytes are prefetched for writing

// One row of a run: K covering tiles (src[k]: the run's first pixel, channel 0; wy[k]; wx[k]:
// the column weights from the run's first pixel), `vectors` groups of 8 pixels. KT > 0 fixes
// K at compile time (the common 1, 2 and 4 covers: pointers stay in registers).
template <int NC, int KT, typename F>
ER_INLINE void fused_row(uint8_t* __restrict o, const float* const* src, const float* wy, const float* const* wx,
                         int K, int64_t plane, int vectors, const F& f) {
    const int terms = KT > 0 ? KT : K;
    for (int v = 0; v < vectors; ++v) {
        const int i = 8 * v;
        __m256 acc[NC], ws = _mm256_setzero_ps();
        for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
        for (int k = 0; k < terms; ++k) {
            const __m256 w = _mm256_min_ps(_mm256_set1_ps(wy[k]), _mm256_loadu_ps(wx[k] + i));  // er::fmin_
            ws = _mm256_add_ps(ws, w);
            for (int c = 0; c < NC; ++c)
                acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(w, _mm256_loadu_ps(src[k] + c * plane + i)));
        }
        __m256i q[NC];
        for (int c = 0; c < NC; ++c) q[c] = v_u8_lanes(v_mapped(f, _mm256_div_ps(acc[c], ws)));
        v_store_pixels<NC>(o + NC * i, q);
    }
}
// The same for a run covered by one tile of weight 1: finalize(0 + 1 * v, 0 + 1), with
// 0 + v dropped too: it only turns -0 into +0, which the clamp maps to 0 either way (any lo).
template <int NC, typename F>
ER_INLINE void fused_row_unit(uint8_t* __restrict o, const float* __restrict src, int64_t plane, int vectors,
                              const F& f) {
    for (int v = 0; v < vectors; ++v) {
        const int i = 8 * v;
        __m256i q[NC];
        for (int c = 0; c < NC; ++c)
            q[c] = v_u8_lanes(v_mapped(f, _mm256_loadu_ps(src + c * plane + i)));
        v_store_pixels<NC>(o + NC * i, q);
    }
}

// Rows [ys.p0, ys.p1) of x segment xseg into the HWC frame (C == NC). Everything but the
// row's tile pointers and y weights is set up once per block.
template <int NC, typename F>
void fused_block(const TileGeometry& g, const float* tiles, const MergePlan& plan, size_t xseg, const Segment& ys,
                 uint8_t* out, int64_t pitch, const F& f) {
    const Segment& xs = plan.xsegs[xseg];
    const int T = g.tile, x0 = xs.p0, n = xs.p1 - xs.p0, rows = ys.p1 - ys.p0;
    const int64_t plane = er::tile_plane(g);
    const int ky = er::span_size(ys.span), kx = er::span_size(xs.span), K = ky * kx;
    int vectors = 0;  // per row; pixels past 8 * vectors get per-pixel gathers
    const float* base[kMaxTerms];  // tile element (row ys.p0, channel 0) of each covering tile
    const float* wy_of[kMaxTerms];  // its y weights from row ys.p0
    const float* wx[kMaxTerms];
    const float* ahead[kMaxTerms];  // per covering tile row: row ys.p0 of the tile right of the covering ones
    if (K <= kMaxTerms) {
        const float* end = nullptr;  // furthest tile element a padded vector of the last row reads
        for (int a = 0, k = 0; a < ky; ++a) {
            const int ty = er::span_tile(ys.span, a, g.tiles_y);
            const int oy = er::axis_origin(ty, g.tiles_y, g.height, T, g.stride);
            for (int b = 0; b < kx; ++b, ++k) {
                const int tx = er::span_tile(xs.span, b, g.tiles_x);
                const int s0 = x0 - er::axis_origin(tx, g.tiles_x, g.width, T, g.stride);
                base[k] = tiles + er::tile_index(g, (int64_t)ty * g.tiles_x + tx, 0, ys.p0 - oy, s0);
                wy_of[k] = plan.wy.data() + (size_t)ty * plan.w_stride + (ys.p0 - oy);
                wx[k] = plan.wx.data() + (size_t)tx * plan.w_stride + s0;
                if (b == kx - 1 && tx + 1 < g.tiles_x)
                    ahead[a] = tiles + er::tile_index(g, (int64_t)ty * g.tiles_x + tx + 1, 0, ys.p0 - oy, 0);
                else if (b == kx - 1)
                    ahead[a] = nullptr;
                end = std::max(end, base[k] + (int64_t)(rows - 1) * T + (NC - 1) * plane + (n + 7) / 8 * 8);
            }
        }
        vectors = x0 + (n + 7) / 8 * 8 <= g.width && end <= plan.tiles_end ? (n + 7) / 8 : n / 8;
    }
    const bool unit = K == 1 && plan.xunit[xseg];
    const float* src[kMaxTerms];
    float wy[kMaxTerms];
    for (int r = 0; r < rows; ++r) {
        const int y = ys.p0 + r;
        uint8_t* o = out + y * pitch + (int64_t)x0 * NC;
        int done = 0;  // pixels written by the vector loops
        if (K <= kMaxTerms) {
            for (int k = 0; k < K; ++k) {
                src[k] = base[k] + (int64_t)r * T;
                wy[k] = wy_of[k][r];
            }
            // Software prefetches (measured on benchmarks/merge.py; the hardware prefetchers do not
            // follow 252-byte tile rows across ~100 streams): the frame bytes this segment writes
            // two rows down (stores that miss stall the pipeline), and this row of the tile to
            // the right of the covering ones, which the next segment or two read.
            if (r + kOutAhead < rows) {
                const uint8_t* q = o + kOutAhead * pitch;
                for (int j = 0; j < n * NC; j += 64) ER_PREFETCH_W(q + j);
                ER_PREFETCH_W(q + n * NC - 1);
            }
            for (int a = 0; a < ky; ++a)
                if (ahead[a])
                    for (int c = 0; c < NC; ++c) prefetch_run<true>(ahead[a] + (int64_t)r * T + c * plane, T, plan.tiles_end);
            if (unit && wy[0] == 1.0f)
                fused_row_unit<NC>(o, src[0], plane, vectors, f);
            else if (K == 1)
                fused_row<NC, 1>(o, src, wy, wx, K, plane, vectors, f);
            else if (K == 2)
                fused_row<NC, 2>(o, src, wy, wx, K, plane, vectors, f);
            else if (K == 4)
                fused_row<NC, 4>(o, src, wy, wx, K, plane, vectors, f);
            else
                fused_row<NC, 0>(o, src, wy, wx, K, plane, vectors, f);
            done = std::min(n, 8 * vectors);
        }
        for (int i = done; i < n; ++i) {  // per-pixel gathers of tiles.h: a row's tail at the frame edge, extreme overlaps
            float a[er::kChannelChunk];
            const float wsum = er::gather_pixel(g, tiles, y, x0 + i, 0, NC, a);
            for (int c = 0; c < NC; ++c) o[(int64_t)NC * i + c] = f(a[c], wsum);
        }
    }
}

template <typename F>
void fused_merge_u8(const TileGeometry& g, const float* tiles, const MergePlan& plan, uint8_t* out, int64_t pitch,
                    const F& f) {
    // Tasks: bands of at most kTaskRows rows of one y segment, each done across the whole
    // width, segments left to right (what the write-ahead above needs); small enough that the
    // last task does not leave the other threads idle for long.
    constexpr int kTaskRows = 16;
    std::vector<Segment> tasks;
    for (const Segment& ys : plan.ysegs) {
        const int rows = ys.p1 - ys.p0, parts = (rows + kTaskRows - 1) / kTaskRows;
        for (int i = 0; i < parts; ++i) tasks.push_back({ys.p0 + rows * i / parts, ys.p0 + rows * (i + 1) / parts, ys.span});
    }
    const int64_t ntasks = (int64_t)tasks.size();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntasks; ++t)
        for (size_t xseg = 0; xseg < plan.xsegs.size(); ++xseg) {
            if (g.channels == 3)
                fused_block<3>(g, tiles, plan, xseg, tasks[(size_t)t], out, pitch, f);
            else
                fused_block<1>(g, tiles, plan, xseg, tasks[(size_t)t], out, pitch, f);
        }
}
#endif

// The gather over a block of output pixels that share their covering tiles: rows
// [ys.p0, ys.p1) x columns [xs.p0, xs.p1), channels [c0, c0 + NC). For each pixel the terms
// are added in tile order (ty, then tx), exactly the operations of er::gather_pixel; the
// pixel loop is innermost (SIMD) and each covering tile is read row after row.
template <int NC, typename Final>
void merge_block(const TileGeometry& g, const float* tiles, const MergePlan& plan, size_t xseg, const Segment& ys,
                 int c0, typename Final::Out* out, int64_t pitch, const Final& final_value, Scratch& scratch) {
    using Out = typename Final::Out;
    constexpr int kMaxCover = 8;  // covering tiles per axis handled per pass (more: a rare, extreme overlap)
    const Segment& xs = plan.xsegs[xseg];
    const int T = g.tile, C = g.channels, S = scratch.stride;
    const int64_t plane = er::tile_plane(g);
    const int x0 = xs.p0, n = xs.p1 - xs.p0, np = round_up(n);
    const int ky = er::span_size(ys.span), kx = er::span_size(xs.span);
    float* ws = scratch.wsum.data();
    float* acc = scratch.acc.data();
    Out* val = (Out*)scratch.out.data();
    // per covering tile row a: its weights (indexed by y) and tile row; per column b: weights, offset
    const float* wy_of[kMaxCover];
    int ty_of[kMaxCover], oy_of[kMaxCover];
    const float* wx_of[kMaxCover];
    int tx_of[kMaxCover], s0_of[kMaxCover];
    const bool small = ky <= kMaxCover && kx <= kMaxCover;
    if (small) {
        for (int a = 0; a < ky; ++a) {
            ty_of[a] = er::span_tile(ys.span, a, g.tiles_y);
            oy_of[a] = er::axis_origin(ty_of[a], g.tiles_y, g.height, T, g.stride);
            wy_of[a] = plan.wy.data() + (int64_t)ty_of[a] * plan.w_stride - oy_of[a];
        }
        for (int b = 0; b < kx; ++b) {
            tx_of[b] = er::span_tile(xs.span, b, g.tiles_x);
            s0_of[b] = x0 - er::axis_origin(tx_of[b], g.tiles_x, g.width, T, g.stride);
            wx_of[b] = plan.wx.data() + (int64_t)tx_of[b] * plan.w_stride + s0_of[b];
        }
    }
    Out* row = (Out*)((char*)out + ys.p0 * pitch) + (int64_t)x0 * C + c0;
    for (int y = ys.p0; y < ys.p1; ++y, row = (Out*)((char*)row + pitch)) {
        if (!small) {  // per-pixel gather of tiles.h
            for (int i = 0; i < n; ++i) {
                float a[er::kChannelChunk];
                const float wsum = er::gather_pixel(g, tiles, y, x0 + i, c0, NC, a);
                for (int c = 0; c < NC; ++c) val[c * S + i] = final_value(a[c], wsum);
            }
        } else if (ky == 1 && plan.xunit[xseg] && wy_of[0][y] == 1.0f) {
            // one covering tile of weight 1: finalize(0 + 1 * v, 0 + 1)
            const float* src = tiles + er::tile_index(g, (int64_t)ty_of[0] * g.tiles_x + tx_of[0], c0, y - oy_of[0],
                                                      s0_of[0]);
            const bool padded = src + (NC - 1) * plane + np <= plan.tiles_end;
            if (kPrefetchRows > 0 && y + kPrefetchRows < ys.p1)
                for (int c = 0; c < NC; ++c) prefetch_run(src + c * plane + kPrefetchRows * T, n, plan.tiles_end);
            k_unit<NC>(val, src, plane, S, padded ? np : n, final_value);
        } else {
            bool first = true;
            for (int a = 0; a < ky; ++a) {
                const float wy = wy_of[a][y];
                for (int b = 0; b < kx; ++b) {
                    const float* src = tiles + er::tile_index(g, (int64_t)ty_of[a] * g.tiles_x + tx_of[b], c0,
                                                              y - oy_of[a], s0_of[b]);
                    const int m = src + (NC - 1) * plane + np <= plan.tiles_end ? np : n;
                    if (kPrefetchRows > 0 && y + kPrefetchRows < ys.p1)  // to the end of the tile row: the next block reads it
                        for (int c = 0; c < NC; ++c)
                            prefetch_run(src + c * plane + kPrefetchRows * T, T - s0_of[b], plan.tiles_end);
                    if (first)
                        k_pair<NC, true>(acc, ws, wx_of[b], wy, src, plane, S, m);
                    else
                        k_pair<NC, false>(acc, ws, wx_of[b], wy, src, plane, S, m);
                    first = false;
                }
            }
            k_finalize<NC>(val, acc, ws, S, np, final_value);
        }
        if (C == NC)
            k_interleave<NC, true>(row, val, S, C, n);
        else
            k_interleave<NC, false>(row, val, S, C, n);
    }
}

template <typename Final>
void merge_blocks(const TileGeometry& g, const float* tiles, typename Final::Out* out, int64_t pitch,
                  const Final& final_value) {
    MergePlan plan;
    plan.ysegs = axis_segments(g.height, g.tile, g.stride, g.tiles_y);
    plan.xsegs = axis_segments(g.width, g.tile, g.stride, g.tiles_x);
    plan.w_stride = round_up(g.tile) + kLanes;  // room for a padded run starting anywhere in the tile
    plan.wx.assign((size_t)g.tiles_x * plan.w_stride, 0.0f);
    plan.wy.assign((size_t)g.tiles_y * plan.w_stride, 0.0f);
    for (int tx = 0; tx < g.tiles_x; ++tx) {
        const int ox = er::axis_origin(tx, g.tiles_x, g.width, g.tile, g.stride);
        for (int s = 0; s < g.tile; ++s)
            plan.wx[(size_t)tx * plan.w_stride + s] = er::axis_weight(s, ox, g.width, g.tile, g.margin, g.ramp_w);
    }
    for (int ty = 0; ty < g.tiles_y; ++ty) {
        const int oy = er::axis_origin(ty, g.tiles_y, g.height, g.tile, g.stride);
        for (int s = 0; s < g.tile; ++s)
            plan.wy[(size_t)ty * plan.w_stride + s] = er::axis_weight(s, oy, g.height, g.tile, g.margin, g.ramp_w);
    }
    for (const Segment& xs : plan.xsegs) {
        bool unit = er::span_size(xs.span) == 1;
        if (unit) {
            const int tx = er::span_tile(xs.span, 0, g.tiles_x);
            const int ox = er::axis_origin(tx, g.tiles_x, g.width, g.tile, g.stride);
            for (int x = xs.p0; x < xs.p1; ++x) unit = unit && plan.wx[(size_t)tx * plan.w_stride + x - ox] == 1.0f;
        }
        plan.xunit.push_back(unit);
    }
    plan.tiles_end = tiles + er::tile_count(g) * g.channels * er::tile_plane(g);
#ifdef ER_KERNELS_AVX2
    if constexpr (!std::is_same_v<typename Final::Out, float>)
        if (g.channels == 1 || g.channels == 3) return fused_merge_u8(g, tiles, plan, out, pitch, final_value);
#endif
    const int64_t nyseg = (int64_t)plan.ysegs.size(), nxseg = (int64_t)plan.xsegs.size();
#pragma omp parallel
    {
        Scratch scratch(g.tile);
#pragma omp for schedule(dynamic, 8)  // blocks differ in cost; a busy core should not hold the rest up
        for (int64_t block = 0; block < nyseg * nxseg; ++block) {
            const Segment& ys = plan.ysegs[block / nxseg];
            const size_t xseg = (size_t)(block % nxseg);
            // channels in groups of 3 (RGB), the rest one by one: two instantiations cover any C
            for (int c0 = 0; c0 < g.channels;) {
                if (g.channels - c0 >= 3) {
                    merge_block<3>(g, tiles, plan, xseg, ys, c0, out, pitch, final_value, scratch);
                    c0 += 3;
                } else {
                    merge_block<1>(g, tiles, plan, xseg, ys, c0, out, pitch, final_value, scratch);
                    c0 += 1;
                }
            }
        }
    }
}

#endif  // ER_TILES_CPU_KERNELS
