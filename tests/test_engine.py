"""The grounding engine: layer order, recording, cost, batching, record mode, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import groundiff_core as gd
from groundiff_core.engine import grounder as grounder_module
from groundiff_core.engine.aggregate import MapAccumulator
from groundiff_core.models.architectures import tiny_ldm
from groundiff_core.engine.layers import cross_attention_layers
from groundiff_core.engine.recording import AttentionRecorder, RecordingProcessor

SHORT = gd.GroundingConfig.paper().with_steps(30)  # 31 trailing steps, window [12, 18)
from _testdata import PHRASES  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_ldm(prediction_type="v_prediction")


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[0:36, 0:44]
    return (0.5 + 0.4 * np.sin(xx / 6.0) * np.cos(yy / 4.0)).astype(np.float32)


def _attn2(name: str) -> str:
    return f"{name}.transformer_blocks.0.attn2"


# ---------------------------------------------------------------------- layer order
def test_layers_are_numbered_in_execution_order(model):
    layers = cross_attention_layers(model.unet)
    expected = [_attn2(n) for n in (
        "down_blocks.1.attentions.0", "down_blocks.1.attentions.1",
        "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.0.attentions.2",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2")]
    assert [layer.name for layer in layers] == expected
    assert [layer.index for layer in layers] == list(range(11))
    # registration order (attn_processors) puts the up blocks before the middle block
    registered = [k.removesuffix(".processor") for k in model.unet.attn_processors if ".attn2." in k]
    assert sorted(registered) == sorted(expected) and registered != expected
    assert registered.index(_attn2("mid_block.attentions.0")) > registered.index(_attn2("up_blocks.1.attentions.2"))


def test_paper_layers_are_the_deepest_resolution_layers(model):
    """3 = second down layer of the deepest level, 4 = middle, 6 and 7 = second and third up layers
    of the deepest level; all at the smallest map size, checked on a real forward pass."""
    layers = cross_attention_layers(model.unet)
    seen = []
    hooks = [layer.module.register_forward_pre_hook(
        lambda m, args, kw, i=layer.index: seen.append((i, args[0].shape[1])), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            latent = model.latent_size
            model.unet(torch.zeros(1, 3, latent, latent), 10, encoder_hidden_states=model.encode_text([""]))
    finally:
        for h in hooks:
            h.remove()
    assert [i for i, _ in seen] == list(range(11))  # the trace's numbering is the execution order
    positions = dict(seen)
    smallest = min(positions.values())
    deepest = {i for i, n in positions.items() if n == smallest}
    assert deepest == {2, 3, 4, 5, 6, 7}
    assert {3, 4, 6, 7} <= deepest
    assert smallest == (latent // 4) ** 2 and positions[0] == (latent // 2) ** 2
    names = {layer.index: layer.name for layer in layers}
    assert names[3] == _attn2("down_blocks.2.attentions.1")
    assert names[4] == _attn2("mid_block.attentions.0")
    assert (names[6], names[7]) == (_attn2("up_blocks.0.attentions.1"), _attn2("up_blocks.0.attentions.2"))
    assert all(layers[i].side(latent) ** 2 == positions[i] for i in range(11))


# ---------------------------------------------------------------------- recording
def test_recorder_installs_only_on_read_layers_and_restores(model, image):
    unet = model.unet
    before = dict(unet.attn_processors)
    layers = cross_attention_layers(unet)
    during = {}

    def sink(layer, maps):
        during.update(unet.attn_processors)

    g = gd.Grounder(model, SHORT)
    g.ground(image, PHRASES[:1])
    assert {k: id(v) for k, v in unet.attn_processors.items()} == {k: id(v) for k, v in before.items()}
    with AttentionRecorder([layers[i] for i in (3, 4, 6, 7)], sink) as rec:
        with rec.capture(slice(0, 1), torch.full((1, 77), 1 / 77)):
            with torch.no_grad():
                unet(torch.zeros(1, 3, 16, 16), 5, encoder_hidden_states=model.encode_text(["edema"]))
    wrapped = {k for k, v in during.items() if isinstance(v, RecordingProcessor)}
    assert wrapped == {layers[i].name + ".processor" for i in (3, 4, 6, 7)}
    assert all(type(v).__name__ == "AttnProcessor2_0" for k, v in during.items() if k not in wrapped)
    assert {k: id(v) for k, v in unet.attn_processors.items()} == {k: id(v) for k, v in before.items()}


def test_recorder_restores_processors_on_error(model):
    unet = model.unet
    before = {k: id(v) for k, v in unet.attn_processors.items()}

    def failing_sink(layer, maps):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(cross_attention_layers(unet), failing_sink) as rec:
            with rec.capture(slice(0, 1), torch.full((1, 77), 1 / 77)), torch.no_grad():
                unet(torch.zeros(1, 3, 16, 16), 5, encoder_hidden_states=model.encode_text(["edema"]))
    assert {k: id(v) for k, v in unet.attn_processors.items()} == before


def test_recording_does_not_change_the_model_output(model):
    unet = model.unet
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = model.encode_text(["", "edema", "cardiomegaly"])
    got = []
    with torch.no_grad():
        plain = unet(x, 99, encoder_hidden_states=ctx).sample
        with AttentionRecorder(cross_attention_layers(unet), lambda i, m: got.append((i, m.shape))) as rec:
            with rec.capture(slice(1, 3), torch.full((2, 77), 1 / 77)):
                recorded = unet(x, 99, encoder_hidden_states=ctx).sample
    assert torch.equal(plain, recorded)
    assert [i for i, _ in got] == list(range(11))
    assert got[0][1] == (2, 8, 8) and got[4][1] == (2, 4, 4)


def test_token_average_is_a_probability_average(model):
    """Averaged over all 77 tokens, softmax probabilities give exactly 1/77 everywhere."""
    maps = []
    with torch.no_grad(), AttentionRecorder(cross_attention_layers(model.unet)[:1],
                                            lambda i, m: maps.append(m)) as rec:
        with rec.capture(slice(0, 1), torch.full((1, 77), 1.0)):
            model.unet(torch.randn(1, 3, 16, 16), 5, encoder_hidden_states=model.encode_text(["edema"]))
    assert maps[0].dtype == torch.float32
    torch.testing.assert_close(maps[0], torch.ones_like(maps[0]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- cost
@pytest.mark.parametrize("k", [1, 3])
def test_sample_evaluations_and_early_stop(model, image, k):
    cross_attention_layers(model.unet)  # layer discovery (one dry pass, cached) is not grounding cost
    calls = []
    # every pass, whole or truncated, embeds its timesteps ([batch]) first; a hook on the UNet itself
    # would make the engine run whole passes (its truncated walk never calls unet.forward)
    hook = model.unet.time_proj.register_forward_pre_hook(
        lambda m, args: calls.append((args[0].shape[0], int(args[0][0]))))
    try:
        g = gd.Grounder(model, gd.GroundingConfig.paper())
        g.ground(image, PHRASES[:k])
    finally:
        hook.remove()
    samples = sum(n for n, _ in calls)
    assert samples == 179 + 60 * k  # naive: 668 * k
    # one unconditional call per step before the last, and one (truncated) conditional call per
    # window step: the conditional rows run apart from the unconditional one
    assert g.stats["unet_samples"] == samples and len(calls) == 179 + 60
    assert g.stats["unet_samples_truncated"] == 60 * k
    assert max(t for _, t in calls) == 537  # stops after step 179 (t = 537)
    assert all(n == 1 for n, t in calls if t < 360)  # no conditional pass before the window
    assert calls[-1] == (k, 537)  # the last step is conditional only
    assert [n for n, t in calls if t == 360] == [1, k]  # first window step: unconditional, conditional (truncated)
    # the trajectory first (179 unconditional calls up to step 178), then the phrases' rows on it
    assert [n for n, _ in calls[:179]] == [1] * 179 and [n for n, _ in calls[179:]] == [k] * 60


def test_memory_does_not_grow_with_steps(model, image, monkeypatch):
    sizes = []

    class Spy(MapAccumulator):
        def mean(self, size, mode="bilinear"):
            sizes.append(sum(t.numel() for t in self.sums.values()))
            return super().mean(size, mode)

    monkeypatch.setattr(grounder_module, "MapAccumulator", Spy)
    for window in [(12, 13), (12, 18), (0, 31)]:
        gd.Grounder(model, SHORT.with_window(*window)).ground(image, PHRASES[:2])
    assert len(set(sizes)) == 1 and sizes[0] == 2 * 4 * 4 * 4  # K x layers x 4 x 4, whatever the window


# ---------------------------------------------------------------------- results, batching, determinism
def test_heatmaps_on_original_grid(model, image):
    h = gd.Grounder(model, SHORT).ground(image, PHRASES[:2], return_raw=True)
    assert h.heatmaps.shape == (2, 36, 44) and h.heatmaps.dtype == np.float32
    assert h.raw.shape == (2, 32, 32) and h.model_maps.shape == (2, 32, 32)
    top, left, ch, cw = h.geometry.region
    inside = h.heatmaps[:, top:top + ch, left:left + cw]
    assert np.isfinite(inside).all() and np.isnan(h.heatmaps).sum() == 2 * 36 * (44 - cw)
    # the original-grid maps are the model-grid maps back-projected, nothing else
    np.testing.assert_array_equal(h.heatmaps, h.geometry.to_original(h.model_maps))
    assert h.phrases == PHRASES[:2] and np.array_equal(h["cardiomegaly"], h.heatmaps[1], equal_nan=True)
    assert h.info["layers"] == [3, 4, 6, 7] and h.info["window"] == [12, 18]


def test_deterministic_on_cpu(model, image):
    g = gd.Grounder(model, SHORT)
    a = g.ground(image, PHRASES[:2], return_raw=True)
    b = g.ground(image, PHRASES[:2], return_raw=True)
    assert np.array_equal(a.heatmaps, b.heatmaps, equal_nan=True) and np.array_equal(a.raw, b.raw)


def test_phrases_change_the_map(model, image):
    h = gd.Grounder(model, SHORT).ground(image, PHRASES[:2], return_raw=True)
    assert np.abs(h.raw[0] - h.raw[1]).max() > 1e-3


def test_ground_batch_equals_single_images(tiny64_eps, image):
    other = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    g = gd.Grounder(tiny64_eps, SHORT, batch_size=2)
    batch = g.ground_batch([image, other, image], [PHRASES[:2], PHRASES[2:3], PHRASES[1:4]], return_raw=True)
    singles = [g.ground(im, ph, return_raw=True) for im, ph in
               [(image, PHRASES[:2]), (other, PHRASES[2:3]), (image, PHRASES[1:4])]]
    for b, s in zip(batch, singles):
        assert b.phrases == s.phrases and b.heatmaps.shape == s.heatmaps.shape
        assert np.nanmax(np.abs(b.heatmaps - s.heatmaps)) <= 1e-5 and np.abs(b.raw - s.raw).max() <= 1e-5
    # and the same phrase on the same image gives the same map in different company
    assert np.abs(batch[0].raw[1] - batch[2].raw[0]).max() <= 1e-5


@pytest.mark.parametrize("make", [
    lambda: tiny_ldm(with_vae=False),
    lambda: tiny_ldm(image_channels=3, input_range=(-1.0, 1.0)),
])
def test_other_model_kinds(make, image):
    h = gd.Grounder(make(), SHORT).ground(image, PHRASES[:1])
    assert h.heatmaps.shape == (1, 36, 44) and np.nanmax(h.heatmaps) == 1.0


def test_reduced_precision_keeps_float32_softmax(image):
    """bfloat16 on CPU stands in for half precision on an accelerator."""
    model = tiny_ldm(prediction_type="v_prediction").to(dtype=torch.bfloat16)
    rec = gd.Grounder(model, SHORT).record(image, PHRASES[:1], window=(12, 18))
    assert all(m.dtype == torch.float32 for m in rec.maps.values())
    h = rec.aggregate()
    assert np.isfinite(h.model_maps).all()
    # the same maps as float32 recording within bfloat16's precision of the UNet, not just any map
    ref = gd.Grounder(tiny_ldm(prediction_type="v_prediction"), SHORT).record(image, PHRASES[:1], window=(12, 18))
    raw16, raw32 = rec.aggregate(return_raw=True).raw, ref.aggregate(return_raw=True).raw
    assert np.corrcoef(raw16.ravel(), raw32.ravel())[0, 1] > 0.9
    assert model.dtype == torch.bfloat16


# ---------------------------------------------------------------------- record mode
def test_record_then_any_config_equals_ground(tiny64_eps, image):
    g = gd.Grounder(tiny64_eps, SHORT)
    rec = g.record(image, PHRASES[:2])
    assert sorted(rec.maps) == list(range(11)) and rec.window == (0, 31)
    assert rec.maps[0].shape == (31, 2, 8, 8) and rec.maps[4].shape == (31, 2, 4, 4)
    configs = [SHORT, SHORT.with_middle_layers(6).with_window_percent(20),
               SHORT.with_middle_layers(3).with_window_percent(50), SHORT.with_layers((0, 9)).with_window(0, 31),
               replace(SHORT, otsu=False), replace(SHORT, sigma_fraction=None, otsu=False)]
    for cfg in configs:
        want = gd.Grounder(tiny64_eps, cfg).ground(image, PHRASES[:2], return_raw=True)
        got = rec.aggregate(config=cfg, return_raw=True)
        assert np.nanmax(np.abs(got.heatmaps - want.heatmaps)) <= 1e-5, cfg
        assert np.abs(got.raw - want.raw).max() <= 1e-5, cfg
    # the keyword vocabulary of the ablation
    want = gd.Grounder(tiny64_eps, SHORT.with_middle_layers(6).with_window_percent(20)).ground(image, PHRASES[:2])
    got = rec.aggregate(middle_layers=6, window_percent=20)
    assert np.nanmax(np.abs(got.heatmaps - want.heatmaps)) <= 1e-5
    plain = rec.aggregate(layers=(3, 4, 6, 7), window=(12, 18), smooth=False, otsu=False)
    want = gd.Grounder(tiny64_eps, replace(SHORT, sigma_fraction=None, otsu=False)).ground(image, PHRASES[:2])
    assert np.nanmax(np.abs(plain.heatmaps - want.heatmaps)) <= 1e-5


def test_record_float32_matches_ground(model, image):
    rec = gd.Grounder(model, SHORT).record(image, PHRASES[:2], window=(10, 20))
    got = rec.aggregate(return_raw=True)
    want = gd.Grounder(model, SHORT).ground(image, PHRASES[:2], return_raw=True)
    assert np.abs(got.raw - want.raw).max() <= 1e-5


def test_record_restricted_and_errors(model, image, tmp_path):
    rec = gd.Grounder(model, SHORT).record(image, PHRASES[:1], window=(10, 20), layers=(3, 4, 6, 7))
    assert sorted(rec.maps) == [3, 4, 6, 7] and rec.maps[3].shape == (10, 1, 4, 4)
    assert list(rec.timesteps) == [33 * i + 9 for i in range(10, 20)]
    assert rec.layer_maps(4, 12).shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"were not recorded.*\[10, 20\)"):
        rec.aggregate(window=(5, 15))
    with pytest.raises(ValueError, match=r"layers \[2, 5\] were not recorded"):
        rec.aggregate(middle_layers=6)
    with pytest.raises(ValueError, match="schedule"):
        rec.aggregate(config=gd.GroundingConfig.paper())
    path = tmp_path / "rec.npz"
    rec.save(path)
    back = type(rec).load(path)
    assert back.phrases == rec.phrases and back.window == rec.window and back.geometry == rec.geometry
    np.testing.assert_array_equal(back.aggregate().heatmaps, rec.aggregate().heatmaps)
    bare = tmp_path / "rec"  # saved where it was asked, no ".npz" appended
    assert rec.save(bare) == bare and bare.is_file() and not (tmp_path / "rec.npz.npz").exists()
    assert type(rec).load(bare).phrases == rec.phrases


# ---------------------------------------------------------------------- bad input
def test_bad_phrases(model, image):
    g = gd.Grounder(model, SHORT)
    with pytest.raises(ValueError, match="phrase 1 is empty"):
        g.ground(image, ["edema", "   "])
    with pytest.raises(ValueError, match="non-empty list"):
        g.ground(image, [])
    with pytest.raises(ValueError, match="not a string"):
        g.ground(image, ["edema", 3])
    with pytest.raises(ValueError, match=r"too long: 82 tokens.*at most 77 \(75 phrase tokens\)"):
        g.ground(image, ["edema " * 80])
    with pytest.raises(ValueError, match="2 images but 1 phrase lists"):
        g.ground_batch([image, image], [["edema"]])


def test_layers_and_window_out_of_range(model, image):
    with pytest.raises(ValueError, match=r"layer indices \[11\].*11 cross-attention layers, numbered 0..10"):
        gd.Grounder(model, SHORT.with_layers((3, 11))).ground(image, ["edema"])
    with pytest.raises(ValueError, match=r"window steps \[12, 40\) are out of range.*31 steps"):
        gd.Grounder(model, SHORT.with_window(12, 40)).ground(image, ["edema"])
    with pytest.raises(ValueError, match=r"window steps \[120, 335\).*334 steps"):
        gd.Grounder(model, gd.GroundingConfig.paper().with_window(120, 335)).ground(image, ["edema"])
    with pytest.raises(ValueError, match="between 1 and 11"):
        gd.Grounder(model, SHORT.with_middle_layers(12)).ground(image, ["edema"])


def test_bad_images(model, tmp_path):
    g = gd.Grounder(model, SHORT)
    with pytest.raises(ValueError, match="4 dimensions"):
        g.ground(np.zeros((1, 2, 32, 32), np.float32), ["edema"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot read image file"):
        g.ground(bad, ["edema"])
    with pytest.raises(FileNotFoundError):
        g.ground(tmp_path / "missing.png", ["edema"])
