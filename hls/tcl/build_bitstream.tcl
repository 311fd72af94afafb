# Vivado flow of the lora-qta overlay for one board: block design around the exported
# qta_gemm IP, synthesis, implementation, bitstream, and the files PYNQ loads.
#
# From the repository root, after the HLS flow has exported build/<board>/ip:
#   vivado -mode batch -source hls/tcl/build_bitstream.tcl -tclargs <board>
#
# Environment:
#   QTA_JOBS                  parallel jobs of the synthesis and implementation runs (default 2)
#   QTA_BOARD_REPO            extra board-file directories (colon separated), e.g. where the
#                             PYNQ-Z2 or KV260 board files were unpacked
#   QTA_ALLOW_TIMING_FAILURE  set to 1 to keep a bitstream that misses timing
#
# Outputs, in bitstreams/<board>/:
#   $QTA_BITSTREAM_NAME.bit, $QTA_BITSTREAM_NAME.hwh   the overlay (same base name, as PYNQ needs)
#   reports/${QTA_BITSTREAM_NAME}_{utilization,timing_summary}.rpt
# The Vivado project is build/<board>/vivado_prj.
#
# Targets AMD Vivado 2024.2; 2023.2 and later should work.

if {[info commands create_bd_design] eq "" && ![auto_load create_bd_design]} {
    puts stderr "ERROR: hls/tcl/build_bitstream.tcl must be run by AMD Vivado 2024.2\
        (vivado -mode batch -source hls/tcl/build_bitstream.tcl -tclargs <board>), not by\
        [file tail [info nameofexecutable]]; see scripts/build_bitstream.sh -h."
    exit 2
}

set qta_repo [file normalize [file join [file dirname [info script]] .. ..]]
set qta_bd_name qta_bd

# ---------------------------------------------------------------- helpers of the bd scripts

# The newest catalog VLNV of an AMD IP, e.g. qta_ipdef smartconnect -> xilinx.com:ip:smartconnect:1.0
proc qta_ipdef {name} {
    set defs [get_ipdefs -quiet xilinx.com:ip:$name:*]
    if {[llength $defs] == 0} {
        error "IP xilinx.com:ip:$name is not in the Vivado IP catalog"
    }
    return [lindex [lsort -dictionary $defs] end]
}

# A byte count as the K/M/G size Vivado's address commands take (65536 -> 64K).
proc qta_size {bytes} {
    foreach {unit shift} {G 30 M 20 K 10} {
        set scale [expr {1 << $shift}]
        if {$bytes >= $scale && $bytes % $scale == 0} {
            return "[expr {$bytes / $scale}]$unit"
        }
    }
    return $bytes
}

# Warn when the PS cannot make PL clock 0 within 1% of the configured frequency: timing is
# closed at the actual frequency, while the host's cycle model assumes QTA_CLOCK_MHZ.
proc qta_check_pl_clock {actual_mhz} {
    if {abs($actual_mhz - $::QTA_CLOCK_MHZ) > 0.01 * $::QTA_CLOCK_MHZ} {
        puts "WARNING: \[qta\] PL clock 0 runs at $actual_mhz MHz, not $::QTA_CLOCK_MHZ MHz"
    } else {
        puts "INFO: \[qta\] PL clock 0: $actual_mhz MHz"
    }
}

# A 1x1 SmartConnect (clock/width/protocol conversion between one master and one slave).
proc qta_smartconnect {name} {
    set sc [create_bd_cell -type ip -vlnv [qta_ipdef smartconnect] $name]
    set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {1}] $sc
    return $sc
}

# Map every DDR segment a kernel master reaches into its address space, and exclude the
# other segments behind the same PS port (OCM, QSPI, PCIe) so none is left unassigned.
proc qta_map_ddr {space} {
    set mapped 0
    foreach seg [get_bd_addr_segs -addressables -of_objects $space] {
        if {[string match *DDR* [get_property NAME $seg]]} {
            assign_bd_address -target_address_space $space $seg
            incr mapped
        } else {
            exclude_bd_addr_seg -target_address_space $space $seg
        }
    }
    if {$mapped == 0} {
        error "no DDR segment is reachable from $space"
    }
}

