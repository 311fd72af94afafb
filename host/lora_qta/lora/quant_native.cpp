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
template <bool Vec>
void quantize_run(const float* __restrict__ x, const float* __restrict__ s, const float* __restrict__ u,
                  float qmax, int8_t* __restrict__ q, int64_t n) {
    const float s0 = s[0];
    if (u == nullptr) {
        for (int64_t i = 0; i < n; ++i) {
            float y = x[i] / (Vec ? s[i] : s0);
            q[i] = static_cast<int8_t>(static_cast<int32_t>((y + MAGIC) - MAGIC));
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
        q[i] = static_cast<int8_t>(t);
    }
}

// per-column amax of one (R, C) block into the scales s[C]; false on NaN or Inf
bool column_scales(const float* __restrict__ x, int64_t R, int64_t C, float eps, float qmax, float* s,
                   std::vector<uint32_t>& top_bits) {
    top_bits.assign(static_cast<size_t>(C), 0u);
    uint32_t* __restrict__ m = top_bits.data();
    for (int64_t r = 0; r < R; ++r) {
        const float* row = x + r * C;
        for (int64_t c = 0; c < C; ++c) {
            uint32_t v = abs_bits(row[c]);
            m[c] = v > m[c] ? v : m[c];
        }
    }
    uint32_t top = 0;
    for (int64_t c = 0; c < C; ++c) top = m[c] > top ? m[c] : top;
    if (top >= INF_BITS) return false;
    for (int64_t c = 0; c < C; ++c) s[c] = scale_of(m[c], eps, qmax);
    return true;
}

}  // namespace

extern "C" {

// The scales of x (B, R, C): per_col 0 -> B * R scales (one per row, over C), else B * C (one
// per column of each block, over R). Returns 0, or 1 if x holds a NaN or an Inf.
int qta_quant_scales(const float* x, int64_t B, int64_t R, int64_t C, int per_col, float eps, float qmax,
                     float* scale) {
    if (per_col) {
        std::vector<uint32_t> m;
        for (int64_t b = 0; b < B; ++b)
            if (!column_scales(x + b * R * C, R, C, eps, qmax, scale + b * C, m)) return 1;
        return 0;
    }
    for (int64_t r = 0; r < B * R; ++r) {
        uint32_t m = absmax_bits(x + r * C, C);
        if (m >= INF_BITS) return 1;
        scale[r] = scale_of(m, eps, qmax);
    }
    return 0;
}

// q of x (B, R, C) with the scales of qta_quant_scales; u: B * R * C uniform values in [0, 1)
// for stochastic rounding, or null for round half to even.
void qta_quant_apply(const float* x, int64_t B, int64_t R, int64_t C, int per_col, const float* scale,
                     const float* u, float qmax, int8_t* q) {
    for (int64_t r = 0; r < B * R; ++r) {
        const int64_t at = r * C;
        const float* s = per_col ? scale + (r / R) * C : scale + r;
        const float* ur = u ? u + at : nullptr;
        if (per_col)
            quantize_run<true>(x + at, s, ur, qmax, q + at, C);
        else
            quantize_run<false>(x + at, s, ur, qmax, q + at, C);
    }
}

// Scales and round-half-to-even q in one call; a row is quantized right after its amax (while
// it is in cache). Returns 0, or 1 if x holds a NaN or an Inf (q and scale then incomplete).
int qta_quant_nearest(const float* x, int64_t B, int64_t R, int64_t C, int per_col, float eps, float qmax,
                      float* scale, int8_t* q) {
    if (per_col) {
        if (qta_quant_scales(x, B, R, C, 1, eps, qmax, scale)) return 1;
        qta_quant_apply(x, B, R, C, 1, scale, nullptr, qmax, q);
        return 0;
    }
    for (int64_t r = 0; r < B * R; ++r) {
        const int64_t at = r * C;
        uint32_t m = absmax_bits(x + at, C);
        if (m >= INF_BITS) return 1;
        scale[r] = scale_of(m, eps, qmax);
        quantize_run<false>(x + at, scale + r, nullptr, qmax, q + at, C);
    }
    return 0;
}

}  // extern "C"
