"""``atomic profile``'s series and plot from a real store: every stored snapshot is drawn, one
panel per quantity, one colour per peer, one legend outside the panels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from atomic_p2p.cli.profile import collect, figure, plot
from atomic_p2p.requester.profiler import Observation, Profile, ProfileKey, ProfilerConfig, record
from atomic_p2p.store import BidRecord, ObservationRecord, ProfileRecord, Store

PEERS = ("aa" * 32, "bb" * 32)
CAPABILITY = "classify/digits"


def fill(path: Path) -> None:
    """Per peer: 10 snapshots (9 deliveries without an outcome, then one outcome), 10 bids, and
    two strategy series."""
    config = ProfilerConfig()
    with Store.open(path) as store:
        for index, peer in enumerate(PEERS):
            key = ProfileKey(peer, f"model-{index}", CAPABILITY)
            profile: Profile | None = None
            for step in range(10):
                at = 1_700_000_000_000 + 1000 * step
                if step < 9:
                    seen = Observation(
                        at, latency_ms=1.0, cost=0.01, promised_latency_ms=1.0, promised_cost=0.01
                    )
                else:
                    seen = Observation(at, outcome=1.0, promised_confidence=0.9)
                profile = record(profile, key, seen, config)
                store.save_profile(ProfileRecord(at, peer, key.model_id, CAPABILITY, profile.to_dict()))
                store.log_bid(
                    BidRecord(at, f"{step:032x}", "task-0", CAPABILITY, peer, key.model_id, "127.0.0.1:1",
                              0.9, 1.0, 0.01 * (step + 1), "confidence", "00", {"batch": 4})
                )  # fmt: skip
                for name in ("strategy.wins", "strategy.price_multiplier"):
                    store.record_observation(ObservationRecord(at, peer, key.model_id, name, float(step)))
        store.flush()


def test_every_snapshot_is_a_point_of_the_expected_accuracy(tmp_path: Path) -> None:
    fill(tmp_path / "requester.db")
    with Store.open(tmp_path / "requester.db", read_only=True) as store:
        view = collect(store, None, ProfilerConfig())
    for series in view["accuracy"]:
        means = [point["mean"] for point in series["points"]]
        assert len(means) == 10  # was one lone point: snapshots without a new outcome were skipped
        assert means[0] == means[8] < means[9]  # flat through the deliveries, up at the outcome


def test_the_plot_has_a_panel_per_quantity_a_colour_per_peer_and_the_legend_outside(tmp_path: Path) -> None:
    fill(tmp_path / "requester.db")
    with Store.open(tmp_path / "requester.db", read_only=True) as store:
        view = collect(store, None, ProfilerConfig())
    drawn = figure(view)
    try:
        axes = drawn.axes
        titles = [axis.get_ylabel() for axis in axes]
        assert titles == [
            "price per example",
            "expected accuracy\n(posterior mean)",
            "strategy.price_multiplier",
            "strategy.wins",
        ]
        for axis in axes:
            lines = axis.get_lines()
            assert len(lines) == len(PEERS)  # one series per peer in each quantity's panel
            assert len({line.get_color() for line in lines}) == len(PEERS)
            assert all(len(line.get_xdata()) == 10 for line in lines)
            assert axis.get_legend() is None  # no legend over the lines
        colour_of = {line.get_color() for axis in axes for line in axis.get_lines()}
        assert len(colour_of) == len(PEERS)  # the same colour for a peer in every panel
        (legend,) = drawn.legends
        assert [text.get_text() for text in legend.get_texts()] == [peer[:8] for peer in PEERS]
        anchor = legend.get_bbox_to_anchor().transformed(drawn.transFigure.inverted())
        assert anchor.x0 >= 1.0  # right of the panels
    finally:
        plt.close(drawn)
    plot(view, tmp_path / "profile.png")
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
