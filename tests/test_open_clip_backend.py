"""open_clip ViT-B-32 tokens, and the same weights as a transformers CLIPVisionModel (issue 19, item 1).

open_clip_torch is not installed by setup.sh (it needs torchvision, which does not load beside the
CPU torch 2.13.0), so these tests are skipped there; they run in an environment with
torch 2.14.1 + torchvision 0.29.1 + open_clip_torch.
"""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip_torch is not installed (it needs torchvision, which setup.sh's CPU torch "
                        "2.13.0 cannot load); install torch==2.14.1 torchvision==0.29.1 open_clip_torch to run")

from pipeline.features.open_clip_backend import load_open_clip, open_clip_tokens, to_clip_vision  # noqa: E402


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
