"""How much `watch` shows of each message, so that it never falls unboundedly behind.

Pure: a clock reading in, a decision out. Three levels of output, from the richest:
a panel per message, one line per message, and one rate line per second. The pacer steps
down a level as soon as a message waits longer than `behind_after` between being read and
being shown, and steps back up once the richer output would take at most `headroom` of
each second at the rate of the last `calm_for` seconds. What a message costs to show at
each level is measured as it is shown, so the thresholds follow the machine (and the
terminal) rather than a constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Level(IntEnum):
    PANELS = 0
    LINES = 1
    RATE = 2


# What showing one small message costs at each level before any is measured: more than
# bench/inspector.py's `render` case measures (1.8 ms a panel, 13 µs a line), so that the
# first steps up wait for measurements of this machine. The rate level costs a count.
FIRST_COSTS = {Level.PANELS: 0.003, Level.LINES: 0.0003, Level.RATE: 0.000_002}
SMOOTHING = 0.05  # weight of each new cost measurement in the running estimate
OUTLIER = 10  # a measurement counts for at most this many times the estimate


@dataclass
class Pacer:
    level: Level = Level.PANELS
    behind_after: float = 0.5  # seconds a message may wait to be shown before the output steps down
    calm_for: int = 3  # seconds the rate must stay low before the output steps up
    headroom: float = 0.5  # the share of each second the richer output may take, to step up
    costs: dict[Level, float] = field(default_factory=lambda: dict(FIRST_COSTS))
    rate: float = 0.0  # messages a second, over the last whole second
    _second_started: float | None = None
    _this_second: int = 0  # messages arrived in the second under way
    _calm_seconds: int = 0
    _hold_until: float = 0.0  # no step down before this: what the last step gave must have time to show

    def arrived(self, now: float, waited: float) -> None:
        """A message is to be shown, `waited` seconds after it was read; it may step the level down."""
        self._this_second += 1
        if waited > self.behind_after and self.level < Level.RATE and now >= self._hold_until:
            self._step(now, Level(self.level + 1))

    def shown(self, level: Level, seconds: float) -> None:
        """Showing one message at `level` took `seconds`."""
        # One stall (a paused terminal) must not make a level look too dear to come back to.
        seconds = min(seconds, OUTLIER * self.costs[level])
        self.costs[level] += SMOOTHING * (seconds - self.costs[level])

    def tick(self, now: float) -> bool:
        """Called a few times a second: whether a second ended (the rate is new, and the level
        may have stepped up)."""
        if self._second_started is None:
            self._second_started = now
            return False
        elapsed = now - self._second_started
        if elapsed < 1.0:
            return False
        self.rate, self._this_second, self._second_started = self._this_second / elapsed, 0, now
        if self.level != Level.PANELS:
            richer = Level(self.level - 1)
            calm = self.rate * self.costs[richer] <= self.headroom
            self._calm_seconds = self._calm_seconds + 1 if calm else 0
            if self._calm_seconds >= self.calm_for:
                self._step(now, richer)
        return True

    def _step(self, now: float, level: Level) -> None:
        self.level, self._calm_seconds, self._hold_until = level, 0, now + self.behind_after
