// C entry points of the C-simulated kernel, for the host's emulation path (ctypes).
//
// The shared library built from this file and qta_gemm.cpp *is* the HLS kernel compiled with
// g++: the emulated PYNQ device calls qta_csim_gemm when the driver writes ap_start. Its
// parameters are the top function's, in the order of hardware.toml (the host builds its ctypes
// signature from the same list); with unified addressing the host passes the emulated DDR's
// base for every m_axi pointer and the operands' byte offsets from it.
#include "qta_gemm.h"

extern "C" {

// Runs one kernel call.
void qta_csim_gemm(QTA_TOP_PARAMS) { qta_gemm(QTA_TOP_ARGS); }

// The configuration digest this library was built for (checked against the host's).
const char *qta_csim_config_digest(void) { return QTA_CONFIG_DIGEST; }

// The rounding hash, exported so the host's fast path can be checked against it.
uint32_t qta_csim_mix32(uint32_t x) { return qta_mix32(x); }

}
