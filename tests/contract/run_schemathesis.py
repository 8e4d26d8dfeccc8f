#!/usr/bin/env python3
"""Runs schemathesis against the API's own OpenAPI document, in embedded and distributed mode.

Each mode gets the real binaries (`target/debug/broker-auth-api`, and in distributed mode
`broker-auth-dbproc`) on free ports, with a topic and Redis key prefix and a Postgres database of
its own on the shared services, and an SMTP sink in this process. The sink reads the codes out of
the mails, as a person would, so the stateful phase can walk signup → verify → me → logout (see
hooks.py). Rate limits are raised through the API's documented settings, since schemathesis sends
far more requests per minute than a person.

    python3 tests/contract/run_schemathesis.py [embedded|distributed]... [--examples N]

Exits non-zero when schemathesis reports a failure, or when a mode ran fewer than
MIN_CASES generated cases. Needs `cargo build -p broker-auth-api -p broker-auth-dbproc` first, and
Postgres, Redis and Kafka for distributed mode (`scripts/dev-services`).
"""

from __future__ import annotations

import argparse
import email
import hashlib
import email.policy
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The issue asks for at least this many generated cases per mode.
MIN_CASES = 1000
PATIENCE_SECS = 60
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://root@127.0.0.1:5432")
KAFKA_BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")


