"""A small Prometheus text-format registry (counters, gauges, histograms); no dependency."""

from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(d: dict) -> str:
    if not d:
        return ""
    body = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(d.items())
    )
    return "{" + body + "}"


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.n += 1


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.help: dict[str, tuple[str, str]] = {}
        self.hists: dict[tuple[str, tuple], Histogram] = {}
        self.hist_buckets: dict[str, tuple] = {}
        self._req_keys: dict[tuple[str, int], tuple] = {}

    def describe(self, name: str, kind: str, text: str, buckets=None) -> None:
        self.help[name] = (kind, text)
        if buckets is not None:
            self.hist_buckets[name] = tuple(buckets)

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """`recblr_requests_total` += 1 and one `recblr_request_latency_seconds` observation
        under one lock, with the label keys built once per (endpoint, status)."""
        keys = self._req_keys.get((endpoint, status))
        if keys is None:
            keys = self._req_keys[(endpoint, status)] = (
                ("recblr_requests_total", (("endpoint", endpoint), ("status", str(status)))),
                ("recblr_request_latency_seconds", (("endpoint", endpoint),)),
            )
        ck, hk = keys
        with self._lock:
            self.counters[ck] = self.counters.get(ck, 0.0) + 1.0
            h = self.hists.get(hk)
            if h is None:
                h = self.hists[hk] = Histogram(
                    self.hist_buckets.get("recblr_request_latency_seconds", LATENCY_BUCKETS)
                )
            h.observe(seconds)

    def set(self, name: str, value: float, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = float(value)

    def observe(self, name: str, value: float, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self.hists.get(key)
            if h is None:
                h = self.hists[key] = Histogram(self.hist_buckets.get(name, LATENCY_BUCKETS))
            h.observe(value)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            names = sorted(
                {k[0] for k in self.counters} | {k[0] for k in self.hists} | set(self.help)
            )
            for name in names:
                kind, text = self.help.get(name, ("untyped", ""))
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                for (n, lab), v in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f"{name}{_labels(dict(lab))} {v:g}")
                for (n, lab), h in sorted(self.hists.items(), key=lambda x: x[0]):
                    if n != name:
                        continue
                    acc = 0
                    base = dict(lab)
                    for b, c in zip(h.buckets, h.counts, strict=False):
                        acc += c
                        lines.append(f"{name}_bucket{_labels({**base, 'le': f'{b:g}'})} {acc}")
                    acc += h.counts[-1]
                    lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {acc}")
                    lines.append(f"{name}_sum{_labels(base)} {h.sum:g}")
                    lines.append(f"{name}_count{_labels(base)} {h.n}")
        return "\n".join(lines) + "\n"
