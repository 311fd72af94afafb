"""Accuracy of the INT8 LoRA layer where one absmax scale per slice is not enough (issue 9).

Item 2: the weight-gradient GEMMs dB = G^T.H and dA = dH^T.X sum over tokens. With per-token
gradient magnitudes lognormal (sigma 2), one per-channel scale over all tokens gave 3.6% / 8.2% /
14.5% relative error at 256 / 4,096 / 16,384 tokens; the bound is 3% at 16,384.
Item 3: 4 of 320 input channels 30x larger raised the LoRA output error from 1.4% to 4.2%.

Errors are relative Frobenius errors against float64, seeded, on the emulated accelerator.
"""

import torch
from peft import inject_adapter_in_model

from lora_qta.lora.gemms import LORA_GEMMS
from lora_qta.lora.layer import QtaRuntime, accelerated_lora_config, attach_runtime
from lora_qta.runtime.accelerator import Accelerator

D, R = 320, 4
DB, DA = LORA_GEMMS[3], LORA_GEMMS[4]


class One(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(D, D)

    def forward(self, x):
        return self.to_q(x)


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def layer_errors(tokens, seed, outliers=0, sigma=2.0, **runtime_options):
    """(Y, dA, dB) errors of one accelerated LoRA linear (320 -> 320, rank 4, scaling 1) on
    ``tokens`` tokens; the upstream gradient has lognormal(0, sigma) per-token magnitudes."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = inject_adapter_in_model(accelerated_lora_config(r=R, lora_alpha=R, init_lora_weights="gaussian",
                                                            target_modules=["to_q"]), One())
    layer = model.to_q
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        b.copy_(torch.randn(D, R, generator=g) * 0.1)
    x = torch.randn(tokens, D, generator=g)
    if outliers:
        x[:, torch.randperm(D, generator=g)[:outliers]] *= 30
    grad = torch.randn(tokens, D, generator=g) * torch.exp(sigma * torch.randn(tokens, 1, generator=g))
    rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=seed, **runtime_options)
    attach_runtime(model, rt)
    y = model(x) - layer.base_layer(x)  # the LoRA branch
    y.backward(grad)
    xd, ad, bd, gd = x.double(), a.detach().double(), b.detach().double(), grad.double()
    h = xd @ ad.T
    return rel(y.detach(), h @ bd.T), rel(a.grad, (gd @ bd).T @ xd), rel(b.grad, gd.T @ h), rt


def test_weight_gradients_stay_within_3_percent_at_stable_diffusion_token_counts():
    """Item 2 at the layer: dA and dB within 3% at 256, 4,096 and 16,384 tokens (SD 1.5 at 512 px
    has 4,096 tokens per image at its first level); one per-channel scale gave ~12% at 16,384."""
    for tokens in (256, 4096, 16384):
        _, e_da, e_db, rt = layer_errors(tokens, seed=1)
        assert e_da <= 0.03 and e_db <= 0.03, (tokens, e_da, e_db)
        rep = rt.report()  # the cost: at most two calls (magnitude groups) per weight-gradient GEMM
        assert rep[DB.key]["gemms"] == rep[DA.key]["gemms"] == 1
        assert rep[DB.key]["calls"] <= 2 and rep[DA.key]["calls"] <= 2
    _, e_da, e_db, _ = layer_errors(16384, seed=1, wgrad_groups=False)
    assert e_da > 0.08 and e_db > 0.08, (e_da, e_db)  # the issue, reproduced


def test_token_sums_by_tokens_against_the_issue_figures():
    """The weight-gradient GEMM alone, as in the issue: P (tokens x 320 or x 4) with lognormal
    per-token magnitudes, Q gaussian; mean over three seeds."""
    for tokens, old_at_least in ((256, 0.02), (4096, 0.06), (16384, 0.10)):
        new, old = [], []
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            for width_p, width_q, kind in ((D, R, DB), (R, D, DA)):
                p = torch.randn(tokens, width_p, generator=g) * torch.exp(2 * torch.randn(tokens, 1, generator=g))
                q = torch.randn(tokens, width_q, generator=g)
                ref = p.double().T @ q.double()
                for groups, errs in ((True, new), (False, old)):
                    rt = QtaRuntime(Accelerator("zcu104", "fast"), wgrad_groups=groups)
                    errs.append(rel(rt.token_sum(kind, p, q, torch.Generator().manual_seed(seed)), ref))
        assert sum(new) / len(new) <= 0.03 and max(new) <= 0.03, (tokens, new)
        assert sum(old) / len(old) >= old_at_least, (tokens, old)


def test_outlier_channels_are_smoothed_into_lora_a():
    """Item 3: 4 of 320 channels 30x larger; the LoRA output error returns to the no-outlier level
    (means over four seeds; measured: 1.4-1.5% without outliers, 1.3-1.5% with them after
    smoothing, 2.7-3.3% with them before)."""
    for tokens in (256, 4096):
        plain, smoothed, before = [], [], []
        for seed in range(4):
            plain.append(layer_errors(tokens, seed=seed)[0])
            smoothed.append(layer_errors(tokens, seed=seed, outliers=4)[0])
            before.append(layer_errors(tokens, seed=seed, outliers=4, smooth_alpha=None)[0])
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        assert mean(plain) <= 0.016 and mean(smoothed) <= 0.016 and max(smoothed) <= 0.018, (plain, smoothed)
        assert mean(before) >= 0.025, (tokens, before)  # the issue, reproduced


def test_the_rescalings_are_exact_identities():
    """Powers of two: (X / s).(A * s)^T and the balanced token sum equal the plain products bit for bit."""
    from lora_qta.lora.quant import balance_tokens, smoothing_factors

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, D, generator=g, dtype=torch.float64)
    x[:, :4] *= 30
    a = torch.randn(R, D, generator=g, dtype=torch.float64)
    s = smoothing_factors(x.abs().amax(0), a.abs().amax(0)).double()
    assert torch.equal(torch.log2(s), torch.round(torch.log2(s))) and not torch.equal(s, torch.ones_like(s))
    assert torch.equal((x / s) * (a * s)[0], x * a[0])
    p = torch.randn(300, R, generator=g, dtype=torch.float64) * torch.exp(2 * torch.randn(300, 1, generator=g,
                                                                                         dtype=torch.float64))
    p[5] = 0  # a token without gradient keeps its factor 1
    p2, q2, key = balance_tokens(p, x)
    assert torch.equal(p2[:, :, None] * q2[:, None, :], p[:, :, None] * x[:, None, :])
    assert key[5] == 0 and torch.equal(q2[5], x[5])
