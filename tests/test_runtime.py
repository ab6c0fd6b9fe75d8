"""The torch-free runtime: tokenizer parity with open_clip, routing around missing modalities, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export_fixtures import bundle, synth_data, trained_run
from trml_edge.errors import MissingModalityError, RequestError
from trml_edge.runtime import BPETokenizer, Pipeline, load_bundle
from trml_edge.routing import COMPLETE, TEXT_MISSING, VISUAL_MISSING, route

LONG = "word " * 100  # longer than the context: cut, EOT kept last
SENTENCES = [
    "Hello, World!",
    "i think the acting was really not very good overall",
    "It's 2024 & we're   testing <b>html</b> &amp; entities",
    "naïve café — résumé 123456",
    "don't you'll I'M they've she'd",
    "snake_case_names and under_scores!!",
    "emoji 😀 and 你好世界 and Привет",
    "  tabs\tand\nnewlines  ",
    "",
    LONG,
    "don\u2019t \u201cquoted\u201d",  # curly quotes (ftfy straightens them)
    "\ufb01ne \ufb02ow",  # ligatures
    "\uff26\uff35\uff2c\uff2c\u3000\uff57\uff49\uff44\uff54\uff48\uff01",  # full-width forms
    "cafe\u0301",  # decomposed accent (NFC)
]


def test_tokenizer_matches_open_clip():
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    from trml_edge.data.corpus import read_corpus

    ref = SimpleTokenizer(context_length=77)
    ours = BPETokenizer(default_bpe(), context_length=77)
    texts = SENTENCES + [r.text for r in read_corpus(synth_data())[:40]]
    np.testing.assert_array_equal(ours(texts), ref(texts).numpy())
    assert ours(LONG)[0, -1] == ref.eot_token_id


def test_route_rules():
    assert route(True, True) == COMPLETE
    assert route(False, True) == VISUAL_MISSING
    assert route(True, False) == TEXT_MISSING
    with pytest.raises(MissingModalityError, match="FRAMES.*TEXT"):
        route(False, False)


def _clip(i: int = 0):
    from trml_edge.data.corpus import load_split, read_corpus

    arrays = load_split(read_corpus(synth_data()), "test", 8, 48)
    n = int(arrays.frame_mask[i].sum())
    return arrays.frames[i, :n], arrays.texts[i]


def test_predict_matches_pytorch_in_every_scenario():
    import torch

    from trml_edge.model.backbone import tokenize
    from trml_edge.model.checkpoint import load_run
    from trml_edge.preprocess import normalize

    model = load_run(trained_run())
    pipe = Pipeline(bundle("fp32"))
    frames, text = _clip(3)
    p = model.cfg.preprocess
    with torch.no_grad():
        pix = torch.from_numpy(normalize(frames, p.mean, p.std))[None]
        emb = model.encode_frames(pix)
        mask = torch.ones(1, len(frames), dtype=torch.bool)
        t = model.encode_text(tokenize([text], 77))
        for fr, tx, hv, ht, virtual in [(frames, text, True, True, ""), (None, text, False, True, "visual"),
                                        (frames, None, True, False, "text")]:
            ref = model.fuse(emb, mask, t, torch.tensor([hv]), torch.tensor([ht])).output[0].item()
            got = pipe.predict(fr, tx)
            assert got.virtual_modality == virtual
            assert abs(float(got.output) - ref) < 1e-4


def test_missing_encoder_is_never_run(tmp_path):
    """Delete an encoder's file after verification: requests that do not need it still work."""
    copy = tmp_path / "b"
    shutil.copytree(bundle("fp32"), copy)
    frames, text = _clip(0)
    pipe = Pipeline(load_bundle(copy))
    (copy / "graphs" / "image_encoder.onnx").unlink()
    (copy / "graphs" / "temporal_encoder.onnx").unlink()
    res = pipe.predict(None, text)
    assert res.virtual_modality == "visual" and "image_encoder" not in res.graphs
    with pytest.raises(Exception, match="image_encoder"):  # a route that needs the deleted graph fails
        pipe.predict(frames, text)

    copy2 = tmp_path / "b2"
    shutil.copytree(bundle("fp32"), copy2)
    pipe2 = Pipeline(load_bundle(copy2))
    (copy2 / "graphs" / "text_encoder.onnx").unlink()
    res = pipe2.predict(frames, None)
    assert res.virtual_modality == "text" and "text_encoder" not in res.graphs
    with pytest.raises(MissingModalityError, match="FRAMES.*TEXT"):
        pipe2.predict(None, None)
    with pytest.raises(RequestError, match="0 frames"):  # empty inputs are errors, not "missing"
        pipe2.predict(frames[:0], "some text")
    with pytest.raises(RequestError, match="TEXT is empty"):
        pipe2.predict(frames, "   ")


def test_runtime_works_with_torch_and_open_clip_blocked():
    frames, text = _clip(1)
    path = bundle("int8-trt")
    np.save(path.parent / "frames.npy", frames)
    code = f"""
import sys, json
sys.modules['torch'] = None
sys.modules['open_clip'] = None
import numpy as np
from trml_edge.runtime import Pipeline
pipe = Pipeline({str(path)!r})
frames = np.load({str(path.parent / 'frames.npy')!r})
out = [pipe.predict(frames, {text!r}), pipe.predict(None, {text!r}), pipe.predict(frames, None)]
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision') and sys.modules[m] is not None)
print(json.dumps({{"out": [float(o.output) for o in out], "virtual": [o.virtual_modality for o in out], "loaded": loaded}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["virtual"] == ["", "visual", "text"] and got["loaded"] == []
    pipe = Pipeline(path)  # the same answers as in this process, where torch is loaded
    want = [pipe.predict(frames, text), pipe.predict(None, text), pipe.predict(frames, None)]
    assert got["out"] == pytest.approx([float(o.output) for o in want], abs=1e-6)