def binary(name: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / name
    if not path.exists():
        sys.exit(f"{path} is missing: run `cargo build -p broker-auth-api -p broker-auth-dbproc` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(what: str, address: str, how: str) -> None:
    host, port = address.rsplit("//", 1)[-1].split("/")[0].split("@")[-1].split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError:
        sys.exit(f"{what} is not reachable at {host}:{port}. This test needs the real service: {how}")


def code_file_name(address: str) -> str:
    """Addresses can hold `/` and other characters file names cannot."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


class SmtpSink(socketserver.ThreadingTCPServer):
    """Accepts every mail (plain SMTP, no TLS) and writes each six-digit code it carries to
    `codes_dir/<sha256 of recipient>`, where the schemathesis hook finds it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, codes_dir: Path):
        self.codes_dir = codes_dir
        self.mails = 0
        super().__init__(("127.0.0.1", 0), SmtpSession)

    def deliver(self, recipients: list[str], data: bytes) -> None:
        self.mails += 1
        message = email.message_from_bytes(data, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",))
        text = part.get_content() if part is not None else ""
        code = re.search(r"(?<!\d)\d{6}(?!\d)", text)
        for recipient in recipients:
            # An "account exists" notice carries no code: an older code file would be stale.
            path = self.codes_dir / code_file_name(recipient)
            if code:
                # Write then rename: a reader polling for the file must never see it empty.
                partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
                partial.write_text(code.group(0))
                os.replace(partial, path)
            else:
                path.unlink(missing_ok=True)


class SmtpSession(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        recipients: list[str] = []
        while line := self.rfile.readline():
            command = line.strip().decode("ascii", "replace")
            verb = command[:4].upper()
            if verb == "EHLO":
                self.reply("250-sink")
                self.reply("250 8BITMIME")
            elif verb in ("HELO", "NOOP"):
                self.reply("250 OK")
            elif verb == "MAIL":
                recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 go ahead")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.server.deliver(recipients, b"".join(lines))
                self.reply("250 OK")
            elif verb == "RSET":
                recipients = []
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


@contextmanager
def process(name: str, args: list[str], env: dict[str, str], log_dir: Path):
    log = open(log_dir / f"{name}.log", "wb")
    child = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def wait_ready(url: str, children: list[subprocess.Popen], log_dir: Path) -> None:
    deadline = time.monotonic() + PATIENCE_SECS
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                logs = "".join(p.read_text(errors="replace")[-3000:] for p in log_dir.glob("*.log"))
                sys.exit(f"{child.args[0]} exited with {child.returncode} before it was ready:\n{logs}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} was not ready within {PATIENCE_SECS} s")


def post(url: str, body: dict) -> tuple[int, str]:
    """Returns the status and the body, so a refusal can say why."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def register(base: str, codes_dir: Path) -> tuple[str, str]:
    """Signs a user up through the mailbox, for schemathesis to sign in as."""
    email = f"contract-{uuid.uuid4().hex[:12]}@example.com"
    password = f"contract-{uuid.uuid4().hex}"
    status, answer = post(f"{base}/api/v1/auth/signup", {"email": email})
    if status != 202:
        sys.exit(f"signup of the contract user answered {status}: {answer}")
    code_file = codes_dir / code_file_name(email)
    deadline = time.monotonic() + PATIENCE_SECS
    while not code_file.is_file():
        if time.monotonic() > deadline:
            sys.exit(f"no code mailed to {email} within {PATIENCE_SECS} s")
        time.sleep(0.1)
    body = {"email": email, "otp": code_file.read_text(), "password": password, "name": "Contract"}
    status, answer = post(f"{base}/api/v1/auth/verify", body)
    if status != 201:
        sys.exit(f"verify of the contract user answered {status}: {answer}")
    return email, password


@contextmanager
def database():
    name = f"ba_contract_{uuid.uuid4().hex}"
    admin = f"{POSTGRES_URL}/postgres"
    subprocess.run(["psql", "-q", admin, "-c", f'CREATE DATABASE "{name}"'], check=True)
    try:
        yield f"{POSTGRES_URL}/{name}"
    finally:
        subprocess.run(
            ["psql", "-q", admin, "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False
        )


def api_settings(port: int, smtp: SmtpSink) -> dict[str, str]:
    return {
        "API_LISTEN": f"127.0.0.1:{port}",
        # Tests check behaviour, not hashing cost.
        "BCRYPT_COST": "4",
        "COOKIE_SECURE": "false",
        # schemathesis is one client sending thousands of requests a minute, and every wrong
        # current password it sends to /password counts as a failed signin of the contract user.
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "SIGNUP_RESEND_COOLDOWN_SECS": "0",
        "SIGNIN_RATE_LIMIT_PER_MINUTE": "1000000",
        "VERIFY_RATE_LIMIT_PER_MINUTE": "1000000",
        "SIGNIN_MAX_FAILURES": "1000",
        "VERIFY_MAX_FAILURES": "1000",
        "SIGNIN_MAX_FAILURES_PER_ADDRESS": "1000",
        "VERIFY_MAX_FAILURES_PER_ADDRESS": "1000",
        # The most failures a window allows is 1000: a one-second window keeps a fuzzer that
        # sends wrong passwords all run long from locking the contract user out.
        "SIGNIN_FAILURE_WINDOW_SECS": "1",
        "VERIFY_FAILURE_WINDOW_SECS": "1",
        "SMTP_URL": f"smtp://127.0.0.1:{smtp.server_address[1]}",
        "MAIL_FROM": "broker-auth <no-reply@broker.test>",
        "RUST_LOG": os.environ.get("CONTRACT_API_LOG", "warn"),
    }


def clean_env() -> dict[str, str]:
    # The binaries read their settings from the environment; start from nothing of ours.
    names = ("KAFKA_", "REDIS_", "DATABASE_", "SMTP_", "MAIL_", "JWT_", "API_", "METRICS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(names)}


def run_mode(mode: str, examples: int, work: Path) -> tuple[int, int]:
    """Returns (schemathesis exit code, generated cases)."""
    codes_dir = work / mode / "codes"
    log_dir = work / mode / "logs"
    report_dir = work / mode / "report"
    for d in (codes_dir, log_dir, report_dir):
        d.mkdir(parents=True)
    with ExitStack() as stack:
        smtp = SmtpSink(codes_dir)
        threading.Thread(target=smtp.serve_forever, daemon=True).start()
        stack.callback(smtp.shutdown)
        port = free_port()
        env = clean_env() | api_settings(port, smtp)
        children = []
        if mode == "embedded":
            env["DATABASE_URL"] = "sqlite::memory:"
        else:
            require("Kafka", KAFKA_BROKERS, "run `scripts/dev-services` (tansu on 127.0.0.1:9092)")
            require("Redis", REDIS_URL, "run `scripts/dev-services`")
            require("PostgreSQL", POSTGRES_URL, "run `scripts/dev-services`")
            prefix = f"contract-{uuid.uuid4().hex[:12]}."
            database_url = stack.enter_context(database())
            shared = {
                "KAFKA_BROKERS": KAFKA_BROKERS,
                # The key api and dbproc share to seal and open the codes in the mail topic.
                "MAIL_SEAL_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
                "KAFKA_TOPIC_PREFIX": prefix,
                "KAFKA_TOPIC_PARTITIONS": "2",
            }
            dbproc_env = clean_env() | shared | {
                "DATABASE_URL": database_url,
                "SMTP_URL": env["SMTP_URL"],
                "MAIL_FROM": env["MAIL_FROM"],
                "KAFKA_FETCH_WAIT_MS": "10",
                "METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "RUST_LOG": "warn",
            }
            children.append(
                stack.enter_context(
                    process("dbproc", [str(binary("broker-auth-dbproc")), "serve"], dbproc_env, log_dir)
                )
            )
            env |= shared | {
                "REDIS_URL": REDIS_URL,
                "REDIS_KEY_PREFIX": prefix,
                "JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            }
        children.append(
            stack.enter_context(process("api", [str(binary("broker-auth-api"))], env, log_dir))
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/readyz", children, log_dir)
        contract_email, contract_password = register(base, codes_dir)

        st_env = os.environ | {
            "SCHEMATHESIS_HOOKS": "hooks",
            "PYTHONPATH": str(HERE),
            "CONTRACT_CODES_DIR": str(codes_dir),
            "CONTRACT_EMAIL": contract_email,
            "CONTRACT_PASSWORD": contract_password,
        }
        command = [
            "st",
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{base}/api/v1/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--seed",
            os.environ.get("SCHEMATHESIS_SEED", "20261201"),
            "--report",
            "ndjson",
            "--report-dir",
            str(report_dir),
        ]
        print(f"== schemathesis, {mode} mode: {' '.join(command[1:])}", flush=True)
        status = subprocess.run(command, env=st_env, cwd=work).returncode
        cases = count_cases(report_dir)
        print(f"== schemathesis, {mode} mode: {cases} generated cases, {smtp.mails} mails, exit {status}")
        if status != 0 or cases < MIN_CASES:
            for log in sorted(log_dir.glob("*.log")):
                print(f"-- {log.name} (last lines)\n{log.read_text(errors='replace')[-4000:]}")
            if keep := os.environ.get("CONTRACT_KEEP_LOGS"):
                shutil.copytree(log_dir, Path(keep) / mode, dirs_exist_ok=True)
        return status, cases


def count_cases(report_dir: Path) -> int:
    """Test cases schemathesis generated and sent, counted from its NDJSON event stream."""
    cases = 0
    for path in report_dir.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if finished:
                cases += len(finished.get("recorder", {}).get("cases", {}))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No `choices` here: Python 3.11's argparse checks an empty `nargs="*"` default against them and refuses it.
    parser.add_argument("modes", nargs="*", metavar="{embedded,distributed}", help="default: both")
    parser.add_argument("--examples", type=int, default=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "120")))
    args = parser.parse_args()
    modes = args.modes or ["embedded", "distributed"]
    for mode in modes:
        if mode not in ("embedded", "distributed"):
            parser.error(f"unknown mode {mode!r}: choose embedded or distributed")
    if shutil.which("st") is None:
        sys.exit("schemathesis is missing: python3 -m pip install -r tests/requirements.txt")
    failed = []
    with tempfile.TemporaryDirectory(prefix="ba-contract-") as work:
        for mode in modes:
            status, cases = run_mode(mode, args.examples, Path(work))
            if status != 0:
                failed.append(f"{mode}: schemathesis reported failures (exit {status})")
            elif cases < MIN_CASES:
                failed.append(f"{mode}: only {cases} generated cases (at least {MIN_CASES} wanted)")
    for failure in failed:
        print(f"FAILED {failure}")
    print(f"{len(modes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
