"""The MONAI -> diffusers conversion computes exactly what MONAI computes.

MONAI ``DiffusionModelUNet`` and ``AutoencoderKL`` are built with the paper's configuration scaled
down in width (see ``test_loading_support``), given random weights, saved in both state-dict layouts
(old GenerativeModels and MONAI core), converted or loaded through ``load_model``, and compared with
MONAI's own forward: UNet output, the cross-attention probabilities of every layer, the autoencoder
latent (posterior mean) and decoding; max abs difference < 1e-4.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("einops")

from test_loading_support import (  # noqa: E402
    AE_KW, IMAGE, UNET_KW, diffusers_cross_attention, load_scaled_paper, monai_autoencoder, monai_cross_attention,
    monai_unet, to_generative_layout, write_paper_dir)

from groundiff_core.engine.layers import cross_attention_layers  # noqa: E402
from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig, convert_autoencoder  # noqa: E402
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig, convert_unet, unet_state_for_diffusers  # noqa: E402

pytestmark = pytest.mark.slow  # builds and converts MONAI networks

TOL = 1e-4
LATENT = IMAGE // 8
PAPER_LAYERS = (3, 4, 6, 7)
AE_CFG = {k: v for k, v in AE_KW.items() if not k.startswith("with_")}  # middle attention read from the keys


@pytest.fixture(scope="module")
def unet_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, LATENT, LATENT, generator=g)
    t = torch.tensor([0, 360, 537, 999])
    ctx = torch.randn(4, 77, UNET_KW["cross_attention_dim"], generator=g)
    return x, t, ctx


def _state(model, layout: str, part: str) -> dict:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return to_generative_layout(state, part) if layout == "generative" else state


def _assert_same_attention(probs_monai, probs_diffusers):
    assert len(probs_monai) == len(probs_diffusers) == 11  # the paper's layout: 11 cross-attention layers
    for i, (pm, pd) in enumerate(zip(probs_monai, probs_diffusers)):
        assert pm.shape == pd.shape, f"layer {i}: {tuple(pm.shape)} vs {tuple(pd.shape)}"
        assert (pm - pd).abs().max().item() < TOL, f"layer {i}"
        assert pm.std().item() > 1e-3  # far from uniform: the comparison is not vacuous


def test_generative_layout_helper_is_what_monai_reads_as_old():
    """The tests' old-layout writer produces what MONAI's own load_old_state_dict understands."""
    for make, part in ((monai_unet, "unet"), (monai_autoencoder, "autoencoder"),
                       (lambda **k: monai_autoencoder(with_encoder_nonlocal_attn=True,
                                                      with_decoder_nonlocal_attn=True), "autoencoder")):
        ref = make()
        fresh = make(seed=7) if part == "unet" else make()
        if part == "autoencoder":
            for p in fresh.parameters():
                p.data.zero_()
        fresh.load_old_state_dict(to_generative_layout(ref.state_dict(), part))
        for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), k


@pytest.mark.parametrize("layout", ["generative", "monai"])
def test_unet_output_and_every_cross_attention_layer_match_monai(layout, unet_inputs):
    monai = monai_unet()
    unet = convert_unet(_state(monai, layout, "unet"), MonaiUNetConfig.from_dict(UNET_KW), sample_size=LATENT)
    out_m, probs_m = monai_cross_attention(monai, *unet_inputs)
    out_d, probs_d, _ = diffusers_cross_attention(unet, *unet_inputs)
    assert out_m.abs().max().item() > 0.1
    assert (out_m - out_d).abs().max().item() < TOL
    _assert_same_attention(probs_m, probs_d)


@pytest.mark.parametrize("overrides", [dict(norm_eps=1e-5), dict(use_combined_linear=True),
                                       dict(num_head_channels=(0, 32, 32), upcast_attention=True)],
                         ids=["norm_eps", "combined_qkv", "multi_head"])
def test_unet_variants_match_monai(overrides, unet_inputs, tmp_path):
    """Other MONAI settings: GroupNorm eps, one qkv matrix (MONAI core), several heads per layer; and the
    converted model survives save_pretrained / loading back (what the conversion cache does)."""
    from diffusers import UNet2DConditionModel

    from groundiff_core.models.loading.statedict import load_saved, set_groupnorm_eps

    monai = monai_unet(**overrides)
    cfg = MonaiUNetConfig.from_dict({**UNET_KW, **overrides})
    unet = convert_unet(monai.state_dict(), cfg, sample_size=LATENT)
    out_m, probs_m = monai_cross_attention(monai, *unet_inputs)
    out_d, probs_d, _ = diffusers_cross_attention(unet, *unet_inputs)
    assert (out_m - out_d).abs().max().item() < TOL
    _assert_same_attention(probs_m, probs_d)
    unet.save_pretrained(tmp_path / "unet")
    back = load_saved(UNet2DConditionModel, tmp_path / "unet")
    set_groupnorm_eps(back, cfg.norm_eps)
    assert torch.equal(diffusers_cross_attention(back, *unet_inputs)[0], out_d)


@pytest.mark.parametrize("layout", ["generative", "monai"])
@pytest.mark.parametrize("middle_attention", [False, True], ids=["paper", "middle_attention"])
def test_autoencoder_latent_and_decoding_match_monai(layout, middle_attention):
    ae = monai_autoencoder(with_encoder_nonlocal_attn=middle_attention, with_decoder_nonlocal_attn=middle_attention)
    vae, resolved = convert_autoencoder(_state(ae, layout, "autoencoder"), MonaiAutoencoderConfig.from_dict(AE_CFG),
                                        sample_size=IMAGE)
    assert resolved.with_encoder_nonlocal_attn is middle_attention
    assert resolved.with_decoder_nonlocal_attn is middle_attention
    assert vae.config.mid_block_add_attention is middle_attention
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, IMAGE, IMAGE, generator=g)
    z = torch.randn(2, 3, LATENT, LATENT, generator=g)
    with torch.no_grad():
        mu, sigma = ae.encode(x)
        post = vae.encode(x).latent_dist
        assert (mu - post.mean).abs().max().item() < TOL
        assert (sigma - post.std).abs().max().item() < TOL
        assert (ae.decode(z) - vae.decode(z).sample).abs().max().item() < TOL


def test_an_attention_without_its_output_projection_is_completed_only_in_the_old_layout():
    """Old GenerativeModels attentions may lack ``proj_attn`` (MONAI core's ``load_old_state_dict``
    gives them the identity); a MONAI core checkpoint without ``out_proj`` is incomplete and refused."""
    from groundiff_core.models.loading.errors import StateDictMismatchError

    ae = monai_autoencoder(with_encoder_nonlocal_attn=True, with_decoder_nonlocal_attn=True)
    cfg = MonaiAutoencoderConfig.from_dict(AE_CFG)
    old = {k: v for k, v in _state(ae, "generative", "autoencoder").items() if ".proj_attn." not in k}
    vae, _ = convert_autoencoder(old, cfg, sample_size=IMAGE)
    proj = vae.encoder.mid_block.attentions[0].to_out[0]
    assert torch.equal(proj.weight, torch.eye(proj.weight.shape[0])) and not proj.bias.any()
    core = {k: v for k, v in _state(ae, "monai", "autoencoder").items() if ".attn.out_proj." not in k}
    with pytest.raises(StateDictMismatchError, match=r"missing from the checkpoint: .*attn\.out_proj"):
        convert_autoencoder(core, cfg, sample_size=IMAGE)


@pytest.mark.parametrize("overrides", [
    dict(attention_levels=(False, False, True, True), with_encoder_nonlocal_attn=True, with_decoder_nonlocal_attn=False),
    dict(norm_eps=1e-5, num_res_blocks=1, latent_channels=4),
], ids=["level_attention_mixed_middle", "eps_depth_latent"])
def test_autoencoder_variants_match_monai(overrides):
    ae = monai_autoencoder(**overrides)
    cfg = MonaiAutoencoderConfig.from_dict({**AE_CFG, **{k: v for k, v in overrides.items() if not k.startswith("with_")}})
    vae, resolved = convert_autoencoder(ae.state_dict(), cfg, sample_size=IMAGE)
    x = torch.rand(2, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mu, _ = ae.encode(x)
        assert (mu - vae.encode(x).latent_dist.mean).abs().max().item() < TOL
        assert (ae.decode(mu) - vae.decode(mu).sample).abs().max().item() < TOL


@pytest.mark.parametrize("layout", ["generative", "monai"])
def test_load_model_matches_monai_and_caches_the_conversion(layout, tmp_path, unet_inputs):
    monai, ae = write_paper_dir(tmp_path / "paper", layout=layout)
    model = load_scaled_paper(tmp_path / "paper")
    # the facts METHOD.md pins for the paper's model
    assert model.schedule.prediction_type == "v_prediction"
    assert (model.schedule.beta_start, model.schedule.beta_end) == (0.0015, 0.0205)
    assert model.schedule.beta_schedule == "scaled_linear" and model.schedule.num_train_timesteps == 1000
    assert model.scale_factor == 0.3 and model.input_range == (0.0, 1.0) and model.image_channels == 1
    assert model.input_size == IMAGE and model.latent_size == LATENT
    assert model.info["conversion"]["from_cache"] is False
    cache = Path(model.info["conversion"]["cache"])
    assert (cache / "conversion.json").is_file() and cache.is_relative_to(os.environ["GROUNDIFF_CACHE_DIR"])
    assert not any(p.is_dir() for p in (tmp_path / "paper" / "models").iterdir())  # nothing beside the weights

    out_m, probs_m = monai_cross_attention(monai, *unet_inputs)
    out_d, probs_d, _ = diffusers_cross_attention(model.unet, *unet_inputs)
    assert (out_m - out_d).abs().max().item() < TOL
    _assert_same_attention(probs_m, probs_d)
    x01 = torch.rand(2, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z_monai = ae.encode(x01)[0] * 0.3  # the paper: z0 = posterior mean * 0.3, images in [0, 1]
    z = model.encode_image(x01)
    assert (z - z_monai).abs().max().item() < TOL

    again = load_scaled_paper(tmp_path / "paper")
    assert again.info["conversion"]["from_cache"] is True
    assert again.identity() == model.identity()  # what results files record does not depend on the cache
    out_again, _, _ = diffusers_cross_attention(again.unet, *unet_inputs)
    assert torch.equal(out_again, out_d)
    assert torch.equal(again.encode_image(x01), z)


def test_cache_is_rebuilt_when_a_checkpoint_changes(tmp_path, unet_inputs):
    write_paper_dir(tmp_path / "paper")
    first = load_scaled_paper(tmp_path / "paper", cache_dir=tmp_path / "cache")
    assert Path(first.info["conversion"]["cache"]).parent == tmp_path / "cache"
    other = monai_unet(seed=5)
    torch.save(to_generative_layout(other.state_dict(), "unet"), tmp_path / "paper" / "models" / "diffusion_model.pth")
    second = load_scaled_paper(tmp_path / "paper", cache_dir=tmp_path / "cache")
    assert second.info["conversion"]["from_cache"] is False
    out_m, _ = monai_cross_attention(other, *unet_inputs)
    out_d, _, _ = diffusers_cross_attention(second.unet, *unet_inputs)
    assert (out_m - out_d).abs().max().item() < TOL


def test_paper_layers_3_4_6_7_are_the_deepest(tmp_path, unet_inputs):
    """Execution-order numbering of the converted model = MONAI's; 3, 4, 6, 7 sit at the deepest level."""
    # scaled model, real forward: MONAI's own maps per layer, in execution order
    monai = monai_unet()
    _, probs_m = monai_cross_attention(monai, *unet_inputs)
    side = [int(round(p.shape[2] ** 0.5)) for p in probs_m]
    deepest = min(side)
    assert deepest == IMAGE // 32  # 2x2 for a 64x64 input, as 16x16 for 512x512
    assert [i for i, s in enumerate(side) if s == deepest] == [2, 3, 4, 5, 6, 7]
    unet = convert_unet(monai.state_dict(), MonaiUNetConfig.from_dict(UNET_KW), sample_size=LATENT)
    layers = cross_attention_layers(unet)
    assert [layer.side(LATENT) for layer in layers] == side
    assert all(layers[i].side(LATENT) == deepest for i in PAPER_LAYERS)

    # the full-size paper architecture, on the meta device (shapes only): 16x16 for a 512x512 input
    from diffusers import UNet2DConditionModel
    from monai.networks.nets import DiffusionModelUNet

    cfg = MonaiUNetConfig.paper()
    with torch.device("meta"):
        full = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=3, channels=(256, 512, 768),
                                  attention_levels=(False, True, True), num_res_blocks=2,
                                  num_head_channels=(0, 512, 768), with_conditioning=True, cross_attention_dim=1024,
                                  norm_num_groups=32, norm_eps=1e-6)
    state = to_generative_layout(full.state_dict(), "unet")  # what the published checkpoint looks like
    dcfg, converted = unet_state_for_diffusers(state, cfg, sample_size=64)
    with torch.device("meta"):
        paper_unet = UNet2DConditionModel(**dcfg)
    paper_unet.load_state_dict(converted, assign=True)
    full_layers = cross_attention_layers(paper_unet)
    assert len(full_layers) == 11 and all(layer.heads == 1 for layer in full_layers)
    assert [layer.side(64) for layer in full_layers] == [32, 32, 16, 16, 16, 16, 16, 16, 32, 32, 32]
    assert sum(p.numel() for p in paper_unet.parameters()) == sum(p.numel() for p in full.parameters())


