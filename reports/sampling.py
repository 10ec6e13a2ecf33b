"""Reproducible samples of each population, for the auditor's tests of operating effectiveness.

The auditor picks the sample; the tool offers one that anyone can re-perform from the pack alone:

- sample size: the ``sample_size`` pack option (a number, or a table by population name with a
  ``default``), otherwise ``DEFAULT_SIZES`` by population size, which follows the usual firm
  practice for a control's frequency (quarterly 2, monthly 2-5, weekly 5-15, daily 20-40, many
  times a day 25-60);
- method: row *i* of ``populations/<name>.csv`` (data rows numbered from 1; the header is line 1
  of the file, so row *i* is line *i* + 1) gets the key ``SHA-256("<seed>:<name>:<i>")``; the
  sample is the rows with the smallest keys, in key order (the draw order). A larger sample of
  the same seed extends a smaller one. No random-number generator whose stream could change
  between library versions is involved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# (smallest population, largest population or None, sample size, the frequency it corresponds to)
DEFAULT_SIZES: tuple[tuple[int, int | None, int, str], ...] = (
    (1, 4, 2, "quarterly or less often"),
    (5, 12, 3, "monthly"),
    (13, 52, 10, "weekly"),
    (53, 365, 25, "daily"),
    (366, None, 40, "many times a day"),
)

METHOD = ("Row i of populations/<name>.csv (data rows numbered from 1; the header is line 1, "
          "so row i is line i + 1) gets the key SHA-256(\"<seed>:<name>:<i>\"), written as "
          "64 hexadecimal digits. The sample is the rows with the smallest keys, drawn in key "
          "order: no random-number generator is involved, so any tool re-performs it, and a "
          "larger sample of the same seed contains the smaller one.")
REPERFORM = ("import hashlib\n"
             "def sample(seed, name, rows, n):\n"
             "    key = lambda i: hashlib.sha256(f\"{seed}:{name}:{i}\".encode()).hexdigest()\n"
             "    return sorted(range(1, rows + 1), key=key)[:n]   # in draw order")


def default_size(population: int) -> int:
    for low, high, size, _ in DEFAULT_SIZES:
        if population >= low and (high is None or population <= high):
            return min(size, population)
    return 0


@dataclass(frozen=True)
class Sample:
    name: str            # population name: populations/<name>.csv
    population: int      # rows in the population
    size: int
    basis: str           # where the size comes from
    seed: str
    rows: tuple[int, ...]  # 1-based data rows, in draw order

    @property
    def rows_sorted(self) -> list[int]:
        return sorted(self.rows)


def draw(name: str, population: int, size: int, seed: str) -> tuple[int, ...]:
    """The ``size`` rows of ``1..population`` with the smallest SHA-256 keys, in key order."""
    size = max(0, min(size, population))
    if size == 0:
        return ()
    prefix = f"{seed}:{name}:".encode()
    keys = np.empty(population, dtype="S64")
    for i in range(population):
        keys[i] = hashlib.sha256(prefix + str(i + 1).encode()).hexdigest().encode()
    if size < population:
        part = np.argpartition(keys, size - 1)[:size]
    else:
        part = np.arange(population)
    ordered = part[np.argsort(keys[part], kind="stable")]
    return tuple(int(i) + 1 for i in ordered)


def choose_size(name: str, population: int, sample_size: int | dict | None) -> tuple[int, str]:
    """The sample size of one population and where it comes from."""
    if isinstance(sample_size, dict):
        if name in sample_size:
            return min(int(sample_size[name]), population), f"sample_size.{name}"
        if "default" in sample_size:
            return min(int(sample_size["default"]), population), "sample_size.default"
    elif sample_size is not None:
        return min(int(sample_size), population), "sample_size"
    return default_size(population), "default table"


def sample(name: str, population: int, sample_size: int | dict | None, seed: str) -> Sample:
    size, basis = choose_size(name, population, sample_size)
    return Sample(name, population, size, basis, seed, draw(name, population, size, seed))
