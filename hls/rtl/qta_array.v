// Top of the RTL PE array: the fold sequencer (qta_array_ctrl) and the PEs (qta_pe_array).
//
// Parameter defaults come from qta_config.vh, generated from host/lora_qta/hw/hardware.toml
// (`lora-qta config vh --board B`); tests and synthesis runs override R, C
// (and MIN_SUB) for small arrays. The edge feeders (the kernel's loader) sit outside:
// each cycle they read the registered status (phase, tau, f_row, f_col) and drive the
// edge inputs for that cycle; see hls/rtl/README.md for the edge timing.
`default_nettype none
`include "qta_config.vh"

module qta_array #(
    parameter integer R       = `QTA_ROWS,
    parameter integer C       = `QTA_COLS,
    parameter integer MIN_SUB = `QTA_MIN_SUB,
    parameter integer OPW     = `QTA_OPERAND_BITS,
    parameter integer ACCW    = `QTA_ACC_BITS,
    parameter integer DW      = `QTA_DIM_BITS,
    parameter integer FOLD_TRIM = 0     // test only (see qta_array_ctrl.v); 0 in every build
) (
    input  wire                          clk,
    input  wire                          rst,
    // step descriptor, taken when start is high and the array is idle
    input  wire                          start,
    input  wire                          os_in,
    input  wire signed [3:0]             split_in,
    input  wire [DW-1:0]                 mt_in,
    input  wire [DW-1:0]                 nt_in,
    input  wire [DW-1:0]                 kt_in,
    // status for the feeders
    output wire                          busy,
    output wire                          done,
    output wire [1:0]                    phase,
    output wire [DW:0]                   tau,
    output wire [DW-1:0]                 f_row,
    output wire [DW-1:0]                 f_col,
    // edges and taps (packing: see qta_pe_array.v)
    input  wire [R*(C/MIN_SUB)*OPW-1:0]  a_edge,
    input  wire [(R/MIN_SUB)*C*OPW-1:0]  b_edge,
    output wire [(R/MIN_SUB)*C*ACCW-1:0] tap_data,
    output wire [(R/MIN_SUB)*C-1:0]      tap_valid
);
    wire                 os_mode, pipe_clr, b_shift, acc_clear, acc_capture, drain, ws_valid0;
    wire [R/MIN_SUB-1:0] row_act;
    wire [C/MIN_SUB-1:0] col_act;

    qta_array_ctrl #(.R(R), .C(C), .MIN_SUB(MIN_SUB), .DW(DW), .FOLD_TRIM(FOLD_TRIM)) ctrl (
        .clk(clk), .rst(rst), .start(start), .os_in(os_in), .split_in(split_in),
        .mt_in(mt_in), .nt_in(nt_in), .kt_in(kt_in),
        .busy(busy), .done(done), .phase(phase), .tau(tau), .f_row(f_row), .f_col(f_col),
        .os_mode(os_mode), .row_act(row_act), .col_act(col_act), .pipe_clr(pipe_clr),
        .b_shift(b_shift), .acc_clear(acc_clear), .acc_capture(acc_capture), .drain(drain),
        .ws_valid0(ws_valid0)
    );

    qta_pe_array #(.R(R), .C(C), .MIN_SUB(MIN_SUB), .OPW(OPW), .ACCW(ACCW)) pes (
        .clk(clk), .pipe_clr(pipe_clr), .os_mode(os_mode), .row_act(row_act), .col_act(col_act),
        .b_shift(b_shift), .acc_clear(acc_clear), .acc_capture(acc_capture), .drain(drain),
        .ws_valid0(ws_valid0), .a_edge(a_edge), .b_edge(b_edge),
        .tap_data(tap_data), .tap_valid(tap_valid)
    );
endmodule

`default_nettype wire