def test_engine_recording_reads_monai_attention(unet_inputs):
    """The engine's recording processor, on the converted model, reads MONAI's attention exactly."""
    from groundiff_core.engine.recording import AttentionRecorder

    monai = monai_unet()
    unet = convert_unet(monai.state_dict(), MonaiUNetConfig.from_dict(UNET_KW), sample_size=LATENT)
    x, t, ctx = unet_inputs
    _, probs_m = monai_cross_attention(monai, x, t, ctx)
    weights = torch.zeros(x.shape[0], 77)
    weights[:, 1:4] = 1 / 3  # tokens 1..3 of each prompt, averaged
    recorded: dict[int, torch.Tensor] = {}
    layers = cross_attention_layers(unet)
    with AttentionRecorder(layers, lambda i, maps: recorded.__setitem__(i, maps)) as rec:
        with rec.capture(slice(0, x.shape[0]), weights), torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
    assert sorted(recorded) == list(range(11))
    for i, pm in enumerate(probs_m):
        want = torch.einsum("bhqt,bt->bq", pm, weights) / pm.shape[1]
        got = recorded[i].reshape(want.shape)
        assert (got - want).abs().max().item() < TOL, f"layer {i}"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GROUNDIFF_FULL_SIZE_TESTS") != "1",
                    reason="full-size paper networks with random weights (~1 GB; about a minute on 2 CPU cores); "
                           "set GROUNDIFF_FULL_SIZE_TESTS=1 to run")
