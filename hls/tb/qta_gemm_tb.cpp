// C++ testbench of qta_gemm for Vitis HLS csim/cosim and for g++ (`make csim`).
//
// Runs random GEMMs, including edge tiles, through every dataflow, partition, transpose
// and output mode, and compares each result with a plain triple loop. Returns 0 on pass.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "qta_gemm.h"

namespace {

uint32_t rng_state = 12345u;
uint32_t rnd() { return rng_state = qta_mix32(rng_state + 0x9E3779B9u); }

struct Case {
    uint32_t m, n, k, tm, tn, tk;
    bool ta, tb, os, out8, accumulate;
    int split;
};

// Round-half-even of p / 2^sh (the testbench's own reading of the epilogue).
long long rne(long long p, unsigned sh) {
    if (sh == 0) return p;
    long long d = 1LL << sh;
    long long q = p >= 0 ? p / d : -((-p + d - 1) / d);  // floor
    long long rem = p - q * d;
    if (2 * rem > d || (2 * rem == d && (q & 1))) q++;
    return q;
}

bool run_case(const Case &cs) {
    const uint32_t lda = (cs.ta ? cs.m : cs.k) + 3, ldb = (cs.tb ? cs.k : cs.n) + 1, ldc = cs.n + 2;
    std::vector<int8_t> a((cs.ta ? cs.k : cs.m) * lda), b((cs.tb ? cs.n : cs.k) * ldb);
    for (auto &x : a) x = (int8_t)(rnd() & 0xFF);
    for (auto &x : b) x = (int8_t)(rnd() & 0xFF);
    const uint32_t eb = cs.out8 ? 1 : 4;
    std::vector<uint8_t> c(cs.m * ldc * eb);
    for (auto &x : c) x = (uint8_t)(rnd() & (cs.out8 ? 0x0F : 0xFF));
    std::vector<uint8_t> c0 = c;
    const int32_t mult = 1 + (int32_t)(rnd() % 5000);
    const uint32_t shift = 12 + rnd() % 8;
    uint32_t flags = (cs.ta << QTA_FLAG_TRANS_A) | (cs.tb << QTA_FLAG_TRANS_B) | (cs.os << QTA_FLAG_DATAFLOW) |
                     ((uint32_t)(cs.split & 0xF) << QTA_FLAG_SPLIT_LSB) | (cs.out8 << QTA_FLAG_OUT_INT8) |
                     (cs.accumulate << QTA_FLAG_ACCUMULATE);
    uint32_t status = 0;
    uint64_t cycles = 0;
    qta_gemm(a.data(), b.data(), c.data(), nullptr, cs.m, cs.n, cs.k, lda, ldb, ldc, cs.tm, cs.tn, cs.tk,
             flags, mult, shift, 7, &status, &cycles);
    if (status & (1u << QTA_STATUS_BAD_ARGS)) {
        std::printf("FAIL: kernel rejected a valid case\n");
        return false;
    }
    for (uint32_t i = 0; i < cs.m; i++) {
        for (uint32_t j = 0; j < cs.n; j++) {
            long long s = 0;
            for (uint32_t kk = 0; kk < cs.k; kk++) {
                int av = cs.ta ? a[kk * lda + i] : a[i * lda + kk];
                int bv = cs.tb ? b[j * ldb + kk] : b[kk * ldb + j];
                s += av * bv;
            }
            long long want;
            long long got;
            size_t at = (size_t)(i * ldc + j) * eb;
            if (cs.out8) {
                want = rne(s * mult, shift);
                if (cs.accumulate) want += (int8_t)c0[at];
                want = want < -128 ? -128 : (want > 127 ? 127 : want);
                got = (int8_t)c[at];
            } else {
                int32_t old = (int32_t)(c0[at] | (c0[at + 1] << 8) | (c0[at + 2] << 16) | ((uint32_t)c0[at + 3] << 24));
                want = s + (cs.accumulate ? old : 0);
                want = want < INT32_MIN ? INT32_MIN : (want > INT32_MAX ? INT32_MAX : want);
                got = (int32_t)(c[at] | (c[at + 1] << 8) | (c[at + 2] << 16) | ((uint32_t)c[at + 3] << 24));
            }
            if (got != want) {
                std::printf("FAIL m=%u n=%u k=%u os=%d split=%d ta=%d tb=%d out8=%d at (%u,%u): %lld != %lld\n",
                            cs.m, cs.n, cs.k, cs.os, cs.split, cs.ta, cs.tb, cs.out8, i, j, got, want);
                return false;
            }
        }
    }
    return true;
}

}  // namespace

int main() {
    int failures = 0, cases = 0;
    for (int split = QTA_SPLIT_MIN; split <= QTA_SPLIT_MAX; split++) {
        for (int os = 0; os <= 1; os++) {
            if (!os && split > 0) continue;
            for (int variant = 0; variant < 4; variant++) {
                Case cs;
                cs.m = 1 + rnd() % 70;
                cs.n = 1 + rnd() % 70;
                cs.k = 1 + rnd() % 90;
                cs.tm = 1 + rnd() % QTA_TILE_M_MAX;
                cs.tn = 1 + rnd() % QTA_TILE_N_MAX;
                cs.tk = 1 + rnd() % QTA_TILE_K_MAX;
                cs.ta = variant & 1;
                cs.tb = (variant >> 1) & 1;
                cs.os = os;
                cs.out8 = rnd() & 1;
                cs.accumulate = rnd() & 1;
                cs.split = split;
                cases++;
                if (!run_case(cs)) failures++;
            }
        }
    }
    std::printf("%d passed, %d failed\n", cases - failures, failures);
    return failures ? 1 : 0;
}
