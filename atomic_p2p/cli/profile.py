"""``atomic profile``: what the requester has learned about each peer, and how peers moved over time.

From the requester's store: the newest profile per (peer, model, capability) (outcome
posterior, latency quantiles, calibration), the specializations they reveal, the payments per
peer, each peer's price per example over time (from the bid log), the expected accuracy over
time (from the profile snapshots), and any strategy observations (``observations`` table).
``--plot`` draws each quantity over time in a panel of its own (price per example, expected
accuracy, each observation series), one colour per peer, one legend outside (matplotlib, Agg).

The numbers come from the profiler's own code (:mod:`atomic_p2p.requester.profiler`), so the
table shows what the evaluator sees; that import brings torch in, which is why it happens in
:func:`handle` and not at import time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.stored import add_store_argument, open_store, resolve_peer
from atomic_p2p.cli.tables import clock, number, short, table
from atomic_p2p.errors import ConfigError
from atomic_p2p.store import Store

if TYPE_CHECKING:
    from atomic_p2p.requester.profiler import Profile, ProfilerConfig

HISTORY = 1000  # points per series read from the store


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="show what the requester has learned about each peer, and how prices moved",
        description="Print the requester's profile of each peer (outcome posterior, latency, "
        "calibration, specializations, payments) and each peer's prices and expected accuracy "
        "over time, from its store.",
    )
    add_store_argument(parser)
    parser.add_argument("--peer", metavar="HEX", help="only this peer (its id, or a unique prefix of it)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also draw price, expected accuracy and observations over time, one panel each, to PNG",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> ExitCode:
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot writes a PNG; name the file *.png, not {args.plot.name}")
    from atomic_p2p.requester.profiler import ProfilerConfig

    with open_store(args.store) as store:
        view = collect(store, resolve_peer(store, args.peer), ProfilerConfig())
    if args.plot is not None:
        plot(view, args.plot)
    print(json.dumps(view, indent=2) if args.json else render_text(view))
    return ExitCode.OK


# --- gathering ---------------------------------------------------------------------------------


def collect(store: Store, peer: str | None, config: ProfilerConfig) -> dict[str, Any]:
    """Everything the command shows, as one JSON-able document (what ``--json`` prints)."""
    from atomic_p2p.requester.profiler import Profile, specializations

    everyone = [Profile.from_dict(record.snapshot) for record in store.latest_profiles()]
    chosen = [profile for profile in everyone if peer is None or profile.key.peer == peer]
    return {
        "store": str(store.path),
        "peer": peer,
        "counts": store.counts(),
        "profiles": [_profile_json(profile, config) for profile in chosen],
        # Against every profile: a specialty is a lift over the whole population.
        "specializations": [
            {
                "peer": s.key.peer,
                "model_id": s.key.model_id,
                "capability": s.key.capability,
                "bucket": s.bucket,
                "mean": s.mean,
                "population_mean": s.population_mean,
                "lift": s.lift,
                "evidence": s.evidence,
            }
            for s in specializations(everyone, config)
            if peer is None or s.key.peer == peer
        ],
        "payments": store.ledger_totals(peer=peer),
        "prices": _prices(store, peer),
        "accuracy": _accuracy(store, chosen),
        "observations": _observations(store, peer),
    }


def _profile_json(profile: Profile, config: ProfilerConfig) -> dict[str, Any]:
    calibration = profile.calibration

    def mean(name: str) -> float | None:
        running = getattr(calibration, name)
        return running.mean if running.count else None

    return {
        "peer": profile.key.peer,
        "model_id": profile.key.model_id,
        "capability": profile.key.capability,
        "updated_ms": profile.updated_ms,
        "outcomes": profile.outcomes,
        "deliveries": profile.deliveries,
        "posterior": [profile.quality.alpha, profile.quality.beta],
        "mean": profile.quality.mean,
        "evidence": profile.quality.evidence(config),
        "latency_ms": {
            "p50": profile.latency.quantile(0.5),
            "p90": profile.latency.quantile(0.9),
            "samples": len(profile.latency.samples),
        },
        "calibration": {
            "brier": mean("brier"),
            "confidence_bias": mean("confidence_bias"),
            "latency_mape": mean("latency_ape"),
            "cost_mape": mean("cost_ape"),
        },
        "buckets": {
            bucket: {"mean": posterior.mean, "evidence": posterior.evidence(config)}
            for bucket, posterior in sorted(profile.buckets.items())
        },
    }


def _prices(store: Store, peer: str | None) -> list[dict[str, Any]]:
    """Per (peer, model, capability): every logged bid's cost, batch and price per example."""
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for bid in store.bid_history(peer=peer, limit=HISTORY * 10):
        batch = bid.fields.get("batch")
        per_example = (
            bid.cost / batch if isinstance(batch, int) and batch > 0 and bid.cost is not None else None
        )
        series.setdefault((bid.peer, bid.model_id, bid.capability), []).append(
            {
                "at_ms": bid.at_ms,
                "cost": bid.cost,
                "batch": batch,
                "per_example": per_example,
                "confidence": bid.confidence,
                "latency_ms": bid.expected_latency_ms,
                "strategy": bid.strategy,
            }
        )
    return [
        {"peer": key[0], "model_id": key[1], "capability": key[2], "points": points[-HISTORY:]}
        for key, points in sorted(series.items())
    ]


