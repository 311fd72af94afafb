// lora-qta kernel v2: INT8 x INT8 -> INT32 GEMM / implicit-GEMM convolution accelerator with a
// systolic PE array that runs weight-stationary or output-stationary and splits into sub-arrays.
//
//   C[b] = epilogue(op(A[b]) . op(B[b]) [+ C[b]])      b = 0 .. batch-1
//
// A, B are INT8, C is INT32 or requantized INT8, all in DDR behind four m_axi bundles that share
// one memory base (unified addressing: a, b, c, scales are byte offsets from it). The argument
// list, register offsets, sizes and schedule constants come from the generated qta_config.h
// (host/lora_qta/hw/hardware.toml); the architecture is described in hls/README.md.
#ifndef QTA_GEMM_H
#define QTA_GEMM_H

#include <stdint.h>

// Co-simulation: Vitis HLS compiles the testbench with __RTL_SIMULATION__ defined when it drives
// the RTL (to be confirmed by the first cosim run; -DQTA_COSIM forces it). The testbench then
// accepts 0 cycles_measured (the capture pass against the C function) and otherwise expects
// >= model / 4 (review 2 B3; the rule is in the testbench).
#if defined(__RTL_SIMULATION__) && !defined(QTA_COSIM)
#define QTA_COSIM 1
#endif

// The accumulator row words of the kernel are up to (R/MS - 1) x C x 32 bits wide (7168 for a
// 32 x 32 array, MS = 4): raise ap_[u]int's width limit before its first inclusion (Vitis HLS
// accepts up to 32768).
#ifndef AP_INT_MAX_W
#define AP_INT_MAX_W 8192
#endif
#include "ap_int.h"
#include "hls_stream.h"
#include "qta_config.h"

// One AXI beat of an m_axi port: every port is beat-wide and read/written in whole beats.
typedef ap_uint<QTA_AXI_BITS> qta_beat_t;

// The top function; its parameters are generated from the argument table of hardware.toml:
//   rd0..rd3, wr0..wr3   memory base (read / write side of bundles gmem0..3)
//   a, b, c, scales      byte offsets of the operands from the memory base
//   m .. seed            as kernel v1; batch, stride_*: batched GEMMs; conv_*: implicit GEMM
//   status, sat_count, amax, cycles_model, cycles_measured: outputs
void qta_gemm(QTA_TOP_PARAMS);

// The rounding hash (counter-based, so any tiling gives the same random bits):
// bits = mix32(mix32(seed) + (item * m + row) * n + col), all modulo 2^32.
static inline uint32_t qta_mix32(uint32_t x) {
#pragma HLS INLINE
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

#endif
