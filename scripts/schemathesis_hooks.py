"""Schemathesis hooks for the API fuzzing stage (scripts/api-fuzz).

The admin API rate limit is itself a runtime setting. Left alone, the fuzzer
soon PUTs settings (or imports a document) with a limit such as 1 request per
minute, and every later request of the run gets 429: documented, so not a
failure, but nothing behind it is tested any more. This hook keeps
`api.rate_limit_per_minute` at 0 (off) in the bodies of the two operations
that write settings, and changes nothing else: every other field of those
bodies is sent as generated, and every operation is still exercised.
Rollbacks can only restore revisions written with the limit off, since the
stage turns it off before the run and every later write goes through here.
"""

import schemathesis


def _limit_off(settings):
    """Sets api.rate_limit_per_minute to 0 in a settings object, if it is one."""
    if not isinstance(settings, dict):
        return
    api = settings.get("api")
    if api is None and "api" not in settings:
        settings["api"] = {"rate_limit_per_minute": 0}
    elif isinstance(api, dict):
        api["rate_limit_per_minute"] = 0


def _loopback_only(body):
    """Points a databases request's connection at 127.0.0.1.

    These operations connect wherever `connection.host` says; generated hosts
    could name any address, and this stage must send traffic to this machine
    only. A host outside the schema's 1 to 255 characters is left as generated,
    so that a negative case stays negative (the server refuses it before
    connecting), and so is every other field.
    """
    conn = body.get("connection")
    if isinstance(conn, dict):
        host = conn.get("host")
        if isinstance(host, str) and 1 <= len(host) <= 255:
            conn["host"] = "127.0.0.1"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method = case.operation.method.upper()
    path = case.operation.path
    body = getattr(case, "body", None)
    if method == "PUT" and path == "/api/v1/settings":
        _limit_off(body)
    elif path.startswith("/api/v1/databases/") and isinstance(body, dict):
        _loopback_only(body)
    elif method == "POST" and path == "/api/v1/import" and isinstance(body, dict):
        if "settings" not in body:
            body["settings"] = {"api": {"rate_limit_per_minute": 0}}
        else:
            _limit_off(body["settings"])
