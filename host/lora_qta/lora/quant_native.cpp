// The host's INT8 quantizer fused into one or two passes: lora_qta.lora.quant.quantize_along's
// semantics on a C-contiguous float32 tensor viewed as (B, R, C), with one absmax scale per
// (b, r) over C ("rows", B folded into the rows) or per (b, c) over R ("columns").
//
// Every step is exact IEEE float32 arithmetic, so the result is that of the torch code whatever
// the vector width the compiler picks (build without -ffast-math; -ffp-contract=off):
//   amax  the largest |x| as a bit pattern: for non-negative floats the integer order of the
//         bits is the float order, and Inf and NaN (exponent all ones) are above every finite
//         value, so one integer max finds the maximum and reveals any NaN or Inf;
//   s     max(amax, eps) / qmax, one correctly rounded float32 division (eps and qmax are
//         passed in as float32 values by the caller);
//   y     x / s, a correctly rounded float32 division (not a product with 1 / s);
//   q     nearest: round half to even as (y + 1.5 * 2^23) - 1.5 * 2^23, exact for |y| < 2^22
//         (|y| <= 127.00002 here); stochastic: floor(y + u) clamped to [-qmax, qmax], the floor
//         taken on the truncated integer.
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

const uint32_t ABS_MASK = 0x7fffffffu;
const uint32_t INF_BITS = 0x7f800000u;  // |x| bits at or above: Inf or NaN
const float MAGIC = 12582912.0f;         // 1.5 * 2^23: adding it rounds |y| < 2^22 to an integer

inline uint32_t abs_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u & ABS_MASK;
}

inline float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float scale_of(uint32_t amax_bits, float eps, float qmax) {
    float m = from_bits(amax_bits);
    return (m < eps ? eps : m) / qmax;
}

uint32_t absmax_bits(const float* __restrict__ x, int64_t n) {
    uint32_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t v = abs_bits(x[i]);
        m = v > m ? v : m;
    }
    return m;
}

// q[i] of one run of n values, with the scale s[i] (Vec) or s[0] (every value); u null: nearest
template <bool Vec, typename Out = int8_t>
void quantize_run(const float* __restrict__ x, const float* __restrict__ s, const float* __restrict__ u,
                  float qmax, Out* __restrict__ q, int64_t n) {
    const float s0 = s[0];
    if (u == nullptr) {
        for (int64_t i = 0; i < n; ++i) {
            float y = x[i] / (Vec ? s[i] : s0);
            q[i] = static_cast<Out>(static_cast<int32_t>((y + MAGIC) - MAGIC));
        }
        return;
    }
    const int32_t hi = static_cast<int32_t>(qmax);
    for (int64_t i = 0; i < n; ++i) {
        float z = x[i] / (Vec ? s[i] : s0) + u[i];
        int32_t t = static_cast<int32_t>(z);           // toward zero: |z| < 129
        t -= static_cast<float>(t) > z ? 1 : 0;        // floor
        t = t > hi ? hi : t;
        t = t < -hi ? -hi : t;
        q[i] = static_cast<Out>(t);
    }
}

// Rows shorter than WIDE values are handled k = ceil(WIDE / C) at a time as one wide row of
// k * C values (a scale per value), so the vector loops run long enough to pay off (an INT8
// store takes 32 values per AVX2 iteration); the attention's head dimension is 8.
const int64_t WIDE = 256;

inline int64_t rows_per_wide(int64_t C) { return C >= WIDE ? 1 : (WIDE + C - 1) / C; }

// the largest |x| bits of each row of x (R, C) into m[R]; C known at compile time when CC > 0,
// so that short rows (the attention's head dimension) are reduced without a loop per row
template <int64_t CC>
void row_absmax(const float* __restrict__ x, int64_t R, int64_t C, uint32_t* __restrict__ m) {
    const int64_t n = CC > 0 ? CC : C;
    for (int64_t r = 0; r < R; ++r) m[r] = absmax_bits(x + r * n, n);
}

// one absmax scale per row of x (R, C); false on NaN or Inf
bool row_scales(const float* x, int64_t R, int64_t C, float eps, float qmax, float* scale,
                std::vector<uint32_t>& bits) {
    bits.resize(static_cast<size_t>(R));
    uint32_t* m = bits.data();
    switch (C) {
        case 8: row_absmax<8>(x, R, C, m); break;
        case 16: row_absmax<16>(x, R, C, m); break;
        case 32: row_absmax<32>(x, R, C, m); break;
        case 64: row_absmax<64>(x, R, C, m); break;
        default: row_absmax<0>(x, R, C, m);
    }
    uint32_t top = 0;
    for (int64_t r = 0; r < R; ++r) top = m[r] > top ? m[r] : top;
    if (top >= INF_BITS) return false;
    for (int64_t r = 0; r < R; ++r) scale[r] = scale_of(m[r], eps, qmax);
    return true;
}

