# Vitis HLS flow of the lora-qta kernel (top function qta_gemm) for one board.
#
# From the repository root:
#   vitis_hls -f hls/tcl/run_hls.tcl -tclargs <board> [step ...]
# or, with the Vitis 2024.x unified command line, which passes no -tclargs:
#   QTA_HLS_BOARD=<board> QTA_HLS_STEPS="csim csynth export" \
#       vitis-run --mode hls --tcl hls/tcl/run_hls.tcl
#
# Steps: csim csynth cosim export (default: csim csynth export); the requested ones always
# run in that order. cosim and export without csynth reuse the solution's last synthesis.
#
# Inputs, written by `scripts/build_bitstream.sh` (or by hand with
# `PYTHONPATH=host python3 -m lora_qta.hw.generate {tcl,header} --board <board> -o ...`):
#   build/<board>/config.tcl   QTA_* variables from host/lora_qta/hw/hardware.toml
#   build/<board>/qta_config.h the header the kernel includes
# Outputs:
#   build/<board>/hls_prj/     the Vitis HLS project, solution sol_<board>
#   build/<board>/ip/          the exported IP (VLNV $QTA_VLNV), the Vivado flow's IP repository
#   build/<board>/reports/     csynth (and cosim) reports
#
# Gate: Vitis HLS does not fail when a loop misses its II, the clock estimate misses the target
# or the design outgrows the part. After csynth (and before any export) hls/tcl/csynth_gate.py
# reads the solution's csynth.xml reports and the flow stops, exporting nothing, when any loop
# missed its target II, the estimated clock period exceeds QTA_CLOCK_PERIOD_NS, or a resource
# exceeds QTA_BUDGET (85% of the part's LUT/FF, 90% of its DSP/BRAM/URAM: the fit headroom).
# The environment variable QTA_PYTHON (default python3) runs it.
#
# Targets AMD Vitis HLS 2024.2; 2023.2 and later should work.

# With -f, Vitis HLS stays in its interactive shell after a script that neither exits nor
# quits, so every path below ends in an explicit exit.
if {[info commands csynth_design] eq "" && ![auto_load csynth_design]} {
    puts stderr "ERROR: hls/tcl/run_hls.tcl must be run by AMD Vitis HLS 2024.2\
        (vitis_hls -f hls/tcl/run_hls.tcl -tclargs <board>), not by\
        [file tail [info nameofexecutable]]; see scripts/build_bitstream.sh -h."
    exit 2
}

set qta_repo [file normalize [file join [file dirname [info script]] .. ..]]
set qta_all_steps {csim csynth cosim export}
set qta_default_steps {csim csynth export}

# The board and steps: the -tclargs words, else QTA_HLS_BOARD / QTA_HLS_STEPS.
proc qta_hls_args {} {
    if {[info exists ::argv] && [llength $::argv] > 0} {
        return $::argv
    }
    if {[info exists ::env(QTA_HLS_BOARD)]} {
        set args [list $::env(QTA_HLS_BOARD)]
        if {[info exists ::env(QTA_HLS_STEPS)]} {
            lappend args {*}$::env(QTA_HLS_STEPS)
        }
        return $args
    }
    error "no board given: use -tclargs <board> \[step ...\] or set QTA_HLS_BOARD"
}

# Copy the files of $names found in $from into $to; error if none of them exists.
proc qta_copy_reports {from to names} {
    file mkdir $to
    set copied 0
    foreach name $names {
        set f [file join $from $name]
        if {[file exists $f]} {
            file copy -force $f [file join $to $name]
            incr copied
        }
    }
    if {$copied == 0} {
        error "no report ([join $names {, }]) in $from"
    }
}

# Runs the csynth gate on a solution's reports; an error (stopping the flow before export)
# lists every target synthesis missed.
# The csynth gate (csynth_gate.py): II, clock, resources within the part, DATAFLOW applied, and
# with the board's generated qta_config.h the DSP window [R x C, R x C + margin] and the pipeline
# depths the cycle model charges ([schedule]).
proc qta_csynth_gate {report_dir config_h} {
    set gate [file join $::qta_repo hls tcl csynth_gate.py]
    set python [expr {[info exists ::env(QTA_PYTHON)] ? $::env(QTA_PYTHON) : "python3"}]
    if {[catch {exec $python $gate $report_dir --period $::QTA_CLOCK_PERIOD_NS \
            --budget $::QTA_BUDGET --config $config_h 2>@1} out]} {
        error "csynth gate: synthesis missed its targets, nothing exported:\n$out"
    }
    puts "INFO: \[qta\] $out"
}

# The VLNV that an exported component.xml declares (IP-XACT, spirit or ipxact prefix).
proc qta_component_vlnv {component_xml} {
    set fh [open $component_xml r]
    set xml [read $fh]
    close $fh
    set parts {}
    foreach tag {vendor library name version} {
        if {![regexp "<(?:spirit|ipxact):$tag>(\[^<\]*)</" $xml -> value]} {
            error "$component_xml has no $tag"
        }
        lappend parts $value
    }
    return [join $parts :]
}

