"""What every training loop here shares: the learning-rate schedule and the progress bar."""

from __future__ import annotations

import math


def warmup_cosine(total: int, warmup: float = 0.1):
    """LR multiplier: linear warm-up over the first ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(total * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return f


def progress_bar(enabled: bool):
    """A started rich progress bar, or None when ``enabled`` is false."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=False)
    bar.start()
    return bar