def _accuracy(store: Store, profiles: Sequence[Profile]) -> list[dict[str, Any]]:
    """Per profile key: the posterior mean in every stored snapshot (the expected accuracy). A
    snapshot a delivery wrote without an outcome repeats the mean: the line stays flat there
    rather than skipping it (skipping drew ten snapshots as one lone point)."""
    found = []
    for profile in profiles:
        key = profile.key
        history = store.profile_history(
            key.peer, model_id=key.model_id, capability=key.capability, limit=HISTORY
        )
        points: list[dict[str, Any]] = []
        for record in history:
            alpha, beta = (float(x) for x in record.snapshot["quality"])
            outcomes = int(record.snapshot.get("outcomes", 0))
            points.append({"at_ms": record.at_ms, "mean": alpha / (alpha + beta), "outcomes": outcomes})
        found.append(
            {"peer": key.peer, "model_id": key.model_id, "capability": key.capability, "points": points}
        )
    return found


def _observations(store: Store, peer: str | None) -> list[dict[str, Any]]:
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for observed in store.observations(peer=peer, limit=HISTORY * 10):
        point = {"at_ms": observed.at_ms, "value": observed.value, "detail": dict(observed.detail)}
        series.setdefault((observed.peer, observed.model_id, observed.name), []).append(point)
    return [
        {"peer": key[0], "model_id": key[1], "name": key[2], "points": points[-HISTORY:]}
        for key, points in sorted(series.items())
    ]


# --- text ----------------------------------------------------------------------------------------


def render_text(view: Mapping[str, Any]) -> str:
    counts = view["counts"]
    lines = [
        f"store {view['store']}: {counts['decisions']} decisions, {counts['bids']} bids, "
        f"{counts['profiles']} profile snapshots, {counts['ledger']} payments, "
        f"{counts['observations']} observations" + (f"; peer {view['peer']}" if view["peer"] else ""),
        "",
    ]
    sections = (
        ("learned (newest profile per peer, model, capability)", _profile_rows(view["profiles"])),
        ("specializations (beats the population's mean by >= 0.05 with >= 5 outcomes)", _specialty_rows(view)),
        ("payments", _payment_rows(view["payments"])),
        ("over time (price per example from the bid log; expected accuracy from the profiles)", _trend_rows(view)),
        ("strategy observations", _observation_rows(view["observations"])),
    )  # fmt: skip
    for title, rendered in sections:
        lines += [title, *(rendered or ["  (none yet)"]), ""]
    return "\n".join(lines).rstrip()


def _profile_rows(profiles: Sequence[Mapping[str, Any]]) -> list[str]:
    headers = [
        "peer", "model", "capability", "outcomes", "mean", "evidence", "p50 ms", "p90 ms",
        "brier", "conf bias", "lat MAPE", "cost MAPE", "updated",
    ]  # fmt: skip
    rows = [
        [
            short(p["peer"]), p["model_id"], p["capability"], str(p["outcomes"]), number(p["mean"]),
            number(p["evidence"], 1), number(p["latency_ms"]["p50"], 1), number(p["latency_ms"]["p90"], 1),
            number(p["calibration"]["brier"]), number(p["calibration"]["confidence_bias"]),
            number(p["calibration"]["latency_mape"], 2), number(p["calibration"]["cost_mape"], 2),
            clock(p["updated_ms"]),
        ]
        for p in profiles
    ]  # fmt: skip
    return table(headers, rows, right=set(range(3, 12))) if rows else []


def _specialty_rows(view: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            short(s["peer"]), s["model_id"], s["capability"], s["bucket"] or "(all inputs)",
            number(s["mean"]), number(s["population_mean"]), f"{s['lift']:+.3f}", number(s["evidence"], 1),
        ]
        for s in view["specializations"]
    ]  # fmt: skip
    headers = ["peer", "model", "capability", "bucket", "mean", "population", "lift", "evidence"]
    return table(headers, rows, right={4, 5, 6, 7}) if rows else []


def _payment_rows(payments: Mapping[str, Mapping[str, float]]) -> list[str]:
    kinds = ["charge", "probe", "refund"]
    rows = [
        [short(peer), *(number(totals.get(kind), 4) for kind in kinds), number(sum(totals.values()), 4)]
        for peer, totals in payments.items()
    ]
    return table(["peer", *kinds, "total"], rows, right={1, 2, 3, 4}) if rows else []


