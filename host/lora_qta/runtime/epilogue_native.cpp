// The fast engine's INT8-output epilogue in one pass: lora_qta.runtime.fast.requantize and the
// rest of _run_items' INT8 branch (accumulate, saturation count, amax, clipping, the strided
// write) on a batch of items x m x n exact products.
//
// Integer arithmetic only, the kernel's (hls/README.md, "Epilogue"), so the result does not
// depend on the vector width the compiler picks:
//   p      acc * mult in int64 (|acc|, |mult| <= 2^31: |p| <= 2^62);
//   q      shift 0: p; nearest: floor(p / 2^sh) plus one when the remainder is above the half,
//          or is the half and the quotient is odd (half to even); stochastic: floor((p + u) /
//          2^sh) with u the 32 random bits moved to the shift (bits >> (32 - sh), or << (sh -
//          32)), |p + u| < 2^63;
//   total  q (+ the old INT8 output when accumulating); saturated when outside [-128, 127];
//          amax the largest |total|, capped by the caller.
// The random bits of output (row, col), row counted over the whole batch, are
// mix32(mix32(seed) + row * n + col) modulo 2^32 (hw/reference.py, rounding_bits); the caller
// passes mix32(seed).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

// A pair's rounding constants, so that every output is the same branch-free arithmetic on
// unsigned 64-bit lanes (AVX2 has variable logical shifts of 64-bit lanes, not arithmetic ones):
// u = p + 2^63 is non-negative, and floor((u + a) / 2^sh) = floor((p + a) / 2^sh) + 2^(63 - sh)
// (2^63 is a multiple of 2^sh; 2^(63 - sh) is even, so the quotient's parity is p's too).
//   nearest     floor((p + 2^(sh-1) - 1 + odd) / 2^sh), odd the parity of floor(p / 2^sh): a
//               remainder above the half carries, the half itself only onto an odd quotient
//               (addend and odd are 0 for sh = 0, leaving p);
//   stochastic  floor((p + noise) / 2^sh), noise = (bits << 31) >> (63 - sh): bits >> (32 - sh)
//               for sh <= 32 (0 for sh = 0), bits << (sh - 32) above, exactly.
// Bounds: |p| <= 2^62, addend + odd <= 2^61, noise <= 2^62 - 2^30, so u + a < 2^64.
struct Pair {
    int64_t mult;
    uint64_t shift, addend, odd, bias;  // bias = 2^(63 - shift)
};

inline Pair pair_of(int64_t mult, int64_t shift) {
    const uint64_t sh = static_cast<uint64_t>(shift);
    Pair p{mult, sh, 0, 0, uint64_t{1} << (63 - sh)};
    if (sh > 0) {
        p.addend = (uint64_t{1} << (sh - 1)) - 1;
        p.odd = 1;
    }
    return p;
}

const uint64_t TOP = uint64_t{1} << 63;

// One row of n outputs: the pairs per column (Col: mult[j], ...) or one pair for the row.
template <typename Acc, bool Col, bool Sto, bool Accum>
void row_epilogue(const Acc* __restrict__ acc, const int64_t* __restrict__ mult, const uint64_t* __restrict__ shift,
                  const uint64_t* __restrict__ addend, const uint64_t* __restrict__ odd,
                  const uint64_t* __restrict__ bias, const Pair& one, int64_t n, uint32_t base, uint64_t row,
                  int8_t* __restrict__ c, int64_t& nsat, int64_t& amax) {
    const uint32_t idx0 = static_cast<uint32_t>(row * static_cast<uint64_t>(n)) + base;
    int64_t sat = 0, big = 0;
    for (int64_t j = 0; j < n; ++j) {
        const int64_t a = static_cast<int32_t>(acc[j]);  // float32 holding an integer: exact
        const uint64_t sh = Col ? shift[j] : one.shift;
        uint64_t u = static_cast<uint64_t>(a * (Col ? mult[j] : one.mult)) + TOP;
        if (Sto) {
            const uint64_t bits = mix32(idx0 + static_cast<uint32_t>(j));
            u += (bits << 31) >> (63 - sh);
        } else {
            u += (Col ? addend[j] : one.addend) + ((u >> sh) & (Col ? odd[j] : one.odd));
        }
        int64_t t = static_cast<int64_t>((u >> sh) - (Col ? bias[j] : one.bias));
        if (Accum) t += c[j];
        const int64_t mag = t < 0 ? -t : t;
        big = mag > big ? mag : big;
        const int64_t clipped = t > 127 ? 127 : (t < -128 ? -128 : t);
        sat += clipped != t;
        c[j] = static_cast<int8_t>(clipped);
    }
    nsat += sat;
    amax = big > amax ? big : amax;
}

