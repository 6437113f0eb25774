"""The dashboard's web page (Starlette, server-rendered, live by server-sent events).

:func:`create_app` builds it over a :class:`~dashboard.store.Store`; `camveil dashboard` runs it
on uvicorn beside the ingest (docs/DASHBOARD.md).
"""

from dashboard.web.app import WebConfig, create_app, first_operator_password

__all__ = ["WebConfig", "create_app", "first_operator_password"]
