"""The TRML forward pass, generators, SML loss and config validation."""

import pytest
import torch

from trml_edge.config import TRMLConfig
from trml_edge.errors import ConfigError, MissingModalityError
from trml_edge.model.backbone import resolve_arch, tokenize
from trml_edge.model.checkpoint import new_model
from trml_edge.model.losses import sml_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = new_model(TRMLConfig())
    # move generators and the temporal encoder away from their identity start, so "generated" != "real"
    with torch.no_grad():
        for p in list(m.gen_text_to_visual.parameters()) + list(m.gen_visual_to_text.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
    return m.eval()


def _batch(b=6, t=4, size=48):
    torch.manual_seed(1)
    pixels = torch.randn(b, t, 3, size, size)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 2:] = False
    tokens = tokenize([f"the movie was {w}" for w in ["good", "bad", "very good", "not bad", "okay", "awful"]][:b], 77)
    return pixels, mask, tokens


@pytest.mark.parametrize("pattern", ["complete", "visual_missing", "text_missing", "mixed"])
def test_generated_embedding_used_exactly_where_missing(model, pattern):
    pixels, mask, tokens = _batch()
    has_v = torch.ones(6, dtype=torch.bool)
    has_t = torch.ones(6, dtype=torch.bool)
    if pattern == "visual_missing":
        has_v[:] = False
    elif pattern == "text_missing":
        has_t[:] = False
    elif pattern == "mixed":
        has_v[[1, 4]] = False
        has_t[[2]] = False
    with torch.no_grad():
        o = model(pixels, mask, tokens, has_v, has_t)
    for i in range(6):
        expect_v = o.v[i] if has_v[i] else o.v_hat[i]
        expect_t = o.t[i] if has_t[i] else o.t_hat[i]
        assert torch.equal(o.v_used[i], expect_v)
        assert torch.equal(o.t_used[i], expect_t)
    assert not torch.allclose(o.v_hat, o.v, atol=1e-3)  # the two differ, so the check above has teeth
    assert o.output.shape == (6,)
    assert torch.equal(o.output, model.head(o.t_used, o.v_used))  # the head reads the embeddings used, (t, v)


def test_regression_head_is_three_tanh_of_its_last_layer(model):
    """Checked against the layers applied by hand, where tanh saturates and where it does not."""
    torch.manual_seed(2)
    t, v = torch.randn(4, model.dim) * 3, torch.randn(4, model.dim) * 3
    net = model.head.net
    with torch.no_grad():
        y = net[4](net[2](net[1](net[0](torch.cat([t, v], -1)))))[:, 0]  # dropout is the identity in eval
        assert torch.allclose(model.head(t, v), 3 * torch.tanh(y), atol=1e-6)
        bias = net[4].bias.clone()
        net[4].bias.fill_(50.0)  # saturated: the score is the end of the scale, not beyond it
        assert torch.allclose(model.head(t, v), torch.full((4,), 3.0))
        net[4].bias.copy_(bias)


def test_generated_embedding_is_the_generator_applied_to_the_present_modality(model):
    pixels, mask, tokens = _batch()
    has_v = torch.tensor([False] * 3 + [True] * 3)
    has_t = torch.tensor([True] * 3 + [False] * 3)
    with torch.no_grad():
        o = model(pixels, mask, tokens, has_v, has_t)
        assert torch.allclose(o.v_used[:3], model.gen_text_to_visual(o.t[:3]), atol=1e-6)
        assert torch.allclose(o.t_used[3:], model.gen_visual_to_text(o.v[3:]), atol=1e-6)


def test_fills_zero_and_mean(model):
    pixels, mask, tokens = _batch()
    has_v = torch.tensor([False, True, True, True, True, True])
    has_t = torch.tensor([True, False, True, True, True, True])
    model.mean_v.fill_(0.5)
    with torch.no_grad():
        z = model(pixels, mask, tokens, has_v, has_t, fill="zero")
        m = model(pixels, mask, tokens, has_v, has_t, fill="mean")
    assert torch.equal(z.v_used[0], torch.zeros(model.dim)) and torch.equal(z.t_used[1], torch.zeros(model.dim))
    assert torch.equal(m.v_used[0], torch.full((model.dim,), 0.5))
    model.mean_v.zero_()


