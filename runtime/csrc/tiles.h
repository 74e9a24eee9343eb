// edgerestore tile math: the one source of truth for tile extraction and the weighted merge.
//
// Every function here is a per-pixel (or per-axis) function, usable from host C++ and from
// CUDA device code alike; tiles_cpu.cpp loops over them with OpenMP and tiles_cuda.cu calls
// them from kernels, so both give the same bits.
//
// Geometry (Path-Restore's tiling, generalised; runtime/tiling.py is the Python twin):
//   stride S = tile - overlap; tile origins along an axis of length L are
//   range(0, L - T, S) + [L - T] (the last tile sits flush with the border), a single
//   tile at 0 when L == T. Tiles are stored NCHW, row-major over (tile row, tile column):
//   tile n = ty * tiles_x + tx.
// Weights (exactly runtime/tiling.py TileGrid.axis_weights): ramp_w = min(ramp, overlap/2),
//   margin = max(0, min(halo, overlap/2 - ramp_w)); along an axis, towards an edge that lies
//   inside the image, w(d) = clip((d - margin + 1) / (ramp_w + 1), 0, 1) with d the distance
//   to that edge (0 on the edge pixel); an edge on the image border weighs 1; the axis weight
//   is the min of its low- and high-edge values and the 2-D weight the min of the two axes.
// Merge (a gather: each output pixel reads only the tiles that cover it):
//   for the covering tiles in tile order (ty ascending, then tx ascending):
//       acc[c] = acc[c] + w * tile[c];  wsum = wsum + w        (float32, never fused)
//   float output:  acc[c] / wsum
//   uint8 output:  rint(clamp((acc[c] / wsum - lo) / (hi - lo), 0, 1) * 255)
// Extract: value = lo + (hi - lo) * (pixel / 255) for uint8 sources,
//          value = lo + (hi - lo) * pixel         for float32 sources (lo=0, hi=1: a copy).
// All float operations are single IEEE operations in that order (no FMA contraction:
// device code uses the __f*_rn intrinsics, host code is built with -ffp-contract=off),
// which is what lets a plain numpy float32 reference reproduce them to the last bit.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define ER_HD __host__ __device__ __forceinline__
#else
#define ER_HD inline
#endif

