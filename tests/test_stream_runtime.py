"""Pipeline.stream(): every update equals Pipeline.predict on the window, and each frame is encoded once.

The reference is independent of the stream's own bookkeeping: the test keeps the list of every frame pushed
and the last text, and asks ``Pipeline.predict(pushed[-max_frames:], text)`` (no sub-sampling applies, the
window never exceeds ``max_frames``).
"""

from __future__ import annotations

import numpy as np
import pytest

from export_fixtures import bundle
from trml_edge.errors import MissingModalityError, RequestError
from trml_edge.export.parity import DEFAULT_BUDGETS
from trml_edge.preprocess import resize_crop
from trml_edge.runtime import Pipeline, Stream

TOL = DEFAULT_BUDGETS["fp32"].max_abs  # the FP32 bundle's own budget; only batching differs from predict


class CountingPipeline(Pipeline):
    """The real pipeline, recording how many frames each image-encoder run got."""

    def run(self, graph, **feeds):
        if graph == "image_encoder":
            self.encoded.append(len(feeds["pixels"]))
        return super().run(graph, **feeds)


@pytest.fixture(scope="module")
def pipe():
    p = CountingPipeline(bundle("fp32"))
    p.encoded = []
    return p


def _frames(k: int, seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)


# 20 pushes: single frames, bursts (one longer than the window), text changes, a stretch without frames
# (pushes 9-12), a stretch without text (the first pushes, before any text, and pushes 14-17)
PUSHES = [
    (1, None), (3, None), (1, None), (0, "the film starts slowly"), (1, None), (5, None),
    (2, "then it gets much better"), (0, "then it gets much better"), (0, "i loved the ending"),
    (0, "the acting was wooden"), (0, "honestly i want my money back"), (0, "but the music was great"),
    (11, None), (1, None), (1, None), (1, None), (1, None), (2, "what a ride"), (1, None), (0, "a mixed bag"),
]


def _check(pipe, stream: Stream, pushed: list, text, got):
    # frames of different pushes may differ in size; resizing is per frame (resize_crop at the model's size
    # is the identity on an already resized frame), so the reference window is the resized frames' concatenation
    window = np.concatenate([resize_crop(f, pipe.size) for f in pushed])[-pipe.max_frames:] if pushed else None
    ref = pipe.predict(window, text)
    assert got.virtual_modality == ref.virtual_modality
    assert np.abs(np.asarray(got.output) - np.asarray(ref.output)).max() <= TOL
    assert stream.frames == (0 if window is None else len(window)) and stream.text == text


def test_every_push_equals_predict_on_the_window_and_frames_are_encoded_once(pipe):
    assert pipe.max_frames < 11  # the burst of 11 overflows the window
    s = pipe.stream()
    pushed, text, seen = [], None, set()
    for i, (k, new_text) in enumerate(PUSHES):
        frames = _frames(k, seed=i, h=40 + 8 * (i % 3)) if k else None  # frame sizes vary between pushes
        pipe.encoded = []
        got = s.push(frames=frames, text=new_text)
        if new_text is not None and new_text != text:
            assert "text_encoder" in got.graphs
        elif new_text is not None:
            assert "text_encoder" not in got.graphs  # the same text again is not encoded again
        if frames is not None:
            pushed.append(frames)
            # the new frames only, in one run; of a burst longer than the window, only what stays in it
            assert pipe.encoded == [min(k, pipe.max_frames)], (i, pipe.encoded)
            assert "temporal_encoder" in got.graphs
        else:
            assert pipe.encoded == [] and "temporal_encoder" not in got.graphs  # the window's v is kept
        text = new_text if new_text is not None else text
        _check(pipe, s, pushed, text, got)
        seen.add(got.virtual_modality)
    assert seen == {"", "text"}
    assert got.graphs[-1] == "fusion_head"


def test_a_stream_that_starts_with_text_is_visual_missing_until_frames_arrive(pipe):
    s = pipe.stream()
    got = s.push(text="no camera yet")
    assert got.virtual_modality == "visual" and "image_encoder" not in got.graphs
    _check(pipe, s, [], "no camera yet", got)
    frames = _frames(2, seed=99)
    got = s.push(frames=frames)
    assert got.virtual_modality == "" and "text_encoder" not in got.graphs
    _check(pipe, s, [frames], "no camera yet", got)


def test_streams_are_independent(pipe):
    a, b = pipe.stream(), pipe.stream()
    fa, fb = _frames(3, seed=1), _frames(2, seed=2, h=64)
    a.push(frames=fa, text="first stream")
    b.push(frames=fb)
    _check(pipe, a, [fa, fa[:1]], "first stream", a.push(frames=fa[:1]))
    _check(pipe, b, [fb], "second stream", b.push(text="second stream"))
    _check(pipe, a, [fa, fa[:1]], "first stream again", a.push(text="first stream again"))
    _check(pipe, b, [fb, fb[1:]], "second stream", b.push(frames=fb[1:]))


def test_bad_input_is_a_clear_error_and_loses_nothing(pipe):
    s = pipe.stream()
    good = _frames(4, seed=5)
    s.push(frames=good, text="all fine so far")
    bad = {
        "wrong dtype": (dict(frames=good.astype(np.float32)), "uint8"),
        "wrong shape": (dict(frames=good[0]), "shape"),
        "0 frames": (dict(frames=good[:0]), "0 frames"),
        "grey frames": (dict(frames=good[..., 0]), "shape"),
        "empty text": (dict(text="   "), "TEXT is empty"),
        "empty text with good frames": (dict(frames=good[:1], text=""), "TEXT is empty"),
        "nothing": (dict(), "neither frames nor text"),
    }
    for name, (kwargs, msg) in bad.items():
        with pytest.raises(RequestError, match=msg):
            s.push(**kwargs)
        assert s.frames == 4 and s.text == "all fine so far", name  # nothing was taken
    new = _frames(1, seed=6)
    _check(pipe, s, [good, new], "all fine so far", s.push(frames=new))


def test_push_with_nothing_on_a_new_stream_names_both_modalities(pipe):
    with pytest.raises(MissingModalityError):
        pipe.stream().state.scenario(False, False)
    with pytest.raises(RequestError, match="neither frames nor text"):
        pipe.stream().push()
