"""The Customization Centre under load: read latency with N concurrent clients and a job training, and a streamed upload.

The service runs on the embedded defaults (`moeforge service up`, harness/centre.py) on the testbed,
and a maths job is kept training on its local network throughout (a second job waits queued, and a
new one is created whenever fewer than two are left unfinished). Then, for each N in --clients, N
concurrent API clients (one keep-alive aiohttp connection each, asyncio, loopback only) loop for --seconds over

    jobs.list    GET /v1/fine_tuning/jobs
    jobs.show    GET /v1/fine_tuning/jobs/{id}         (the job that is running)
    jobs.events  GET /v1/fine_tuning/jobs/{id}/events
    files.list   GET /v1/files

and record each request's latency (after a warm-up of 5 requests per endpoint, not measured); a
request fails if it raises or answers other than 2xx. The clients share the 2 cores with the
service and the job, so they should cost little: aiohttp takes about a tenth of the CPU per request
that httpx takes here, whose own event loop was the larger part of the tail at 64 clients
(--client httpx measures with it instead). During the largest level one more client, a process of
its own, uploads a --upload-mib JSONL file (POST /v1/files, multipart, streamed from disk), and
after the levels the same upload runs alone. While each upload runs, the
API processes' RSS (`service up` and the uvicorn processes it starts with --api-workers; the job
worker is another process) is sampled every 20 ms, and their VmHWM is reset just before
(/proc/PID/clear_refs 5) and read after, so the peak is exact even between samples; the growth is
that of the process whose peak grew most (the one that took the upload).

Targets (issue): reads p99 ≤ 200 ms at the largest N (64) with a job training beside them; zero failed
requests; upload peak RSS − baseline ≤ 2 × chunk (store.protocol.CHUNK_BYTES, the pieces an upload is hashed and
copied into the store in) + UPLOAD_CONSTANT_BYTES.
Prints a table and writes bench/results/service.json.

    .venv/bin/python bench/service.py            # default testbed, N = 1, 16, 64, 10 s each, 50 MiB upload
    .venv/bin/python bench/service.py --quick    # small testbed, N = 1, 4, 3 s each, 2 MiB upload
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from args import parse_args
from base import testbed_base
from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.centre import centre
from moeforge.store.protocol import CHUNK_BYTES

RESULTS = Path(__file__).parent / "results" / "service.json"
READS = ("jobs.list", "jobs.show", "jobs.events", "files.list")
FINAL = ("succeeded", "failed", "cancelled")
READ_P99_TARGET_MS = 200.0
# What a streamed upload may add to the API process beyond 2 chunks: the interpreter's allocator arenas that the
# first large request grows and keeps, uvicorn's per-connection read buffer (its 64 KiB high-water mark) and the
# body queue behind it, python-multipart's parser state, the httpx-sized pieces (64 KiB) in flight, the threadpool
# threads that sniff, hash and copy the file into the store (1 MiB reads each) and the SQLAlchemy session of the
# insert. None of it grows with the file's size; 16 MiB is a generous bound on their sum.
UPLOAD_CONSTANT_BYTES = 16 * 1024 * 1024
SAMPLE_S = 0.02
UPLOADER = """
import json, sys, time
import httpx
url, key, path = sys.argv[1:4]
with open(path, "rb") as f, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
    started = time.perf_counter()
    try:
        r = http.post("/v1/files", files={"file": (path.rsplit("/", 1)[-1], f, "application/jsonl")}, data={"purpose": "fine-tune"})
        ended = time.perf_counter()
        try:
            body = r.json()
        except ValueError:
            body = r.text[:2000]
        print(json.dumps({"status": r.status_code, "body": body, "started": started, "ended": ended}))
    except httpx.HTTPError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "started": started, "ended": time.perf_counter()}))
