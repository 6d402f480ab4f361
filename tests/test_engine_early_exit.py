"""Conditional early exit: the conditional rows stop after the last recorded layer, maps unchanged.

With guidance 0 the conditional rows' prediction is never used, so the engine runs them apart from
the unconditional rows and only as far as the last recorded cross-attention layer (execution
order). These tests compare the engine with and without the early exit on the float64 tiny models,
bit for bit (the float32 heatmaps and raw maps; the float64 internals differ only in the last bits,
because CPU kernels sum in an order that depends on the batch size), for layer sets whose last layer is in the down
blocks, the middle block, the first or the last up block with cross-attention (the UNet's last
cross-attention layer), for K phrases and batches of images; and they check, with forward hooks,
that the skipped blocks really do not run for the conditional rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import groundiff_core as gd
from groundiff_core.models.architectures import tiny_ldm
from groundiff_core.engine.layers import cross_attention_layers
from groundiff_core.engine.recording import AttentionRecorder

from groundiff_core.testing.naive import naive_ground

SHORT = gd.GroundingConfig.paper().with_steps(30)  # 31 trailing steps, window [12, 18)
from _testdata import PHRASES  # noqa: E402


def _both(model, cfg, images, phrases):
    """(early exit, no early exit) results of ``ground_batch`` and the early-exit grounder."""
    fast = gd.Grounder(model, cfg, batch_size=len(images))
    full = gd.Grounder(model, cfg, batch_size=len(images), early_exit=False)
    return (fast.ground_batch(images, phrases, return_raw=True),
            full.ground_batch(images, phrases, return_raw=True), fast)


# last recorded layer: 3 (down block 2), 4 (middle), 7 (first up block: the paper's), 10 (the UNet's
# last cross-attention layer), 0 (the first layer: almost everything is skipped)
@pytest.mark.parametrize("layers,k", [
    ((3, 4, 6, 7), 1), ((3, 4, 6, 7), 4), ((2, 3), 2), ((4,), 3), ((0, 5, 10), 2), ((0,), 1),
])
def test_early_exit_is_bit_exact(tiny64_v, textured_image, layers, k):
    cfg = SHORT.with_layers(layers)
    fast, full, g = _both(tiny64_v, cfg, [textured_image], [PHRASES[:k]])
    np.testing.assert_array_equal(fast[0].heatmaps, full[0].heatmaps)
    np.testing.assert_array_equal(fast[0].raw, full[0].raw)
    assert np.nanmax(fast[0].heatmaps) == 1.0
    assert g.stats["unet_samples_truncated"] == 6 * k  # every window step's conditional rows


def test_early_exit_matches_the_naive_reference(tiny64_v, textured_image):
    """The exit after the UNet's last cross-attention layer, against Algorithm 1 done the slow way."""
    cfg = SHORT.with_layers((6, 10)).with_window(5, 20)
    got = gd.Grounder(tiny64_v, cfg).ground(textured_image, PHRASES[:2], return_raw=True)
    for k, phrase in enumerate(PHRASES[:2]):
        heat, raw = naive_ground(tiny64_v, textured_image, phrase, num_inference_steps=30, window=(5, 20), layers=(6, 10))
        assert np.nanmax(np.abs(heat - got.heatmaps[k])) <= 1e-5
        assert np.abs(raw - got.raw[k]).max() <= 1e-5


def test_early_exit_with_a_batch_of_images(tiny64_v, textured_image):
    other = np.random.default_rng(1).random((30, 36)).astype(np.float32)
    fast, full, g = _both(tiny64_v, SHORT, [textured_image, other, textured_image], [PHRASES[:2], PHRASES[2:3], PHRASES[1:4]])
    for a, b in zip(fast, full):
        np.testing.assert_array_equal(a.heatmaps, b.heatmaps)
        np.testing.assert_array_equal(a.raw, b.raw)
    assert g.stats["unet_samples_truncated"] == 6 * 6


def test_record_mode_with_early_exit(tiny64_v, textured_image):
    """Record mode reads every layer: the exit is after the UNet's last cross-attention layer."""
    a = gd.Grounder(tiny64_v, SHORT).record(textured_image, PHRASES[:2], window=(10, 20))
    b = gd.Grounder(tiny64_v, SHORT, early_exit=False).record(textured_image, PHRASES[:2], window=(10, 20))
    assert sorted(a.maps) == list(range(11))
    for layer in a.maps:  # float64 maps: equal up to the summation order of batch-size-dependent kernels
        torch.testing.assert_close(a.maps[layer], b.maps[layer], rtol=0, atol=1e-12)
    for cfg in (SHORT, SHORT.with_layers((0, 10)).with_window(10, 20)):
        x, y = a.aggregate(config=cfg, return_raw=True), b.aggregate(config=cfg, return_raw=True)
        np.testing.assert_array_equal(x.heatmaps, y.heatmaps)
        np.testing.assert_array_equal(x.raw, y.raw)