template <typename Acc, bool Col, bool Sto, bool Accum>
void run(const void* acc_v, int64_t items, int64_t m, int64_t n, const int64_t* mult, const int64_t* shift,
         bool per_row, uint32_t base, int64_t first_row, int8_t* c, int64_t c_item, int64_t c_row, int64_t* out) {
    const Acc* acc = static_cast<const Acc*>(acc_v);
    const std::size_t cols = Col ? static_cast<std::size_t>(n) : 0;
    std::vector<int64_t> mc(cols);
    std::vector<uint64_t> sc(cols), ac(cols), oc(cols), bc(cols);
    for (std::size_t j = 0; j < cols; ++j) {  // the columns' constants, once per call
        const Pair p = pair_of(mult[j], shift[j]);
        mc[j] = p.mult;
        sc[j] = p.shift;
        ac[j] = p.addend;
        oc[j] = p.odd;
        bc[j] = p.bias;
    }
    int64_t nsat = 0, amax = 0;
    for (int64_t i = 0; i < items; ++i) {
        for (int64_t r = 0; r < m; ++r) {
            const int64_t at = per_row ? r : 0;
            const Pair one = pair_of(mult[at], shift[at]);
            row_epilogue<Acc, Col, Sto, Accum>(acc + (i * m + r) * n, mc.data(), sc.data(), ac.data(), oc.data(),
                                               bc.data(), one, n, base, static_cast<uint64_t>(first_row + i * m + r),
                                               c + i * c_item + r * c_row, nsat, amax);
        }
    }
    out[0] = nsat;
    out[1] = amax;
}

using Fn = void (*)(const void*, int64_t, int64_t, int64_t, const int64_t*, const int64_t*, bool, uint32_t,
                    int64_t, int8_t*, int64_t, int64_t, int64_t*);

template <typename Acc>
Fn pick(int mode, int stochastic, int accumulate) {
    const bool col = mode == 2;
    if (col) {
        if (stochastic) return accumulate ? run<Acc, true, true, true> : run<Acc, true, true, false>;
        return accumulate ? run<Acc, true, false, true> : run<Acc, true, false, false>;
    }
    if (stochastic) return accumulate ? run<Acc, false, true, true> : run<Acc, false, true, false>;
    return accumulate ? run<Acc, false, false, true> : run<Acc, false, false, false>;
}

}  // namespace

extern "C" {

// acc: items x m x n C-contiguous exact products, float32 holding integers (acc_f32) or int32;
// mode 0: one (mult, shift) for all (mult[0], shift[0]), 1: per row (index r), 2: per column;
// c: the INT8 output of item 0 row 0 with strides c_item, c_row bytes (read when accumulating);
// first_row: the batch row of item 0 row 0 (item * m) for the random bits; seed_mix: mix32(seed).
// out[0] = saturated outputs, out[1] = largest |total| (uncapped).
void qta_epilogue_i8(const void* acc, int acc_f32, int64_t items, int64_t m, int64_t n, const int64_t* mult,
                     const int64_t* shift, int mode, int stochastic, uint32_t seed_mix, int64_t first_row,
                     int accumulate, int8_t* c, int64_t c_item, int64_t c_row, int64_t* out) {
    Fn f = acc_f32 ? pick<float>(mode, stochastic, accumulate) : pick<int32_t>(mode, stochastic, accumulate);
    f(acc, items, m, n, mult, shift, mode == 1, seed_mix, first_row, c, c_item, c_row, out);
}

}  // extern "C"