"""
QUICK = {"preset": "small", "clients": "1,4", "seconds": 3.0, "upload_mib": 2, "records": 100}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", help="testbed preset: the base model and its job settings")
    parser.add_argument("--testbed", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated client counts, one level each")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each level's clients run")
    parser.add_argument("--upload-mib", type=int, default=50, help="size of the uploaded JSONL file")
    parser.add_argument("--records", type=int, default=2000, help="maths records in the training file of each job (the "
                        "default testbed's job needs more than 64 held-out rows: 300 records fail at the owner)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (n_epochs) of each job")
    parser.add_argument("--miners", type=int, default=2)
    parser.add_argument("--validators", type=int, default=1)
    parser.add_argument("--job-wait", type=float, default=600.0, help="seconds to wait for the first job to be running")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the load generator's HTTP client")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, QUICK)
    levels = sorted({int(n) for n in args.clients.split(",") if n.strip()})
    load_before = os.getloadavg()

    base = testbed_base(args.preset, args.testbed)
    model_folder = base.folder
    del base

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        tmp = Path(tmp)
        svc = centre(tmp / "centre", model_folder, miners=args.miners, validators=args.validators, preset=args.preset,
                     extra_args=("--worker-nice", "10"))  # `service up`'s default, which the harness lowers for tests
        t0 = time.monotonic()
        svc.start()
        started_s = time.monotonic() - t0
        try:
            bench = Bench(svc, tmp, args)
            figures = bench.measure(levels)
        finally:
            svc.stop()

    result = {
        "preset": args.preset,
        "testbed": str(model_folder),
        "clients": levels,
        "seconds_per_level": args.seconds,
        "endpoints": {"jobs.list": "GET /v1/fine_tuning/jobs", "jobs.show": "GET /v1/fine_tuning/jobs/{id}",
                      "jobs.events": "GET /v1/fine_tuning/jobs/{id}/events", "files.list": "GET /v1/files",
                      "files.upload": "POST /v1/files (multipart, streamed from disk)"},
        "service": {"miners": args.miners, "validators": args.validators, "started_in_s": round(started_s, 1),
                    "job_rounds": args.rounds, "job_records": args.records, **figures.pop("service")},
        "client": {"library": args.client, "connections_per_client": 1},
        **figures,
        "machine": {"loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    result["targets"] = targets(result, levels)
    print_table(result, levels)
    return run.write(args.out, result)


class Bench:
    def __init__(self, svc, tmp: Path, args):
        self.svc, self.tmp, self.args = svc, tmp, args
        self.headers = {"Authorization": f"Bearer {svc.key}"}
        self.http = httpx.Client(base_url=svc.url, headers=self.headers, timeout=60)
        self.training_file = None
        self.target_job = None  # the job the show/events clients read: the one running
        self.jobs_created: list[str] = []

    # --- setup: a training file and jobs that keep one running --------------------------------------------------------

    def setup(self) -> dict:
        from moeforge.data.corpora import load_corpus

        path = self.tmp / "maths.jsonl"
        with open(path, "w") as f:
            for r in load_corpus("math", "train")[: self.args.records]:
                f.write(json.dumps({"question": r.prompt, "answer": r.response}) + "\n")
        with open(path, "rb") as f:
            r = self.http.post("/v1/files", files={"file": (path.name, f, "application/jsonl")}, data={"purpose": "fine-tune"})
        r.raise_for_status()
        self.training_file = r.json()["id"]
        t0 = time.monotonic()
        self._wait(lambda: self.http.get(f"/v1/files/{self.training_file}").json()["status"] != "uploaded", 300, "validation")
        status = self.http.get(f"/v1/files/{self.training_file}").json()
        if status["status"] != "processed":
            raise RuntimeError(f"the training file failed validation: {status['status_details']}")
        self.new_job()
        self.new_job()  # the spare: queued behind the first, so a job is running while the worker plans the next
        self._wait(lambda: self.running_job() is not None, self.args.job_wait, "a job running")
        return {"first_job_running_after_s": round(time.monotonic() - t0, 1)}

    def new_job(self) -> str:
        body = {"model": self.svc.model.name, "training_file": self.training_file, "hyperparameters": {"n_epochs": self.args.rounds},
                "problem": {"domain": "maths", "goal": "solve word problems"}}
        r = self.http.post("/v1/fine_tuning/jobs", json=body)
        r.raise_for_status()
        self.jobs_created.append(r.json()["id"])
        return self.jobs_created[-1]

    def jobs(self) -> list[dict]:
        r = self.http.get("/v1/fine_tuning/jobs", params={"limit": 100})
        r.raise_for_status()
        return r.json()["data"]

    def running_job(self) -> str | None:
        jobs = self.jobs()
        running = [j["id"] for j in jobs if j["status"] == "running"]
        if sum(j["status"] not in FINAL for j in jobs) < 2:
            self.new_job()
        failed = [j for j in jobs if j["status"] == "failed"]
        if failed and not running and len(failed) >= 3:
            raise RuntimeError(f"jobs fail: {failed[0]['error']}; worker log: {self.svc.worker_log()[-2000:]}")
        if running:
            self.target_job = running[0]
        return running[0] if running else None

    @staticmethod
    def _wait(predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    # --- the measurement ----------------------------------------------------------------------------------------------

    def measure(self, levels: list[int]) -> dict:
        setup = self.setup()
        upload_file = self.tmp / "upload.jsonl"
        upload_bytes = write_upload(upload_file, self.args.upload_mib * 1024 * 1024)
        chunk = CHUNK_BYTES
        warm = self.warm_up()
        api = self.api_processes()
        latency = {e: {} for e in (*READS, "files.upload")}
        failures = {"total": 0, "by_endpoint": {}, "examples": []}
        per_level, uploads = {}, {}
        for n in levels:
            upload = UploadRun(self, upload_file) if n == levels[-1] else None
            level = asyncio.run(self.level(n, upload))
            per_level[str(n)] = level["info"]
            for endpoint, times in level["latency_s"].items():
                latency[endpoint][str(n)] = percentiles(times)
            for endpoint, count in level["failed"].items():
                failures["by_endpoint"][f"{endpoint}@{n}"] = count
                failures["total"] += count
            failures["examples"] += level["errors"][: max(0, 10 - len(failures["examples"]))]
            if upload is not None:
                uploads[f"with {n} clients"] = upload.summary()
                per_level[str(n)]["while_uploading"] = split_by_upload(level["timed"], upload)
        time.sleep(1.0)
        alone = UploadRun(self, upload_file)
        job_alone = self.running_job() is not None
        alone.start()
        alone.join()
        uploads["alone"] = {**alone.summary(), "job_running": job_alone and self.running_job() is not None}
        for label, up in uploads.items():
            key = "alone" if label == "alone" else label.split()[1]
            latency["files.upload"][key] = percentiles([up["seconds"]] if up["ok"] else [])
            if not up["ok"]:
                failures["by_endpoint"][f"files.upload@{key}"] = 1
                failures["total"] += 1
                failures["examples"].append(up["error"])
        peak_growth = max(u["peak_minus_baseline_bytes"] for u in uploads.values())
        return {
            "service": {"api_processes": len(api), "settings": {k: v for k, v in self._settings().items()
                                                                if k in ("api_workers", "api_threads", "worker_nice")}},
            "latency_ms": latency,
            "failed_requests": failures["total"],
            "failures": failures,
            "levels": per_level,
            "upload_bytes": upload_bytes,
            "upload_peak_rss_bytes": max(u["peak_rss_bytes"] for u in uploads.values()),
            "upload_peak_minus_baseline_bytes": peak_growth,
            "upload_chunk_bytes": chunk,
            "upload_constant_bytes": UPLOAD_CONSTANT_BYTES,
            "uploads": uploads,
            "setup": {**setup, "warm_up_requests": warm, "jobs_created": len(self.jobs_created),
                      "jobs_at_end": {j["id"]: j["status"] + (f": {j['error']['message'][:300]}" if j["error"] else "")
                                      for j in self.jobs()},
                      "uploads_validated_at_end": {u["file_id"]: self._file_status(u["file_id"]) for u in uploads.values()
                                                   if u["file_id"]}},
        }

    def warm_up(self) -> int:
        """Each read endpoint a few times, not measured: the first request of a route imports and compiles what it needs."""
        self.running_job()
        paths = ["/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{self.target_job}", f"/v1/fine_tuning/jobs/{self.target_job}/events",
                 "/v1/files"]
        for _ in range(5):
            for path in paths:
                self.http.get(path).raise_for_status()
        return 5 * len(paths)

    def _file_status(self, file_id: str) -> str:
        r = self.http.get(f"/v1/files/{file_id}")
        return r.json()["status"] if r.status_code == 200 else f"HTTP {r.status_code}"

    def _settings(self) -> dict:
        return json.loads((self.svc.root / "home" / "service" / "settings.json").read_text())

    def api_processes(self) -> list[psutil.Process]:
        return self.svc.api_processes()

    def worker(self) -> psutil.Process:
        return self.svc.worker()

    async def level(self, n: int, upload: "UploadRun | None") -> dict:
        latency = {e: [] for e in READS}
        timed: list[tuple[str, float, float]] = []  # (endpoint, start, end) of each good request, perf_counter
        failed = {e: 0 for e in READS}
        errors: list[str] = []
        monitor = {"samples": 0, "running": 0, "jobs": set(), "failed": 0}
        me = psutil.Process()
        api, worker = self.api_processes(), self.worker()
        cpu = {"api": _cpu(api), "worker_tree": _cpu([worker, *worker.children(recursive=True)]), "bench": _cpu([me])}
        psutil.cpu_percent(None)
        t_start = time.monotonic()
        deadline = t_start + self.args.seconds

        async def client(i: int):
            async with Client(self.args.client, self.svc.url, self.headers) as http:
                k = i
                while time.monotonic() < deadline:
                    endpoint = READS[k % len(READS)]
                    k += 1
                    job = self.target_job
                    path = {"jobs.list": "/v1/fine_tuning/jobs", "jobs.show": f"/v1/fine_tuning/jobs/{job}",
                            "jobs.events": f"/v1/fine_tuning/jobs/{job}/events", "files.list": "/v1/files"}[endpoint]
                    t0 = time.perf_counter()
                    ok, why = await http.get(path)
                    why = f"{endpoint}: {why}"
                    dt = time.perf_counter() - t0
                    if ok:
                        latency[endpoint].append(dt)
                        timed.append((endpoint, t0, t0 + dt))
                    else:
                        failed[endpoint] += 1
                        errors.append(why)

        async def watch():  # which job runs: the show/events clients follow it; never counted as a client's request
            async with httpx.AsyncClient(base_url=self.svc.url, headers=self.headers, timeout=30) as http:
                while time.monotonic() < deadline:
                    try:
                        jobs = (await http.get("/v1/fine_tuning/jobs", params={"limit": 100})).json()["data"]
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        monitor["failed"] += 1
                        errors.append(f"monitor: {type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.5)
                        continue
                    running = [j["id"] for j in jobs if j["status"] == "running"]
                    monitor["samples"] += 1
                    monitor["running"] += bool(running)
                    monitor["jobs"].update(running)
                    if running:
                        self.target_job = running[0]
                    if sum(j["status"] not in FINAL for j in jobs) < 2:
                        await asyncio.to_thread(self.new_job)
                    await asyncio.sleep(0.5)

        async def start_upload():
            await asyncio.sleep(min(1.0, self.args.seconds / 4))  # once the clients are all going
            upload.start()

        tasks = [client(i) for i in range(n)] + [watch()] + ([start_upload()] if upload is not None else [])
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t_start
        if upload is not None:
            await asyncio.to_thread(upload.join)
        info = {
            "wall_s": round(wall, 2),
            "requests": sum(len(v) for v in latency.values()) + sum(failed.values()),
            "requests_per_s": round((sum(len(v) for v in latency.values()) + sum(failed.values())) / wall, 1),
            "job_running": monitor["samples"] > 0 and monitor["running"] == monitor["samples"],
            "job_running_fraction": round(monitor["running"] / max(1, monitor["samples"]), 3),
            "jobs_running_seen": sorted(monitor["jobs"]),
            "monitor_failures": monitor["failed"],
            "cpu_percent_machine": psutil.cpu_percent(None),
            "cpu_s_api_processes": round(_cpu(api) - cpu["api"], 2),
            "cpu_s_worker_and_roles": round(_cpu([worker, *worker.children(recursive=True)]) - cpu["worker_tree"], 2),
            "cpu_s_bench_clients": round(_cpu([me]) - cpu["bench"], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        failed["monitor"] = monitor["failed"]
        return {"latency_s": latency, "timed": timed, "failed": {k: v for k, v in failed.items() if v}, "errors": errors, "info": info}


class UploadRun:
    """One streamed upload in a thread, with the API processes' RSS sampled every SAMPLE_S and their VmHWM reset before;
    the figures are those of the process whose peak grew most."""

    def __init__(self, bench: Bench, path: Path):
        self.bench, self.path = bench, path
        self.procs = bench.api_processes()
        self.samples: list[list[int]] = []  # per sample, each process's RSS
        self.done = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True, name="upload")

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join()

    def _rss(self) -> list[int]:
        return [p.memory_info().rss for p in self.procs]

    def _run(self) -> None:
        before = []
        for _ in range(10):  # the baseline: the processes as they are just before the upload (other clients included)
            before.append(self._rss())
            time.sleep(SAMPLE_S)
        baselines = [int(b) for b in np.median(np.array(before), axis=0)]
        hwm_reset = all([_reset_hwm(p.pid) for p in self.procs])
        sampler = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        sampler.start()
        ok, error, body = False, None, {}
        # the upload is its own client process, as it would be: in this one it would take the GIL from the read clients
        done = subprocess.run([sys.executable, "-c", UPLOADER, self.bench.svc.url, self.bench.svc.key, str(self.path)],
                              capture_output=True, text=True, timeout=600)
        try:
            out = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"error": f"the uploader exited {done.returncode}: {done.stderr[-500:]}", "started": 0.0, "ended": 0.0}
        t0, self.started, self.ended = out["started"], out["started"], out["ended"]  # perf_counter: CLOCK_MONOTONIC
        if "error" in out:
            error = f"files.upload: {out['error']}"
        else:
            body = out["body"] if isinstance(out["body"], dict) else {}
            ok = out["status"] == 200 and body.get("bytes") == self.path.stat().st_size
            if not ok:
                error = f"files.upload: {out['status']} {str(out['body'])[:300]}"
        seconds = max(self.ended - t0, 1e-9)
        self.done.set()
        sampler.join()
        hwms = [_hwm_bytes(p.pid) if hwm_reset else None for p in self.procs]
        peaks = [max([*(s[i] for s in self.samples), *([hwms[i]] if hwms[i] else [])]) for i in range(len(self.procs))]
        took = max(range(len(self.procs)), key=lambda i: peaks[i] - baselines[i])  # the process that took the upload
        baseline, peak, hwm = baselines[took], peaks[took], hwms[took]
        self.result = {
            "ok": ok, "error": error, "seconds": seconds, "file_id": body.get("id"), "bytes": body.get("bytes"),
            "mib_per_s": round(self.path.stat().st_size / 2**20 / seconds, 1),
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "peak_minus_baseline_bytes": peak - baseline,
            "sampled_peak_rss_bytes": max(s[took] for s in self.samples), "samples": len(self.samples),
            "api_process": {"index": took, "of": len(self.procs),
                            "peak_minus_baseline_bytes_each": [p - b for p, b in zip(peaks, baselines)]},
            "largest_sample_gap_ms": round(self._gap * 1000, 1), "vmhwm_bytes": hwm, "vmhwm_reset": hwm_reset,
        }

    def _sample(self) -> None:
        last, self._gap = time.perf_counter(), 0.0
        while not self.done.is_set():
            self.samples.append(self._rss())
            time.sleep(SAMPLE_S)
            now = time.perf_counter()
            self._gap, last = max(self._gap, now - last), now
        self.samples.append(self._rss())

    def summary(self) -> dict:
        r = dict(self.result)
        r["seconds"] = round(r["seconds"], 3)
        return r


def split_by_upload(timed: list[tuple[str, float, float]], upload: UploadRun) -> dict:
    """The level's read latencies split by whether the request overlapped the upload: does the upload cause the tail?"""
    during = {e: [] for e in READS}
    outside = {e: [] for e in READS}
    for endpoint, start, end in timed:
        (during if start < upload.ended and end > upload.started else outside)[endpoint].append(end - start)
    return {"upload_seconds": round(upload.ended - upload.started, 3),
            "overlapping_ms": {e: percentiles(v) for e, v in during.items()},
            "not_overlapping_ms": {e: percentiles(v) for e, v in outside.items()}}


