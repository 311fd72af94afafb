# Block design of the lora-qta overlay on Zynq-7000 boards (pynq_z2).
#
# Sourced at global level by build_bitstream.tcl, into its open, empty block design, with
# config.tcl's QTA_* variables, the qta_board_preset flag (1 when the board files are
# installed) and the helper procs qta_ipdef, qta_check_pl_clock and qta_add_kernel defined.
#
#   FCLK_CLK0 at QTA_CLOCK_MHZ clocks everything; proc_sys_reset makes the resets
#   M_AXI_GP0 -> SmartConnect -> qta_gemm_0/s_axi_control at QTA_KERNEL_BASE_ADDRESS
#   qta_gemm_0/m_axi_gmem{0,1,2,3} -> SmartConnect -> S_AXI_HP{0,1,2,3} (AXI3), all of DDR
#   (one bundle per HP port: rd<i>/wr<i> share the memory base, tile rows striped over them)
#   qta_gemm_0/interrupt -> IRQ_F2P

if {$QTA_AXI_DATA_WIDTH ni {32 64}} {
    error "Zynq-7000 S_AXI_HPn ports are 32 or 64 bits wide, not $QTA_AXI_DATA_WIDTH"
}

set ps [create_bd_cell -type ip -vlnv [qta_ipdef processing_system7] processing_system7_0]
# DDR and FIXED_IO must become top-level ports in any case; the board preset also brings
# the board's DDR and MIO settings.
apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 -config [list \
    make_external "FIXED_IO, DDR" \
    apply_board_preset $qta_board_preset \
    Master Disable \
    Slave Disable \
] $ps
set_property -dict [list \
    CONFIG.PCW_EN_CLK0_PORT {1} \
    CONFIG.PCW_EN_RST0_PORT {1} \
    CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $QTA_CLOCK_MHZ \
    CONFIG.PCW_USE_M_AXI_GP0 {1} \
    CONFIG.PCW_USE_M_AXI_GP1 {0} \
    CONFIG.PCW_USE_S_AXI_HP0 {1} \
    CONFIG.PCW_USE_S_AXI_HP1 {1} \
    CONFIG.PCW_USE_S_AXI_HP2 {1} \
    CONFIG.PCW_USE_S_AXI_HP3 {1} \
    CONFIG.PCW_S_AXI_HP0_DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PCW_S_AXI_HP1_DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PCW_S_AXI_HP2_DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PCW_S_AXI_HP3_DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PCW_USE_FABRIC_INTERRUPT {1} \
    CONFIG.PCW_IRQ_F2P_INTR {1} \
] $ps
qta_check_pl_clock [get_property CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ $ps]

qta_add_kernel $ps {
    clock FCLK_CLK0
    reset FCLK_RESET0_N
    irq   IRQ_F2P
    ctrl  M_AXI_GP0
    hp    {S_AXI_HP0 S_AXI_HP1 S_AXI_HP2 S_AXI_HP3}
    aclks {M_AXI_GP0_ACLK S_AXI_HP0_ACLK S_AXI_HP1_ACLK S_AXI_HP2_ACLK S_AXI_HP3_ACLK}
    data  Data
}
