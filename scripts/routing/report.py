"""Metrics over replays, the printed table, the JSON report and the plots.

Definitions (per seed, then mean and standard deviation over seeds):

- **% of oracle**: ``100 * sum(policy utility) / sum(oracle utility)`` over the stream, and over
  the tasks from ``warmup`` on.
- **% gain**: ``100 * (policy - random) / (oracle - random)`` in mean utility: how much of what
  the oracle gains over buying at random a policy gets (% of oracle starts near 85% at random).
- **regret**: the cumulative sum of ``oracle utility - policy utility``, task by task.
- **paired difference**: the judged policy's final regret minus the best baseline's, per seed (both
  replay the same stream), its mean and standard error over seeds, and a verdict: ``ahead`` or
  ``behind`` beyond two standard errors, else ``tie``.
- **win share**: the fraction of tasks a peer was bought from; the liar's per window of
  ``window`` tasks and from ``liar_after`` on.
- **Jain's fairness index** of the win shares over every peer that bid at least once:
  ``(sum x)^2 / (n * sum x^2)``, from 1/n (one peer wins everything) to 1 (even shares).
- **calibration** (from the log, so for every peer, whoever it was bought by): per peer, the mean
  claimed confidence and delivered batch accuracy, the Brier score ``mean((claim - accuracy)^2)``
  and the bias ``mean(claim - accuracy)``; claimed against delivered latency and its MAPE.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .policies import LoggedTask, Step, utility


@dataclass(frozen=True, slots=True)
class Windows:
    warmup: int
    window: int
    liar_after: int
    rolling: int


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def paired(mine: Sequence[float], theirs: Sequence[float], sigmas: float = 2.0) -> dict[str, Any]:
    """``mine - theirs`` paired by seed (both replayed on the same stream): the mean difference,
    its standard error over seeds (``stdev / sqrt(n)``), and a verdict for a lower-is-better
    metric: ``ahead`` (below zero by more than ``sigmas`` standard errors), ``behind`` (above by
    more), else ``tie``. One seed has no standard error: a tie."""
    diffs = [a - b for a, b in zip(mine, theirs, strict=True)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    if se is not None and mean < -sigmas * se:
        verdict = "ahead"
    elif se is not None and mean > sigmas * se:
        verdict = "behind"
    else:
        verdict = "tie"
    return {"diff": mean, "se": se, "sigmas": sigmas, "per_seed": diffs, "verdict": verdict}


def cumulative(values: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def jain(shares: Sequence[float]) -> float:
    squares = sum(x * x for x in shares)
    return sum(shares) ** 2 / (len(shares) * squares) if squares > 0 else 0.0


def seed_metrics(
    steps: Sequence[Step], oracle: Sequence[Step], peers: Sequence[str], liar: str, windows: Windows
) -> dict[str, Any]:
    """Everything one replay of one policy on one seed's stream says."""
    gains = [step.utility for step in steps]
    best = [step.utility for step in oracle]
    after = slice(windows.warmup, None)
    wins = {peer: sum(step.peer == peer for step in steps) / len(steps) for peer in peers}
    liar_windows = [
        sum(step.peer == liar for step in steps[start : start + windows.window])
        / len(steps[start : start + windows.window])
        for start in range(0, len(steps), windows.window)
    ]
    late = steps[windows.liar_after :]
    return {
        "utility": statistics.fmean(gains),
        "pct_oracle": 100.0 * sum(gains) / sum(best),
        "pct_oracle_after_warmup": 100.0 * sum(gains[after]) / sum(best[after]) if best[after] else 100.0,
        "regret": cumulative([b - g for b, g in zip(best, gains, strict=True)]),
        "accuracy": statistics.fmean(step.accuracy for step in steps),
        "cost": statistics.fmean(step.cost for step in steps),
        "latency_ms": statistics.fmean(step.latency_ms for step in steps if step.peer is not None),
        "win_share": wins,
        "jain": jain(list(wins.values())),
        "liar_windows": liar_windows,
        "liar_share_after": sum(step.peer == liar for step in late) / len(late) if late else 0.0,
        "rolling_utility": rolling(gains, windows.rolling),
    }


