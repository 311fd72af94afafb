// lora-qta: INT8 x INT8 -> INT32 GEMM accelerator with runtime WS/OS dataflow.
//
//   C = epilogue(op(A) . op(B) [+ C])
//
// A, B are INT8 in DDR (m_axi), C is INT32 or requantized INT8. Sizes, limits and
// register offsets come from the generated qta_config.h (from host/lora_qta/hw/hardware.toml).
#ifndef QTA_GEMM_H
#define QTA_GEMM_H

#include <stdint.h>

#include "ap_int.h"
#include "qta_config.h"

// PE datapath widths: INT8 operands, INT16 products, INT32 accumulators.
typedef ap_int<8> opnd_t;
typedef ap_int<16> prod_t;
typedef ap_int<32> acc_t;

// Largest logical array sides reached by the partitioned modes.
#define QTA_LR_MAX (QTA_ROWS << QTA_SPLIT_MAX)
#define QTA_LC_MAX (QTA_COLS << (-(QTA_SPLIT_MIN)))

// Scale modes of the INT8 epilogue.
#define QTA_SCALE_TENSOR 0
#define QTA_SCALE_ROW 1
#define QTA_SCALE_COL 2

// The top function. Its parameters, in order, are the arguments of hardware.toml
// (QTA_TOP_PARAMS in the generated qta_config.h). Pointer arguments are addresses in DDR:
//   a:      INT8, op(A) is m x k; stored m x lda (or k x lda when transposed)
//   b:      INT8, op(B) is k x n; stored k x ldb (or n x ldb when transposed)
//   c:      raw bytes of C, m x ldc elements of INT32 (little endian) or INT8
//   scales: (multiplier, shift) INT32 pairs, one per output row or column
// then the scalars m, n, k, lda, ldb, ldc, tile_m, tile_n, tile_k, flags, mult, shift, seed.
// Outputs on the control interface: status (bit0 saturated, bit1 bad arguments)
// and the cycle counter of the call.
void qta_gemm(QTA_TOP_PARAMS);

// The rounding hash (counter-based, so any tiling gives the same random bits):
// bits = mix32(mix32(seed) + row * n + col).
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
