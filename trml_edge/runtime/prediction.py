"""What the edge runtime answers for one request or one stream update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    output: np.ndarray  # () regression score or (C,) class logits
    virtual_modality: str  # "", "visual" or "text": which embedding the generator produced
    graphs: tuple[str, ...]  # the graphs that actually ran for this request, in order
