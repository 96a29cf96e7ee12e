"""The profiler (atomic_p2p.requester.profiler): pure state and updates."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester.profiler import (
    LatencyWindow,
    Observation,
    Profile,
    ProfileKey,
    ProfilerConfig,
    estimate,
    new_profile,
    record,
    shape_bucket,
    specializations,
)

KEY = ProfileKey("peer-a", "mlp", "classify/digits")
FOREVER = ProfilerConfig(decay=1.0)


def outcomes(
    scores: list[float], config: ProfilerConfig = FOREVER, key: ProfileKey = KEY, bucket: str = ""
) -> Profile:
    profile = None
    for i, score in enumerate(scores):
        profile = record(profile, key, Observation(at_ms=i, outcome=score, bucket=bucket), config)
    assert profile is not None
    return profile


def test_the_posterior_counts_outcomes_fractional_ones_too() -> None:
    profile = outcomes([1.0, 1.0, 0.0, 0.5])
    assert (profile.quality.alpha, profile.quality.beta) == (1 + 2.5, 1 + 1.5)
    assert profile.quality.mean == pytest.approx(3.5 / 6)
    assert profile.outcomes == 4 and profile.updated_ms == 3
    assert new_profile(KEY, FOREVER).quality.mean == 0.5


def test_decay_follows_a_peer_that_degrades() -> None:
    history = [1.0] * 100 + [0.0] * 40
    forgetful = outcomes(history, ProfilerConfig(decay=0.95))
    stubborn = outcomes(history, FOREVER)
    assert forgetful.quality.mean < 0.3
    assert stubborn.quality.mean > 0.65
    # Evidence is bounded by about 1 / (1 - decay).
    assert forgetful.quality.evidence(ProfilerConfig(decay=0.95)) < 20.5


def test_latency_window_quantiles() -> None:
    window = LatencyWindow()
    for value in [50.0, 10.0, 30.0, 20.0, 40.0]:
        window = window.add(value, size=4)
    assert window.samples == (10.0, 30.0, 20.0, 40.0)  # the oldest (50) dropped
    assert window.quantile(0.0) == 10.0 and window.quantile(1.0) == 40.0
    assert window.quantile(0.5) == pytest.approx(25.0)
    assert window.quantile(0.9) == pytest.approx(37.0)
    assert LatencyWindow().quantile(0.5) is None


def test_calibration_brier_bias_and_mape() -> None:
    profile = None
    observations = [
        Observation(0, outcome=1.0, promised_confidence=0.8),
        Observation(1, outcome=0.0, promised_confidence=0.8),
        Observation(2, latency_ms=100.0, promised_latency_ms=50.0, cost=2.0, promised_cost=1.0),
        Observation(3, latency_ms=50.0, promised_latency_ms=50.0, cost=1.0, promised_cost=1.0),
    ]
    for observation in observations:
        profile = record(profile, KEY, observation, FOREVER)
    assert profile is not None
    calibration = profile.calibration
    assert calibration.brier.mean == pytest.approx((0.2**2 + 0.8**2) / 2)
    assert calibration.confidence_bias.mean == pytest.approx((-0.2 + 0.8) / 2)
    assert calibration.latency_ape.mean == pytest.approx((0.5 + 0.0) / 2)
    assert calibration.cost_ape.mean == pytest.approx((0.5 + 0.0) / 2)
    assert calibration.latency_log_ratio.mean == pytest.approx(math.log(2) / 2)
    assert profile.deliveries == 2 and profile.outcomes == 2
    assert profile.latency.samples == (100.0, 50.0)


def test_estimate_shrinks_calibration_while_evidence_is_thin() -> None:
    one = record(None, KEY, Observation(0, outcome=0.0, promised_confidence=1.0), FOREVER)
    assert estimate(one, FOREVER, shrink=2.0).confidence_bias == pytest.approx(1.0 / 3)
    many = outcomes([0.0] * 50, FOREVER)
    many = record(many, KEY, Observation(60, latency_ms=40.0, promised_latency_ms=10.0), FOREVER)
    summary = estimate(many, FOREVER, shrink=0.0, latency_quantile=0.5)
    assert summary.evidence == 50 and summary.successes == 0 and summary.outcomes == 50
    assert summary.latency_ratio == pytest.approx(4.0) and summary.latency_ms == 40.0
    assert summary.brier is None  # no outcome carried a promised confidence


def test_buckets_are_pooled_toward_the_whole_profile() -> None:
    config = FOREVER
    profile = None
    for i in range(20):
        profile = record(profile, KEY, Observation(i, outcome=1.0, bucket="x=8"), config)
        profile = record(profile, KEY, Observation(i, outcome=0.0, bucket="x=64"), config)
    assert profile is not None
    assert profile.quality.mean == pytest.approx(0.5)
    small = estimate(profile, config, bucket="x=8")
    large = estimate(profile, config, bucket="x=64")
    unseen = estimate(profile, config, bucket="x=2")
    assert small.posterior.mean > 0.9 and large.posterior.mean < 0.1
    assert unseen.posterior.mean == pytest.approx(0.5)
    assert small.evidence == pytest.approx(20 + 2.0)  # 20 in the bucket, 2 pooled pseudo-outcomes


def test_bucket_count_is_bounded_by_evicting_the_least_evidenced() -> None:
    config = ProfilerConfig(decay=1.0, max_buckets=2)
    profile = None
    for bucket, times in [("a", 3), ("b", 1), ("c", 2)]:
        for i in range(times):
            profile = record(profile, KEY, Observation(i, outcome=1.0, bucket=bucket), config)
    assert profile is not None and set(profile.buckets) == {"a", "c"}


def test_specializations_find_where_a_peer_beats_the_population() -> None:
    config = FOREVER
    specialist, generalist = ProfileKey("s", "m", "digits"), ProfileKey("g", "m", "digits")
    profiles = []
    rng = random.Random(3)
    for key, rates in [(specialist, {"low": 0.98, "high": 0.3}), (generalist, {"low": 0.7, "high": 0.7})]:
        profile = None
        for i in range(200):
            bucket = "low" if i % 2 else "high"
            score = 1.0 if rng.random() < rates[bucket] else 0.0
            profile = record(profile, key, Observation(i, outcome=score, bucket=bucket), config)
        profiles.append(profile)
    found = specializations([p for p in profiles if p], config, min_evidence=20, margin=0.05)
    cells = {(s.key.peer, s.bucket): s for s in found}
    assert {("s", "low"), ("g", "high")} <= set(cells) and ("s", "high") not in cells
    assert cells["s", "low"].lift > 0.1 and cells["s", "low"].population_mean == pytest.approx(0.84, abs=0.05)
    assert [s.lift for s in found] == sorted((s.lift for s in found), reverse=True)


def test_snapshot_round_trips_through_json() -> None:
    profile = None
    for i in range(70):
        observation = Observation(
            i,
            outcome=(i % 3) / 2,
            latency_ms=10.0 + i,
            cost=1.0,
            promised_confidence=0.9,
            promised_latency_ms=12.0,
            promised_cost=1.5,
            bucket=f"b{i % 4}",
        )
        profile = record(profile, KEY, observation, ProfilerConfig())
    assert profile is not None
    restored = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == profile
    assert Profile.from_dict(new_profile(KEY, FOREVER).to_dict()) == new_profile(KEY, FOREVER)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("quality"),
        lambda d: d.update(v=2),
        lambda d: d.update(quality=[-1, 1]),
        lambda d: d.update(key=["only-one"]),
        lambda d: d.update(latency=["x"]),
    ],
)
def test_malformed_snapshots_are_config_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    data = outcomes([1.0]).to_dict()
    mutate(data)
    with pytest.raises(ConfigError):
        Profile.from_dict(data)


@pytest.mark.parametrize(
    "fields",
    [
        {"outcome": 1.5},
        {"outcome": math.nan},
        {"latency_ms": -1.0},
        {"promised_confidence": -0.1},
        {"cost": math.inf},
    ],
)
def test_invalid_observations_are_rejected(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Observation(0, **fields)  # type: ignore[arg-type]


def test_recording_on_another_keys_profile_is_an_error() -> None:
    with pytest.raises(ConfigError):
        record(outcomes([1.0]), ProfileKey("other", "mlp", "x"), Observation(0, outcome=1.0), FOREVER)
    with pytest.raises(ConfigError):
        ProfilerConfig(decay=0)


def test_shape_buckets() -> None:
    assert shape_bucket({"x": (5, 1, 28, 28)}) == "x=8x1x28x28"
    assert shape_bucket({"x": (8, 64)}) == shape_bucket({"x": (7, 64)}) == "x=8x64"
    assert shape_bucket({"b": (1,), "a": (3, 2)}) == "a=4x2;b=1"
    assert shape_bucket({"x": ()}) == "x=" and shape_bucket({}) == ""


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.builds(
            Observation,
            at_ms=st.integers(0, 10**6),
            outcome=st.one_of(st.none(), st.floats(0, 1)),
            latency_ms=st.one_of(st.none(), st.floats(0, 1e5)),
            cost=st.one_of(st.none(), st.floats(0, 1e3)),
            promised_confidence=st.one_of(st.none(), st.floats(0, 1)),
            promised_latency_ms=st.one_of(st.none(), st.floats(0, 1e5)),
            promised_cost=st.one_of(st.none(), st.floats(0, 1e3)),
            bucket=st.sampled_from(["", "a", "b"]),
        ),
        max_size=30,
    )
)
def test_any_observations_keep_the_profile_sane(observations: list[Observation]) -> None:
    config = ProfilerConfig(decay=0.9)
    profile = new_profile(KEY, config)
    for observation in observations:
        profile = record(profile, KEY, observation, config)
    summary = estimate(profile, config, bucket="a")
    assert 0.0 <= summary.posterior.mean <= 1.0
    assert math.isfinite(summary.latency_ratio) and summary.latency_ratio > 0
    assert Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def claims(pairs: list[tuple[float, float]], config: ProfilerConfig) -> Profile:
    """A profile after outcomes ``(claimed confidence, delivered score)``, in order."""
    profile = None
    for i, (claim, score) in enumerate(pairs):
        profile = record(profile, KEY, Observation(i, outcome=score, promised_confidence=claim), config)
    assert profile is not None
    return profile


TWO_TIMESCALES = ProfilerConfig(decay=0.9, calibration_decay=0.99, change_z=3.0)
SHORT_ONLY = ProfilerConfig(decay=0.9, calibration_decay=0.9)


def test_a_steady_peers_claims_are_corrected_by_its_long_run_bias() -> None:
    # Claims 0.9, delivers 1.0 and 0.8 in turn (no bias), then three 0.8 in a row: an ordinary
    # unlucky run, which the short memory alone takes for a bias of about +0.03.
    history = [(0.9, 1.0), (0.9, 0.8)] * 40 + [(0.9, 0.8)] * 3
    steady = claims(history, TWO_TIMESCALES)
    short = estimate(claims(history, SHORT_ONLY), SHORT_ONLY, shrink=0.0).confidence_bias
    long = estimate(steady, TWO_TIMESCALES, shrink=0.0).confidence_bias
    assert short > 0.02
    assert abs(long) < 0.01
    assert long == pytest.approx(steady.calibration.confidence_bias_long.mean)


def test_a_peer_that_changes_is_corrected_by_its_recent_bias() -> None:
    # The same steady record, then the peer degrades: it still claims 0.9 and delivers 0.3. The
    # second such outcome is enough (the long mean shares the short one's samples, so their
    # difference spreads less than either's noise added up); one could still be bad luck.
    steady = [(0.9, 1.0), (0.9, 0.8)] * 40
    once = claims([*steady, (0.9, 0.3)], TWO_TIMESCALES)
    assert estimate(once, TWO_TIMESCALES, shrink=0.0).confidence_bias == pytest.approx(
        once.calibration.confidence_bias_long.mean
    )
    history = [*steady, (0.9, 0.3), (0.9, 0.3)]
    changed = claims(history, TWO_TIMESCALES)
    bias = estimate(changed, TWO_TIMESCALES, shrink=0.0).confidence_bias
    assert changed.calibration.confidence_bias_long.mean < 0.05  # the long memory lags
    assert bias == pytest.approx(changed.calibration.confidence_bias.mean)  # the short one is used
    assert bias == pytest.approx(
        estimate(claims(history, SHORT_ONLY), SHORT_ONLY, shrink=0.0).confidence_bias
    )
    assert bias > 0.1


def test_the_long_calibration_memory_survives_a_snapshot_and_can_be_turned_off() -> None:
    history = [(0.9, 1.0), (0.9, 0.8)] * 10
    profile = claims(history, TWO_TIMESCALES)
    restored = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == profile
    assert restored.calibration.confidence_bias_long.count == 20
    # A snapshot from before the long memory existed: the short bias is used.
    old = profile.to_dict()
    old["calibration"] = {name: value for name, value in old["calibration"].items() if "long" not in name}
    legacy = Profile.from_dict(old)
    assert estimate(legacy, TWO_TIMESCALES, shrink=0.0).confidence_bias == pytest.approx(
        profile.calibration.confidence_bias.mean
    )
    with pytest.raises(ConfigError):
        ProfilerConfig(calibration_decay=0.0)
    with pytest.raises(ConfigError):
        ProfilerConfig(change_z=-1.0)