namespace er {

// Channels gathered per pass; more channels are processed in chunks of this many.
constexpr int kChannelChunk = 4;

// ---------------------------------------------------------------- float operations
// Single-rounding IEEE operations that the compiler may not fuse or reorder.
ER_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
ER_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
ER_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
ER_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
// min/max written as comparisons (SIMD-friendly on the host); equal to np.minimum /
// np.maximum for the non-NaN values they see here. fmax_(NaN, 0) is 0.
ER_HD float fmin_(float a, float b) { return a < b ? a : b; }
ER_HD float fmax_(float a, float b) { return a > b ? a : b; }
ER_HD float clamp01(float v) { return fmin_(fmax_(v, 0.0f), 1.0f); }

// Round half to even of v in [0, 255] (== np.rint / rintf there), kept as a float. On the
// host, adding and subtracting 2^23 rounds in the default (nearest-even) mode and vectorises
// on any x86 (rintf needs SSE4.1 to be inlined).
ER_HD float round_even(float v) {
#if defined(__CUDA_ARCH__)
    return rintf(v);
#else
    return fsub(fadd(v, 8388608.0f), 8388608.0f);
#endif
}

// ---------------------------------------------------------------- geometry
struct TileGeometry {
    int height, width, channels;
    int tile, overlap, halo, ramp;
    // derived by make_geometry
    int stride;            // tile - overlap
    int tiles_y, tiles_x;  // tiles per axis
    int ramp_w;            // min(ramp, overlap / 2)
    int margin;            // zero-weight band next to an inner edge
};

enum Status : int {
    kOk = 0,
    kBadGeometry = -1,   // tile <= 0, overlap outside [0, tile), halo/ramp < 0, image smaller than a tile
    kBadChannels = -2,   // channels < 1
    kNullPointer = -3,
    kBadPitch = -4,      // row pitch smaller than a row, or not a multiple of the element size
    kCudaError = -5,     // see er_cuda_last_error()
    kBadRange = -6,      // hi == lo for a uint8 output
};

// Tiles along an axis: len(range(0, L - T, S)) + 1, or 1 when L == T.
ER_HD int axis_tile_count(int length, int tile, int stride) {
    return length == tile ? 1 : (length - tile + stride - 1) / stride + 1;
}

// Origin of tile i of count along an axis: i * S, the last one flush at L - T.
ER_HD int axis_origin(int i, int count, int length, int tile, int stride) {
    return i == count - 1 ? length - tile : i * stride;
}

ER_HD int make_geometry(TileGeometry* g, int height, int width, int channels, int tile, int overlap,
                        int halo, int ramp) {
    if (tile <= 0 || overlap < 0 || overlap >= tile || halo < 0 || ramp < 0 || height < tile ||
        width < tile)
        return kBadGeometry;
    if (channels < 1) return kBadChannels;
    g->height = height;
    g->width = width;
    g->channels = channels;
    g->tile = tile;
    g->overlap = overlap;
    g->halo = halo;
    g->ramp = ramp;
    g->stride = tile - overlap;
    g->tiles_y = axis_tile_count(height, tile, g->stride);
    g->tiles_x = axis_tile_count(width, tile, g->stride);
    const int half = overlap / 2;
    g->ramp_w = ramp < half ? ramp : half;
    const int room = half - g->ramp_w;
    const int margin = halo < room ? halo : room;
    g->margin = margin > 0 ? margin : 0;
    return kOk;
}

ER_HD int64_t tile_count(const TileGeometry& g) { return (int64_t)g.tiles_y * g.tiles_x; }
ER_HD int64_t tile_plane(const TileGeometry& g) { return (int64_t)g.tile * g.tile; }

// Weight of distance d from an inner edge: clip((d - margin + 1) / (ramp_w + 1), 0, 1).
ER_HD float ramp_weight(int d, int margin, int ramp_w) {
    return clamp01(fdiv((float)(d - margin + 1), (float)(ramp_w + 1)));
}

// Weight of position d (0..T-1) inside the tile at origin along an axis of length.
ER_HD float axis_weight(int d, int origin, int length, int tile, int margin, int ramp_w) {
    const float low = origin == 0 ? 1.0f : ramp_weight(d, margin, ramp_w);
    const float high = origin + tile == length ? 1.0f : ramp_weight(tile - 1 - d, margin, ramp_w);
    return fmin_(low, high);
}

// The tiles covering position p along an axis, from the origin arithmetic: the regular
// tiles first..last (origins i * S; empty when first > last), then the flush tile
// count - 1 when flush. Regular tiles cover p iff i*S <= p < i*S + T; the flush tile adds
// a third (or further) cover near the end of the axis.
struct AxisSpan {
    int first, last, flush;
};

ER_HD AxisSpan axis_span(int p, int length, int tile, int stride, int count) {
    AxisSpan s;
    if (count == 1) {
        s.first = 0;
        s.last = -1;
        s.flush = 1;
        return s;
    }
    s.first = p < tile ? 0 : (p - tile) / stride + 1;
    const int hi = p / stride;
    s.last = hi < count - 2 ? hi : count - 2;
    s.flush = p >= length - tile ? 1 : 0;
    return s;
}
ER_HD int span_size(const AxisSpan& s) {
    return (s.last >= s.first ? s.last - s.first + 1 : 0) + s.flush;
}
// k-th covering tile (ascending tile index).
ER_HD int span_tile(const AxisSpan& s, int k, int count) {
    const int regular = s.last >= s.first ? s.last - s.first + 1 : 0;
    return k < regular ? s.first + k : count - 1;
}

// ---------------------------------------------------------------- extract
ER_HD float normalize_u8(uint8_t p, float lo, float range) {
    return fadd(lo, fmul(range, fdiv((float)p, 255.0f)));
}
ER_HD float normalize_f32(float x, float lo, float range) { return fadd(lo, fmul(range, x)); }

// Source pixel (row y, column x) of element (r, s) of tile n.
ER_HD void tile_source(const TileGeometry& g, int64_t n, int r, int s, int* y, int* x) {
    const int ty = (int)(n / g.tiles_x), tx = (int)(n % g.tiles_x);
    *y = axis_origin(ty, g.tiles_y, g.height, g.tile, g.stride) + r;
    *x = axis_origin(tx, g.tiles_x, g.width, g.tile, g.stride) + s;
}

// Element index of (tile n, channel c, row r, column s) in the NCHW tile array.
ER_HD int64_t tile_index(const TileGeometry& g, int64_t n, int c, int r, int s) {
    return ((n * g.channels + c) * g.tile + r) * (int64_t)g.tile + s;
}

// One extracted value: tile n, channel c, row r, column s from an HWC source whose rows are
// pitch bytes apart.
ER_HD float extract_u8(const TileGeometry& g, const uint8_t* src, int64_t pitch, int64_t n, int c, int r,
                       int s, float lo, float range) {
    int y, x;
    tile_source(g, n, r, s, &y, &x);
    return normalize_u8(src[y * pitch + (int64_t)x * g.channels + c], lo, range);
}
ER_HD float extract_f32(const TileGeometry& g, const float* src, int64_t pitch, int64_t n, int c, int r,
                        int s, float lo, float range) {
    int y, x;
    tile_source(g, n, r, s, &y, &x);
    const float* row = (const float*)((const char*)src + y * pitch);
    return normalize_f32(row[(int64_t)x * g.channels + c], lo, range);
}

// ---------------------------------------------------------------- merge
// One weighted term of the gather.
ER_HD void accumulate(float& acc, float w, float v) { acc = fadd(acc, fmul(w, v)); }

ER_HD float finalize_f32(float acc, float wsum) { return fdiv(acc, wsum); }
// The uint8 value as an integral float (SIMD-friendly on the host), and as the uint8.
ER_HD float finalize_u8_value(float acc, float wsum, float lo, float range) {
    return round_even(fmul(clamp01(fdiv(fsub(fdiv(acc, wsum), lo), range)), 255.0f));
}
// finalize_u8_value(acc, wsum, 0, 1) with the exact identities x - 0 == x, x / 1 == x applied.
ER_HD float finalize_u8_value_unit(float acc, float wsum) {
    return round_even(fmul(clamp01(fdiv(acc, wsum)), 255.0f));
}
ER_HD uint8_t finalize_u8(float acc, float wsum, float lo, float range) {
    return (uint8_t)(int)finalize_u8_value(acc, wsum, lo, range);
}

// The gather for output pixel (y, x), channels c0 .. c0 + nc - 1 (nc <= kChannelChunk):
// fills acc[0..nc) and returns the weight sum.
ER_HD float gather_pixel(const TileGeometry& g, const float* tiles, int y, int x, int c0, int nc,
                         float acc[kChannelChunk]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int c = 0; c < kChannelChunk; ++c) acc[c] = 0.0f;
    float wsum = 0.0f;
    const AxisSpan sy = axis_span(y, g.height, g.tile, g.stride, g.tiles_y);
    const AxisSpan sx = axis_span(x, g.width, g.tile, g.stride, g.tiles_x);
    const int ky = span_size(sy), kx = span_size(sx);
    const int64_t plane = tile_plane(g);
    for (int a = 0; a < ky; ++a) {
        const int ty = span_tile(sy, a, g.tiles_y);
        const int oy = axis_origin(ty, g.tiles_y, g.height, g.tile, g.stride);
        const float wy = axis_weight(y - oy, oy, g.height, g.tile, g.margin, g.ramp_w);
        for (int b = 0; b < kx; ++b) {
            const int tx = span_tile(sx, b, g.tiles_x);
            const int ox = axis_origin(tx, g.tiles_x, g.width, g.tile, g.stride);
            const float w = fmin_(wy, axis_weight(x - ox, ox, g.width, g.tile, g.margin, g.ramp_w));
            const float* src = tiles + tile_index(g, (int64_t)ty * g.tiles_x + tx, c0, y - oy, x - ox);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
            for (int c = 0; c < kChannelChunk; ++c)
                if (c < nc) accumulate(acc[c], w, src[c * plane]);
            wsum = fadd(wsum, w);
        }
    }
    return wsum;
}