def _reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); whether that was possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_bytes(pid: int) -> int | None:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else None


def _cpu(procs: list[psutil.Process]) -> float:
    """The CPU seconds (user + system, their waited-for children's included) of the processes still alive."""
    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:4])
        except psutil.Error:
            pass
    return total


class Client:
    """One load-generating client: a single keep-alive connection; `get(path)` → (ok, what it got)."""

    def __init__(self, library: str, url: str, headers: dict):
        self.library, self.url, self.headers = library, url, headers

    async def __aenter__(self):
        if self.library == "aiohttp":
            import aiohttp

            self.http = aiohttp.ClientSession(self.url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=30),
                                              connector=aiohttp.TCPConnector(limit=1))
        else:
            self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30,
                                          limits=httpx.Limits(max_connections=1))
        await self.http.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.http.__aexit__(*exc)

    async def get(self, path: str) -> tuple[bool, str]:
        if self.library == "aiohttp":
            import aiohttp

            try:
                async with self.http.get(path) as r:
                    body = await r.read()
                    return 200 <= r.status < 300, f"{r.status} {body[:200]!r}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                return False, f"{type(exc).__name__}: {exc}"
        try:
            r = await self.http.get(path)
            return 200 <= r.status_code < 300, f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"


def write_upload(path: Path, size: int) -> int:
    """A valid JSONL file of about `size` bytes: maths records, numbered so that no two lines are the same."""
    from moeforge.data.corpora import load_corpus

    records = load_corpus("math", "train")
    written = 0
    with open(path, "w") as f:
        i = 0
        while written < size:
            r = records[i % len(records)]
            line = json.dumps({"question": f"({i}) {r.prompt}", "answer": r.response}) + "\n"
            f.write(line)
            written += len(line.encode())
            i += 1
    return path.stat().st_size