def rolling(values: Sequence[float], width: int) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= width:
            total -= values[index - width]
        out.append(total / min(index + 1, width))
    return out


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.fmean(column) for column in zip(*curves, strict=True)]


def add_gain_over_random(per_seed: Mapping[str, Sequence[dict[str, Any]]]) -> None:
    """``pct_gain``: the share of the oracle's utility gain over random that a policy achieves,
    ``100 * (policy - random) / (oracle - random)`` per seed. Every good peer scores well on
    latency and cost, so % of oracle utility starts high (random gets ~85%); this one starts at 0."""
    for metrics in per_seed.values():
        for seed, m in enumerate(metrics):
            low, high = per_seed["random"][seed]["utility"], per_seed["oracle"][seed]["utility"]
            m["pct_gain"] = 100.0 * (m["utility"] - low) / (high - low) if high > low else 100.0


def aggregate(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One policy's seed metrics, combined over seeds."""
    scalars = (
        "utility",
        "pct_oracle",
        "pct_oracle_after_warmup",
        "pct_gain",
        "accuracy",
        "cost",
        "latency_ms",
        "jain",
    )
    out: dict[str, Any] = {name: summary([m[name] for m in per_seed]) for name in scalars}
    out["regret_final"] = summary([m["regret"][-1] for m in per_seed])
    out["liar_share_after"] = summary([m["liar_share_after"] for m in per_seed])
    out["win_share"] = {
        peer: statistics.fmean(m["win_share"][peer] for m in per_seed) for peer in per_seed[0]["win_share"]
    }
    out["liar_windows"] = mean_curve([m["liar_windows"] for m in per_seed])
    out["regret_curve"] = mean_curve([m["regret"] for m in per_seed])
    out["regret_curve_min"] = [min(column) for column in zip(*(m["regret"] for m in per_seed), strict=True)]
    out["regret_curve_max"] = [max(column) for column in zip(*(m["regret"] for m in per_seed), strict=True)]
    out["rolling_utility"] = mean_curve([m["rolling_utility"] for m in per_seed])
    out["per_seed"] = {
        name: [m[name] if name != "regret" else m["regret"][-1] for m in per_seed]
        for name in (
            "utility",
            "pct_oracle",
            "pct_oracle_after_warmup",
            "pct_gain",
            "regret",
            "liar_share_after",
        )
    }
    return out


def calibration(log: Sequence[LoggedTask], degrade_task: int | None, degrader: str) -> dict[str, Any]:
    """Claimed against delivered, per peer, over every task it bid on (module docstring)."""
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for task in log:
        for bid in task.bids:
            peer = task.names[bid.peer_id.hex]
            outcome = task.outcomes[peer]
            key = peer
            if peer == degrader and degrade_task is not None:
                key = f"{peer} (after)" if task.index >= degrade_task else f"{peer} (before)"
            rows.setdefault(key, []).append(
                (bid.confidence, outcome.accuracy, bid.expected_latency_ms, outcome.latency_ms)
            )
    table = {}
    for peer, items in sorted(rows.items()):
        claims, delivered, promised, took = (list(column) for column in zip(*items, strict=True))
        table[peer] = {
            "tasks": len(items),
            "claimed_confidence": statistics.fmean(claims),
            "delivered_accuracy": statistics.fmean(delivered),
            "brier": statistics.fmean((c - a) ** 2 for c, a in zip(claims, delivered, strict=True)),
            "bias": statistics.fmean(c - a for c, a in zip(claims, delivered, strict=True)),
            "claimed_latency_ms": statistics.fmean(promised),
            "delivered_latency_ms": statistics.fmean(took),
            "latency_mape": statistics.fmean(
                abs(p - t) / max(t, 1e-3) for p, t in zip(promised, took, strict=True)
            ),
        }
    return table


def peer_utility(log: Sequence[LoggedTask]) -> dict[str, dict[str, float]]:
    """Each peer's mean realized utility and how often it was the per-task best, by source."""
    out: dict[str, dict[str, list[float]]] = {}
    for task in log:
        for peer in task.bidders:
            out.setdefault(peer, {}).setdefault(task.source, []).append(
                utility(task.outcomes[peer], task.ask)
            )
    return {
        peer: {source: statistics.fmean(v) for source, v in sorted(by.items())}
        for peer, by in sorted(out.items())
    }


# --- printing ---------------------------------------------------------------------------------


def table(policies: Mapping[str, Mapping[str, Any]], liar_after: int) -> str:
    header = (
        f"{'policy':<18} {'utility':>8} {'%oracle':>8} {'%or>wu':>8} {'%gain':>7} {'regret':>8} {'±':>5} "
        f"{'acc':>6} {'cost':>7} {'lat ms':>7} {f'liar>{liar_after}':>9} {'Jain':>5}"
    )
    lines = [header, "-" * len(header)]
    for name, m in policies.items():
        lines.append(
            f"{name:<18} {m['utility']['mean']:>8.4f} {m['pct_oracle']['mean']:>7.2f}% "
            f"{m['pct_oracle_after_warmup']['mean']:>7.2f}% {m['pct_gain']['mean']:>6.1f}% {m['regret_final']['mean']:>8.2f} "
            f"{m['regret_final']['std']:>5.2f} {m['accuracy']['mean']:>6.3f} {m['cost']['mean']:>7.4f} "
            f"{m['latency_ms']['mean']:>7.1f} {100 * m['liar_share_after']['mean']:>8.2f}% {m['jain']['mean']:>5.2f}"
        )
    return "\n".join(lines)


def scenario_table(scenarios: Mapping[str, Mapping[str, Any]], judged: str, baselines: Sequence[str]) -> str:
    """One row per scenario: the judged policy's regret against the best baseline's, their paired
    difference over seeds with its standard error and verdict (``paired``: ahead, behind, or a tie
    within two standard errors), the reference bound's regret (``bound``: a simulated market's
    learn-once regret), % of the oracle after warm-up, the liar's share after its task, and whether
    each goal is met."""
    header = (
        f"{'scenario':<19} {'regret':>7} {'best baseline':>15} {'its regret':>10} {'diff':>7} {'± se':>6} "
        f"{'verdict':>7} {'bound':>6} {'%or>wu':>7} {'liar>N':>7}  {'regret<':>7} {'>=95%':>5} {'liar<5%':>7}"
    )
    lines = [header, "-" * len(header)]
    for name, scenario in scenarios.items():
        policies, goals = scenario["policies"], scenario["goals"]
        mine = policies[judged]
        best = min(baselines, key=lambda base: policies[base]["regret_final"]["mean"])
        versus = scenario["versus_best"]
        se = f"{versus['se']:>6.2f}" if versus["se"] is not None else f"{'-':>6}"
        liar = goals.get("liar_share_after_lt_5pct")

        def flag(goal: Mapping[str, Any] | None) -> str:
            return "-" if goal is None else "yes" if goal["met"] else "NO"

        share = f"{100 * liar['value']:>6.2f}%" if liar else f"{'-':>7}"
        bounds = [bound["regret_final"]["mean"] for bound in scenario.get("references", {}).values()]
        bound = f"{min(bounds):>6.2f}" if bounds else f"{'-':>6}"
        lines.append(
            f"{name:<19} {mine['regret_final']['mean']:>7.2f} {best:>15} "
            f"{policies[best]['regret_final']['mean']:>10.2f} {versus['diff']:>+7.2f} {se} {versus['verdict']:>7} "
            f"{bound} {mine['pct_oracle_after_warmup']['mean']:>6.2f}% "
            f"{share}  {flag(goals['regret_below_every_baseline']):>7} "
            f"{flag(goals['pct_oracle_after_warmup_ge_95']):>5} {flag(liar):>7}"
        )
    return "\n".join(lines)


def calibration_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    header = f"{'peer':<20} {'tasks':>5} {'claim':>6} {'acc':>6} {'Brier':>6} {'bias':>6} {'lat claim':>9} {'lat real':>8} {'MAPE':>6}"
    lines = [header, "-" * len(header)]
    for peer, r in rows.items():
        lines.append(
            f"{peer:<20} {r['tasks']:>5} {r['claimed_confidence']:>6.3f} {r['delivered_accuracy']:>6.3f} "
            f"{r['brier']:>6.3f} {r['bias']:>+6.3f} {r['claimed_latency_ms']:>9.1f} {r['delivered_latency_ms']:>8.1f} "
            f"{r['latency_mape']:>6.2f}"
        )
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------


def plot(report: Mapping[str, Any], out: Path, ours: str) -> list[Path]:
    """The learning curves, regret curves, accuracy against cost, and the liar's win share."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    policies = report["policies"]
    events = report["config"]["events"]
    paths = []

    def mark_events(axis: Any) -> None:
        for label, at in events.items():
            if at is not None:
                axis.axvline(at, color="grey", linestyle=":", linewidth=1)
                axis.text(at, axis.get_ylim()[0], f" {label}", va="bottom", fontsize=7, color="grey")

    def style(name: str) -> dict[str, Any]:
        if name == "oracle":
            return {"color": "black", "linestyle": "--", "linewidth": 1.2}
        if name == ours:
            return {"linewidth": 2.4}
        return {"linewidth": 1.0, "alpha": 0.85}

    figure, axis = pyplot.subplots(figsize=(9, 5))
    for name, m in policies.items():
        axis.plot(m["rolling_utility"], label=name, **style(name))
    axis.set(
        xlabel="task",
        ylabel=f"utility (rolling mean of {report['config']['rolling']})",
        title=f"Routing: learning curves (mean of {report['config']['seeds']} seeds)",
    )
    axis.legend(fontsize=8, ncol=2)
    mark_events(axis)
    paths.append(_save(figure, out / "bench_routing_curves.png"))

    figure, axes = pyplot.subplots(1, 2, figsize=(13, 5))
    finals = sorted(m["regret_curve"][-1] for name, m in policies.items() if name != "oracle")
    for axis, zoom in zip(axes, (False, True), strict=True):
        for name, m in policies.items():
            if name == "oracle":
                continue
            line = axis.plot(m["regret_curve"], label=name, **style(name))[0]
            axis.fill_between(
                range(len(m["regret_curve"])),
                m["regret_curve_min"],
                m["regret_curve_max"],
                color=line.get_color(),
                alpha=0.12,
            )
        axis.set(xlabel="task", ylabel="cumulative regret vs the per-task oracle")
        if zoom:  # the best few, whose curves the worst ones squash
            axis.set_ylim(0, 1.5 * finals[min(3, len(finals) - 1)])
            axis.set_title("zoomed on the best", fontsize=9)
        mark_events(axis)
    axes[0].legend(fontsize=8, ncol=2)
    figure.suptitle("Routing: cumulative regret (mean, band = min..max over seeds)")
    paths.append(_save(figure, out / "bench_routing_regret.png"))

    figure, axis = pyplot.subplots(figsize=(7, 5))
    for name, m in policies.items():
        axis.errorbar(
            m["cost"]["mean"],
            m["accuracy"]["mean"],
            xerr=m["cost"]["std"],
            yerr=m["accuracy"]["std"],
            fmt="o",
            label=name,
            color="black" if name == "oracle" else None,
        )
        axis.annotate(
            name,
            (m["cost"]["mean"], m["accuracy"]["mean"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    axis.set(
        xlabel="mean cost per task", ylabel="mean batch accuracy", title="Routing: accuracy against cost"
    )
    paths.append(_save(figure, out / "bench_routing_acc_cost.png"))

    figure, axis = pyplot.subplots(figsize=(9, 4))
    window = report["config"]["window"]
    for name, m in policies.items():
        shares = [100 * s for s in m["liar_windows"]]
        edges = [window * i for i in range(len(shares))] + [len(m["rolling_utility"])]
        axis.step(edges, [*shares, shares[-1]], where="post", label=name, **style(name))
    axis.axhline(5, color="red", linestyle=":", linewidth=1)
    axis.set(
        xlabel=f"task (windows of {window})",
        ylabel="liar's win share (%)",
        title="Routing: the lying peer's win share over time",
    )
    axis.legend(fontsize=8, ncol=2)
    paths.append(_save(figure, out / "bench_routing_liar.png"))
    return paths


def _save(figure: Any, path: Path) -> Path:
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
