"""Progress of long jobs (batch, fine-tune, distil, evaluate): one display, on tqdm.

On a terminal a tqdm bar (count, rate, ETA) redrawn at least every second; in a pipe or a log a
plain line at the start and then every `interval` seconds, with no `\\r`; at the end of every job
one summary line. The rate counts only this run's work since the clock started (`restart_clock`),
so resumed work (`initial`) and model loading do not skew it; elapsed times are the job's own.

    with progress(total=1000, desc="batch", unit="records") as p:
        for chunk in work:
            p.update(len(chunk), errors=n_bad)   # keyword arguments show as `errors=3`
        p.summary("-> out.jsonl")

`mode`: "auto" (bar on a terminal, else lines), "bar", "lines" or "none" (no display; `write` and
the summary still print). `enabled=False` makes everything a no-op (non-zero ranks under torchrun).
`$DISTILKIT_PROGRESS` and `$DISTILKIT_PROGRESS_INTERVAL` give the defaults of `mode` and
`interval` when a caller passes None, so any command can be made to log often (tests, CI).
Thread-safe: worker threads may call `update` while the main thread writes messages.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

MODES = ("auto", "bar", "lines", "none")
DEFAULT_INTERVAL = 10.0
BAR_REFRESH = 1.0  # seconds: the bar's elapsed time and rate keep moving while a batch runs


def _interval(interval: float | None) -> float:
    if interval is None:
        raw = os.environ.get("DISTILKIT_PROGRESS_INTERVAL")
        try:
            interval = float(raw) if raw else DEFAULT_INTERVAL
        except ValueError:
            raise ValueError(f"DISTILKIT_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}") from None
    if not interval > 0:
        raise ValueError(f"progress interval must be positive, got {interval}")
    return float(interval)


def _mode(mode: str | None, stream: TextIO) -> str:
    mode = mode or os.environ.get("DISTILKIT_PROGRESS") or "auto"
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if isatty is not None and isatty() else "lines"
    return mode


def clock(seconds: float) -> str:
    """`1:02:03` / `02:03`, or `?` when unknown (tqdm's own format)."""
    return tqdm.format_interval(seconds) if math.isfinite(seconds) and seconds >= 0 else "?"


class Progress:
    """A job's counter and display; build it with `progress(...)`."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *, initial: int = 0,
                 mode: str | None = None, interval: float | None = None, stream: TextIO | None = None,
                 enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.mode = _mode(mode, self.stream) if enabled else "none"
        self.interval = _interval(interval)
        self.desc, self.unit = desc, unit
        self.total = total
        self.n = self.initial = self._n0 = int(initial)  # _n0: the count when the clock started
        self.fraction = self._fraction0 = 0.0
        self._fraction_count: int | None = None  # units in `fraction` of the input, when told
        self.postfix: dict[str, Any] = {}
        self._t0 = self._started = time.monotonic()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._closed = False
        self._bar: tqdm | None = None
        if self.mode == "bar":
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=f" {unit}", file=self.stream,
                             dynamic_ncols=True, mininterval=0.2, smoothing=0.1, leave=True)
        elif self.mode == "lines":
            self._line()  # a line at the start: the job is alive and what it will count
        self._timer: threading.Thread | None = None
        if self.mode in ("bar", "lines"):
            self._timer = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._timer.start()

    # ------------------------------------------------------------------ counting
    def update(self, n: int = 1, **postfix: Any) -> None:
        """`n` more units finished; keyword arguments replace those shown after the rate."""
        with self._lock:
            self.n += n
            if postfix:
                self.postfix.update(postfix)
            if self._bar is not None:
                if postfix:
                    self._bar.set_postfix(self.postfix, refresh=False)
                self._estimate_total()
                self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def set_fraction(self, fraction: float, count: int | None = None) -> None:
        """Share of the input consumed (bytes read), for an ETA while the total count is unknown;
        `count`: the units that share holds, when the count runs ahead of it (work in flight)."""
        with self._lock:
            if fraction >= self.fraction and count is not None:
                self._fraction_count = count
            self.fraction = max(self.fraction, min(float(fraction), 1.0))
            if self.n == self._n0:  # nothing counted yet this run: skipped input is not this run's work
                self._fraction0 = self.fraction

    def set_postfix(self, **postfix: Any) -> None:
        with self._lock:
            self.postfix.update(postfix)
            if self._bar is not None:
                self._bar.set_postfix(self.postfix, refresh=False)

    def restart_clock(self) -> None:
        """Rate and ETA count from now (call it once the model is loaded)."""
        with self._lock:
            self._t0 = time.monotonic()
            self._n0 = self.n
            self._fraction0 = self.fraction
            if self._bar is not None:
                self._bar.unpause()  # tqdm's own "the time since the last draw was not work"

    # ------------------------------------------------------------------ reading
    @property
    def elapsed(self) -> float:
        """Seconds since the clock started (what the rate divides by)."""
        return time.monotonic() - self._t0

    @property
    def wall(self) -> float:
        """Seconds since the job's display began (what `elapsed` shows and the summary reports)."""
        return time.monotonic() - self._started

    @property
    def counted(self) -> int:
        """Units finished since the clock started (not resumed ones)."""
        return self.n - self._n0

    @property
    def rate(self) -> float | None:
        """Units per second since the clock started; None before the first one."""
        elapsed = self.elapsed
        return self.counted / elapsed if self.counted > 0 and elapsed > 0 else None

    @property
    def eta(self) -> float:
        """Seconds left: by the count when the total is known, else by the share of input consumed."""
        rate = self.rate
        if self.total is not None:
            return max(self.total - self.n, 0) / rate if rate else math.inf
        gained = self.fraction - self._fraction0
        return self.elapsed * (1.0 - self.fraction) / gained if gained > 0 and self.counted else math.inf

    def status(self) -> str:
        """One plain line: `desc: 45% 450/1,000 records | 12.3 records/s | elapsed 00:36 | ETA 00:44 | errors=0`."""
        with self._lock:
            share = self.n / self.total if self.total else (self.fraction if self.fraction else None)
            count = f"{self.n:,}/{self.total:,}" if self.total is not None else f"{self.n:,}"
            rate = self.rate
            parts = [(f"{share:.0%} " if share is not None else "") + f"{count} {self.unit}",
                     f"{rate:,.1f} {self.unit}/s" if rate is not None else f"- {self.unit}/s",
                     f"elapsed {clock(self.wall)}",
                     f"ETA {clock(self.eta)}"]
            parts += [f"{key}={_fmt(value)}" for key, value in self.postfix.items()]
            return (f"{self.desc}: " if self.desc else "") + " | ".join(parts)

    # ------------------------------------------------------------------ writing
    def write(self, text: str) -> None:
        """A message line that leaves the bar intact (printed in every mode while enabled)."""
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None and not self._closed:
                self._bar.write(text, file=self.stream)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def summary(self, text: str = "") -> str:
        """Close the display and print the job's one summary line: what this run counted, in how
        long, at what rate (left out when this run counted nothing, e.g. a join-only rerun), then
        `text`. Returns the line."""
        self.close()
        took = f"in {clock(self.wall)}" if self.wall >= 60 else f"in {self.wall:.1f}s"
        line = f"{self.counted:,} {self.unit} {took}"
        if self.rate is not None:  # over the time since the clock started: model loading left out
            line += f" ({self.rate:,.1f} {self.unit}/s)"
        if self.initial:
            line += f", {self.initial:,} resumed"
        extra = [f"{key}={_fmt(value)}" for key, value in self.postfix.items()]
        line = (f"{self.desc}: " if self.desc else "") + "done: " + ", ".join([line, *extra])
        if text:
            line += "; " + text
        self.write(line)
        return line

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if self._bar is not None:
                self._estimate_total()
                self._bar.refresh()
                self._bar.close()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=2.0)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _line(self) -> None:
        self.stream.write(self.status() + "\n")
        self.stream.flush()

    def _tick(self) -> None:
        every = BAR_REFRESH if self.mode == "bar" else self.interval
        while not self._stop.wait(every):
            with self._lock:
                if self._closed:
                    return
                if self._bar is not None:
                    self._estimate_total()
                    self._bar.refresh()
                else:
                    self._line()

    def _estimate_total(self) -> None:
        # the bar needs a total for its percentage and ETA: estimate it from the share of input read
        if self._bar is not None and self.total is None and self.fraction > 0:
            count = self.n if self._fraction_count is None else self._fraction_count
            self._bar.total = max(self.n, int(round(count / self.fraction)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def progress(total: int | None = None, desc: str = "", unit: str = "it", **options: Any) -> Progress:
    """A `Progress` (a context manager): see the module docstring for the options."""
    return Progress(total, desc, unit, **options)
