"""`moeforge jobs create|ls|show|watch|cancel`: a Customization Centre's jobs, over its HTTP API (scriptable)."""

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moeforge.errors import ConfigError, MoeforgeError

app = typer.Typer(no_args_is_help=True, help="Jobs on a Customization Centre, over its HTTP API.")
console = Console()

UrlOpt = Annotated[str | None, typer.Option("--url", help="The Centre's address \\[default: $MOEFORGE_SERVICE_URL or "
                                            "http://127.0.0.1:8100].")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key \\[default: $MOEFORGE_API_KEY].", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
FINAL = ("succeeded", "failed", "cancelled")


class ServiceError(MoeforgeError):
    """The Centre refused a request (its message is shown as is)."""


class Client:
    def __init__(self, url: str | None, key: str | None):
        from moeforge.extras import require

        require("service", "`moeforge jobs`")  # httpx
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is not the user's business
        self.url = (url or os.environ.get("MOEFORGE_SERVICE_URL") or "http://127.0.0.1:8100").rstrip("/")
        key = key or os.environ.get("MOEFORGE_API_KEY")
        if not key:
            raise ConfigError("no API key: pass --key or set MOEFORGE_API_KEY (`moeforge service up` printed one).")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.send(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            raise ServiceError(f"{method} {path}: HTTP {response.status_code} with a body that is not JSON") from None
        if response.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            where = f" ({err['param']})" if err.get("param") else ""
            raise ServiceError(f"{method} {path}: HTTP {response.status_code}: {err.get('message', data)}{where}")
        return data

    def send(self, method: str, path: str, **kwargs):
        """The raw response (a non-JSON body, such as a CSV statement, is read from it); unreachable → ServiceError."""
        import httpx

        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the Centre at {self.url} ({exc}); is `moeforge service up` running?") from None

    def validated(self, path: Path, option: str = "--file") -> dict:
        """Upload a data file and wait for the Centre's validation; ServiceError naming the file if it failed."""
        uploaded = self.upload(path, option=option)
        while uploaded["status"] == "uploaded":
            time.sleep(0.5)
            uploaded = self.call("GET", f"/v1/files/{uploaded['id']}")
        if uploaded["status"] == "error":
            raise ServiceError(f"{path}: {uploaded['status_details']}")
        return uploaded

    def upload(self, path: Path, purpose: str = "fine-tune", option: str = "--file") -> dict:
        if not path.is_file():
            raise ConfigError(f"{option} {path}: no such file.")
        with open(path, "rb") as f:
            return self.call("POST", "/v1/files", files={"file": (path.name, f)}, data={"purpose": purpose})


@app.command()
def create(
    file: Annotated[list[Path], typer.Option("--file", help="A data file to upload (repeatable; the first is the training file).")],
    domain: Annotated[str, typer.Option("--domain", help="The problem's domain name (lowercase, e.g. maths).")],
    model: Annotated[str | None, typer.Option("--model", help="Base model \\[default: the Centre's first].")] = None,
    goal: Annotated[str, typer.Option("--goal", help="What good looks like, in words.")] = "",
    rounds: Annotated[int | None, typer.Option("--rounds", min=1, help="Rounds of the network job.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Send again with the same key: one job.")] = None,
    url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """Upload the data files, wait for their validation, and create the job."""
    client = Client(url, key)
    ids = []
    for path in file:
        uploaded = client.validated(path)
        report = uploaded["report"]
        console.print(f"{path}: {uploaded['id']}: {report['records']:,} records, {report['skipped']} skipped, "
                      f"{report['duplicates']} duplicates, {report['tokens']:,} tokens", highlight=False)
        ids.append(uploaded["id"])
    model = model or next(b["id"] for b in client.call("GET", "/v1/bases")["data"] if b["default"])
    body = {"model": model, "training_file": ids[0], "files": ids[1:], "problem": {"domain": domain, "goal": goal}}
    if rounds is not None:
        body["hyperparameters"] = {"n_epochs": rounds}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = client.call("POST", "/v1/fine_tuning/jobs", json=body, headers=headers)
    _show(job, as_json)


@app.command("ls")
def ls(limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 20, url: UrlOpt = None, key: KeyOpt = None,
       as_json: JsonOpt = False) -> None:
    """List the tenant's jobs, newest first."""
    data = Client(url, key).call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title="jobs")
    table.add_column("id", no_wrap=True, min_width=30)  # whole: it is what `jobs show|watch|cancel` take
    for col in ("status", "model", "domain", "created", "model made"):
        table.add_column(col)
    for job in data["data"]:
        table.add_row(job["id"], job["status"], job["model"], (job.get("problem") or {}).get("domain", ""),
                      time.strftime("%m-%d %H:%M", time.localtime(job["created_at"])), (job["fine_tuned_model"] or "")[:12])
    console.print(table)


@app.command()
def show(job_id: Annotated[str, typer.Argument(help="The job's id (ftjob-…).")], url: UrlOpt = None, key: KeyOpt = None,
         as_json: JsonOpt = False) -> None:
    """One job: its state, plan and result."""
    _show(Client(url, key).call("GET", f"/v1/fine_tuning/jobs/{job_id}"), as_json)


@app.command()
def watch(job_id: Annotated[str, typer.Argument(help="The job's id (ftjob-…).")], url: UrlOpt = None, key: KeyOpt = None,
          poll_s: Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between polls.")] = 1.0) -> None:
    """Print the job's events as they come, until it ends; exit status 1 unless it succeeded."""
    client = Client(url, key)
    last = 0
    while True:
        job = client.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
        events = client.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})["data"]
        for event in reversed(events):
            n = int(event["id"].split("-")[1])
            if n > last:
                last = n
                console.print(f"{time.strftime('%H:%M:%S', time.localtime(event['created_at']))} {event['message']}",
                              highlight=False, soft_wrap=True)
        if job["status"] in FINAL:
            console.print(f"job {job_id} {job['status']}" + (f": model {job['fine_tuned_model']}" if job["fine_tuned_model"] else ""),
                          highlight=False)
            if job["status"] != "succeeded":
                raise typer.Exit(1)
            return
        time.sleep(poll_s)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="The job's id (ftjob-…).")], url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Cancel a job that has not ended."""
    job = Client(url, key).call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    console.print(f"job {job_id}: {job['status']}" + (" (cancel requested)" if job["status"] not in FINAL else ""), highlight=False)


def _show(job: dict, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(job))
        return
    console.print(f"job {job['id']}: {job['status']} on {job['model']}", highlight=False)
    plan = job.get("plan")
    if plan:
        sel = plan["selection"]
        console.print(f"plan: {sel['experts']} experts ({sel['why']}); warm start from "
                      f"{', '.join(e[:12] for e in plan['warm_start']) or 'the base'}; "
                      f"≈{plan['estimate']['tokens']:,} tokens over {plan['estimate']['rounds']} rounds", highlight=False, soft_wrap=True)
    if job.get("error"):
        console.print(f"error: {job['error']['message']}", highlight=False, soft_wrap=True)
    if job.get("fine_tuned_model"):
        console.print(f"model: {job['fine_tuned_model']}", highlight=False)
