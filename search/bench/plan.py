"""The ``[bench]`` table of a config: the analysis of a benchmark table, fixed before its first row is
trained (a pre-registration).

``bench build`` writes it into the table's ``manifest.json`` (``preregistration``) and refuses to
continue a build whose plan changed; ``bench replay`` takes its replay seeds, seed mode and budgets
as defaults and reports its hypotheses first, the ``primary`` ones Holm-corrected as one family.

Hypotheses (strings):

* ``q3:<target>:<sampler>:<budget>:<alternative>`` -- compression-aware search (on ``target``:
  ``compressed`` or ``finetuned``) minus compress-after-NAS, both with ``sampler`` (``tpe``,
  ``random``), at ``budget`` trials;
* ``q1:<metric>:<a>-<b>:<budget>:<alternative>`` -- sampler ``a`` minus sampler ``b`` searching on
  ``metric`` (``trained``, ``compressed``, ``finetuned``);
* ``q2:<target>`` -- the agreement of the trained and ``target`` rankings across independent runs
  minus the test-retest ceiling (estimation: a CI, no test).

``alternative``: ``two-sided`` or ``greater`` (the first arm better; a pre-registered direction).
Every figure is the held-out score of :mod:`search.bench.heldout` with its leave-one-seed-out
jackknife (t with ``seeds - 1`` degrees of freedom).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from mase_lite.config import Config, check_choice, check_range
from mase_lite.errors import ConfigError

from .heldout import SEED_MODES

ALTERNATIVES = ("two-sided", "greater")
Q3_TARGETS = ("compressed", "finetuned")
METRICS = ("trained", "compressed", "finetuned")
SAMPLERS = ("grid", "random", "tpe", "nsga2")
HYPOTHESIS_FORMS = ("q3:<compressed|finetuned>:<sampler>:<budget>:<two-sided|greater>, "
                    "q1:<metric>:<sampler a>-<sampler b>:<budget>:<two-sided|greater> or q2:<compressed|finetuned>")


SEEDS_FORMS = "N (seeds 0..N-1, N >= 1), A-B (seeds A to B, 0 <= A <= B) or a,b,c (distinct non-negative integers)"


def parse_seeds(raw: Any, option: str = "--seeds") -> list[int]:
    """``"200"`` -> 0..199, ``"5000-5199"`` -> 5000..5199, ``"3,7,9"`` -> [3, 7, 9]; one ConfigError naming
    ``option`` and the valid forms otherwise."""
    text = str(raw).strip()
    bad = ConfigError(f"{option} = {raw!r}: give {SEEDS_FORMS}")
    if re.fullmatch(r"\d+", text):
        if int(text) < 1:
            raise bad
        return list(range(int(text)))
    m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise bad
        return list(range(a, b + 1))
    parts = [x.strip() for x in text.split(",")]
    if len(parts) < 2 or not all(re.fullmatch(r"\d+", x) for x in parts) or len(set(map(int, parts))) != len(parts):
        raise bad
    return [int(x) for x in parts]


def parse_hypothesis(text: str, path: str = "hypothesis") -> dict[str, Any]:
    """``"q3:compressed:random:5:greater"`` -> ``{"question": "q3", "target": ..., ...}``; ConfigError if malformed."""
    bad = ConfigError(f"{path} = {text!r}: write {HYPOTHESIS_FORMS}")
    parts = str(text).split(":")
    if parts[0] == "q2" and len(parts) == 2:
        check_choice(path + " (target)", parts[1], list(Q3_TARGETS))
        return {"question": "q2", "target": parts[1], "text": text}
    if parts[0] not in ("q1", "q3") or len(parts) != 5 or not re.fullmatch(r"[1-9]\d*", parts[3]):
        raise bad
    check_choice(path + " (alternative)", parts[4], list(ALTERNATIVES))
    out = {"question": parts[0], "budget": int(parts[3]), "alternative": parts[4], "text": text}
    if parts[0] == "q3":
        check_choice(path + " (target)", parts[1], list(Q3_TARGETS))
        check_choice(path + " (sampler)", parts[2], list(SAMPLERS))
        return {**out, "target": parts[1], "sampler": parts[2]}
    check_choice(path + " (metric)", parts[1], list(METRICS))
    pair = parts[2].split("-")
    if len(pair) != 2 or pair[0] == pair[1]:
        raise bad
    for s in pair:
        check_choice(path + " (sampler)", s, list(SAMPLERS))
    return {**out, "target": parts[1], "a": pair[0], "b": pair[1]}


@dataclasses.dataclass
class BenchPlan(Config):
    """The ``[bench]`` table (module docstring). ``seeds``: the training seeds of the table (``bench build``'s
    default); ``replay_seeds``: as ``bench replay --seeds`` (N, A-B or a,b,c); ``seed_mode``: ``run`` or
    ``arch``; ``budgets``; ``alpha``; ``primary`` and ``secondary`` hypotheses; ``rationale`` and ``power``:
    why this design (free text, and the power calculation's figures)."""

    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    replay_seeds: str = "200"
    seed_mode: str = "run"
    budgets: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20])
    alpha: float = 0.05
    primary: list[str] = dataclasses.field(default_factory=list)
    secondary: list[str] = dataclasses.field(default_factory=list)
    rationale: str = ""
    power: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"{p}seeds = {self.seeds}: give distinct non-negative training seeds")
        parse_seeds(self.replay_seeds, f"{p}replay_seeds")
        check_choice(f"{p}seed_mode", self.seed_mode, list(SEED_MODES))
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ConfigError(f"{p}budgets = {self.budgets}: give positive trial budgets")
        check_range(f"{p}alpha", self.alpha, 1e-6, 0.5)
        for key in ("primary", "secondary"):
            for i, h in enumerate(getattr(self, key)):
                parse_hypothesis(h, f"{p}{key}[{i}]")