# Everything but the PS, the same on both families. `pins` names the PS side:
#   clock reset irq  PL clock 0, its reset (active low), the PL-to-PS interrupt input
#   ctrl             the general-purpose master that reaches the kernel's registers
#   hp               four high-performance slaves, for gmem0..gmem3 (one per m_axi bundle)
#   aclks            the PS's AXI clock inputs of those five ports
#   data             the PS's master address space
proc qta_add_kernel {ps pins} {
    set rst [create_bd_cell -type ip -vlnv [qta_ipdef proc_sys_reset] proc_sys_reset_0]
    # The instance name is the attribute PYNQ exposes: overlay.qta_gemm_0.
    set kernel [create_bd_cell -type ip -vlnv $::QTA_VLNV qta_gemm_0]
    set ctrl [qta_smartconnect smartconnect_ctrl]

    set clocked [list [get_bd_pins $rst/slowest_sync_clk] [get_bd_pins $kernel/ap_clk] \
        [get_bd_pins $ctrl/aclk]]
    foreach pin [dict get $pins aclks] {
        lappend clocked [get_bd_pins $ps/$pin]
    }
    set interconnect_resets [list [get_bd_pins $ctrl/aresetn]]

    connect_bd_intf_net [get_bd_intf_pins $ps/[dict get $pins ctrl]] [get_bd_intf_pins $ctrl/S00_AXI]
    connect_bd_intf_net [get_bd_intf_pins $ctrl/M00_AXI] [get_bd_intf_pins $kernel/s_axi_control]

    # One m_axi bundle per HP port: gmem<i> (rd<i> and wr<i>) -> HP<i>; rows are striped over them.
    set bundles {}
    for {set i 0} {$i < $::QTA_AXI_PORTS} {incr i} {
        lappend bundles gmem$i
    }
    if {[llength $bundles] != [llength [dict get $pins hp]]} {
        error "the kernel has $::QTA_AXI_PORTS m_axi bundles, the block design [llength [dict get $pins hp]] HP ports"
    }
    foreach bundle $bundles hp [dict get $pins hp] {
        set sc [qta_smartconnect smartconnect_$bundle]
        lappend clocked [get_bd_pins $sc/aclk]
        lappend interconnect_resets [get_bd_pins $sc/aresetn]
        connect_bd_intf_net [get_bd_intf_pins $kernel/m_axi_$bundle] [get_bd_intf_pins $sc/S00_AXI]
        connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $ps/$hp]
    }

    connect_bd_net [get_bd_pins $ps/[dict get $pins clock]] {*}$clocked
    connect_bd_net [get_bd_pins $ps/[dict get $pins reset]] [get_bd_pins $rst/ext_reset_in]
    connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $kernel/ap_rst_n]
    connect_bd_net [get_bd_pins $rst/interconnect_aresetn] {*}$interconnect_resets
    connect_bd_net [get_bd_pins $kernel/interrupt] [get_bd_pins $ps/[dict get $pins irq]]

    # The registers at the configured base; the host driver and hardware.toml assume it.
    set data [get_bd_addr_spaces $ps/[dict get $pins data]]
    set seg [assign_bd_address -target_address_space $data \
        -offset $::QTA_KERNEL_BASE_ADDRESS -range [qta_size $::QTA_ADDRESS_RANGE] \
        [get_bd_addr_segs $kernel/s_axi_control/Reg]]
    if {[llength $seg] != 1 || [get_property OFFSET $seg] != $::QTA_KERNEL_BASE_ADDRESS} {
        error "could not place qta_gemm_0/s_axi_control at $::QTA_KERNEL_BASE_ADDRESS"
    }
    foreach bundle $bundles {
        qta_map_ddr [get_bd_addr_spaces $kernel/Data_m_axi_$bundle]
    }
}

# ---------------------------------------------------------------- the flow

proc qta_jobs {} {
    if {[info exists ::env(QTA_JOBS)] && $::env(QTA_JOBS) ne ""} {
        if {![string is integer -strict $::env(QTA_JOBS)] || $::env(QTA_JOBS) < 1} {
            error "QTA_JOBS must be a positive integer, not '$::env(QTA_JOBS)'"
        }
        return $::env(QTA_JOBS)
    }
    return 2
}

proc qta_run {run jobs args} {
    launch_runs $run -jobs $jobs {*}$args
    wait_on_run $run
    if {[get_property PROGRESS [get_runs $run]] ne "100%"} {
        error "$run failed: [get_property STATUS [get_runs $run]] (see\
            [get_property DIRECTORY [get_runs $run]])"
    }
}

