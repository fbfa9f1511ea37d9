"""Run the built artifact as Lambda runs it, without Docker: AWS's runtime interface client
(``awslambdaric``) against a loopback implementation of the Lambda Runtime API.

What the function sees is what Lambda gives it:

* the handler string, environment variables, timeout, memory and log format read from template.yaml
  (parameters at their defaults), plus the ``AWS_LAMBDA_*`` / ``LAMBDA_*`` variables the service sets;
  nothing else from this shell's environment (no ``HOME``, no virtualenv, no ``PYTHONPATH`` of ours);
* the task root (a copy of the artifact) read-only and ``/tmp`` writable: as root, a private mount
  namespace (``unshare -m``) remounts ``/`` and the task root read-only; otherwise the copy is made
  read-only with file permissions;
* ``awslambdaric`` and its dependencies in their own directory after the task root on ``sys.path``
  (Lambda's ``/var/runtime``); ``python -S``, so this interpreter's site-packages stay invisible.

The Runtime API endpoints served: ``GET /runtime/invocation/next``, ``POST
/runtime/invocation/{id}/response``, ``POST /runtime/invocation/{id}/error`` and ``POST
/runtime/init/error`` (API version 2018-06-01). An init error is returned the way Lambda returns it to
the caller (``{"errorType": "Runtime.ImportModuleError", ...}``, function error "Unhandled").

    python -m local.lambda_runtime build/artifact events/function-url.json --samples samples

``--samples DIR`` serves DIR on a loopback HTTP server and points every URL in the event at the file
whose name (or folder) the URL mentions, with FETCH_ALLOWED_HOSTS set to let the function fetch it.
The interpreter is this one (the artifact must be built for it: ``build_artifact.py --platform local``);
Lambda's is template.yaml's ``Runtime``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from deploy import build_artifact
from deploy.cfn_yaml import load_cfn
from local.loopback import LoopbackServer, QuietHandler

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "template.yaml"
FUNCTION_ID = "ClassifierFunction"
API_PREFIX = "/2018-06-01"
REGION = "us-east-1"
ACCOUNT = "123456789012"
# What the runtime client itself needs (it is not in the artifact: Lambda provides it).
RUNTIME_CLIENT = "awslambdaric"
# Seconds to wait for the runtime process to ask for its first event (imports + model load).
INIT_TIMEOUT_S = 60.0


# ---------------------------------------------------------------- template.yaml


@dataclass(frozen=True)
class FunctionConfig:
    """The parts of the function's definition in template.yaml the runtime environment depends on."""

    handler: str
    runtime: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    log_format: str  # "Text" or "JSON" (LoggingConfig.LogFormat)
    log_level: str | None  # LoggingConfig.ApplicationLogLevel, when JSON


def read_function_config(template: Path = TEMPLATE, function_id: str = FUNCTION_ID) -> FunctionConfig:
    """``function_id``'s handler, environment and limits, with every parameter at its default."""
    doc = load_cfn(template.read_text(encoding="utf-8"))
    defaults = {name: spec.get("Default") for name, spec in (doc.get("Parameters") or {}).items()}
    globals_ = (doc.get("Globals") or {}).get("Function") or {}
    props = {**globals_, **doc["Resources"][function_id]["Properties"]}

    def value(node):
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return defaults.get(node["Ref"])
        if isinstance(node, dict) and set(node) == {"Fn::FindInMap"}:
            name, first, second = (value(part) for part in node["Fn::FindInMap"])
            return doc["Mappings"][name][first][second]
        return node

    variables = ((props.get("Environment") or {}).get("Variables")) or {}
    logging_config = props.get("LoggingConfig") or {}
    log_format = value(logging_config.get("LogFormat")) or "Text"
    level = value(logging_config.get("ApplicationLogLevel"))
    return FunctionConfig(
        handler=value(props["Handler"]),
        runtime=value(props["Runtime"]),
        timeout_s=int(value(props.get("Timeout")) or 3),
        memory_mb=int(value(props.get("MemorySize")) or 128),
        environment={name: str(value(raw)) for name, raw in variables.items() if value(raw) is not None},
        log_format=log_format,
        log_level=(level or "INFO") if log_format == "JSON" else None,
    )