// Whole output pixel (y, x), all channels, into an HWC float32 row (out points at the pixel).
ER_HD void merge_pixel_f32(const TileGeometry& g, const float* tiles, int y, int x, float* out) {
    float acc[kChannelChunk];
    for (int c0 = 0; c0 < g.channels; c0 += kChannelChunk) {
        const int nc = g.channels - c0 < kChannelChunk ? g.channels - c0 : kChannelChunk;
        const float wsum = gather_pixel(g, tiles, y, x, c0, nc, acc);
        for (int c = 0; c < nc; ++c) out[c0 + c] = finalize_f32(acc[c], wsum);
    }
}

// Whole output pixel (y, x), all channels, into an HWC uint8 row (out points at the pixel).
ER_HD void merge_pixel_u8(const TileGeometry& g, const float* tiles, int y, int x, float lo, float range,
                          uint8_t* out) {
    float acc[kChannelChunk];
    for (int c0 = 0; c0 < g.channels; c0 += kChannelChunk) {
        const int nc = g.channels - c0 < kChannelChunk ? g.channels - c0 : kChannelChunk;
        const float wsum = gather_pixel(g, tiles, y, x, c0, nc, acc);
        for (int c = 0; c < nc; ++c) out[c0 + c] = finalize_u8(acc[c], wsum, lo, range);
    }
}

// ---------------------------------------------------------------- whole frames
// A frame run whole is one tile the size of the frame: no overlap, weight 1 everywhere. Its
// planes hold extract's values and the frame gets the merge's value for a pixel one tile
// covers (finalize of 0 + 1 * v over a weight sum of 1), so whole and tiled runs of the same
// network round the same way.
ER_HD float plane_value_u8(uint8_t p, float lo, float range) { return normalize_u8(p, lo, range); }
ER_HD uint8_t frame_value_u8(float v, float lo, float range) {
    return (uint8_t)(int)finalize_u8_value(fadd(0.0f, fmul(1.0f, v)), fadd(0.0f, 1.0f), lo, range);
}

}  // namespace er
