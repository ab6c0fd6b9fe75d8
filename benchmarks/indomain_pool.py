"""A pretraining pool with in-domain pairs: the foundation pool plus the training split's clips, unlabelled.

Every frame of every train-split clip is paired with that clip's sentence and appended to the pool's
image/caption pairs. No label is read, and no valid or test clip is used. This is domain-adaptive
contrastive pretraining: the CLIP towers see the labelled set's own sentence templates and videos, which the
face/caption pool (another caption template) does not show them.

    .venv/bin/python benchmarks/indomain_pool.py --data DATA --out POOL
    .venv/bin/trml-edge pretrain POOL --out CLIP
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from trml_edge.data.corpus import open_corpus
from trml_edge.data.video import read_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=8, help="frames read per clip (all of a clip up to this many)")
    ap.add_argument("--per-clip", type=int, default=0,
                    help="pairs per clip: this many of its frames, evenly spaced (0: every frame). One pair per "
                    "clip keeps a clip's shared background from being a shortcut between its frames and sentence")
    args = ap.parse_args()
    images = np.load(args.data / "pretrain" / "images.npy")
    captions = (args.data / "pretrain" / "captions.txt").read_text(encoding="utf-8").splitlines()
    extra_img, extra_cap = [], []
    for r in open_corpus(args.data).records:
        if r.split != "train" or r.video is None or r.problem is not None:
            continue
        frames, mask = read_frames(r.video, args.frames)
        real = frames[mask]
        if args.per_clip > 0:
            real = real[np.unique(np.linspace(0, len(real) - 1, args.per_clip).round().astype(int))]
        for f in real:
            extra_img.append(f)
            extra_cap.append(r.text)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "images.npy", np.concatenate([images, np.stack(extra_img)]))
    (args.out / "captions.txt").write_text("\n".join(captions + extra_cap) + "\n", encoding="utf-8")
    print(f"{len(images)} pool pairs + {len(extra_img)} train-split frame/sentence pairs -> {args.out}")


if __name__ == "__main__":
    main()
