"""Frame sampling with PyAV: uniform and fixed-rate sampling, masks, and clean errors for broken clips."""

import numpy as np
import pytest
from data_fixtures import write_audio_only, write_corrupt, write_zero_frames

from trml_edge.data.video import decode_all, read_frames, write_mp4
from trml_edge.errors import ClipError, CorruptClipError, EmptyClipError, NoVideoStreamError


def ramp(n: int, step: int = 20, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame i is a flat grey of value step * i, so each decoded frame tells which source frame it is."""
    return np.stack([np.full((h, w, 3), step * i + 10, np.uint8) for i in range(n)])


def grey_index(frames: np.ndarray, step: int = 20) -> list[int]:
    return [int(round((f.mean() - 10) / step)) for f in frames]


def test_uniform_sampling_spreads_n_frames_over_the_clip(tmp_path):
    write_mp4(tmp_path / "c.mp4", ramp(12))  # 12 frames at 4 fps
    frames, mask = read_frames(tmp_path / "c.mp4", 4)
    assert mask.tolist() == [True] * 4
    # 4 of 12 frames, first and last included, evenly spaced: 0, 11/3, 22/3, 11 rounded
    assert grey_index(frames) == [0, 4, 7, 11]
    assert frames.shape == (4, 32, 48, 3)


def test_short_clip_is_padded_and_masked(tmp_path):
    write_mp4(tmp_path / "c.mp4", ramp(3))
    frames, mask = read_frames(tmp_path / "c.mp4", 8)
    assert mask.tolist() == [True] * 3 + [False] * 5
    assert grey_index(frames[:3]) == [0, 1, 2]
    assert not frames[3:].any()  # padding is black


def test_fixed_fps_takes_one_frame_per_interval(tmp_path):
    write_mp4(tmp_path / "c.mp4", ramp(12), fps=4)  # 3 s of video
    frames, mask = read_frames(tmp_path / "c.mp4", 8, fps=2)  # one frame every 0.5 s -> 6 frames
    assert mask.tolist() == [True] * 6 + [False] * 2
    assert grey_index(frames[:6]) == [0, 2, 4, 6, 8, 10]
    frames, mask = read_frames(tmp_path / "c.mp4", 4, fps=2)  # 6 candidates thinned uniformly to 4: 0, 5/3, 10/3, 5
    assert mask.all() and grey_index(frames) == [0, 4, 6, 10]


def test_frames_are_resized_while_decoding(tmp_path):
    write_mp4(tmp_path / "c.mp4", ramp(5))
    frames, _ = read_frames(tmp_path / "c.mp4", 8, size=24)
    assert frames.shape == (8, 24, 24, 3)
    assert len(decode_all(tmp_path / "c.mp4")) == 5


@pytest.mark.parametrize("make, error, words", [
    (lambda p, rng: write_corrupt(p, rng), CorruptClipError, "damaged"),
    (lambda p, rng: p.write_bytes(b""), EmptyClipError, "0 bytes"),
    (lambda p, rng: write_zero_frames(p), EmptyClipError, "zero-length"),
    (lambda p, rng: write_audio_only(p), NoVideoStreamError, "no video stream"),
    (lambda p, rng: None, ClipError, "not found"),
])
def test_broken_clips_raise_a_clip_error_naming_the_file_and_the_fix(tmp_path, make, error, words):
    path = tmp_path / "clip.mp4"
    make(path, np.random.default_rng(0))
    with pytest.raises(error) as e:
        read_frames(path, 4)
    msg = str(e.value)
    assert str(path) in msg and words in msg
    assert "delete its row" in msg  # says what to do
