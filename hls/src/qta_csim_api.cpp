// C entry points of the C-simulated kernel, for the host's emulation path (ctypes).
//
// The shared library built from this file and qta_gemm.cpp *is* the HLS kernel compiled
// with g++: the emulated PYNQ device calls qta_csim_gemm when the driver writes ap_start.
#include "qta_gemm.h"

extern "C" {

// Runs one kernel call on host memory. Arguments as qta_gemm; returns the status word.
uint32_t qta_csim_gemm(const int8_t *a, const int8_t *b, uint8_t *c, const int32_t *scales,
                       uint32_t m, uint32_t n, uint32_t k, uint32_t lda, uint32_t ldb, uint32_t ldc,
                       uint32_t tile_m, uint32_t tile_n, uint32_t tile_k, uint32_t flags,
                       int32_t mult, uint32_t shift, uint32_t seed, uint64_t *cycles) {
    uint32_t status = 0;
    qta_gemm(a, b, c, scales, m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift,
             seed, &status, cycles);
    return status;
}

// The configuration digest this library was built for (checked against the host's).
const char *qta_csim_config_digest(void) { return QTA_CONFIG_DIGEST; }

// The rounding hash, exported so the host's fast path can be checked against it.
uint32_t qta_csim_mix32(uint32_t x) { return qta_mix32(x); }

}
