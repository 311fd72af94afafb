// C entry points of the C-simulated kernel, for the host's emulation path (ctypes).
//
// The shared library built from this file and qta_gemm.cpp *is* the HLS kernel compiled with
// g++: the emulated PYNQ device calls qta_csim_gemm when the driver writes ap_start. With
// unified addressing every m_axi pointer of the kernel is the same memory base (the emulated
// DDR); a, b, c and scales are byte offsets from it. Its parameters after `base` are generated
// from the argument table of hardware.toml (QTA_CSIM_PARAMS), in the kernel's order.
#include "qta_gemm.h"

extern "C" {

// Runs one kernel call on the memory at `base` (beat-aligned). The outputs (status, sat_count,
// amax, cycles_model, cycles_measured) are written through their pointers.
void qta_csim_gemm(void *base, QTA_CSIM_PARAMS) {
    qta_beat_t *mem = static_cast<qta_beat_t *>(base);
    QTA_CSIM_POINTERS(mem)
    qta_gemm(QTA_TOP_ARGS);
}

// The configuration digest this library was built for (checked against the host's).
const char *qta_csim_config_digest(void) { return QTA_CONFIG_DIGEST; }

// The rounding hash, exported so the host's fast path can be checked against it.
uint32_t qta_csim_mix32(uint32_t x) { return qta_mix32(x); }

}
