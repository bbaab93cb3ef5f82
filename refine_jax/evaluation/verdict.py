"""Did refinement help? A verdict from label-free proxies, and the guard that acts on it.

Each proxy's change from the frozen model to the refined one is a relative change of its mean over
the clips (percent), with a paired bootstrap interval over the clips (the same clips, resampled
together for both models). The rule reads the *gain* (the change signed so that positive is
better) of the proxies it names:

  better       every deciding proxy's gain interval lies above +margin %, and the source drift's
               gain interval does not lie below -drift_tolerance %, over at least MIN_CLIPS clips
  worse        some deciding proxy's gain interval lies below -margin %, or the source drift's does
               below -drift_tolerance %
(with `interval` False, the gain itself stands for its interval)
  cannot tell  otherwise

The guard exports the refined model only on 'better', else the initial one; with checkpoint
selection (eval.select_checkpoint) it judges every kept training checkpoint the same way and
exports the 'better' one that clears the rule by the most (`choose_checkpoint`). Each task kind
(flow, tracks) has its proxies and its rule: the one its shift study chose (python -m
refine_jax.tools.proxy_study --install writes it to the kind's record, RECORDS; the study's
leave-one-shift-out score of this way of choosing, and each proxy's sign agreement with the ground
truth, are in docs/verdict.md), else DEFAULT_RULES.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from refine_jax.evaluation.proxies import direction

BOOTSTRAP = 2000
LEVEL = 0.9  # two-sided interval: 5 % each side
# 'better' needs the deciding proxies measured on at least this many clips: on one the interval is
# the point itself, on two the bootstrap has three distinct means (every study cell had 4-6 clips)
MIN_CLIPS = 3


@dataclasses.dataclass(frozen=True)
class Rule:
    proxies: Tuple[str, ...] = ("kw_epe",)   # the deciding proxies
    margin: float = 0.0                        # % gain each must clear
    drift: str = "source_epe"                  # the source-drift proxy ('' = none)
    drift_tolerance: float = 2.0               # % loss on the source tolerated
    interval: bool = True                      # judge the interval's bounds (False: the change itself)


_HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = {"flow": os.path.join(_HERE, "proxy_record.json"),
           "tracks": os.path.join(_HERE, "proxy_record_tracks.json")}
DEFAULT_RULES = {"flow": Rule(), "tracks": Rule(proxies=("kw_track_err",), drift="source_ate")}


def installed_rule(kind: str = "flow") -> Rule:
    """The rule the kind's shift study chose (its record's 'rule'), else DEFAULT_RULES[kind]."""
    if os.path.exists(RECORDS[kind]):
        with open(RECORDS[kind]) as f:
            r = json.load(f).get("rule")
        if r:
            return Rule(**{**r, "proxies": tuple(r["proxies"])})
    return DEFAULT_RULES[kind]


def paired_change(before: Sequence[float], after: Sequence[float], seed: int = 0) -> Dict[str, float]:
    """The relative change (percent) of the mean from `before` to `after` (per clip, paired), with a
    LEVEL bootstrap interval over the clips: {'change', 'lo', 'hi', 'clips'}. Clips where either
    value is NaN are left out; fewer than two clips give an interval of the point itself."""
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    ok = np.isfinite(b) & np.isfinite(a)
    b, a = b[ok], a[ok]
    if not b.size or not np.mean(b):
        return {"change": float("nan"), "lo": float("nan"), "hi": float("nan"), "clips": int(b.size)}
    change = 100.0 * (a.mean() - b.mean()) / b.mean()
    if b.size < 2:
        return {"change": float(change), "lo": float(change), "hi": float(change), "clips": 1}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, b.size, (BOOTSTRAP, b.size))
    mb, ma = b[idx].mean(1), a[idx].mean(1)
    boot = 100.0 * (ma - mb) / np.where(mb == 0, np.nan, mb)
    lo, hi = np.nanquantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"change": float(change), "lo": float(lo), "hi": float(hi), "clips": int(b.size)}


def gain(name: str, change: Dict[str, float]) -> Tuple[float, float, float]:
    """(gain, lo, hi) in percent: the change signed so that positive means better."""
    if direction(name):
        return -change["change"], -change["hi"], -change["lo"]
    return change["change"], change["lo"], change["hi"]


# proxies measured once over all clips (no per-clip rows, so no interval: it is the change itself)
AGGREGATES = ("cycle_pass", "photometric_error")


def aggregate_changes(before: dict, after: dict, clips: int) -> Dict[str, Dict[str, float]]:
    """The relative change (percent) of each of AGGREGATES present in both metric dicts, as
    `paired_change` gives it, with the change itself for its interval."""
    out = {}
    for k in AGGREGATES:
        b, a = before.get(k), after.get(k)
        if b and a is not None and np.isfinite(b) and np.isfinite(a):
            c = 100.0 * (a - b) / b
            out[k] = {"change": float(c), "lo": float(c), "hi": float(c), "clips": int(clips)}
    return out


def changes(before_rows: List[dict], after_rows: List[dict]) -> Dict[str, Dict[str, float]]:
    """paired_change of every proxy with a direction present in both row lists (same clips, same
    order)."""
    out = {}
    for k in (before_rows[0].keys() if before_rows else ()):
        if direction(k) is None or k not in after_rows[0]:
            continue
        out[k] = paired_change([r[k] for r in before_rows], [r[k] for r in after_rows])
    return out


def decide(ch: Dict[str, Dict[str, float]], rule: Rule) -> Dict[str, object]:
    """{'verdict': 'better' | 'worse' | 'cannot tell', 'because': [one line per deciding proxy],
    'rule': the rule}. A deciding proxy that could not be measured makes it 'cannot tell'."""
    because, votes = [], []
    for name in rule.proxies:
        c = ch.get(name)
        if c is None or not np.isfinite(c["change"]):
            because.append(f"{name}: not measured")
            votes.append(None)
            continue
        g, lo, hi = gain(name, c)
        if not rule.interval:
            lo = hi = g
        vote = "better" if lo > rule.margin else "worse" if hi < -rule.margin else None
        votes.append(vote)
        because.append(f"{name}: {c['change']:+.2f} % [{c['lo']:+.2f}, {c['hi']:+.2f}] over {c['clips']} clips "
                       f"({'gain' if g > 0 else 'loss'}; {vote or 'unclear'} at a {rule.margin:g} % margin)")
    drift_bad = False
    if rule.drift and rule.drift in ch and np.isfinite(ch[rule.drift]["change"]):
        c = ch[rule.drift]
        g, _, hi = gain(rule.drift, c)
        hi = hi if rule.interval else g
        drift_bad = hi < -rule.drift_tolerance
        because.append(f"{rule.drift} (source drift): {c['change']:+.2f} % [{c['lo']:+.2f}, {c['hi']:+.2f}]"
                       f"{' - worse on the source beyond the tolerance' if drift_bad else ''}")
    if drift_bad or "worse" in votes:
        verdict = "worse"
    elif votes and all(v == "better" for v in votes):
        verdict = "better"
        fewest = min(ch[name]["clips"] for name in rule.proxies)
        if fewest < MIN_CLIPS:
            verdict = "cannot tell"
            because.append(f"'better' needs the deciding proxies on at least {MIN_CLIPS} clips; "
                           f"{'one was' if len(rule.proxies) > 1 else 'it was'} measured on {fewest}")
    else:
        verdict = "cannot tell"
    return {"verdict": verdict, "because": because, "rule": dataclasses.asdict(rule)}


def clearance(ch: Dict[str, Dict[str, float]], rule: Rule) -> float:
    """How far the weakest deciding proxy's judged gain (its interval's lower bound, or the gain
    itself without `interval`) lies above the rule's margin, in percentage points; -inf when one
    was not measured. It ranks the checkpoints that `decide` calls 'better'."""
    out = []
    for name in rule.proxies:
        c = ch.get(name)
        if c is None or not np.isfinite(c["change"]):
            return float("-inf")
        g, lo, _ = gain(name, c)
        out.append((lo if rule.interval else g) - rule.margin)
    return min(out) if out else float("-inf")


def choose_checkpoint(judged: List[dict]) -> Optional[dict]:
    """Among judged checkpoints ({'step', 'verdict', 'clearance', ...}), the 'better' one whose
    weakest deciding proxy clears the rule by the most (the later step on a tie); None when no
    checkpoint is 'better'."""
    better = [j for j in judged if j["verdict"] == "better"]
    return max(better, key=lambda j: (j["clearance"], j["step"])) if better else None


def exported_model(verdict: Optional[str], guard: bool) -> str:
    """'refined' or 'initial': the model the guard hands back."""
    return "refined" if (not guard or verdict == "better") else "initial"


def record_lines(kind: str = "flow") -> List[str]:
    """Lines on how well each proxy and the verdict predicted the ground truth in the kind's shift
    study (RECORDS[kind], written by refine_jax.tools.proxy_study), for reading the numbers above."""
    if not os.path.exists(RECORDS[kind]):
        return [f"No study record of the {kind} proxies is installed (refine_jax/evaluation/"
                f"{os.path.basename(RECORDS[kind])}): read the verdict without a track record.", ""]
    with open(RECORDS[kind]) as f:
        rec = json.load(f)
    lines = [f"How these proxies predicted the ground-truth change in the shift study ({rec['cells']} cells, "
             f"{rec['study']}; docs/verdict.md):", "",
             "| proxy | sign agreement | Spearman [90 % interval] | AUC (helped > 1 %) |", "|---|---|---|---|"]
    for name, p in rec["proxies"].items():
        lines.append(f"| {name} | {p['sign_agreement']:.2f} | {p['spearman']:+.2f} [{p['spearman_lo']:+.2f}, "
                     f"{p['spearman_hi']:+.2f}] | {p['auc']:.2f} |")
    lines += ["", f"The verdict, leave-one-shift-out: {rec['verdict']['summary']}", ""]
    return lines
