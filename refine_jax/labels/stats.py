"""Label statistics: sums that merge across clips, shards and processes, and their summary
(yield, and the ground-truth error and speed bias of kept labels against all estimates)."""
from __future__ import annotations

def add(stats: dict, key: str, value) -> None:
    stats[key] = stats.get(key, 0) + value


def merge(into: dict, other: dict) -> None:
    for k, v in other.items():
        if isinstance(v, dict):
            merge(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


def precision(g: dict) -> dict:
    """Mean ground-truth error of all estimates and of the kept ones, and the yield, from sums;
    also the mean speed bias (px) of both: |estimate| - |truth| for flow, for tracks the distance
    from the query point travelled by the estimate minus the truth's."""
    out = {"error_all": g["all_sum"] / max(g["all_n"], 1),
           "error_kept": g["kept_sum"] / g["kept_n"] if g["kept_n"] else float("nan"),
           "yield": g["kept_n"] / max(g["all_n"], 1), "n": g["all_n"]}
    if "all_speed_sum" in g:
        out["speed_bias_all"] = g["all_speed_sum"] / max(g["all_n"], 1)
        out["speed_bias_kept"] = g["kept_speed_sum"] / g["kept_n"] if g["kept_n"] else float("nan")
    return out


def summary(stats: dict) -> dict:
    out = dict(stats)
    if stats.get("total"):
        out["yield"] = stats["kept"] / stats["total"]
    g = stats.get("gt")
    if g and g.get("all_n"):
        out["gt_error_all"] = g["all_sum"] / g["all_n"]
        out["gt_error_kept"] = g["kept_sum"] / max(g["kept_n"], 1)
        if g.get("per_speed_bin"):
            out["gt_per_speed_bin"] = {k: precision(v) for k, v in g["per_speed_bin"].items()}
    return out

