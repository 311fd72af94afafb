# Block design of the lora-qta overlay on Zynq UltraScale+ MPSoC boards (zcu104, kv260).
#
# Sourced at global level by build_bitstream.tcl, into its open, empty block design, with
# config.tcl's QTA_* variables, the qta_board_preset flag (1 when the board files are
# installed) and the helper procs qta_ipdef, qta_check_pl_clock and qta_add_kernel defined.
#
#   pl_clk0 at QTA_CLOCK_MHZ clocks everything; proc_sys_reset makes the resets
#   M_AXI_HPM0_FPD -> SmartConnect -> qta_gemm_0/s_axi_control at QTA_KERNEL_BASE_ADDRESS
#   qta_gemm_0/m_axi_gmem{0,1,2,3} -> SmartConnect -> S_AXI_HP{0,1,2,3}_FPD, all of DDR
#   (one bundle per HP port: rd<i>/wr<i> share the memory base, tile rows striped over them)
#   qta_gemm_0/interrupt -> pl_ps_irq0

if {$QTA_AXI_DATA_WIDTH ni {32 64 128}} {
    error "S_AXI_HPn_FPD ports are 32, 64 or 128 bits wide, not $QTA_AXI_DATA_WIDTH"
}

set ps [create_bd_cell -type ip -vlnv [qta_ipdef zynq_ultra_ps_e] zynq_ultra_ps_e_0]
if {$qta_board_preset} {
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e \
        -config {apply_board_preset "1"} $ps
}
# In the PS configuration, M_AXI_GP0/1/2 are HPM0_FPD, HPM1_FPD and HPM0_LPD, and
# S_AXI_GP2..5 (SAXIGP2..5) are S_AXI_HP0..3_FPD. Only HPM0_FPD stays as a master, so no
# unused master port is left with an unconnected clock.
set_property -dict [list \
    CONFIG.PSU__FPGA_PL0_ENABLE {1} \
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $QTA_CLOCK_MHZ \
    CONFIG.PSU__USE__M_AXI_GP0 {1} \
    CONFIG.PSU__USE__M_AXI_GP1 {0} \
    CONFIG.PSU__USE__M_AXI_GP2 {0} \
    CONFIG.PSU__USE__S_AXI_GP2 {1} \
    CONFIG.PSU__USE__S_AXI_GP3 {1} \
    CONFIG.PSU__USE__S_AXI_GP4 {1} \
    CONFIG.PSU__USE__S_AXI_GP5 {1} \
    CONFIG.PSU__SAXIGP2__DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PSU__SAXIGP3__DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PSU__SAXIGP4__DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PSU__SAXIGP5__DATA_WIDTH $QTA_AXI_DATA_WIDTH \
    CONFIG.PSU__USE__IRQ0 {1} \
] $ps
qta_check_pl_clock [get_property CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ $ps]

qta_add_kernel $ps {
    clock pl_clk0
    reset pl_resetn0
    irq   pl_ps_irq0
    ctrl  M_AXI_HPM0_FPD
    hp    {S_AXI_HP0_FPD S_AXI_HP1_FPD S_AXI_HP2_FPD S_AXI_HP3_FPD}
    aclks {maxihpm0_fpd_aclk saxihp0_fpd_aclk saxihp1_fpd_aclk saxihp2_fpd_aclk saxihp3_fpd_aclk}
    data  Data
}
