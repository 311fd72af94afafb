# Stand-in for vitis_hls, vitis-run and vivado in test_build_flow.py (run by tclsh):
#   tclsh mock_tool.tcl <tool> <log file> <the tool's own arguments>
# runs the flow script given by -f, --tcl or -source with argv = the words after -tclargs.
# Commands tclsh does not know are tool commands: each is logged as one line (a Tcl list) and
# answered with a plausible value; those that write files in the real tools write placeholders.
lassign $argv mock_tool mock_log_path
set tool_args [lrange $argv 2 end]
set mock_script ""
set argv {}
for {set i 0} {$i < [llength $tool_args]} {incr i} {
    switch -- [lindex $tool_args $i] {
        -f - -source - --tcl { set mock_script [lindex $tool_args [incr i]] }
        -tclargs { set argv [lrange $tool_args [expr {$i + 1}] end]; break }
    }
}
set argc [llength $argv]
set mock_log [open $mock_log_path a]
set mock_offsets [dict create]
set mock_top ""

proc mock_record {args} { puts $::mock_log $args; flush $::mock_log }
proc mock_write {path} {
    file mkdir [file dirname $path]
    set fh [open $path w]; puts $fh "placeholder written by the stand-in $::mock_tool"; close $fh
}
proc mock_option {args name {default ""}} {
    set i [lsearch -exact $args $name]
    expr {$i < 0 ? $default : [lindex $args [expr {$i + 1}]]}
}
proc mock_env {name default} {
    expr {[info exists ::env($name)] ? $::env($name) : $default}
}

rename unknown mock_tcl_unknown
proc unknown {cmd args} {
    if {[auto_load $cmd]} { return [uplevel 1 [list $cmd {*}$args]] }
    mock_record $cmd {*}$args
    switch -- $cmd {
        get_bd_pins - get_bd_intf_pins - get_bd_addr_spaces - get_bd_cells - get_runs -
        get_files - create_bd_cell { return [lindex $args end] }
        current_project - current_fileset { return mock }
        get_ipdefs { return [string map {* 9.9} [lindex $args end]] }
        get_board_parts {
            return [expr {[mock_env MOCK_BOARD_FILES 0] ? [lindex $args end] : ""}]
        }
        get_bd_addr_segs {
            set space [mock_option $args -of_objects]
            if {"-addressables" in $args} {
                return [list "$space/seg/HPn_DDR_LOW" "$space/seg/HPn_QSPI"]
            }
            return [lindex $args end]
        }
        assign_bd_address {
            set seg SEG_[dict size $::mock_offsets]
            dict set ::mock_offsets $seg [mock_option $args -offset 0x0]
            return $seg
        }
        set_property {
            if {[lindex $args 0] eq "top"} { set ::mock_top [lindex $args 1] }
        }
        get_property {
            lassign $args prop obj
            switch -glob -- $prop {
                PROGRESS { return 100% }
                STATS.WNS { return [mock_env MOCK_WNS 0.125] }
                STATS.WHS { return 0.010 }
                DIRECTORY { return [file join $::mock_prj_dir vivado_prj.runs $obj] }
                NAME { return [file tail $obj] }
                OFFSET { return [dict get $::mock_offsets $obj] }
                CONFIG.*ACT* { return [expr {double($::QTA_CLOCK_MHZ)}] }
            }
        }
        generate_target {
            set bd [file rootname [file tail [lindex $args end]]]
            mock_write [file join $::mock_prj_dir vivado_prj.gen sources_1 bd $bd hw_handoff $bd.hwh]
        }
        make_wrapper { return [file join $::mock_prj_dir wrapper.v] }
        launch_runs {
            if {[lindex $args 0] eq "impl_1"} {
                mock_write [file join $::mock_prj_dir vivado_prj.runs impl_1 $::mock_top.bit]
            }
        }
        report_utilization - report_timing_summary { mock_write [mock_option $args -file] }
    }
    return ""
}

# Vitis HLS commands with outputs, and the two that the scripts look for.
proc open_project {args} { mock_record open_project {*}$args; set ::mock_project [lindex $args end] }
proc open_solution {args} { mock_record open_solution {*}$args; set ::mock_solution [lindex $args end] }
proc mock_solution_dir {} { file join [pwd] $::mock_project $::mock_solution }
proc csynth_design {args} {
    mock_record csynth_design {*}$args
    # the synthesis reports: the stand-ins of tests/data/csynth that $MOCK_CSYNTH names
    set report [file join [mock_solution_dir] syn report]
    mock_write [file join $report csynth.rpt]
    foreach f [glob -directory $::env(MOCK_CSYNTH) *.xml] {
        file copy -force $f [file join $report [file tail $f]]
    }
}
proc cosim_design {args} {
    mock_record cosim_design {*}$args
    mock_write [file join [mock_solution_dir] sim report ${::QTA_TOP}_cosim.rpt]
}
proc export_design {args} {
    mock_record export_design {*}$args
    set xml "<spirit:component>"
    foreach {tag opt} {vendor -vendor library -library name -ipname version -version} {
        append xml "<spirit:$tag>[mock_option $args $opt]</spirit:$tag>"
    }
    set ip [file join [mock_solution_dir] impl ip]
    file mkdir $ip
    set fh [open [file join $ip component.xml] w]
    puts $fh "$xml</spirit:component>"
    close $fh
}
proc create_project {args} {
    mock_record create_project {*}$args
    set ::mock_prj_dir [lindex [lsearch -all -inline -not -glob $args -*] 1]
}
proc create_bd_design {args} { mock_record create_bd_design {*}$args }

source $mock_script
