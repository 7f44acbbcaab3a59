"""Ingest's progress: a bar with facts/s and an ETA on a terminal, nothing until the summary otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Advances by the input bytes each finished unit read (what the ETA is estimated from) and
    shows the facts read so far and their rate."""

    def __init__(self, total_bytes: int, show: bool | None = None, desc: str = "ingest"):
        self.show = sys.stderr.isatty() if show is None else show
        self.facts = 0
        self.t0 = time.perf_counter()
        self.bar = (
            tqdm(
                total=max(total_bytes, 1),
                desc=desc,
                unit="B",
                unit_scale=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} of input, "
                "{postfix} [{elapsed}<{remaining}]",
                file=sys.stderr,
            )
            if self.show
            else None
        )

    def advance(self, nbytes: int, facts: int) -> None:
        self.facts += facts
        if self.bar is not None:
            rate = self.facts / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.facts:,} facts, {rate:,.0f} facts/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
