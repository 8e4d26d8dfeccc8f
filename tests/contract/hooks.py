"""schemathesis hooks of the contract run: read the mailbox like a person.

A verify case whose address was sent a code gets that code instead of six random digits, so the
stateful phase's signup → verify → me → logout walk can succeed. Only schema-valid (positive)
cases are changed; the codes come from the SMTP sink of run_schemathesis.py.
"""

import os
from pathlib import Path

import schemathesis
from run_schemathesis import code_file_name

CODES = Path(os.environ["CONTRACT_CODES_DIR"])


@schemathesis.hook
def before_call(context, case, kwargs):
    if not case.path.endswith("/verify") or not isinstance(case.body, dict):
        return
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    email = case.body.get("email")
    if not isinstance(email, str):
        return
    code = CODES / code_file_name(email)
    if code.is_file():
        case.body["otp"] = code.read_text()