def lambda_environment(config: FunctionConfig, api: str, task_root: Path, runtime_dir: Path) -> dict:
    """The environment Lambda gives the function process (values as documented for managed runtimes)."""
    name = "edge-clothing-classifier-local"
    env = {
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": f"{task_root}{os.pathsep}{runtime_dir}",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime_dir),
        "AWS_LAMBDA_RUNTIME_API": api,
        "_HANDLER": config.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{config.runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }
    if config.log_format == "JSON":
        env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
        env["AWS_LAMBDA_LOG_LEVEL"] = config.log_level or "INFO"
    return {**env, **config.environment}


# ---------------------------------------------------------------- the Runtime API on loopback


@dataclass
class Invocation:
    request_id: str
    event: bytes
    deadline_ms: int
    # set by the runtime: ("response" | "error", payload, function error type header)
    outcome: tuple[str, bytes, str | None] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class RuntimeAPI:
    """A loopback server for the Runtime API; one invocation at a time, like one Lambda sandbox."""

    def __init__(self, function_arn: str):
        self.function_arn = function_arn
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.current: Invocation | None = None
        self.init_error: tuple[bytes, str | None] | None = None
        self.polls = 0  # GET /next calls so far: the runtime is idle and has written its logs
        self.changed = threading.Condition()
        self._server = LoopbackServer(self._handler_class())

    @property
    def address(self) -> str:
        return self._server.host

    def __enter__(self) -> RuntimeAPI:
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _handler_class(self):
        api = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                if self.path != f"{API_PREFIX}/runtime/invocation/next":
                    return self._reply(404, {"errorType": "InvalidRequest", "errorMessage": self.path})
                with api.changed:
                    api.polls += 1
                    api.changed.notify_all()
                invocation = api.pending.get()  # blocks until invoke() queues an event
                api.current = invocation
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", invocation.request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", api.function_arn)
                self.send_header(
                    "Lambda-Runtime-Trace-Id",
                    f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                )
                self.send_header("Content-Length", str(len(invocation.event)))
                self.end_headers()
                self.wfile.write(invocation.event)

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                if self.path == f"{API_PREFIX}/runtime/init/error":
                    api.init_error = (body, error_type)
                    api._notify()
                    return self._reply(202, {"status": "OK"})
                match = re.fullmatch(rf"{API_PREFIX}/runtime/invocation/([^/]+)/(response|error)", self.path)
                current = api.current
                if not match or current is None or match[1] != current.request_id:
                    return self._reply(400, {"errorType": "InvalidRequestID", "errorMessage": self.path})
                current.outcome = (match[2], body, error_type)
                current.done.set()
                api._notify()
                return self._reply(202, {"status": "OK"})

            def _reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


# ---------------------------------------------------------------- the function process


@dataclass(frozen=True)
class InvokeResult:
    request_id: str
    # "ok" (the handler returned), "error" (the handler raised: function error "Unhandled"),
    # "init_error" (the runtime could not start the handler) or "timeout"
    status: str
    payload: object
    # what the function wrote to stdout/stderr while handling this request (CloudWatch's log lines)
    logs: list[str]

    def log_records(self) -> list[dict]:
        """The log lines that are JSON objects (Lambda's JSON log format), parsed."""
        records = []
        for line in self.logs:
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                records.append(parsed)
        return records