proc qta_hls_main {args} {
    set steps [lrange $args 1 end]
    if {[llength $steps] == 0} {
        set steps $::qta_default_steps
    }
    foreach step $steps {
        if {$step ni $::qta_all_steps} {
            error "unknown step '$step': choose from $::qta_all_steps"
        }
    }
    set board [lindex $args 0]
    set build_dir [file join $::qta_repo build $board]
    set config_tcl [file join $build_dir config.tcl]
    foreach f [list $config_tcl [file join $build_dir qta_config.h]] {
        if {![file exists $f]} {
            error "$f is missing: run scripts/build_bitstream.sh $board --hls-only, or\
                PYTHONPATH=host python3 -m lora_qta.hw.generate {tcl,header} --board $board -o ..."
        }
    }
    uplevel #0 [list source $config_tcl]
    if {$::QTA_BOARD ne $board} {
        error "$config_tcl describes board '$::QTA_BOARD', not '$board'"
    }

    set src_dir [file join $::qta_repo hls src]
    set kernel_src [file join $src_dir qta_gemm.cpp]
    set kernel_hdr [file join $src_dir qta_gemm.h]
    set blocks_hdr [file join $src_dir qta_blocks.h]
    set tb_src [file join $::qta_repo hls tb qta_gemm_tb.cpp]
    foreach f [list $kernel_src $kernel_hdr $blocks_hdr $tb_src] {
        if {![file exists $f]} {
            error "kernel source $f is missing"
        }
    }
    # QTA_VITIS_BLOCKS: the ping-pong blocks are Vitis's hls::stream_of_blocks (qta_blocks.h)
    set cflags "-std=c++14 -DQTA_VITIS_BLOCKS -I$build_dir -I$src_dir"

    set solution sol_$board
    set sol_dir [file join $build_dir hls_prj $solution]
    set report_dir [file join $build_dir reports]
    puts "INFO: \[qta\] Vitis HLS flow for $board ($::QTA_PART, $::QTA_CLOCK_MHZ MHz):\
        steps $steps, config $::QTA_CONFIG_DIGEST"

    # The project's file list is rebuilt on every run; the solution (and its synthesis
    # results) only when synthesis runs again.
    cd $build_dir
    open_project -reset hls_prj
    set_top $::QTA_TOP
    add_files -cflags $cflags $kernel_src
    add_files $kernel_hdr
    add_files $blocks_hdr
    add_files -tb -cflags $cflags $tb_src
    if {"csynth" in $steps} {
        open_solution -reset -flow_target vivado $solution
    } else {
        open_solution -flow_target vivado $solution
    }
    set_part $::QTA_PART
    create_clock -period $::QTA_CLOCK_PERIOD_NS -name default
    # Every m_axi port is one beat (ap_uint<QTA_AXI_DATA_WIDTH>) wide; offsets are beat-aligned.
    config_interface -m_axi_alignment_byte_size [expr {$::QTA_AXI_DATA_WIDTH / 8}]

    if {"csim" in $steps} {
        csim_design
    }
    set syn_reports [file join $sol_dir syn report]
    if {"csynth" in $steps} {
        csynth_design
        qta_copy_reports $syn_reports $report_dir \
            [list csynth.rpt csynth.xml ${::QTA_TOP}_csynth.rpt]
    } elseif {("cosim" in $steps || "export" in $steps)
              && ![file exists [file join $syn_reports csynth.xml]]} {
        error "solution $sol_dir has no synthesis results: add the csynth step"
    }
    if {"csynth" in $steps || "export" in $steps} {
        qta_csynth_gate $syn_reports [file join $build_dir qta_config.h]
    }
    if {"cosim" in $steps} {
        cosim_design -rtl verilog
        qta_copy_reports [file join $sol_dir sim report] $report_dir \
            [list ${::QTA_TOP}_cosim.rpt]
    }
    if {"export" in $steps} {
        lassign [split $::QTA_VLNV :] vendor library ipname version
        export_design -format ip_catalog -rtl verilog \
            -vendor $vendor -library $library -ipname $ipname -version $version \
            -display_name "lora-qta INT8 GEMM ($board)" \
            -description "lora-qta INT8 LoRA-training GEMM for $board, config $::QTA_CONFIG_DIGEST"
        # export_design leaves the unpacked IP in <solution>/impl/ip; that folder is the
        # IP repository the Vivado flow adds.
        set exported [file join $sol_dir impl ip]
        set component [file join $exported component.xml]
        if {![file exists $component]} {
            error "export_design wrote no $component"
        }
        set vlnv [qta_component_vlnv $component]
        if {$vlnv ne $::QTA_VLNV} {
            error "exported IP is $vlnv, expected $::QTA_VLNV"
        }
        set ip_dir [file join $build_dir ip]
        file delete -force $ip_dir
        file copy $exported $ip_dir
        puts "INFO: \[qta\] exported $vlnv to $ip_dir"
    }
    close_project
}

if {[catch {qta_hls_main {*}[qta_hls_args]} message]} {
    puts stderr "ERROR: \[qta\] $message"
    exit 1
}
exit 0