proc qta_vivado_main {board} {
    set build_dir [file join $::qta_repo build $board]
    set config_tcl [file join $build_dir config.tcl]
    if {![file exists $config_tcl]} {
        error "$config_tcl is missing: run scripts/build_bitstream.sh $board"
    }
    uplevel #0 [list source $config_tcl]
    if {$::QTA_BOARD ne $board} {
        error "$config_tcl describes board '$::QTA_BOARD', not '$board'"
    }
    set ip_dir [file join $build_dir ip]
    if {![file exists [file join $ip_dir component.xml]]} {
        error "no exported IP in $ip_dir: run the HLS flow first (scripts/build_bitstream.sh $board)"
    }
    set jobs [qta_jobs]
    set out_dir [file join $::qta_repo bitstreams $board]
    set report_dir [file join $out_dir reports]
    set name $::QTA_BITSTREAM_NAME
    puts "INFO: \[qta\] Vivado flow for $board ($::QTA_PART, $::QTA_CLOCK_MHZ MHz), $jobs jobs,\
        config $::QTA_CONFIG_DIGEST"

    if {[info exists ::env(QTA_BOARD_REPO)] && $::env(QTA_BOARD_REPO) ne ""} {
        set_param board.repoPaths [split $::env(QTA_BOARD_REPO) :]
    }
    set prj_dir [file join $build_dir vivado_prj]
    create_project -force vivado_prj $prj_dir -part $::QTA_PART
    # The board part brings the board's PS preset (DDR, MIO); without it the PS keeps the
    # part's defaults, which PYNQ ignores when it loads the overlay (its boot firmware has
    # configured the PS already).
    if {[llength [get_board_parts -quiet $::QTA_BOARD_PART]] > 0} {
        set_property board_part $::QTA_BOARD_PART [current_project]
        set ::qta_board_preset 1
    } else {
        puts "WARNING: \[qta\] board files $::QTA_BOARD_PART are not installed; building for\
            part $::QTA_PART without the board preset. Install them (Vivado XHub board store,\
            or QTA_BOARD_REPO=<dir>) for the board's PS settings."
        set ::qta_board_preset 0
    }
    set_property ip_repo_paths [list $ip_dir] [current_project]
    update_ip_catalog -rebuild
    if {[llength [get_ipdefs -quiet $::QTA_VLNV]] == 0} {
        error "$::QTA_VLNV is not in $ip_dir"
    }

    create_bd_design $::qta_bd_name
    switch -- $::QTA_FAMILY {
        zynq_us { set bd_script bd_zynq_us.tcl }
        zynq7   { set bd_script bd_zynq7.tcl }
        default { error "no block design for family '$::QTA_FAMILY'" }
    }
    uplevel #0 [list source [file join $::qta_repo hls tcl $bd_script]]
    validate_bd_design
    save_bd_design

    set bd_file [get_files $::qta_bd_name.bd]
    generate_target all $bd_file
    add_files -norecurse [make_wrapper -files $bd_file -top]
    set top ${::qta_bd_name}_wrapper
    set_property top $top [current_fileset]
    update_compile_order -fileset sources_1

    qta_run synth_1 $jobs
    qta_run impl_1 $jobs -to_step write_bitstream

    open_run impl_1
    file mkdir $report_dir
    report_utilization -file [file join $report_dir ${name}_utilization.rpt]
    report_timing_summary -file [file join $report_dir ${name}_timing_summary.rpt]
    set wns [get_property STATS.WNS [get_runs impl_1]]
    set whs [get_property STATS.WHS [get_runs impl_1]]
    puts "INFO: \[qta\] timing: WNS $wns ns, WHS $whs ns"
    if {$wns < 0 || $whs < 0} {
        set allowed [expr {[info exists ::env(QTA_ALLOW_TIMING_FAILURE)]
                           && $::env(QTA_ALLOW_TIMING_FAILURE) eq "1"}]
        if {!$allowed} {
            error "timing not met at $::QTA_CLOCK_MHZ MHz (WNS $wns ns, WHS $whs ns); see\
                $report_dir/${name}_timing_summary.rpt. Lower clock_mhz in hardware.toml, or\
                set QTA_ALLOW_TIMING_FAILURE=1 to keep the bitstream anyway."
        }
        puts "WARNING: \[qta\] timing not met; keeping the bitstream (QTA_ALLOW_TIMING_FAILURE=1)"
    }

    set bit [file join [get_property DIRECTORY [get_runs impl_1]] $top.bit]
    set hwh ""
    foreach generated {vivado_prj.gen vivado_prj.srcs} {
        set f [file join $prj_dir $generated sources_1 bd $::qta_bd_name hw_handoff $::qta_bd_name.hwh]
        if {[file exists $f]} {
            set hwh $f
            break
        }
    }
    if {![file exists $bit] || $hwh eq ""} {
        error "missing build output: bitstream $bit, hardware handoff '$hwh'"
    }
    file mkdir $out_dir
    file copy -force $bit [file join $out_dir $name.bit]
    file copy -force $hwh [file join $out_dir $name.hwh]
    puts "INFO: \[qta\] wrote $out_dir/$name.bit and $name.hwh"
    close_project
}

if {[llength $argv] != 1} {
    puts stderr "usage: vivado -mode batch -source hls/tcl/build_bitstream.tcl -tclargs <board>"
    exit 2
}
if {[catch {qta_vivado_main [lindex $argv 0]} message]} {
    puts stderr "ERROR: \[qta\] $message"
    exit 1
}
exit 0