def percentiles(times_s: list[float]) -> dict:
    if not times_s:
        return {"p50": None, "p99": None, "mean": None, "max": None, "count": 0}
    ms = np.asarray(times_s) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
            "mean": round(float(ms.mean()), 2), "max": round(float(ms.max()), 2), "count": int(ms.size)}


def targets(result: dict, levels: list[int]) -> dict:
    top = str(levels[-1])
    p99 = {e: result["latency_ms"][e][top]["p99"] for e in READS}
    worst = max((v for v in p99.values() if v is not None), default=None)
    bound = 2 * result["upload_chunk_bytes"] + UPLOAD_CONSTANT_BYTES
    growth = {k: u["peak_minus_baseline_bytes"] for k, u in result["uploads"].items()}
    return {
        "reads_p99_ms": {"clients": levels[-1], "target": READ_P99_TARGET_MS, "measured": worst, "per_endpoint": p99,
                         "job_running": result["levels"][top]["job_running"],
                         "met": worst is not None and worst <= READ_P99_TARGET_MS},
        "failed_requests": {"target": 0, "measured": result["failed_requests"], "met": result["failed_requests"] == 0},
        "upload_memory": {"target_bytes": bound, "rule": "peak - baseline <= 2 * upload_chunk_bytes + upload_constant_bytes",
                          "measured_bytes": growth, "met": all(g <= bound for g in growth.values())},
    }


