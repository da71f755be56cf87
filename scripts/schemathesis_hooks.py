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


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method = case.operation.method.upper()
    path = case.operation.path
    body = getattr(case, "body", None)
    if method == "PUT" and path == "/api/v1/settings":
        _limit_off(body)
    elif method == "POST" and path == "/api/v1/import" and isinstance(body, dict):
        if "settings" not in body:
            body["settings"] = {"api": {"rate_limit_per_minute": 0}}
        else:
            _limit_off(body["settings"])
