"""schemathesis hooks of the contract run: read the mailbox like a person.

A verify or recover/verify case whose address was sent a code gets that code instead of six
random digits, so the stateful phase's signup → verify → me → logout walk (and a recovery) can
succeed. Only schema-valid (positive) cases are changed; the codes come from the SMTP sink of
run_schemathesis.py. The contract user's own address is left alone: the stateful phase learns it
from the signin it authenticates with and may ask to recover it, and a recovery with the mailed
code would set a password schemathesis does not know, locking its own authentication out.
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
    if email.strip().lower() == os.environ.get("CONTRACT_EMAIL", "").lower():
        return
    code = CODES / code_file_name(email)
    if code.is_file():
        case.body["otp"] = code.read_text()
