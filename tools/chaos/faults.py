"""What a chaos run breaks and when: :class:`ChaosPlan` (how many of each fault, the event rate,
the unit's delivery mode), :class:`External` (someone else's broker and PKI), and the schedule
of faults at random points of the unit's progress (:func:`schedule`, drawn with the plan's seed).

Faults: broker restarts are clean (SIGTERM: mosquitto saves its sessions and queues).
``broker_kills`` SIGKILL the broker: mosquitto persists only every ``autosave_interval`` seconds,
so it loses messages it had already acknowledged. ``broker_wipes`` SIGKILL it and delete its
persistence file (a broker host that lost its disk, :func:`wipe_store`). ``agent_kills`` SIGKILL
the unit process and start it again on the same state directory. ``backend_kills`` stop the
listener and start a new one after a pause. With receipts (``delivery = "receipt"``, the
default, as on a unit) the unit keeps every envelope until the listener's receipt names it and
publishes again after ``receipt_timeout_s`` without one, so none of these faults may lose an
event; with ``delivery = "puback"`` the unit forgets on the broker's PUBACK and broker crashes
lose events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from contract.errors import ConfigError


@dataclass(frozen=True)
class ChaosPlan:
    events: int = 1000
    broker_restarts: int = 5
    agent_kills: int = 3
    rate: float = 100.0
    """Events per second emitted by the unit (while it runs)."""
    seed: int | None = None
    settle_s: float = 30.0
    """After the unit is done: how long to wait for the last deliveries."""
    broker_kills: int = 0
    """SIGKILLs of our own broker (a crash: it loses what it took since its last autosave),
    each followed by a start."""
    broker_wipes: int = 0
    """SIGKILLs of our own broker with its persistence file deleted, then a start."""
    backend_kills: int = 0
    """Stops of the listener (the backend), a new one started after ``backend_down_s``."""
    backend_down_s: float = 2.0
    delivery: str = "receipt"
    """The unit's ``[outbox] delete_on``: ``receipt`` or ``puback``."""
    receipt_timeout_s: float = 10.0
    """The unit's ``[outbox] receipt_timeout_s`` (60 on a unit; shorter here, for short runs)."""

    def __post_init__(self) -> None:
        faults = (
            self.broker_restarts,
            self.agent_kills,
            self.broker_kills,
            self.broker_wipes,
            self.backend_kills,
        )
        if self.delivery not in ("receipt", "puback"):
            raise ConfigError(f"chaos --delivery {self.delivery!r}: use receipt or puback")
        if not 0 <= self.backend_down_s <= 86400:
            raise ConfigError("chaos --backend-down: seconds in [0, 86400]")
        if min(faults) < 0 or self.events < 1:
            raise ConfigError("chaos: need --events >= 1, --broker-restarts/--agent-kills >= 0")
        if not 5.0 <= self.receipt_timeout_s <= 86400:  # the unit's [outbox] bounds
            raise ConfigError("chaos --receipt-timeout: seconds in [5, 86400]")
        if not 0 < self.rate <= 10_000:
            raise ConfigError(f"chaos --rate {self.rate}: use a value in (0, 10000]")


@dataclass(frozen=True)
class External:
    """An existing broker and PKI (a `camveil dev-pki` folder layout) instead of our own."""

    broker_url: str | None
    pki: Path
    unit_state: Path | None = None
    restart_cmd: str | None = None
    """Shell-free command that restarts the broker (e.g. ``systemctl restart mosquitto``)."""


def thresholds(rng: random.Random, count: int, events: int) -> list[int]:
    """``count`` random points of progress (events logged) in [1, events - 1]."""
    return sorted(rng.randint(1, max(1, events - 1)) for _ in range(count))


def schedule(plan: ChaosPlan, rng: random.Random) -> list[tuple[int, str]]:
    """The faults of ``plan`` as ``(events logged, fault)``, in order of progress. Faults:
    ``restart``, ``kill`` (the unit), ``crash`` (the broker), ``wipe``, ``backend``."""
    return sorted(
        [(n, "restart") for n in thresholds(rng, plan.broker_restarts, plan.events)]
        + [(n, "kill") for n in thresholds(rng, plan.agent_kills, plan.events)]
        + [(n, "crash") for n in thresholds(rng, plan.broker_kills, plan.events)]
        + [(n, "wipe") for n in thresholds(rng, plan.broker_wipes, plan.events)]
        + [(n, "backend") for n in thresholds(rng, plan.backend_kills, plan.events)]
    )


def wipe_store(config: Path) -> str:
    """Delete the persistence file named by a mosquitto config (the broker is not running)."""
    text = config.read_text()
    location = next(
        (line.split(None, 1)[1].strip() for line in text.splitlines()
         if line.startswith("persistence_location ")),
        str(config.parent) + "/",
    )  # fmt: skip
    store = Path(location) / "mosquitto.db"
    existed = store.exists()
    store.unlink(missing_ok=True)
    return f"{store.name} {'deleted' if existed else 'not yet written'}"