// q of x (R, C) with one scale per row; C known at compile time when CC > 0. Rows shorter than
// WIDE are quantized a block at a time with a scale per value, written for the whole block first
// (a vector store per row), so that the INT8 vector loop (32 values at a time) runs over the block.
template <int64_t CC>
void row_apply(const float* x, int64_t R, int64_t C, const float* scale, const float* u, float qmax, int8_t* q) {
    const int64_t n = CC > 0 ? CC : C;
    if (n >= WIDE) {
        for (int64_t r = 0; r < R; ++r)
            quantize_run<false>(x + r * n, scale + r, u ? u + r * n : nullptr, qmax, q + r * n, n);
        return;
    }
    const int64_t BLOCK = 4096, rows = BLOCK / n;
    float w[BLOCK];
    for (int64_t r0 = 0; r0 < R; r0 += rows) {
        const int64_t nr = R - r0 < rows ? R - r0 : rows;
        for (int64_t r = 0; r < nr; ++r)
            for (int64_t c = 0; c < n; ++c) w[r * n + c] = scale[r0 + r];
        const int64_t at = r0 * n;
        quantize_run<true>(x + at, w, u ? u + at : nullptr, qmax, q + at, nr * n);
    }
}

void row_apply(const float* x, int64_t R, int64_t C, const float* scale, const float* u, float qmax, int8_t* q) {
    switch (C) {
        case 8: row_apply<8>(x, R, C, scale, u, qmax, q); break;
        case 16: row_apply<16>(x, R, C, scale, u, qmax, q); break;
        case 32: row_apply<32>(x, R, C, scale, u, qmax, q); break;
        case 64: row_apply<64>(x, R, C, scale, u, qmax, q); break;
        default: row_apply<0>(x, R, C, scale, u, qmax, q);
    }
}

// one absmax scale per column of x (R, C) into s[C]; false on NaN or Inf
bool column_scales(const float* __restrict__ x, int64_t R, int64_t C, float eps, float qmax, float* s,
                   std::vector<uint32_t>& top_bits) {
    const int64_t k = rows_per_wide(C), W = k * C, wide_rows = R / k;
    top_bits.assign(static_cast<size_t>(W), 0u);
    uint32_t* __restrict__ m = top_bits.data();
    for (int64_t r = 0; r < wide_rows; ++r) {
        const float* row = x + r * W;
        for (int64_t c = 0; c < W; ++c) {
            uint32_t v = abs_bits(row[c]);
            m[c] = v > m[c] ? v : m[c];
        }
    }
    for (int64_t r = wide_rows * k; r < R; ++r) {
        const float* row = x + r * C;
        for (int64_t c = 0; c < C; ++c) {
            uint32_t v = abs_bits(row[c]);
            m[c] = v > m[c] ? v : m[c];
        }
    }
    for (int64_t j = 1; j < k; ++j)
        for (int64_t c = 0; c < C; ++c) m[c] = m[j * C + c] > m[c] ? m[j * C + c] : m[c];
    uint32_t top = 0;
    for (int64_t c = 0; c < C; ++c) top = m[c] > top ? m[c] : top;
    if (top >= INF_BITS) return false;
    for (int64_t c = 0; c < C; ++c) s[c] = scale_of(m[c], eps, qmax);
    return true;
}

// q of x (R, C) with one scale per column, s[C]
void column_apply(const float* x, int64_t R, int64_t C, const float* s, const float* u, float qmax, int8_t* q,
                  std::vector<float>& wide) {
    const int64_t k = rows_per_wide(C), W = k * C;
    const float* sw = s;
    int64_t r = 0;
    if (k > 1) {
        wide.resize(static_cast<size_t>(W));
        for (int64_t j = 0; j < k; ++j)
            for (int64_t c = 0; c < C; ++c) wide[j * C + c] = s[c];
        sw = wide.data();
    }
    for (; r + k <= R; r += k)
        quantize_run<true>(x + r * C, sw, u ? u + r * C : nullptr, qmax, q + r * C, W);
    for (; r < R; ++r) quantize_run<true>(x + r * C, s, u ? u + r * C : nullptr, qmax, q + r * C, C);
}

// an 8 x 8 block of bytes, row i in w[i] (byte k of a word at address offset k), transposed in
// place: the 4 x 4 quadrants swapped across the diagonal, then the 2 x 2 and the 1 x 1 blocks
void transpose8(uint64_t* w) {
    for (int i = 0; i < 4; ++i) {
        uint64_t a = w[i], b = w[i + 4];
        w[i] = (a & 0x00000000FFFFFFFFull) | (b << 32);
        w[i + 4] = (a >> 32) | (b & 0xFFFFFFFF00000000ull);
    }
    for (int i : {0, 1, 4, 5}) {
        uint64_t a = w[i], b = w[i + 2];
        w[i] = (a & 0x0000FFFF0000FFFFull) | ((b & 0x0000FFFF0000FFFFull) << 16);
        w[i + 2] = ((a >> 16) & 0x0000FFFF0000FFFFull) | (b & 0xFFFF0000FFFF0000ull);
    }
    for (int i : {0, 2, 4, 6}) {
        uint64_t a = w[i], b = w[i + 1];
        w[i] = (a & 0x00FF00FF00FF00FFull) | ((b & 0x00FF00FF00FF00FFull) << 8);
        w[i + 1] = ((a >> 8) & 0x00FF00FF00FF00FFull) | (b & 0xFF00FF00FF00FF00ull);
    }
}

}  // namespace

