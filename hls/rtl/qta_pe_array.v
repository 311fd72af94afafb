// The PE array of the lora-qta kernel (design contract v2, section 1), in Verilog-2005.
//
// R x C PEs, PE(i, j): INT8 x INT8 -> 16-bit product, INT32 accumulate / partial sum.
// Operands move only between neighbouring PEs. At every potential sub-array boundary
// (every MIN_SUB columns for the A flow, every MIN_SUB rows for the B flow and the
// partial-sum flow) a 2:1 select takes either the neighbour's value (boundary inactive)
// or the boundary's own edge input (active: a sub-array starts here). The selects are
// driven by col_act / row_act, which the controller decodes once per step from the
// partition exponent s. Nothing in here indexes anything by a run-time value.
//
// Per PE (i, j), with a_in / b_in the values entering it this cycle:
//   a_r <= a_in                        A moves right one PE per cycle (both dataflows)
//   b_r <= b_in  when b_shift          B moves down (OS: every cycle; WS: the load phase)
//   prod = a_in * (OS ? b_in : b_r)    WS multiplies by the weight held in b_r
//   sum  = (OS ? (acc_clear ? 0 : acc_r) : psum_in) + prod
//   acc_r <= sum                       OS accumulator / WS registered partial sum
//   out_r <= acc_capture ? sum : out_r of the PE above   OS output register, drained down
// psum_in is 0 at the top row of a sub-array and acc_r of the PE above otherwise.
//
// Output taps (t, j), t = 0 .. R/MIN_SUB-1, sit below row (t+1)*MIN_SUB-1 and are valid
// when that row is the bottom row of a sub-array and
//   OS: a drain cycle (tap = out_r of that row: the value of local row SR-1-d at drain d);
//   WS: a finished sum leaves the column this cycle (tap = sum of that row, before its
//       register: output (m, c0 + lj) at stream cycle m + SR - 1 + j).
// The drain chain (out_r) has no select at sub-array boundaries: a value crossing into the
// next sub-array would need SR more cycles to reach a tap, and a drain lasts SR cycles, so
// no tap can ever show it (the contract needs selects for the A, B and partial-sum flows only).
//
// Packed ports (OPW = operand bits, ACCW = accumulator bits, NBC = C/MIN_SUB, NBR = R/MIN_SUB):
//   a_edge[(i*NBC + b)*OPW +: OPW]   A edge of (row i, column boundary b): input of PE(i, b*MIN_SUB)
//   b_edge[(t*C + j)*OPW +: OPW]     B edge of (row boundary t, column j): input of PE(t*MIN_SUB, j)
//   tap_data[(t*C + j)*ACCW +: ACCW], tap_valid[t*C + j]
// Edge values of inactive boundaries are ignored.
`default_nettype none

module qta_pe_array #(
    parameter integer R       = 4,
    parameter integer C       = 4,
    parameter integer MIN_SUB = 4,
    parameter integer OPW     = 8,
    parameter integer ACCW    = 32
) (
    input  wire                               clk,
    input  wire                               pipe_clr,    // clear the A/B operand registers (step start)
    input  wire                               os_mode,     // 1 output-stationary, 0 weight-stationary
    input  wire [R/MIN_SUB-1:0]               row_act,     // row boundary t starts a sub-array (bit 0 unused: always)
    input  wire [C/MIN_SUB-1:0]               col_act,     // column boundary b starts a sub-array (bit 0 unused)
    input  wire                               b_shift,
    input  wire                               acc_clear,
    input  wire                               acc_capture,
    input  wire                               drain,       // OS: taps carry the output registers this cycle
    input  wire                               ws_valid0,   // WS: column 0 delivers a finished sum this cycle
    input  wire [R*(C/MIN_SUB)*OPW-1:0]       a_edge,
    input  wire [(R/MIN_SUB)*C*OPW-1:0]       b_edge,
    output wire [(R/MIN_SUB)*C*ACCW-1:0]      tap_data,
    output wire [(R/MIN_SUB)*C-1:0]           tap_valid
);
    localparam integer NBC = C / MIN_SUB;
    localparam integer NBR = R / MIN_SUB;

    // Registered state of every PE, flattened: PE(i, j) at index i*C + j (the last column's
    // A, the bottom row's B / accumulator and the non-tap rows' sums have no reader).
    /* verilator lint_off UNUSEDSIGNAL */
    wire [R*C*OPW-1:0]  a_q;
    wire [R*C*OPW-1:0]  b_q;
    wire [R*C*ACCW-1:0] acc_q;
    wire [R*C*ACCW-1:0] out_q;
    wire [R*C*ACCW-1:0] sum_w;
    /* verilator lint_on UNUSEDSIGNAL */

    // WS tap valid: the finished sum of row m leaves column j one cycle after column j-1.
    reg  [C-2:0] wsv;
    wire [C-1:0] ws_valid;
    assign ws_valid = {wsv, ws_valid0};
    always @(posedge clk) wsv <= ws_valid[C-2:0];

    genvar i, j, t;
    generate
        for (i = 0; i < R; i = i + 1) begin : row
            for (j = 0; j < C; j = j + 1) begin : col
                localparam integer P = i * C + j;
                wire signed [OPW-1:0]  a_in;
                wire signed [OPW-1:0]  b_in;
                wire signed [ACCW-1:0] psum_in;
                reg  signed [OPW-1:0]  a_r;
                reg  signed [OPW-1:0]  b_r;
                reg  signed [ACCW-1:0] acc_r;
                reg  signed [ACCW-1:0] out_r;

                // A flow: edge at column 0, a 2:1 select at every MIN_SUB-th column, else the left neighbour.
                if (j == 0) begin : a_first
                    assign a_in = a_edge[(i * NBC) * OPW +: OPW];
                end else if (j % MIN_SUB == 0) begin : a_bnd
                    assign a_in = col_act[j / MIN_SUB] ? a_edge[(i * NBC + j / MIN_SUB) * OPW +: OPW]
                                                       : a_q[(P - 1) * OPW +: OPW];
                end else begin : a_nbr
                    assign a_in = a_q[(P - 1) * OPW +: OPW];
                end

                // B flow and partial sums: edge / zero at row 0, a 2:1 select every MIN_SUB-th row.
                if (i == 0) begin : b_first
                    assign b_in    = b_edge[j * OPW +: OPW];
                    assign psum_in = {ACCW{1'b0}};
                end else if (i % MIN_SUB == 0) begin : b_bnd
                    assign b_in    = row_act[i / MIN_SUB] ? b_edge[((i / MIN_SUB) * C + j) * OPW +: OPW]
                                                          : b_q[(P - C) * OPW +: OPW];
                    assign psum_in = row_act[i / MIN_SUB] ? {ACCW{1'b0}} : acc_q[(P - C) * ACCW +: ACCW];
                end else begin : b_nbr
                    assign b_in    = b_q[(P - C) * OPW +: OPW];
                    assign psum_in = acc_q[(P - C) * ACCW +: ACCW];
                end

                wire signed [OPW-1:0]    b_mul  = os_mode ? b_in : b_r;
                wire signed [2*OPW-1:0]  prod   = a_in * b_mul;
                wire signed [ACCW-1:0]   addend = os_mode ? (acc_clear ? {ACCW{1'b0}} : acc_r) : psum_in;
                wire signed [ACCW-1:0]   sum    = addend + {{(ACCW - 2 * OPW){prod[2*OPW-1]}}, prod};
                wire signed [ACCW-1:0]   out_above;
                if (i == 0) begin : o_first
                    assign out_above = {ACCW{1'b0}};
                end else begin : o_nbr
                    assign out_above = out_q[(P - C) * ACCW +: ACCW];
                end

                always @(posedge clk) begin
                    if (pipe_clr) begin
                        a_r <= {OPW{1'b0}};
                        b_r <= {OPW{1'b0}};
                    end else begin
                        a_r <= a_in;
                        if (b_shift) b_r <= b_in;
                    end
                    acc_r <= sum;
                    out_r <= acc_capture ? sum : out_above;
                end

                assign a_q[P * OPW +: OPW]    = a_r;
                assign b_q[P * OPW +: OPW]    = b_r;
                assign acc_q[P * ACCW +: ACCW] = acc_r;
                assign out_q[P * ACCW +: ACCW] = out_r;
                assign sum_w[P * ACCW +: ACCW] = sum;
            end
        end

        // Taps below rows (t+1)*MIN_SUB-1; active where that row ends a sub-array.
        for (t = 0; t < NBR; t = t + 1) begin : tap
            localparam integer BR = (t + 1) * MIN_SUB - 1;
            wire bottom;
            if (t == NBR - 1) begin : last
                assign bottom = 1'b1;
            end else begin : inner
                assign bottom = row_act[t + 1];
            end
            for (j = 0; j < C; j = j + 1) begin : col
                assign tap_data[(t * C + j) * ACCW +: ACCW] =
                    os_mode ? out_q[(BR * C + j) * ACCW +: ACCW] : sum_w[(BR * C + j) * ACCW +: ACCW];
                assign tap_valid[t * C + j] = bottom & (os_mode ? drain : ws_valid[j]);
            end
        end
    endgenerate
endmodule

`default_nettype wire