def test_both_modalities_missing_is_an_error_naming_the_sample(model):
    pixels, mask, tokens = _batch()
    has_v = torch.tensor([True, False, True, True, True, True])
    has_t = torch.tensor([True, False, True, True, True, True])
    with pytest.raises(MissingModalityError, match=r"samples \[1\].*neither FRAMES nor TEXT"):
        model(pixels, mask, tokens, has_v, has_t)


def test_generators_start_as_identity_and_temporal_as_masked_mean():
    torch.manual_seed(0)
    m = new_model(TRMLConfig()).eval()
    x = torch.nn.functional.normalize(torch.randn(5, m.dim), dim=-1)
    assert torch.allclose(m.gen_text_to_visual(x), x, atol=1e-6)
    assert torch.allclose(m.gen_visual_to_text(x), x, atol=1e-6)
    frames = torch.randn(2, 4, m.dim)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    v = m.temporal(frames, mask)
    assert torch.allclose(v[0], torch.nn.functional.normalize(frames[0, :2].mean(0), dim=0), atol=1e-6)


def test_padded_frames_do_not_change_the_visual_embedding(model):
    frames = torch.randn(1, 4, model.dim)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    noisy = frames.clone()
    noisy[0, 3] = 100.0
    with torch.no_grad():
        assert torch.allclose(model.temporal(frames, mask), model.temporal(noisy, mask), atol=1e-6)


def test_sml_loss_falls_on_a_toy_batch():
    torch.manual_seed(0)
    m = new_model(TRMLConfig())
    t = torch.nn.functional.normalize(torch.randn(16, m.dim), dim=-1)
    v = torch.nn.functional.normalize(t @ torch.randn(m.dim, m.dim), dim=-1)  # related but not equal
    complete = torch.ones(16, dtype=torch.bool)
    params = list(m.gen_text_to_visual.parameters()) + list(m.gen_visual_to_text.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(60):
        loss = sml_loss(m.gen_text_to_visual(t), v, m.gen_visual_to_text(v), t, complete, tau=0.07)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]


def test_no_sml_gradient_reaches_the_real_embeddings():
    """SML moves the generated embeddings toward the real ones, never the real ones toward the generated."""
    torch.manual_seed(0)
    leaf = lambda: torch.nn.functional.normalize(torch.randn(8, 16), dim=-1).requires_grad_()  # noqa: E731
    v_hat, v, t_hat, t = leaf(), leaf(), leaf(), leaf()
    sml_loss(v_hat, v, t_hat, t, torch.ones(8, dtype=torch.bool), tau=0.1).backward()
    assert v.grad is None and t.grad is None
    assert v_hat.grad.abs().sum() > 0 and t_hat.grad.abs().sum() > 0


def test_sml_ignores_incomplete_samples():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    complete = torch.tensor([True, True, True, False, False, False])
    b2 = b.clone()
    b2[3:] = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert torch.equal(sml_loss(a, b, a, b, complete, 0.1), sml_loss(a, b2, a, b2, complete, 0.1))


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-B-23'.*ViT-B-32"):
        resolve_arch("ViT-B-23")


def test_config_from_a_newer_version_is_refused(tmp_path):
    d = TRMLConfig().to_dict()
    d["format_version"] = 99
    with pytest.raises(ConfigError, match="newer.*upgrade trml-edge"):
        TRMLConfig.from_dict(d)


def test_config_unknown_key_is_refused():
    d = TRMLConfig().to_dict()
    d["head"]["widht"] = 3
    with pytest.raises(ConfigError, match="unknown keys.*widht"):
        TRMLConfig.from_dict(d)