def _trend_rows(view: Mapping[str, Any]) -> list[str]:
    accuracy = {(a["peer"], a["model_id"], a["capability"]): a["points"] for a in view["accuracy"]}
    keys = [(p["peer"], p["model_id"], p["capability"]) for p in view["prices"]]
    keys += [key for key in accuracy if key not in keys]
    prices = {(p["peer"], p["model_id"], p["capability"]): p["points"] for p in view["prices"]}
    rows = []
    for key in keys:
        bids = prices.get(key, [])
        per_example = [b["per_example"] for b in bids if b["per_example"] is not None]
        costs = [b["cost"] for b in bids if b["cost"] is not None]
        means = [point["mean"] for point in accuracy.get(key, [])]
        rows.append(
            [
                short(key[0]), key[1], key[2], str(len(bids)),
                _moved(per_example, 5) if per_example else f"(batch unknown) cost {_moved(costs, 4)}",
                _span(per_example, 5), _moved(means, 3),
                f"{clock(bids[0]['at_ms'])} .. {clock(bids[-1]['at_ms'])}" if bids else "-",
            ]
        )  # fmt: skip
    headers = ["peer", "model", "capability", "bids", "price/example", "min..max", "expected accuracy"]
    headers.append("bids from .. to")
    return table(headers, rows, right={3}) if rows else []


def _moved(values: Sequence[float], digits: int) -> str:
    if not values:
        return "-"
    first, last = number(values[0], digits), number(values[-1], digits)
    return first if len(values) == 1 else f"{first} -> {last}"


def _span(values: Sequence[float], digits: int) -> str:
    return f"{number(min(values), digits)}..{number(max(values), digits)}" if values else "-"


def _observation_rows(observations: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for series in observations:
        values = [point["value"] for point in series["points"]]
        rows.append(
            [
                short(series["peer"]), series["model_id"], series["name"], str(len(values)),
                _moved(values, 4), _span(values, 4), clock(series["points"][-1]["at_ms"]),
            ]
        )  # fmt: skip
    headers = ["peer", "model", "name", "n", "first -> last", "min..max", "latest"]
    return table(headers, rows, right={3}) if rows else []


# --- plot ----------------------------------------------------------------------------------------


MAX_OBSERVATION_PANELS = 8  # observation quantities drawn, one panel each; the rest are left out


def plot(view: Mapping[str, Any], path: Path) -> None:
    """Draw :func:`figure` to a PNG at ``path``."""
    try:
        import matplotlib
    except ImportError as error:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = figure(view)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn.savefig(path, dpi=100, bbox_inches="tight")  # "tight" keeps the outside legend in
    plt.close(drawn)


def panels(view: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]], str]]:
    """One (title, series, field) per quantity: price per example, expected accuracy, then each
    observation name (``strategy.wins``, ``probe_accuracy`` ...) in a panel of its own."""
    prices = [
        {**series, "points": [point for point in series["points"] if point["per_example"] is not None]}
        for series in view["prices"]
    ]
    found = [
        ("price per example", prices, "per_example"),
        ("expected accuracy\n(posterior mean)", list(view["accuracy"]), "mean"),
    ]
    names = sorted({series["name"] for series in view["observations"]})
    for name in names[:MAX_OBSERVATION_PANELS]:
        found.append((name, [s for s in view["observations"] if s["name"] == name], "value"))
    return found


def figure(view: Mapping[str, Any]) -> Any:
    """Every quantity in its own panel against time; one colour per peer across the panels
    (its models and capabilities differ by line style); one legend, outside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    found = panels(view)
    peers = sorted({series["peer"] for _, series_list, _ in found for series in series_list})
    colours = {peer: f"C{index % 10}" for index, peer in enumerate(peers)}
    drawn, axes = plt.subplots(len(found), 1, figsize=(10, 2.6 * len(found)), sharex=True, squeeze=False)
    for (title, series_list, field), row in zip(found, axes, strict=True):
        _draw(row[0], title, series_list, field, colours)
    axes[1][0].set_ylim(0, 1)
    locator = matplotlib.dates.AutoDateLocator()
    axes[-1][0].xaxis.set_major_locator(locator)
    axes[-1][0].xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
    axes[-1][0].set_xlabel("time (UTC)")
    drawn.suptitle("atomic profile: " + (short(view["peer"]) if view["peer"] else "every peer"))
    drawn.tight_layout()
    if peers:
        handles = [Line2D([], [], color=colours[peer], marker=".", label=short(peer)) for peer in peers]
        drawn.legend(handles=handles, title="peer", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return drawn


_STYLES = ("-", "--", ":", "-.")


def _draw(
    axis: Any, title: str, found: Sequence[Mapping[str, Any]], field: str, colours: Mapping[str, str]
) -> None:
    """One line per series against time, in its peer's colour; a peer's second, third ... series
    in this panel (another model or capability) change the line style."""
    from datetime import UTC, datetime

    seen: dict[str, int] = {}
    for series in found:
        points = series["points"]
        times = [datetime.fromtimestamp(point["at_ms"] / 1000, tz=UTC) for point in points]
        style = _STYLES[seen.get(series["peer"], 0) % len(_STYLES)]
        seen[series["peer"]] = seen.get(series["peer"], 0) + 1
        axis.plot(
            times,
            [point[field] for point in points],
            marker=".",
            color=colours[series["peer"]],
            linestyle=style,
        )
    axis.set_ylabel(title)
    axis.grid(alpha=0.3)