def print_table(result: dict, levels: list[int]) -> None:
    print(f"\nservice on {result['preset']} testbed; {result['seconds_per_level']:.0f} s per level; latency ms p50 / p99 (count)")
    print(f"{'endpoint':<14}" + "".join(f"{'N=' + str(n):>24}" for n in levels))
    for e in READS:
        cells = []
        for n in levels:
            s = result["latency_ms"][e][str(n)]
            cells.append(f"{s['p50']} / {s['p99']} ({s['count']})" if s["count"] else "-")
        print(f"{e:<14}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'job running':<14}" + "".join(f"{str(result['levels'][str(n)]['job_running_fraction']):>24}" for n in levels))
    print(f"{'requests/s':<14}" + "".join(f"{result['levels'][str(n)]['requests_per_s']:>24}" for n in levels))
    mib = 2**20
    for label, u in result["uploads"].items():
        print(f"upload {result['upload_bytes'] / mib:.1f} MiB {label}: {'ok' if u['ok'] else 'FAILED ' + str(u['error'])} "
              f"in {u['seconds']:.2f} s; API RSS {u['baseline_rss_bytes'] / mib:.1f} -> peak {u['peak_rss_bytes'] / mib:.1f} MiB "
              f"(+{u['peak_minus_baseline_bytes'] / mib:.1f}; {u['samples']} samples, largest gap {u['largest_sample_gap_ms']} ms)")
    split = result["levels"][str(levels[-1])].get("while_uploading")
    if split:
        for side in ("overlapping_ms", "not_overlapping_ms"):
            cells = "; ".join(f"{e} {v['p50']} / {v['p99']} ({v['count']})" for e, v in split[side].items() if v["count"])
            print(f"N={levels[-1]} reads {side.replace('_ms', '').replace('_', ' ')} the upload: {cells or '-'}")
    print(f"failed requests: {result['failed_requests']} {result['failures']['by_endpoint'] or ''}")
    for name, t in result["targets"].items():
        measured = t.get("measured", t.get("measured_bytes"))
        print(f"target {name}: {'met' if t['met'] else 'NOT met'} (measured {measured}, target {t.get('target', t.get('target_bytes'))})")


if __name__ == "__main__":
    main()
