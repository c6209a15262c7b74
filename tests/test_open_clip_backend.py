"""features.visual.backend: open_clip. open_clip's ViT-B-32 tokens, the same weights as a transformers
CLIPVisionModel, and the two backends through the params, the visual table and the stand-in (issue 19, item 1).

open_clip_torch (with torchvision matched to torch 2.14.1) is a project dependency: `bash setup.sh` installs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import open_clip

from pipeline.config import VisualFeatureParams
from pipeline.embedded import init_visual
from pipeline.errors import UserError
from pipeline.features.extract import ClipInput, extract_tables
from pipeline.features.store import FeatureShard
from pipeline.features.open_clip_backend import (CONFIG_FILE, WEIGHT_FILES, load_open_clip, open_clip_tokens,
                                                 save_random_open_clip, to_clip_vision)
from pipeline.features.visual import ClipModelEncoder, load_visual_model, preprocess, visual_token_shape


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weights open_clip ViT-B-32 saved as a state dict file; norms and biases randomised too."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("open_clip") / "vit-b-32-random.bin"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_open_clip_loads_from_a_file_and_its_tokens_are_the_visual_transformer_output(checkpoint):
    path, state = checkpoint
    model, preprocess = load_open_clip(path)
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())  # every weight arrived
    x = pixels()
    tokens = open_clip_tokens(model, x)
    assert tokens.shape == (2, 50, 768)
    v = model.visual  # the same computation written out: patches, CLS, positions, ln_pre, the blocks
    with torch.inference_mode():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(2, 1, -1), h], dim=1) + v.positional_embedding
        h = v.ln_pre(h)
        for block in v.transformer.resblocks:
            h = block(h if v.transformer.batch_first else h.transpose(0, 1))
            h = h if v.transformer.batch_first else h.transpose(0, 1)
        torch.testing.assert_close(tokens, h)
        # and the pooled image embedding open_clip reports is ln_post(CLS) @ proj of those tokens
        torch.testing.assert_close(model.encode_image(x), v.ln_post(tokens[:, 0]) @ v.proj, rtol=1e-5, atol=1e-5)
    assert callable(preprocess)


def test_converted_clip_vision_model_gives_the_same_tokens(checkpoint):
    path, _ = checkpoint
    model, _ = load_open_clip(path)
    vision = to_clip_vision(model)
    x = pixels()
    with torch.inference_mode():
        ours = vision(pixel_values=x)
        theirs = open_clip_tokens(model, x)
        torch.testing.assert_close(ours.last_hidden_state, theirs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.pooler_output @ model.visual.proj, model.encode_image(x), rtol=1e-4, atol=1e-4)
    assert vision.config.hidden_act == "gelu"  # open_clip's ViT-B-32 config (LAION weights); openai's is QuickGELU


@pytest.fixture(scope="module")
def both_backends(tmp_path_factory):
    """The visual params of one random open_clip ViT-B-32 through each backend: open_clip's file, and its
    weights converted to a CLIPVisionModel folder."""
    root = tmp_path_factory.mktemp("backends")
    save_random_open_clip(root / "open_clip", seed=3)
    model, _ = load_open_clip(root / "open_clip" / "open_clip_pytorch_model.bin")
    to_clip_vision(model).save_pretrained(root / "transformers")
    return {"open_clip": VisualFeatureParams(backend="open_clip", model=str(root / "open_clip"), device="cpu",
                                             batch_size=4),
            "transformers": VisualFeatureParams(backend="transformers", model=str(root / "transformers"),
                                                device="cpu", batch_size=4)}


def frames(n: int = 3) -> list[np.ndarray]:
    """Smooth RGB frames of different shapes (landscape, portrait, tiny)."""
    rng = np.random.default_rng(5)
    out = []
    for height, width in ((120, 160), (640, 360), (90, 100))[:n]:
        coarse = PIL.Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
        out.append(np.asarray(coarse.resize((width, height), PIL.Image.Resampling.BILINEAR)))
    return out


def test_open_clips_preprocessing_equals_ours_to_the_bit():
    _, _, transform = open_clip.create_model_and_transforms("ViT-B-32")
    for frame in frames():
        torch.testing.assert_close(transform(PIL.Image.fromarray(frame)), preprocess(frame[None])[0], rtol=0, atol=0)


def test_the_two_backends_give_the_same_tokens_from_the_params(both_backends):
    encoders = {name: ClipModelEncoder.load(params) for name, params in both_backends.items()}
    assert encoders["open_clip"].model.backend == "open_clip"
    assert encoders["transformers"].model.backend == "transformers"
    tokens = {name: encoder.encode(frames()) for name, encoder in encoders.items()}
    assert tokens["open_clip"].shape == tokens["transformers"].shape == (3, 50, 768)
    assert tokens["open_clip"].dtype == np.float16
    scale = np.abs(tokens["transformers"].astype(np.float32)).max()
    np.testing.assert_allclose(tokens["open_clip"].astype(np.float32), tokens["transformers"].astype(np.float32),
                               rtol=0, atol=2e-3 * scale)
    assert visual_token_shape(both_backends["open_clip"]) == visual_token_shape(both_backends["transformers"]) \
        == (50, 768)


def test_the_visual_table_records_its_backend_and_either_backends_cache_serves_the_other(both_backends, synth_set,
                                                                                          tmp_path):
    folder, rows = synth_set
    clips = [ClipInput(r["video_id"], folder / r["video_file"], 2.0) for r in rows[:2]]
    tables = {}
    for name, params in both_backends.items():
        out = tmp_path / f"{name}.parquet"
        status = extract_tables(clips, visual=params, model=load_visual_model(params), visual_out=out,
                                progress=False)
        assert [r["status"] for r in status] == ["ok", "ok"]
        shard = FeatureShard(out)
        assert shard.metadata["backend"] == name and shard.metadata["params"]["backend"] == name
        tables[name] = np.concatenate([shard[c.video_id]["tokens"] for c in clips]).astype(np.float32)
    assert tables["open_clip"].shape == (8, 50, 768)      # 2 clips x 2 s x 2 fps
    scale = np.abs(tables["transformers"]).max()
    np.testing.assert_allclose(tables["open_clip"], tables["transformers"], rtol=0, atol=2e-3 * scale)


def test_visual_init_writes_a_marked_random_open_clip_that_loads_with_a_warning(tmp_path, caplog):
    out = tmp_path / "visual-random"
    params = VisualFeatureParams(backend="open_clip", model=str(out), init_seed=4, device="cpu")
    assert "open_clip ViT-B-32, RANDOM weights" in init_visual(params, out=out)
    assert (out / WEIGHT_FILES[1]).is_file()
    assert json.loads((out / CONFIG_FILE).read_text())["v2m_random_weights"] is True
    with caplog.at_level(logging.WARNING, logger="v2m.visual"):
        model = load_visual_model(params)
    assert "RANDOM weights" in caplog.text
    again = tmp_path / "again"
    init_visual(dataclasses.replace(params, model=str(again)), out=again)   # same seed, same weights
    other = load_visual_model(dataclasses.replace(params, model=str(again)))
    assert all(torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), other.model.state_dict().values()))


def test_a_missing_open_clip_checkpoint_names_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin.*laion/CLIP-ViT-B-32"):
        load_visual_model(VisualFeatureParams(backend="open_clip", model=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="no such file or folder, and no such hub id"):
        visual_token_shape(VisualFeatureParams(backend="open_clip", model=str(tmp_path / "nowhere")))


def test_without_open_clip_installed_the_backend_says_what_to_install(tmp_path, monkeypatch):
    save_random_open_clip(tmp_path / "m", seed=0)
    monkeypatch.setitem(sys.modules, "open_clip", None)       # as if open_clip_torch were not installed
    with pytest.raises(UserError, match="needs the open_clip_torch package.*setup.sh"):
        load_visual_model(VisualFeatureParams(backend="open_clip", model=str(tmp_path / "m")))
