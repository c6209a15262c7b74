"""CLIP visual tokens: preprocessing vs transformers' processor, loading, random checkpoints, batching."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from pipeline.errors import UserError
from pipeline.features.visual import (CLIP_MEAN, CLIP_STD, HUB_ID, RANDOM_MARKER, VIT_B32, ClipModelEncoder, encode_frames,
                                      TransformersVisual, load_clip_model, preprocess, random_clip_model,
                                      save_random_clip_model)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
# transformers 5 without torchvision: CLIPImageProcessor falls back to this PIL class; name it to pin the
# PIL path (the torchvision backend resizes differently).
PilProcessor = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)


@pytest.fixture(scope="module")
def processor():
    # openai/clip-vit-base-patch32's preprocessor_config.json, spelled out.
    return PilProcessor(do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
                        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
                        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                        do_convert_rgb=True)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_random_clip_model(tmp_path_factory.mktemp("clip") / "tiny", seed=1, **TINY)


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_clip_model(tiny_folder, device="cpu")


def frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (pure noise would hide interpolation errors in its own variance)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 6.3, (n, 1, 1, 3))
    base = 127.5 + 100 * np.sin(9 * x[None, ..., None] + 5 * y[None, ..., None] + phase)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(360, 640), (640, 360), (300, 300), (224, 224), (361, 641),
                                           (50, 80), (1, 5)], ids=["landscape", "portrait", "square", "exact",
                                                                   "odd", "small", "tiny"])
def test_preprocess_matches_clip_image_processor(processor, height, width):
    batch = frames(3, height, width)
    expected = processor(images=list(batch), return_tensors="pt", input_data_format="channels_last").pixel_values
    ours = preprocess(batch)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, 224, 224)
    # Same PIL bicubic resize and the same float64->float32 arithmetic: equal to the bit, not approximately.
    assert torch.equal(ours, expected), (ours - expected).abs().max()


def test_tokens_equal_a_direct_model_call(processor, tiny):
    frame = frames(1, 360, 640, seed=3)[0]
    with torch.inference_mode():
        expected = tiny(pixel_values=processor(images=frame, return_tensors="pt").pixel_values).last_hidden_state
    ours = ClipModelEncoder(TransformersVisual(tiny)).encode(frame[None])
    assert ours.dtype == np.float16 and ours.shape == (1, 50, 64)
    np.testing.assert_allclose(ours.astype(np.float32), expected.numpy(), rtol=1e-3, atol=1e-3)  # fp16 half-ulp


def test_random_checkpoint_round_trip_and_seeds(tmp_path, tiny_folder, tiny, caplog):
    pixels = preprocess(frames(2, 240, 320))
    fresh = random_clip_model(1, **TINY)
    np.testing.assert_array_equal(encode_frames(tiny, pixels), encode_frames(fresh, pixels))
    with caplog.at_level(logging.WARNING, logger="v2m.visual"):
        load_clip_model(tiny_folder, device="cpu")
    assert "RANDOM weights" in caplog.text

    same = load_file(save_random_clip_model(tmp_path / "same", seed=1, **TINY) / "model.safetensors")
    other = load_file(save_random_clip_model(tmp_path / "other", seed=2, **TINY) / "model.safetensors")
    saved = load_file(tiny_folder / "model.safetensors")
    assert saved.keys() == same.keys() == other.keys()
    assert all(torch.equal(saved[k], same[k]) for k in saved)
    assert not torch.equal(saved["embeddings.patch_embedding.weight"], other["embeddings.patch_embedding.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "same"]  # no partial folders left


def test_full_clip_model_folder_loads_the_vision_weights(tmp_path, caplog):
    config = CLIPConfig(vision_config=TINY, text_config=dict(hidden_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, intermediate_size=64))
    torch.manual_seed(5)
    full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path / "full")
    with caplog.at_level(logging.WARNING, logger="v2m.visual"):
        vision = load_clip_model(tmp_path / "full", device="cpu")
    assert "RANDOM" not in caplog.text
    expected = full.vision_model.state_dict()
    assert vision.state_dict().keys() == expected.keys()
    assert all(torch.equal(vision.state_dict()[k], expected[k]) for k in expected)
    pixels = preprocess(frames(1, 224, 224))
    with torch.inference_mode():
        reference = full.vision_model(pixel_values=pixels).last_hidden_state.to(torch.float16).numpy()
    np.testing.assert_array_equal(encode_frames(vision, pixels), reference)


def test_missing_models_name_what_is_expected(tmp_path):
    for missing in (tmp_path / "nowhere", "models/no-such-clip"):
        with pytest.raises(FileNotFoundError, match="config.json \\+ model.safetensors") as error:
            load_clip_model(missing)
        assert "visual_init" in str(error.value) and "save_pretrained" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no such hub id in the local Hugging Face cache"):
        load_clip_model(HUB_ID, cache_dir=tmp_path / "empty-cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks config.json or model.safetensors"):
        load_clip_model(tmp_path / "empty")


def test_hub_id_loads_from_the_local_cache_and_wrong_weights_are_refused(tmp_path, tiny_folder, tiny):
    repo = tmp_path / "cache" / f"models--{HUB_ID.replace('/', '--')}"
    random_clip_model(1, **TINY).save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    cached = load_clip_model(HUB_ID, device="cpu", cache_dir=tmp_path / "cache")
    assert all(torch.equal(cached.state_dict()[k], v) for k, v in tiny.state_dict().items())

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    save_file({f"other.{k}": v for k, v in load_file(tiny_folder / "model.safetensors").items()},
              bad / "model.safetensors")
    with pytest.raises(UserError, match="lacks .* CLIP vision weights"):
        load_clip_model(bad)


def test_batches_across_clips_equal_one_by_one(tiny):
    clips = [frames(3, 360, 640, seed=1), frames(4, 640, 360, seed=2)]
    mixed = [frame for clip in clips for frame in clip]  # frames of two sizes in one call
    batched = ClipModelEncoder(TransformersVisual(tiny), batch_size=3).encode(mixed)
    single = np.concatenate([ClipModelEncoder(TransformersVisual(tiny), batch_size=1).encode(frame[None]) for frame in mixed])
    assert batched.shape == (7, 50, 64)
    # Different batch shapes take different GEMM paths: equal up to fp32 noise, then fp16 rounding.
    np.testing.assert_allclose(batched.astype(np.float32), single.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert ClipModelEncoder(TransformersVisual(tiny)).encode(np.zeros((0, 360, 640, 3), np.uint8)).shape == (0, 50, 64)

    results = {}
    workers = [threading.Thread(target=lambda i=i: results.__setitem__(i, ClipModelEncoder(TransformersVisual(tiny), 3).encode(clips[i])))
               for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for i, clip in enumerate(clips):
        np.testing.assert_array_equal(results[i], ClipModelEncoder(TransformersVisual(tiny), 3).encode(clip))


def test_real_vit_b32_architecture():
    model = random_clip_model(0)
    config = model.config
    assert {k: getattr(config, k) for k in VIT_B32} == VIT_B32 and getattr(config, RANDOM_MARKER)
    # openai's 87.85M ViT-B/32 visual encoder includes the 768x512 projection, which CLIPVisionModel has not.
    assert sum(p.numel() for p in model.parameters()) == 87_849_216 - 768 * 512
    tokens = encode_frames(model, preprocess(frames(2, 360, 640)), batch_size=2)
    assert tokens.shape == (2, 50, 768) and tokens.dtype == np.float16 and np.isfinite(tokens).all()


def test_visual_init_writes_the_stand_in_at_init_layers_depth_and_open_clip_refuses_another_depth(tmp_path):
    from pipeline.config import VisualFeatureParams
    from pipeline.embedded import init_visual

    out = tmp_path / "visual-random"
    params = VisualFeatureParams(model=str(out), init_layers=2, init_seed=3, device="cpu")
    assert "with 2 of its 12 layers" in init_visual(params, out=out)
    model = load_clip_model(out, device="cpu")
    assert model.config.num_hidden_layers == 2
    assert {k: getattr(model.config, k) for k in ("hidden_size", "patch_size", "image_size")} == \
        {k: VIT_B32[k] for k in ("hidden_size", "patch_size", "image_size")}   # ViT-B/32's tokens, [50, 768]
    reference = random_clip_model(3, num_hidden_layers=2)                          # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))

    refused = tmp_path / "open-clip-random"
    with pytest.raises(UserError, match="features.visual.init_layers is 4.*12 layers"):
        init_visual(VisualFeatureParams(backend="open_clip", model=str(refused), init_layers=4), out=refused)
    assert not refused.exists()