def _blocks_run(model, cfg, early_exit):
    """Per UNet call: (batch size, which of up_blocks.1, up_blocks.2, conv_out ran)."""
    unet = model.unet
    cross_attention_layers(unet)  # the cached dry pass is not part of the grounding
    calls: list[list] = []
    watched = {"up1": unet.up_blocks[1], "up2": unet.up_blocks[2], "conv_out": unet.conv_out}
    # every pass, whole or truncated, starts with conv_in (a hook on the UNet itself would make the
    # engine run whole passes: its truncated walk never calls unet.forward)
    hooks = [unet.conv_in.register_forward_pre_hook(lambda m, a: calls.append([a[0].shape[0], set()]))]
    for name, module in watched.items():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: calls[-1][1].add(name)))
    try:
        gd.Grounder(model, cfg, early_exit=early_exit).ground(np.full((32, 32), 0.5, np.float32), PHRASES[:3])
    finally:
        for h in hooks:
            h.remove()
    return calls


def test_conditional_rows_skip_the_rest_of_the_unet():
    model = tiny_ldm(prediction_type="v_prediction")
    cfg = SHORT.with_window(12, 14)
    # paper layers: the exit is in up block 0, so up blocks 1 and 2 and conv_out never run for them
    calls = _blocks_run(model, cfg, True)
    cond = [ran for n, ran in calls if n == 3]
    uncond = [ran for n, ran in calls if n == 1]
    assert len(cond) == 2 and all(ran == set() for ran in cond)
    assert len(uncond) == 13 and all(ran == {"up1", "up2", "conv_out"} for ran in uncond)
    # the UNet's last cross-attention layer (in up block 1): only up block 2 and conv_out are skipped
    calls = _blocks_run(model, cfg.with_layers((4, 10)), True)
    assert [ran for n, ran in calls if n == 3] == [{"up1"}, {"up1"}]
    # without the early exit: one call per step, conditional rows batched with the unconditional one
    calls = _blocks_run(model, cfg, False)
    assert [n for n, _ in calls] == [1] * 12 + [4, 3]
    assert all(ran == {"up1", "up2", "conv_out"} for _, ran in calls)


def test_a_hook_on_the_unet_makes_the_conditional_rows_run_whole(textured_image):
    """The walk never calls unet.forward; with a hook there (accelerate's, or any), it is not used."""
    model = tiny_ldm(prediction_type="v_prediction")
    cfg = SHORT.with_window(12, 14)
    plain = gd.Grounder(model, cfg).ground(textured_image, PHRASES[:2], return_raw=True)
    seen = []
    hook = model.unet.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        hooked = gd.Grounder(model, cfg).ground(textured_image, PHRASES[:2], return_raw=True)
    finally:
        hook.remove()
    assert seen.count(2) == 2  # both window steps' conditional rows went through unet.forward, whole
    np.testing.assert_array_equal(plain.raw, hooked.raw)


def test_guidance_runs_the_whole_unet_for_the_conditional_rows(textured_image):
    """With guidance != 0 the conditional prediction steers the trajectory: no early exit."""
    model = tiny_ldm(prediction_type="epsilon")
    from dataclasses import replace

    g = gd.Grounder(model, replace(SHORT, guidance_scale=1.5))
    g.ground(textured_image, PHRASES[:1])
    assert g.stats["unet_samples_truncated"] == 0


def test_read_leaves_the_model_as_it_was():
    """After a truncated pass the processors are the originals and a plain pass is unchanged."""
    model = tiny_ldm(prediction_type="v_prediction")
    unet = model.unet
    layers = cross_attention_layers(unet)
    x = torch.randn(2, 3, 16, 16)
    ctx = model.encode_text(["edema", "cardiomegaly"])
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(x, 99, encoder_hidden_states=ctx).sample
        got = []
        with AttentionRecorder([layers[i] for i in (3, 6)], lambda i, m: got.append((i, m.shape))) as rec:
            rec.read(unet, x, 99, ctx, torch.full((2, 77), 1 / 77))
            assert rec.target is None and rec.seen == {3, 6}
            again = unet(x, 99, encoder_hidden_states=ctx).sample
    assert got == [(3, (2, 4, 4)), (6, (2, 4, 4))]
    assert torch.equal(plain, again)
    assert dict(unet.attn_processors) == before