extern "C" {

// dst (B, C, R) = src (B, R, C) transposed block by block: the INT8 result of a permuted view
// (quantized in its memory order) in the view's order; 8 x 8 tiles in 64-bit words where bytes
// are little-endian, the rest one byte at a time.
void qta_transpose_i8(const int8_t* src, int64_t B, int64_t R, int64_t C, int8_t* dst) {
    for (int64_t b = 0; b < B; ++b) {
        const int8_t* s = src + b * R * C;
        int8_t* d = dst + b * R * C;
        int64_t r = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        for (; r + 8 <= R; r += 8) {
            int64_t c = 0;
            for (; c + 8 <= C; c += 8) {
                uint64_t w[8];
                for (int i = 0; i < 8; ++i) std::memcpy(&w[i], s + (r + i) * C + c, 8);
                transpose8(w);
                for (int i = 0; i < 8; ++i) std::memcpy(d + (c + i) * R + r, &w[i], 8);
            }
            for (; c < C; ++c)
                for (int64_t i = 0; i < 8; ++i) d[c * R + r + i] = s[(r + i) * C + c];
        }
#endif
        for (; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) d[c * R + r] = s[r * C + c];
    }
}


// The scales of x (B, R, C): per_col 0 -> B * R scales (one per row, over C), else B * C (one
// per column of each block, over R). Returns 0, or 1 if x holds a NaN or an Inf.
int qta_quant_scales(const float* x, int64_t B, int64_t R, int64_t C, int per_col, float eps, float qmax,
                     float* scale) {
    std::vector<uint32_t> m;
    if (!per_col) return row_scales(x, B * R, C, eps, qmax, scale, m) ? 0 : 1;
    for (int64_t b = 0; b < B; ++b)
        if (!column_scales(x + b * R * C, R, C, eps, qmax, scale + b * C, m)) return 1;
    return 0;
}

// q of x (B, R, C) with the scales of qta_quant_scales; u: B * R * C uniform values in [0, 1)
// for stochastic rounding, or null for round half to even.
void qta_quant_apply(const float* x, int64_t B, int64_t R, int64_t C, int per_col, const float* scale,
                     const float* u, float qmax, int8_t* q) {
    std::vector<float> wide;
    if (!per_col) {
        row_apply(x, B * R, C, scale, u, qmax, q);
        return;
    }
    for (int64_t b = 0; b < B; ++b) {
        const int64_t at = b * R * C;
        column_apply(x + at, R, C, scale + b * C, u ? u + at : nullptr, qmax, q + at, wide);
    }
}

// Scales and round-half-to-even q in one call, a block of rows (or a row of at least WIDE
// values) quantized right after its amax, while it is in cache. Returns 0, or 1 if x holds a
// NaN or an Inf (q and scale then incomplete).
int qta_quant_nearest(const float* x, int64_t B, int64_t R, int64_t C, int per_col, float eps, float qmax,
                      float* scale, int8_t* q) {
    if (per_col) {
        if (qta_quant_scales(x, B, R, C, 1, eps, qmax, scale)) return 1;
        qta_quant_apply(x, B, R, C, 1, scale, nullptr, qmax, q);
        return 0;
    }
    const int64_t rows = B * R, block = rows_per_wide(C) * (C >= WIDE ? 1 : 64);
    std::vector<float> wide;
    std::vector<uint32_t> bits;
    for (int64_t r = 0; r < rows; r += block) {
        const int64_t n = rows - r < block ? rows - r : block;
        if (!row_scales(x + r * C, n, C, eps, qmax, scale + r, bits)) return 1;
        row_apply(x + r * C, n, C, scale + r, nullptr, qmax, q + r * C);
    }
    return 0;
}

// y (R, C) = (float(q) * rows[r / rps]) * cols[c], each product rounded to float32 as two
// in-place tensor products are (the host's dequantization of an INT8 output scaled per row of
// op(A) and per output channel), and colmax[c] = max over r of |q[r, c]|, in the same pass.
void qta_dequant_rows_cols(const int8_t* q, int64_t R, int64_t C, const float* rows, int64_t rps,
                           const float* cols, float* y, int32_t* colmax) {
    for (int64_t c = 0; c < C; ++c) colmax[c] = 0;
    for (int64_t r = 0; r < R; ++r) {
        const int8_t* qr = q + r * C;
        float* yr = y + r * C;
        const float s = rows[r / rps];
        for (int64_t c = 0; c < C; ++c) {
            const float t = static_cast<float>(qr[c]) * s;
            yr[c] = t * cols[c];
        }
        for (int64_t c = 0; c < C; ++c) {
            const int32_t a = qr[c] < 0 ? -static_cast<int32_t>(qr[c]) : qr[c];
            colmax[c] = a > colmax[c] ? a : colmax[c];
        }
    }
}

}  // extern "C"
