"""The torch-free Pipeline on raw requests: frames larger than the model's input and more of them than it
takes (resize, crop and sub-sampling against an independent reference and the PyTorch model), and
predict_batch with mixed masks inside one batch and more samples than its batch size."""

import numpy as np
import pytest
import torch
from export_fixtures import bundle, trained_run

from trml_edge.model.backbone import tokenize
from trml_edge.model.checkpoint import load_run
from trml_edge.preprocess import normalize, resize_crop
from trml_edge.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(bundle("fp32"))


@pytest.fixture(scope="module")
def model():
    return load_run(trained_run()).eval()


def _raw(n, h, w, seed=0):
    """n frames of h x w with a gradient and a moving block, so resizing, cropping and order all matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 20 * i % 255)], -1)
        img[(y // 9 + i) % 5 == 0] = 255 - img[(y // 9 + i) % 5 == 0]
        frames[i] = np.clip(img + rng.integers(0, 8, img.shape), 0, 255)
    return frames


def _torch_resize_crop(frames, size):
    """Reference: torch's bilinear interpolate (align_corners=False, no antialias) of the shortest side to
    ``size``, then the centre crop, rounded to uint8."""
    n, h, w, _ = frames.shape
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top : top + size, left : left + size].round().clamp(0, 255)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def test_resize_crop_matches_torch_bilinear():
    for h, w in [(90, 130), (130, 90), (49, 300), (200, 200), (30, 40)]:
        frames = _raw(2, h, w)
        got, want = resize_crop(frames, 48).astype(int), _torch_resize_crop(frames, 48).astype(int)
        assert got.shape == (2, 48, 48, 3)
        assert np.abs(got - want).max() <= 1, (h, w)  # float rounding at .5 only
        assert np.mean(got != want) < 0.01, (h, w)


def test_predict_on_large_frames_and_many_of_them_matches_pytorch(pipe, model):
    frames, text = _raw(21, 90, 130), "a long clip, larger than the model's input"
    size, t_max = model.cfg.preprocess.image_size, model.cfg.temporal.max_frames
    assert (size, t_max) == (pipe.size, pipe.max_frames) and len(frames) > t_max and frames.shape[1] > size
    idx = [round(i * (len(frames) - 1) / (t_max - 1)) for i in range(t_max)]  # uniform, first and last kept
    assert idx[0] == 0 and idx[-1] == 20 and len(set(idx)) == t_max
    small = _torch_resize_crop(frames[idx], size)
    p = model.cfg.preprocess
    with torch.no_grad():
        for has_v, has_t in [(True, True), (True, False)]:
            pixels = torch.from_numpy(normalize(small, p.mean, p.std))[None]
            want = model(pixels, torch.ones(1, t_max, dtype=torch.bool),
                         tokenize([text], p.context_length), torch.tensor([has_v]),
                         torch.tensor([has_t])).output
            got = pipe.predict(frames, text if has_t else None)
            assert float(got.output) == pytest.approx(float(want[0]), abs=2e-3)
    # the sub-sampling is the reference's: the same request with only those frames gives the same answer
    assert float(pipe.predict(frames, text).output) == pytest.approx(float(pipe.predict(frames[idx], text).output),
                                                                     abs=1e-6)
    assert float(pipe.predict(frames[::-1], text).output) != pytest.approx(float(pipe.predict(frames, text).output),
                                                                           abs=1e-6)


def test_predict_batch_with_mixed_masks_and_more_samples_than_its_batch(pipe):
    n, t, s = 12, pipe.max_frames, pipe.size
    frames = np.stack([resize_crop(_raw(t, s, s, seed=i), s) for i in range(n)])  # (n, T, S, S, 3)
    mask = np.ones((n, t), bool)
    mask[1, 3:] = False
    mask[6, 1:] = False
    mask[8, 2:] = False
    texts = [f"sample number {i} is {'good' if i % 2 else 'bad'}" for i in range(n)]
    # batches of 5: complete, visual missing twice, text missing twice (then 2 left over: complete, visual missing)
    has_v = np.array([[1, 0, 0, 1, 1][i % 5] for i in range(n)], bool)
    has_t = np.array([[1, 1, 1, 0, 0][i % 5] for i in range(n)], bool)
    got = pipe.predict_batch(frames, mask, texts, has_v, has_t, batch=5)
    want = [float(pipe.predict(frames[i][mask[i]] if has_v[i] else None, texts[i] if has_t[i] else None).output)
            for i in range(n)]
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len({round(x, 5) for x in want}) == n  # distinct answers: a row mix-up cannot pass


def test_prediction_graphs_are_the_sessions_that_ran(pipe, monkeypatch):
    """Prediction.graphs against a record of the ONNX sessions actually run (a spy on the real sessions)."""
    ran = []
    real = pipe.bundle.session

    def spy(graph, *a, **k):
        session = real(graph, *a, **k)

        class Recording:
            def run(self, *args, **kwargs):
                ran.append(graph)
                return session.run(*args, **kwargs)

        return Recording()

    monkeypatch.setattr(pipe.bundle, "session", spy)
    frames, text = _raw(3, pipe.size, pipe.size), "graphs that ran"
    for f, x, want in [(frames, text, ("image_encoder", "temporal_encoder", "text_encoder", "fusion_head")),
                       (None, text, ("text_encoder", "gen_text_to_visual", "fusion_head")),
                       (frames, None, ("image_encoder", "temporal_encoder", "gen_visual_to_text", "fusion_head"))]:
        ran.clear()
        res = pipe.predict(f, x)
        assert res.graphs == tuple(ran) == want
