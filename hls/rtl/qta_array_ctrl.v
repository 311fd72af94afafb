// Fold sequencer of the lora-qta PE array (design contract v2, sections 1.1-1.4).
//
// One `start` runs one step on the array: the step's folds back to back, in the contract's
// order, then (OS only) the drain phase of SR cycles. The step descriptor (dataflow, s,
// mt, nt, kt) is latched on the start cycle, which also decodes the boundary selects
// (row_act, col_act) and clears the operand registers; the step's first fold cycle is the
// next cycle. mt, nt, kt must be >= 1 (the loader never issues an empty step).
//
//   OS: for r0 = 0, LR, .. < mt: for c0 = 0, LC, .. < nt: fold of kt + SR + SC - 2 cycles
//       (tau = 0 .. kt+SR+SC-3); drain of the previous fold in its first SR cycles;
//       then the drain phase, SR cycles.
//   WS: for k0 = 0, SR, .. < kt: for c0 = 0, LC, .. < nt: load phase of SR cycles
//       (tau = 0 .. SR-1), stream phase of mt + SR + SC - 2 cycles (tau = 0 .. mt+SR+SC-3).
//
// Status for the edge feeders: phase (0 idle, 1 OS fold / WS stream, 2 WS load, 3 OS drain),
// tau (cycle within the phase), f_row (OS: r0, WS: k0), f_col (c0). Every output is a register
// (a Moore machine), so feeders can compute this cycle's edge values from it.
`default_nettype none

module qta_array_ctrl #(
    parameter integer R       = 4,
    parameter integer C       = 4,
    parameter integer MIN_SUB = 4,
    parameter integer DW      = 16,  // bits of mt, nt, kt and of the fold offsets
    parameter integer FOLD_TRIM = 0  // test only: folds this many cycles shorter than the contract
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,
    input  wire                 os_in,        // 1 output-stationary, 0 weight-stationary
    input  wire signed [3:0]    split_in,     // partition exponent s (WS: s <= 0)
    input  wire [DW-1:0]        mt_in,
    input  wire [DW-1:0]        nt_in,
    input  wire [DW-1:0]        kt_in,
    output reg                  busy,
    output reg                  done,         // one cycle, the cycle after the step's last cycle
    output reg  [1:0]           phase,
    output reg  [DW:0]          tau,
    output reg  [DW-1:0]        f_row,
    output reg  [DW-1:0]        f_col,
    // to the PE array
    output reg                  os_mode,
    output reg  [R/MIN_SUB-1:0] row_act,
    output reg  [C/MIN_SUB-1:0] col_act,
    output wire                 pipe_clr,
    output wire                 b_shift,
    output wire                 acc_clear,
    output wire                 acc_capture,
    output wire                 drain,
    output wire                 ws_valid0
);
    localparam integer NBC = C / MIN_SUB;
    localparam integer NBR = R / MIN_SUB;
    localparam integer LGR = $clog2(R);
    localparam integer LGC = $clog2(C);
    localparam integer LGM = $clog2(MIN_SUB);
    localparam [1:0] IDLE = 2'd0, FOLD = 2'd1, LOAD = 2'd2, DRAIN = 2'd3;

    // Geometry of the latched step (sections 1.1: SR x SC sub-arrays, LR x LC logical array).
    reg  [DW:0]   sr, lr, lc;         // sides (SC only enters fold_end)
    reg  [DW:0]   fold_end;           // last tau of an OS fold / WS stream phase
    reg  [DW-1:0] mt, nt, kt;
    reg           has_prev;           // OS: a previous fold of this step is draining

    // Decode of s (combinational, used on the start cycle only).
    wire signed [4:0] s5     = {split_in[3], split_in};
    wire        [4:0] neg_s  = -s5;
    wire        [4:0] lg_sr  = split_in[3] ? (LGR[4:0] - neg_s) : LGR[4:0];
    wire        [4:0] lg_sc  = (!split_in[3] && split_in != 0) ? (LGC[4:0] - s5[4:0]) : LGC[4:0];
    wire        [4:0] lg_lr  = (!split_in[3]) ? (LGR[4:0] + s5[4:0]) : lg_sr;
    wire        [4:0] lg_lc  = split_in[3] ? (LGC[4:0] + neg_s) : lg_sc;
    wire       [DW:0] sr_n   = {{DW{1'b0}}, 1'b1} << lg_sr;
    wire       [DW:0] sc_n   = {{DW{1'b0}}, 1'b1} << lg_sc;
    localparam integer LAST_I = 3 + FOLD_TRIM;
    localparam [DW:0]  LAST   = LAST_I[DW:0];  // last tau = length - 1 = kt (mt) + SR + SC - 3
    wire       [DW:0] end_os = {1'b0, kt_in} + sr_n + sc_n - LAST;
    wire       [DW:0] end_ws = {1'b0, mt_in} + sr_n + sc_n - LAST;

    // Boundary selects: column boundary b active iff b*MIN_SUB is a multiple of SC,
    // row boundary t active iff t*MIN_SUB is a multiple of SR.
    reg [NBC-1:0] col_act_n;
    reg [NBR-1:0] row_act_n;
    integer b;
    always @(*) begin
        for (b = 0; b < NBC; b = b + 1)
            col_act_n[b] = ((b << LGM) & ((1 << lg_sc) - 1)) == 0;
        for (b = 0; b < NBR; b = b + 1)
            row_act_n[b] = ((b << LGM) & ((1 << lg_sr) - 1)) == 0;
    end

    wire at_end      = (tau == fold_end);
    wire last_col    = ({1'b0, f_col} + lc) >= {1'b0, nt};
    wire last_row    = os_mode ? (({1'b0, f_row} + lr) >= {1'b0, mt})
                               : (({1'b0, f_row} + sr) >= {1'b0, kt});

    assign pipe_clr    = start && !busy;
    assign b_shift     = os_mode || (phase == LOAD);
    assign acc_clear   = (phase == FOLD) && (tau == 0);
    assign acc_capture = os_mode && (phase == FOLD) && at_end;
    assign drain       = os_mode && (((phase == FOLD) && has_prev && (tau < sr)) || (phase == DRAIN));
    assign ws_valid0   = !os_mode && (phase == FOLD) && (tau + 1 >= sr) && (tau + 1 < sr + {1'b0, mt});

    always @(posedge clk) begin
        done <= 1'b0;
        if (rst) begin
            busy  <= 1'b0;
            phase <= IDLE;
            tau   <= 0;
            f_row <= 0;
            f_col <= 0;
            has_prev <= 1'b0;
            os_mode  <= 1'b1;
            row_act  <= {NBR{1'b1}};
            col_act  <= {NBC{1'b1}};
        end else if (!busy) begin
            if (start) begin
                busy     <= 1'b1;
                os_mode  <= os_in;
                row_act  <= row_act_n;
                col_act  <= col_act_n;
                sr       <= sr_n;
                lr       <= {{DW{1'b0}}, 1'b1} << lg_lr;
                lc       <= {{DW{1'b0}}, 1'b1} << lg_lc;
                fold_end <= os_in ? end_os : end_ws;
                mt       <= mt_in;
                nt       <= nt_in;
                kt       <= kt_in;
                phase    <= os_in ? FOLD : LOAD;
                tau      <= 0;
                f_row    <= 0;
                f_col    <= 0;
                has_prev <= 1'b0;
            end
        end else begin
            case (phase)
                LOAD: begin
                    tau <= tau + 1;
                    if (tau == sr - 1) begin
                        phase <= FOLD;
                        tau   <= 0;
                    end
                end
                FOLD: begin
                    tau <= tau + 1;
                    if (at_end) begin
                        tau <= 0;
                        has_prev <= 1'b1;
                        if (!last_col) begin
                            f_col <= f_col + lc[DW-1:0];
                            phase <= os_mode ? FOLD : LOAD;
                        end else if (!last_row) begin
                            f_col <= 0;
                            f_row <= f_row + (os_mode ? lr[DW-1:0] : sr[DW-1:0]);
                            phase <= os_mode ? FOLD : LOAD;
                        end else if (os_mode) begin
                            phase <= DRAIN;
                        end else begin
                            phase <= IDLE;
                            busy  <= 1'b0;
                            done  <= 1'b1;
                        end
                    end
                end
                DRAIN: begin
                    tau <= tau + 1;
                    if (tau == sr - 1) begin
                        phase <= IDLE;
                        busy  <= 1'b0;
                        done  <= 1'b1;
                    end
                end
                default: begin
                    phase <= IDLE;
                    busy  <= 1'b0;
                end
            endcase
        end
    end
endmodule

`default_nettype wire