def can_use_mount_namespace() -> bool:
    """True when this process may remount things read-only in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


# Inside the private namespace: /tmp stays writable (its own bind mount), everything else read-only,
# the task root too (it may itself live under /tmp). $0 is the task root.
_SANDBOX_SCRIPT = (
    "mount --make-rprivate / && mount --bind /tmp /tmp && mount -o remount,bind,ro / "
    '&& mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
)


def prepare_task_root(artifact: Path, workdir: Path) -> Path:
    """A copy of ``artifact`` to serve from, write-protected (Lambda's /var/task is read-only)."""
    task_root = workdir / "task"
    shutil.copytree(artifact, task_root, symlinks=True)
    for path in [task_root, *task_root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return task_root


def prepare_runtime_dir(workdir: Path) -> Path:
    """awslambdaric and its dependencies, copied from this environment (Lambda's /var/runtime)."""
    runtime_dir = workdir / "runtime"
    runtime_dir.mkdir()
    build_artifact.copy_installed([RUNTIME_CLIENT], runtime_dir)
    return runtime_dir


class LocalLambda:
    """One function sandbox: a runtime process serving invocations from a loopback Runtime API.

    ``with LocalLambda(artifact) as function: result = function.invoke(event)``. A sandbox whose init
    failed answers every invocation with the init error, as Lambda does.
    """

    def __init__(
        self,
        artifact: Path,
        config: FunctionConfig | None = None,
        extra_env: dict[str, str] | None = None,
        isolate: bool | None = None,
        python: str = sys.executable,
    ):
        self.artifact = Path(artifact)
        self.config = config or read_function_config()
        self.extra_env = dict(extra_env or {})
        self.isolate = can_use_mount_namespace() if isolate is None else isolate
        self.python = python
        self.function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:edge-clothing-classifier-local"
        self.api = RuntimeAPI(self.function_arn)
        self.init_logs: list[str] = []
        self._output = b""
        self._process: subprocess.Popen | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> LocalLambda:
        self._scratch = tempfile.TemporaryDirectory(prefix="local-lambda-")
        workdir = Path(self._scratch.name)
        # In a private mount namespace the artifact itself is mounted read-only; else a protected copy.
        self.task_root = (
            self.artifact.resolve() if self.isolate else prepare_task_root(self.artifact, workdir)
        )
        self.runtime_dir = prepare_runtime_dir(workdir)
        self.api.__enter__()
        env = lambda_environment(self.config, self.api.address, self.task_root, self.runtime_dir)
        env.update(self.extra_env)
        command = [self.python, "-S", "-m", RUNTIME_CLIENT, self.config.handler]
        if self.isolate:
            command = ["unshare", "-m", "sh", "-c", _SANDBOX_SCRIPT, str(self.task_root), *command]
        self._process = subprocess.Popen(
            command,
            cwd=self.task_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        os.set_blocking(self._process.stdout.fileno(), False)
        self._wait(lambda: self.api.polls >= 1 or self.api.init_error is not None, INIT_TIMEOUT_S)
        self.init_logs = self._take_lines()
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process.stdout.close()
        self.api.__exit__()
        if self._scratch is not None:
            for path in Path(self._scratch.name).rglob("*"):  # give write permission back to delete
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | stat.S_IWUSR)
            self._scratch.cleanup()

    @property
    def init_failed(self) -> bool:
        return self.api.init_error is not None or (
            self._process is not None and self._process.poll() is not None
        )

    def invoke(self, event: object) -> InvokeResult:
        """Send ``event`` (JSON-serialisable) through the Runtime API and wait for the function's answer."""
        request_id = str(uuid.uuid4())
        if self.init_failed:
            return InvokeResult(request_id, "init_error", self._init_error_payload(), self._take_lines())
        deadline = time.time() + self.config.timeout_s
        invocation = Invocation(request_id, json.dumps(event).encode(), int(deadline * 1000))
        polls = self.api.polls
        self.api.pending.put(invocation)
        # Done when the runtime has answered and asked for the next event: by then it has written every
        # log line of this invocation (it writes before it polls).
        finished = self._wait(
            lambda: invocation.done.is_set() and self.api.polls > polls or self._process.poll() is not None,
            self.config.timeout_s,
        )
        logs = self._take_lines()
        if invocation.outcome is None:
            if finished:  # the process died mid-invocation
                payload = {"errorType": "Runtime.ExitError", "errorMessage": "The runtime exited."}
                return InvokeResult(request_id, "error", payload, logs)
            self._process.kill()  # Lambda stops a sandbox that ran past its timeout
            message = f"Task timed out after {self.config.timeout_s:.2f} seconds"
            return InvokeResult(request_id, "timeout", {"errorMessage": message}, logs)
        kind, body, _error_type = invocation.outcome
        payload = json.loads(body) if body else None
        return InvokeResult(request_id, "ok" if kind == "response" else "error", payload, logs)

    def _init_error_payload(self) -> dict:
        if self.api.init_error is None:
            return {"errorType": "Runtime.ExitError", "errorMessage": "The runtime exited during init."}
        body, error_type = self.api.init_error
        payload = json.loads(body)
        if error_type and "errorType" not in payload:
            payload["errorType"] = error_type
        return payload

    def _wait(self, condition, timeout_s: float) -> bool:
        """Collect the process's output until ``condition()`` holds; False if ``timeout_s`` ran out."""
        end = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > end:
                return False
            self._drain(0.05)
        self._drain(0)
        return True

    def _drain(self, timeout_s: float) -> None:
        stdout = self._process.stdout
        while select.select([stdout], [], [], timeout_s)[0]:
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                break
            self._output += chunk
            timeout_s = 0

    def _take_lines(self) -> list[str]:
        text, _, rest = self._output.rpartition(b"\n")
        self._output = rest
        # awslambdaric separates the lines of one multi-line record with "\r" (one CloudWatch event)
        return [line for line in text.decode("utf-8", "replace").split("\n") if line] if text else []


# ---------------------------------------------------------------- sample images on loopback


class SampleServer:
    """Serves a directory of images on 127.0.0.1 (for events whose URLs point at the internet)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._server = LoopbackServer(partial(_QuietFileHandler, directory=str(self.directory)))

    @property
    def host(self) -> str:
        return self._server.host

    def __enter__(self) -> SampleServer:
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()

    def url_for(self, original: str) -> str:
        """The loopback URL of the sample the original URL names (by file stem or folder)."""
        names = sorted(
            p.name for p in self.directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        parts = [part for part in urlsplit(original).path.lower().split("/") if part]
        stems = {Path(name).stem.lower(): name for name in names}
        chosen = next((stems[Path(p).stem] for p in reversed(parts) if Path(p).stem in stems), names[0])
        return f"http://{self.host}/{chosen}"

    def rewrite(self, event: object) -> object:
        """``event`` with every http(s):// and s3:// URL (also inside JSON bodies) pointed here."""
        if isinstance(event, dict):
            return {key: self.rewrite(value) for key, value in event.items()}
        if isinstance(event, list):
            return [self.rewrite(value) for value in event]
        if isinstance(event, str):
            if re.match(r"(?i)(https?|s3)://", event):
                return self.url_for(event)
            if event.lstrip().startswith("{"):
                try:
                    inner = json.loads(event)
                except json.JSONDecodeError:
                    return event
                return json.dumps(self.rewrite(inner))
        return event


class _QuietFileHandler(QuietHandler, SimpleHTTPRequestHandler):
    """Files from a directory, no request logging."""


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="built artifact (build_artifact.py --platform local)")
    parser.add_argument("events", type=Path, nargs="+", help="event JSON files")
    parser.add_argument("--samples", type=Path, help="serve this folder and point the events' URLs at it")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra variable")
    args = parser.parse_args(argv)
    config = read_function_config(args.template)
    extra = dict(item.split("=", 1) for item in args.env)
    if not (args.artifact / "lambda_function").is_dir():
        parser.error(f"{args.artifact} is not a built artifact (no lambda_function/ in it)")

    samples = SampleServer(args.samples) if args.samples else None
    if samples:
        samples.__enter__()
        extra.setdefault("FETCH_ALLOWED_HOSTS", samples.host)
    failed = False
    try:
        with LocalLambda(args.artifact, config, extra) as function:
            how = "read-only mount namespace" if function.isolate else "write-protected copy"
            print(f"local runtime: {RUNTIME_CLIENT} {config.handler} ({how}, {config.log_format} logs)")
            for line in function.init_logs:
                print(line)
            for path in args.events:
                event = json.loads(path.read_text(encoding="utf-8"))
                if samples:
                    event = samples.rewrite(event)
                result = function.invoke(event)
                for line in result.logs:
                    print(line)
                print(f"--- {path}: {result.status} (request {result.request_id})")
                print(json.dumps(result.payload, indent=2, ensure_ascii=False))
                failed |= result.status != "ok"
    finally:
        if samples:
            samples.__exit__()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
