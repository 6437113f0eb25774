"""`camveil chaos`: sealed events over a real broker while the broker restarts and the unit is
killed; count what was sent, received, lost and duplicated.

Three parts, all real code, one module each:

- the **unit** (:mod:`tools.chaos.unit`, a process of its own: ``python -m tools.chaos unit
  ...``): the daemon's publishing path without the camera, logging every durable enqueue;
- the **listener** and the **orchestrator** (:mod:`tools.chaos.run`, :func:`run_chaos`): our own
  mosquitto and dev PKI or an existing broker, the backend's listener, the unit process, and the
  faults applied at random points of the unit's progress;
- the **faults** (:mod:`tools.chaos.faults`: :class:`ChaosPlan`, :class:`External`, the schedule)
  and the **counting** (:mod:`tools.chaos.report`: :class:`ChaosReport`).

Nothing may be lost and nothing delivered twice to the application (``lost`` = ``duplicated``
= 0) with receipts, whatever the faults.
"""

from tools.chaos.faults import ChaosPlan, External
from tools.chaos.report import ChaosReport
from tools.chaos.run import DEVICE, run_chaos
from tools.chaos.unit import (
    CHAOS_RECONNECT_MAX_S,
    CHAOS_RECONNECT_MIN_S,
    ZONE,
    read_log,
    run_unit,
    unit_transport_config,
)

__all__ = [
    "CHAOS_RECONNECT_MAX_S",
    "CHAOS_RECONNECT_MIN_S",
    "DEVICE",
    "ZONE",
    "ChaosPlan",
    "ChaosReport",
    "External",
    "read_log",
    "run_chaos",
    "run_unit",
    "unit_transport_config",
]
