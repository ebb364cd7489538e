"""Choices that depend on the machine, made by timing the options on real calls.

Used by the fused modules (per conv: oneDNN or our kernel; per Y block: where the SE gate is
applied) and by the cpu backend's public conv_bn_act (per argument signature), much as
cudnn.benchmark times cuDNN's algorithms on the first call of a shape.
"""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["Trials"]


class Trials:
    """A choice between options that depends on the machine, made by timing them: on the first
    calls of each input signature the options run in turn, 1 + TRIALS times each (the first run
    of each not counted: weight packing, first touch of buffers), and the one with the best time
    is kept. Timed with `clock` (tests replace it). Callers skip it under torch.compile, whose
    graph cannot hold this Python state."""

    TRIALS = 3

    def __init__(self):
        self.chosen = {}   # signature -> index of the option kept
        self.samples = {}  # signature -> seconds per option, while timing
        self.clock = time.perf_counter

    def begin(self, key, options: int) -> None:
        self.samples.setdefault(key, [[] for _ in range(options)])

    def pick(self, key):
        """(option to run, its samples list to record into, or None once the choice is made)."""
        chosen = self.chosen.get(key)
        if chosen is not None:
            return chosen, None
        samples = self.samples.get(key)
        if samples is None:  # another thread made the choice between the two lookups
            return self.chosen[key], None
        option = min(range(len(samples)), key=lambda i: len(samples[i]))
        return option, samples

    def record(self, key, samples, option: int, seconds: float) -> Optional[int]:
        """Add a timing; return the chosen option once every option has its trials, else None."""
        samples[option].append(seconds)
        if any(len(s) <= self.TRIALS for s in samples):
            return None
        chosen = self.chosen[key] = min(range(len(samples)), key=lambda i: min(samples[i][1:]))
        self.samples.pop(key, None)
        return chosen

    def timed(self, key, samples, option: int, run, *args):
        """run(*args), the `option` pick() returned with `samples`, timed and recorded."""
        start = self.clock()
        out = run(*args)
        self.record(key, samples, option, self.clock() - start)
        return out

    def run(self, key, options, *args):
        """(options[i](*args), options[i] once the choice is made, else None), for the option
        pick() gives: while the choice is open each call runs one option, timed. One option is
        no choice. The second value lets a caller keep the settled call (a fused block's plan)."""
        if len(options) == 1:
            return options[0](*args), options[0]
        if key not in self.chosen:
            self.begin(key, len(options))
        option, samples = self.pick(key)
        if samples is None:
            return options[option](*args), options[option]
        return self.timed(key, samples, option, options[option], *args), None

    def clear(self) -> None:
        self.chosen.clear()
        self.samples.clear()
