"""Prometheus metrics built from the store at scrape time (a custom collector: no counters kept
in this process, so several dashboard processes on one store report the same numbers).

Per unit (label ``device``, and ``site``): ``camveil_unit_up`` (1 online, 0 otherwise),
``camveil_unit_last_seen_seconds`` (Unix time), ``camveil_unit_fps``,
``camveil_unit_dropped_frames``, ``camveil_unit_outbox_depth``,
``camveil_unit_temperature_celsius``, ``camveil_unit_health_stale`` (1 when the health values
are stale; the values are still exported, with their age in
``camveil_unit_health_age_seconds``), ``camveil_unit_config_drift`` (1 when the unit runs
another config than set from the dashboard, 0 when it runs it or the change is pending; not
exported without a judgement: nothing set, or no hashes reported); per claimed device and reason
``camveil_rejected_messages_total``; fleet-wide ``camveil_events_stored``,
``camveil_alerts_open``. Only verified, non-identifying values: no snapshots, no counts of
people.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from dashboard.store import Store
from dashboard.web import alerts
from dashboard.web.views import Thresholds, fleet


class StoreCollector(Collector):
    def __init__(self, store: Store, clock: Callable[[], float], limits: Thresholds) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        labels = ["device", "site"]
        up = GaugeMetricFamily("camveil_unit_up", "1 when the unit is online", labels=labels)
        seen = GaugeMetricFamily(
            "camveil_unit_last_seen_seconds",
            "Unix time of the last verified message",
            labels=labels,
        )
        fps = GaugeMetricFamily("camveil_unit_fps", "frames per second", labels=labels)
        drops = GaugeMetricFamily(
            "camveil_unit_dropped_frames", "frames dropped since the agent started", labels=labels
        )
        depth = GaugeMetricFamily(
            "camveil_unit_outbox_depth", "envelopes waiting in the unit's outbox", labels=labels
        )
        temp = GaugeMetricFamily(
            "camveil_unit_temperature_celsius", "CPU temperature", labels=labels
        )
        stale = GaugeMetricFamily(
            "camveil_unit_health_stale", "1 when the health values are stale", labels=labels
        )
        age = GaugeMetricFamily(
            "camveil_unit_health_age_seconds", "age of the last health message", labels=labels
        )
        drift = GaugeMetricFamily(
            "camveil_unit_config_drift",
            "1 when the unit runs another config than set from the dashboard",
            labels=labels,
        )
        for row in fleet(self._store, now, self._limits):
            u = row.unit
            key = [u.device, u.site]
            up.add_metric(key, 1.0 if row.status == "online" else 0.0)
            stale.add_metric(key, 1.0 if row.stale else 0.0)
            if u.last_seen is not None:
                seen.add_metric(key, u.last_seen)
            if u.health_at is not None:
                age.add_metric(key, now - u.health_at)
            if row.config.state in ("ok", "pending", "drift"):
                drift.add_metric(key, 1.0 if row.config.state == "drift" else 0.0)
            for family, value in (
                (fps, u.fps),
                (drops, u.drops),
                (depth, u.outbox_depth),
                (temp, u.temperature),
            ):
                if value is not None:
                    family.add_metric(key, float(value))
        yield from (up, seen, fps, drops, depth, temp, stale, age, drift)
        rejected = CounterMetricFamily(
            "camveil_rejected_messages",
            "messages refused, per claimed device and reason",
            labels=["device", "reason"],
        )
        for device, reasons in sorted(self._store.rejections().items()):
            for reason, count in sorted(reasons.items()):
                rejected.add_metric([device, reason], float(count))
        yield rejected
        yield GaugeMetricFamily(
            "camveil_events_stored", "verified events in the store", value=self._store.event_count()
        )
        yield GaugeMetricFamily(
            "camveil_alerts_open", "alerts not acknowledged", value=alerts.open_count(self._store)
        )


def registry(store: Store, clock: Callable[[], float], limits: Thresholds) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store, clock, limits))
    return reg
