"""How well does each label-free proxy predict the ground-truth change? And the verdict?

  python -m refine_jax.tools.proxy_study --studies=runs/study_raft[,docs/verdict_study.json] \
      [--out=docs/verdict] [--install]

Reads every finished cell (WORKDIR/<shift>_<severity>/seed<seed>/eval/metrics.json) of the shift
studies given (refine_jax.tools.study, run with the proxies on), or the cells an earlier OUT.json
recorded (its 'cell_records'; so that a study grows by seeds across runs without keeping every
cell's folder), and per cell the ground-truth
metric's change from before to after refinement beside each proxy's (evaluation/proxies.py). Per
proxy: sign agreement (all cells, and those whose ground-truth change is at least 1 %), Spearman's
rank correlation with a bootstrap interval over cells, and ROC-AUC for 'helped by more than 1 %'.

The verdict rule (evaluation/verdict.py: deciding proxies, margin, drift tolerance) is chosen by
leave-one-shift-out cross-validation: for each shift, the candidate rule with the best guard
utility on the other shifts' cells (first fewest cells made more than 1 % worse, then the largest
mean gain of the exported model) is scored on this shift's cells. Reported: the verdict's sign
agreement over the cells with a ground-truth change of at least 1 % (a 'cannot tell' counts as a
miss; also the share decided), and the guard: the mean change of the exported model (refined on
'better', else the initial model, change 0) against always exporting the refined one, and the
worst cell. Writes OUT.md, OUT.json and OUT.png (scatter of each proxy's gain against the
ground-truth gain); --install also writes the record the reports quote
(refine_jax/evaluation/proxy_record.json) with the rule chosen on all cells.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
from typing import Dict, List, Optional

import numpy as np
from absl import flags

from refine_jax import fs
from refine_jax.evaluation import verdict as verdict_lib
from refine_jax.evaluation.proxies import direction

# candidates per task kind: single proxies and pairs, margins (% gain), drift tolerances (% loss;
# inf = ignored), judged on the bootstrap interval (first: preferred on a tie) or on the change itself
DECIDING = {"flow": ("kw_epe", "fb_auc", "fb_1px", "fb_atc", "chain_err", "chain_rel", "cycle_pass",
                     "photometric_error"),
            "tracks": ("kw_track_err", "fb_auc", "fb_1px", "requery_err", "requery_rel", "cycle_pass",
                       "photometric_error")}
DRIFT = {"flow": "source_epe", "tracks": "source_ate"}
MARGINS = (0.0, 0.5, 1.0, 2.0, 5.0)
DRIFT_TOLERANCES = (float("inf"), 5.0, 2.0)
HARM = 1.0  # % : a cell whose exported model is worse than this counts as harmed


def define_flags() -> None:
    flags.DEFINE_list("studies", None, "shift study folders, or an earlier run's OUT.json (its cell records)")
    flags.DEFINE_string("out", "docs/verdict", "output path without extension")
    flags.DEFINE_bool("install", False, "also write the task kind's record (refine_jax/evaluation/"
                      "proxy_record*.json, verdict.RECORDS)")
    flags.DEFINE_string("describe", "", "--install: what the studies were, for the reports (default: their folders)")


CELL = re.compile(r"(?P<shift>[a-z_]+)_(?P<sev>[\d.]+)/seed(?P<seed>\d+)/eval/metrics\.json$")


def _recorded_cells(path: str) -> List[dict]:
    """The cell records an earlier report wrote to `path` (OUT.json, `report`'s 'cell_records')."""
    try:
        rec = fs.read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable proxy-study report ({e})") from e
    if not isinstance(rec, dict) or not isinstance(rec.get("cell_records"), list):
        raise ValueError(f"{path}: expected a proxy-study report (OUT.json) with 'cell_records'; it has none "
                         f"(reports written before 2026-12-06 recorded only the gains: rerun their study)")
    return rec["cell_records"]


def read_cells(studies: List[str]) -> List[dict]:
    """One dict per finished cell with its proxies: {'shift', 'severity', 'seed', 'study', 'kind',
    'metric', 'lower_is_better', 'before', 'after' (its values), 'gt_change' (percent), 'changes'
    {proxy: {'change', 'lo', 'hi', 'clips'}}}, from study folders and earlier reports (.json). The
    same cell (shift, severity, seed) from two sources is an error: which one counts is not ours to
    guess."""
    out = []
    for root in studies:
        if root.endswith(".json"):
            out.extend(_recorded_cells(root))
            continue
        for path in sorted(glob.glob(os.path.join(root, "*", "seed*", "eval", "metrics.json"))):
            m = CELL.search(path.replace(os.sep, "/"))
            r = fs.read_json(path)
            if not m or not r.get("after") or not r.get("proxy_changes"):
                continue
            p = r["primary"]
            b, a = r["before"][p], r["after"][p]
            ch = {k: v for k, v in r["proxy_changes"].items() if v.get("change") is not None}
            ch.update(verdict_lib.aggregate_changes(r["before"], r["after"], r["clips"]))
            out.append({"shift": m["shift"], "severity": float(m["sev"]), "seed": int(m["seed"]), "study": root,
                        "kind": r.get("kind", "flow"), "metric": p, "lower_is_better": r["lower_is_better"],
                        "before": b, "after": a,
                        "gt_change": 100.0 * (a - b) / b, "changes": ch})
    seen = {}
    for c in out:
        key = (c["shift"], c["severity"], c["seed"])
        if key in seen:
            raise ValueError(f"cell {c['shift']} {c['severity']:g} seed {c['seed']} is in both {seen[key]} and "
                             f"{c['study']}: give each cell once")
        seen[key] = c["study"]
    return out


def gt_gain(cell: dict) -> float:
    """The ground-truth change signed so that positive is better (percent)."""
    return -cell["gt_change"] if cell["lower_is_better"] else cell["gt_change"]


def proxy_gain(cell: dict, name: str) -> float:
    c = cell["changes"].get(name)
    return verdict_lib.gain(name, c)[0] if c else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN under 3 points or a constant side."""
    from scipy import stats
    if len(x) < 3:
        return float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of `score` for the boolean `positive` (ties count half); NaN with one class."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def proxy_table(cells: List[dict], seed: int = 0) -> Dict[str, dict]:
    names = sorted({k for c in cells for k in c["changes"] if direction(k) is not None})
    g = np.array([gt_gain(c) for c in cells])
    big = np.abs(g) >= 1.0
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        x = np.array([proxy_gain(c, name) for c in cells])
        ok = np.isfinite(x)
        xs, gs = x[ok], g[ok]
        boots = []
        for _ in range(1000):
            i = rng.integers(0, len(xs), len(xs))
            boots.append(spearman(xs[i], gs[i]))
        boots = np.array(boots)
        lo, hi = np.quantile(boots[np.isfinite(boots)], [0.05, 0.95]) if np.isfinite(boots).any() else (np.nan, np.nan)
        agree = np.sign(xs) == np.sign(gs)
        out[name] = {"cells": int(ok.sum()), "sign_agreement": float(agree.mean()) if len(xs) else float("nan"),
                     "sign_agreement_1pct": float(agree[big[ok]].mean()) if big[ok].any() else float("nan"),
                     "spearman": spearman(xs, gs), "spearman_lo": float(lo), "spearman_hi": float(hi),
                     "auc": auc(xs, gs > 1.0)}
    return out


def kind_of(cells: List[dict]) -> str:
    """The task kind of the cells ('flow' or 'tracks'); a mix is an error (one rule per kind)."""
    kinds = sorted({c["kind"] for c in cells})
    if len(kinds) != 1:
        raise ValueError(f"the studies mix task kinds ({', '.join(kinds)}): score flow and tracks separately")
    return kinds[0]


def candidate_rules(kind: str) -> List[verdict_lib.Rule]:
    sets = [(p,) for p in DECIDING[kind]] + list(itertools.combinations(DECIDING[kind], 2))
    return [verdict_lib.Rule(proxies=s, margin=m, drift=DRIFT[kind] if np.isfinite(t) else "",
                             drift_tolerance=t if np.isfinite(t) else 0.0, interval=i)
            for i in (True, False) for s in sets for m in MARGINS for t in DRIFT_TOLERANCES]


def apply(rule: verdict_lib.Rule, cells: List[dict]) -> List[str]:
    return [verdict_lib.decide(c["changes"], rule)["verdict"] for c in cells]


def utility(verdicts: List[str], cells: List[dict]) -> tuple:
    """The guard's worth on `cells`, compared lexicographically as the issue orders its promises:
    first fewer cells whose exported model is more than HARM % worse than the initial one, then a
    larger mean ground-truth gain of the exported model (the refined one on 'better', else the
    initial one, gain 0)."""
    gains = np.array([gt_gain(c) if v == "better" else 0.0 for v, c in zip(verdicts, cells)])
    return (-int(np.sum(gains < -HARM)), float(gains.mean()))


def best_rule(cells: List[dict], kind: str) -> verdict_lib.Rule:
    """The candidate with the best utility on `cells` (ties: the first, i.e. the simplest)."""
    scored = [(utility(apply(r, cells), cells), -k, r) for k, r in enumerate(candidate_rules(kind))]
    return max(scored, key=lambda t: (*t[0], t[1]))[2]


def leave_one_shift_out(cells: List[dict], kind: str) -> dict:
    """Each shift's cells judged by the rule chosen on the other shifts' cells."""
    verdicts: List[Optional[str]] = [None] * len(cells)
    chosen = {}
    for shift in sorted({c["shift"] for c in cells}):
        train = [c for c in cells if c["shift"] != shift]
        rule = best_rule(train, kind) if train else verdict_lib.installed_rule(kind)
        chosen[shift] = rule
        for i, c in enumerate(cells):
            if c["shift"] == shift:
                verdicts[i] = verdict_lib.decide(c["changes"], rule)["verdict"]
    return {"verdicts": verdicts, "rules": chosen}


def score(verdicts: List[str], cells: List[dict]) -> dict:
    g = np.array([gt_gain(c) for c in cells])
    big = np.abs(g) >= 1.0
    right = np.array([(v == "better" and x > 0) or (v == "worse" and x < 0) for v, x in zip(verdicts, g)])
    decided = np.array([v != "cannot tell" for v in verdicts])
    exported = np.where([v == "better" for v in verdicts], g, 0.0)
    # the metric's own units: how much worse than the initial model the handed-back model is
    worse_by = np.array([(c["after"] - c["before"]) * (1 if c["lower_is_better"] else -1) for c in cells])
    return {"cells": len(cells), "cells_1pct": int(big.sum()),
            "agreement_1pct": float(right[big].mean()) if big.any() else float("nan"),
            "agreement_decided_1pct": float(right[big & decided].mean()) if (big & decided).any() else float("nan"),
            "decided_1pct": float(decided[big].mean()) if big.any() else float("nan"),
            "counts": {k: int(sum(v == k for v in verdicts)) for k in ("better", "worse", "cannot tell")},
            # changes (percent, lower is better for the metric) of what is handed back
            "mean_change_refined": float(np.mean(-g)), "mean_change_exported": float(np.mean(-exported)),
            "worst_change_refined": float(np.max(-g)), "worst_change_exported": float(np.max(-exported)),
            "worst_worse_by_refined": float(np.max(worse_by)),
            "worst_worse_by_exported": float(np.max(np.where([v == "better" for v in verdicts], worse_by, 0.0)))}


def summary_line(s: dict) -> str:
    return (f"sign agreement {100 * s['agreement_1pct']:.0f} % over the {s['cells_1pct']} cells whose "
            f"ground-truth change is >= 1 % ('cannot tell' a miss; {100 * s['decided_1pct']:.0f} % decided, "
            f"{100 * s['agreement_decided_1pct']:.0f} % of those right); exported model: mean change "
            f"{s['mean_change_exported']:+.2f} % (always refined: {s['mean_change_refined']:+.2f} %), worst cell "
            f"{s['worst_change_exported']:+.2f} % (always refined: {s['worst_change_refined']:+.2f} %); worst cell in "
            f"the metric's units {s['worst_worse_by_exported']:+.4f} worse (always refined: "
            f"{s['worst_worse_by_refined']:+.4f})")


def scatter(cells: List[dict], names: List[str], path: str) -> None:
    import io
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    g = np.array([gt_gain(c) for c in cells])
    for ax, name in zip(axes.ravel(), names):
        x = np.array([proxy_gain(c, name) for c in cells])
        ax.scatter(x, g, s=12)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{name} gain %", fontsize=8)
        ax.set_ylabel("ground-truth gain %", fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    fs.write_bytes_atomic(path, buf.getvalue())
    plt.close(fig)


def report(cells: List[dict]) -> dict:
    kind = kind_of(cells)
    table = proxy_table(cells)
    loso = leave_one_shift_out(cells, kind)
    final = best_rule(cells, kind)
    return {"kind": kind, "metric": cells[0]["metric"], "cells": len(cells), "proxies": table,
            "loso": score(loso["verdicts"], cells),
            "loso_rules": {k: r.__dict__ for k, r in loso["rules"].items()},
            "installed_rule": verdict_lib.installed_rule(kind).__dict__,
            "fixed_rule": score(apply(verdict_lib.installed_rule(kind), cells), cells),
            "chosen_rule": final.__dict__, "per_cell": [
                {"shift": c["shift"], "severity": c["severity"], "seed": c["seed"], "gt_change": c["gt_change"],
                 "loso_verdict": v, **{k: proxy_gain(c, k) for k in table}} for c, v in zip(cells, loso["verdicts"])],
            "cell_records": cells}


def markdown(rep: dict) -> str:
    lines = ["| proxy | cells | sign agreement | sign agreement (GT change >= 1 %) | Spearman [90 %] | AUC (helped > 1 %) |",
             "|---|---|---|---|---|---|"]
    for name, p in rep["proxies"].items():
        lines.append(f"| {name} | {p['cells']} | {p['sign_agreement']:.2f} | {p['sign_agreement_1pct']:.2f} | "
                     f"{p['spearman']:+.2f} [{p['spearman_lo']:+.2f}, {p['spearman_hi']:+.2f}] | {p['auc']:.2f} |")
    lines += ["", f"Verdict, leave-one-shift-out: {summary_line(rep['loso'])}.", "",
              f"Verdict with the installed rule {rep['installed_rule']} (in-sample where it was chosen on these cells): "
              f"{summary_line(rep['fixed_rule'])}.", "",
              f"Rule chosen on all cells: {rep['chosen_rule']}.", "",
              "| shift | severity | seed | GT change % | LOSO verdict |", "|---|---|---|---|---|"]
    for c in rep["per_cell"]:
        lines.append(f"| {c['shift']} | {c['severity']:g} | {c['seed']} | {c['gt_change']:+.2f} | {c['loso_verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    f = flags.FLAGS
    cells = read_cells(f.studies)
    if not cells:
        raise SystemExit(f"no finished cell with proxies under {', '.join(f.studies)}")
    rep = report(cells)
    text = markdown(rep)
    print(text)
    fs.write_text_atomic(f.out + ".md", text)
    fs.write_json_atomic(f.out + ".json", rep)
    scatter(cells, list(rep["proxies"]), f.out + ".png")
    if f.install:
        record = {"study": f.describe or ", ".join(f.studies), "cells": rep["cells"],
                  "proxies": rep["proxies"], "rule": rep["chosen_rule"],
                  "verdict": {"summary": summary_line(rep["loso"]), **rep["loso"]}}
        fs.write_json_atomic(verdict_lib.RECORDS[rep["kind"]], json.loads(json.dumps(record)))


if __name__ == "__main__":
    from refine_jax import cli
    define_flags()
    cli.absl_run(main, required=["studies"])