def test_full_size_paper_networks_match_monai():
    """The exact published configuration (not scaled): UNet at a 64x64 latent, autoencoder at 512x512."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    from test_loading_support import randomise

    torch.manual_seed(0)
    monai = randomise(DiffusionModelUNet(
        spatial_dims=2, in_channels=3, out_channels=3, channels=(256, 512, 768), num_res_blocks=2,
        attention_levels=(False, True, True), norm_num_groups=32, norm_eps=1e-6, num_head_channels=(0, 512, 768),
        with_conditioning=True, transformer_num_layers=1, cross_attention_dim=1024))
    unet = convert_unet(to_generative_layout(monai.state_dict(), "unet"))
    x, t, ctx = torch.randn(1, 3, 64, 64), torch.tensor([537]), torch.randn(1, 77, 1024)
    out_m, probs_m = monai_cross_attention(monai, x, t, ctx)
    out_d, probs_d, _ = diffusers_cross_attention(unet, x, t, ctx)
    assert (out_m - out_d).abs().max().item() < TOL
    _assert_same_attention(probs_m, probs_d)
    assert [int(round(p.shape[2] ** 0.5)) for i, p in enumerate(probs_d) if i in PAPER_LAYERS] == [16] * 4
    del monai, unet
    ae = randomise(AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=3,
                                 channels=(64, 128, 128, 128), num_res_blocks=2, norm_num_groups=32, norm_eps=1e-6,
                                 attention_levels=(False,) * 4, with_encoder_nonlocal_attn=False,
                                 with_decoder_nonlocal_attn=False))
    vae, _ = convert_autoencoder(to_generative_layout(ae.state_dict(), "autoencoder"))
    img = torch.rand(1, 1, 512, 512)
    with torch.no_grad():
        mu, _ = ae.encode(img)
        assert mu.shape == (1, 3, 64, 64)
        assert (mu - vae.encode(img).latent_dist.mean).abs().max().item() < TOL
