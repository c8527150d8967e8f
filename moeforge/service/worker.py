"""The Centre's worker: the one process that does the heavy work, never the web process.

Its main loop, every `poll_s`: move each job along `validating_files → profiling → queued → running →
succeeded | failed | cancelled`; export what succeeded. A job runs on a local network
(network/local.py) in a thread of the worker; one job runs at a time (the roles share the machine's
cores). Uploads are validated (service/validation.py) by a loop of their own, in another thread, so a
file is checked within seconds of its upload even while the main loop plans a job or makes an export
for minutes.

Every step is driven from the database, so a worker killed at any point (kill -9) and started again
picks up where it was: a job found `running` is run again in its run folder, where the owner resumes
the job it already published and the validators resume from their last round; a job found
`profiling` is planned again. Role processes die with the worker (PR_SET_PDEATHSIG), so a restarted
worker never finds the old ones still running.
"""

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import traceback
from pathlib import Path

from moeforge.errors import ConfigError, MoeforgeError
from moeforge.service.db import Database, add_event, centre_library, dumps, loads, now, stamp
from moeforge.service.settings import ServiceSettings

log = logging.getLogger(__name__)

DATA_FILE = "{domain}.jsonl"  # the job's records, in the run folder: what the owner and the validators read


class Cancelled(Exception):
    pass


class Worker:
    def __init__(self, settings: ServiceSettings):
        from moeforge.store.open import open_store

        self.settings = settings
        self.db = Database(settings.database)
        self.store = open_store(settings.store)
        self.library = centre_library(self.db, settings.library_store)
        self.running: threading.Thread | None = None
        self.tokenizers: dict[str, object] = {}
        # the owner deposits into the Centre's library, the roles inherit this environment
        os.environ["MOEFORGE_CATALOG"] = settings.database
        os.environ["MOEFORGE_LIBRARY_STORE"] = settings.library_store

    # --- the loop -------------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("worker started on %s", self.settings.database)
        files = threading.Thread(target=self._loop, args=(self.validate_next_file, stop), name="validate-files", daemon=True)
        files.start()
        self._loop(self.step, stop)
        files.join()

    def _loop(self, step, stop: threading.Event) -> None:
        """Call `step` until `stop` is set, waiting `poll_s` after each pass that found nothing to do."""
        while not stop.is_set():
            try:
                busy = step()
            except Exception:  # a bug or a database hiccup: logged, and the loop goes on
                log.error("worker step %s failed: %s", step.__name__, traceback.format_exc())
                busy = False
            if not busy:
                stop.wait(self.settings.poll_s)

    def step(self) -> bool:
        """One pass of the main loop (jobs and exports; files have their own loop); → whether it found work."""
        busy = self.advance_jobs()
        busy |= self.export_next()
        return busy

    # --- files ------------------------------------------------------------------------------------------------------------

    def validate_next_file(self) -> bool:
        from sqlalchemy import select

        from moeforge.service.schema import FileRow
        from moeforge.service.validation import shown, validate

        with self.db.session() as s:
            row = s.scalar(select(FileRow).where(FileRow.status == "uploaded", FileRow.deleted.is_(False)).order_by(FileRow.created_at).limit(1))
        if row is None:
            return False
        base = self.settings.default_base
        with tempfile.TemporaryDirectory(dir=self._scratch()) as tmp:
            path = Path(tmp) / row.filename
            path.write_bytes(self.store.get(row.sha256))
            try:
                report = validate(path, self._tokenizer(base), base)
                status, details, text = "processed", None, report.model_dump_json()
            except MoeforgeError as exc:
                status, details, text = "error", shown(str(exc), Path(tmp)), None
            except Exception:  # a bug: the file fails (and the next one is validated), the trace goes to the log
                status, details, text = "error", internal(f"file {row.id}"), None
        with self.db.session() as s:
            fresh = s.get(FileRow, row.id)
            fresh.status, fresh.status_details, fresh.report = status, details, text
        log.info("file %s (%s): %s", row.id, row.filename, status)
        return True

    def _tokenizer(self, base: str):
        if base not in self.tokenizers:
            from transformers import AutoTokenizer

            self.tokenizers[base] = AutoTokenizer.from_pretrained(self.settings.bases[base])
        return self.tokenizers[base]

    def _scratch(self) -> Path:
        path = self.settings.home / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- jobs -------------------------------------------------------------------------------------------------------------

    def advance_jobs(self) -> bool:
        from sqlalchemy import select

        from moeforge.service.schema import JobRow

        with self.db.session() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.status.in_(("validating_files", "profiling", "queued", "running")))
                                  .order_by(JobRow.created_at)))
        busy = False
        for row in rows:
            if self.running is not None and self.running.is_alive() and row.status == "running":
                continue  # the thread has it
            if row.cancel_requested and row.status != "running":
                self._finish(row.id, "cancelled", message="job cancelled")
                busy = True
            elif row.status == "validating_files":
                busy |= self._check_files(row)
            elif row.status == "profiling":
                self._profile(row)
                busy = True
            elif row.status in ("queued", "running") and (self.running is None or not self.running.is_alive()):
                self._start(row)
                busy = True
        return busy

    def _check_files(self, row) -> bool:
        from moeforge.service.schema import FileRow

        ids = loads(row.files) + ([row.validation_file] if row.validation_file else [])
        with self.db.session() as s:
            files = [s.get(FileRow, i) for i in ids]
        bad = [f for f in files if f.status == "error"]
        if bad:
            self._finish(row.id, "failed", error={"code": "invalid_file", "param": "training_file",
                                                   "message": f"file {bad[0].id} ({bad[0].filename}): {bad[0].status_details}"})
            return True
        if any(f.status != "processed" for f in files):
            return False  # still being validated
        self._move(row.id, "validating_files", "profiling", f"files validated: {sum(loads(f.report)['records'] for f in files)} "
                   "records")
        return True

    def _records(self, row):
        """The job's training records, every file read as its validation read it (bad records skipped)."""
        from moeforge.service.schema import FileRow

        with self.db.session() as s:
            files = [s.get(FileRow, i) for i in loads(row.files)]
        return [record for f in files for record in self._file_records(f)]

    def _file_records(self, f) -> list:
        """A stored file's records, read as its validation read it (bad records skipped)."""
        from moeforge.data.readers import DataSpec, read_records

        with tempfile.TemporaryDirectory(dir=self._scratch()) as tmp:
            path = Path(tmp) / f.filename
            path.write_bytes(self.store.get(f.sha256))
            return read_records(path, DataSpec(on_error="skip")).records

    def run_dir(self, job_id: str) -> Path:
        return self.settings.runs() / job_id

    def _request(self, row, warm_start: str):
        from moeforge.cli.owner import job_request
        from moeforge.network.local import LOCKSTEP_SCHEDULE

        settings, problem = loads(row.settings), loads(row.problem)
        defaults = {**LOCKSTEP_SCHEDULE, **self.settings.job_defaults.get(row.model, {})}
        fields = {"rounds": settings["rounds"], "job_id": row.id, "warm_start": warm_start}
        request = job_request(None, Path(self.settings.bases[row.model]), problem["domain"], defaults, **fields)
        train = request.train
        if settings.get("learning_rate_multiplier") not in (None, "auto"):
            train = train.model_copy(update={"lr": train.lr * settings["learning_rate_multiplier"]})
        if settings.get("batch_size") not in (None, "auto"):
            train = train.model_copy(update={"batch_size": settings["batch_size"]})
        return request.model_copy(update={"train": train})

    def _profile(self, row) -> None:
        from moeforge.service.plan import make_plan
        from moeforge.service.routes.models import visible

        try:
            records = self._records(row)
            run = self.run_dir(row.id)
            run.mkdir(parents=True, exist_ok=True)
            problem = loads(row.problem)
            data = run / DATA_FILE.format(domain=problem["domain"])
            from moeforge.atomic import write_text

            write_text(data, "".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n" for r in records))
            request = self._request(row, "auto")
            with self.db.session() as s:
                owned, anyone = visible(s, row.tenant_id)
            allowed = {e.id for e in self.library.catalog.entries() if e.id in owned or e.id not in anyone}
            plan = make_plan(request, records, salt=row.salt, library=self.library, allowed=allowed, run_dir=run,
                             miners=self.settings.miners, device=self.settings.device)
        except MoeforgeError as exc:
            self._finish(row.id, "failed", error={"code": "profiling_failed", "message": str(exc), "param": None})
            return
        except Exception:  # a bug: the job fails rather than being planned again on every pass
            self._finish(row.id, "failed", error={"code": "internal_error", "message": internal(f"job {row.id}"), "param": None})
            return
        warm = f"{len(plan['warm_start'])} library entr{'y' if len(plan['warm_start']) == 1 else 'ies'}" if plan["warm_start"] else "the base"
        with self.db.session() as s:
            from moeforge.service.schema import JobRow

            fresh = s.get(JobRow, row.id)
            if fresh.status != "profiling":
                return
            fresh.plan, fresh.status = dumps(plan), "queued"
            add_event(s, row.id, f"planned: {plan['selection']['experts']} experts selected "
                      f"({plan['selection']['why']}); experts start from {warm}; job queued", data={"plan": "ready"})

    def _start(self, row) -> None:
        from sqlalchemy import update

        from moeforge.service.schema import JobRow

        with self.db.session() as s:  # claim it: a cancel of a queued job races this same update
            claimed = s.execute(update(JobRow).where(JobRow.id == row.id, JobRow.status.in_(("queued", "running")))
                                .values(status="running", attempts=JobRow.attempts + 1)).rowcount
            if claimed:
                add_event(s, row.id, "running on the network" if row.status == "queued" else
                          "the worker restarted: resuming the job in its run folder")
        if claimed:
            self.running = threading.Thread(target=self._run_job, args=(row.id,), name=f"job-{row.id}", daemon=True)
            self.running.start()

    def _run_job(self, job_id: str) -> None:
        from moeforge.service.schema import JobRow

        with self.db.session() as s:
            row = s.get(JobRow, job_id)
        try:
            record = self._network(row)
        except Cancelled:
            self._finish(job_id, "cancelled", message="job cancelled: its network was stopped")
            return
        except MoeforgeError as exc:
            self._finish(job_id, "failed", error={"code": "job_failed", "message": str(exc), "param": None})
            return
        except Exception:  # a bug: say so on the job, keep the trace in the worker's log
            self._finish(job_id, "failed", error={"code": "internal_error", "message": internal(f"job {job_id}"), "param": None})
            return
        self._succeed(row, record)

    def _network(self, row):
        from moeforge.network.local import NetworkPlan, run_local_network
        from moeforge.cli.network import DEFAULT_MODES

        plan = loads(row.plan)
        warm = ",".join(plan["warm_start"]) or "none"
        request = self._request(row, warm)
        run = self.run_dir(row.id)
        net_plan = NetworkPlan(
            run_dir=run / "network", request=request, data=str(run / DATA_FILE.format(domain=request.domain)),
            data_options={"prompt_field": "prompt", "response_field": "response"},
            miner_modes=tuple(DEFAULT_MODES[i % len(DEFAULT_MODES)] for i in range(self.settings.miners)),
            validator_stakes=tuple(100.0 / 2**j for j in range(self.settings.validators)), device=self.settings.device,
            experts=run / "experts.json",
        )
        seen: set[int] = set()

        def on_block(job, head):
            self._report_rounds(row.id, run / "network", seen)
            with self.db.session() as s:
                from moeforge.service.schema import JobRow

                if s.get(JobRow, row.id).cancel_requested:
                    raise Cancelled()

        record, net = run_local_network(net_plan, row.salt, on_block=on_block, restart_killed=True)
        self._report_rounds(row.id, run / "network", seen)
        return record, net

    def _report_rounds(self, job_id: str, network_run: Path, seen: set[int]) -> None:
        """An event per round the top-stake validator has judged: losses, general perplexity, rejections."""
        import math

        from moeforge.network.history import RoundReport
        from moeforge.service.schema import CheckpointRow

        folder = network_run / "validator-0" / "rounds"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
            if not path.stem.isdigit() or int(path.stem) in seen:
                continue
            try:
                report = RoundReport.model_validate_json(path.read_text())
            except ValueError:
                continue  # being written
            r = report.round
            seen.add(r)
            rejected = sum(not v.accepted for v in report.verdicts)
            ppl = {k: math.exp(v) for k, v in (("general_ppl_base", report.general_base_loss),
                                                 ("general_ppl", report.adopted_general_loss)) if v is not None}
            metrics = {"round": r, "choice": report.choice, "held_out_loss_before": report.merge_base_loss,
                       "held_out_loss": report.adopted_loss, "submissions": len(report.verdicts), "accepted": len(report.accepted),
                       "rejected": rejected, **ppl}
            with self.db.session() as s:
                add_event(s, job_id, f"round {r}: {report.choice}; held-out loss {_num(report.merge_base_loss)} → "
                          f"{_num(report.adopted_loss)}; {len(report.accepted)} accepted, {rejected} rejected",
                          type="metrics", data=metrics, level="warn" if report.choice == "none" else "info")
                if report.choice != "none" and s.query(CheckpointRow).filter_by(job_id=job_id, round=r).first() is None:
                    s.add(CheckpointRow(job_id=job_id, round=r, state=report.state_digest, metrics=dumps(metrics), created_at=now()))

    def _succeed(self, row, result) -> None:
        from moeforge.network.owner import ENTRY_FILE
        from moeforge.service.routes.exports import queue_export
        from moeforge.service.schema import EntryOwnerRow, JobRow

        record, net = result
        entry_path = net.owner.run_dir / ENTRY_FILE
        entry = entry_path.read_text().strip() if entry_path.is_file() else None
        plan = loads(row.plan)
        if entry is None and plan["warm_start"]:
            entry = plan["warm_start"][0]  # nothing new adopted: the model is the entry it started from
        tokens = record.heldout_tokens
        with self.db.session() as s:
            fresh = s.get(JobRow, row.id)
            if entry is not None and entry not in plan["warm_start"] and s.get(EntryOwnerRow, (entry, row.tenant_id)) is None:
                s.add(EntryOwnerRow(entry_id=entry, tenant_id=row.tenant_id, job_id=row.id, created_at=now()))
            fresh.status, fresh.finished_at, fresh.fine_tuned_model = "succeeded", now(), entry
            fresh.trained_tokens = _trained_tokens(net)
            ppl = (f"; WikiText-2 perplexity {record.general_ppl_before:.2f} → {record.general_ppl_after:.2f}"
                   if record.general_ppl_before and record.general_ppl_after else "")
            add_event(s, row.id, f"job succeeded: held-out loss {record.heldout_loss_before:.4f} → {record.heldout_loss_after:.4f} "
                      f"over {tokens:,} held-out tokens{ppl}; {record.accepted_rounds} of {len(record.rounds)} rounds adopted"
                      + (f"; library entry {entry[:12]}…" if entry else "; nothing to deposit"), type="metrics",
                      data={"held_out_loss_before": record.heldout_loss_before, "held_out_loss_after": record.heldout_loss_after,
                            "general_ppl_before": record.general_ppl_before, "general_ppl_after": record.general_ppl_after,
                            "entry": entry})
            if entry is not None:
                export = queue_export(s, row.tenant_id, row.id, [entry], 0.9)
                settings = loads(fresh.settings)
                fresh.settings = dumps({**settings, "result_files": [export.id]})

    def _move(self, job_id: str, frm: str, to: str, message: str) -> None:
        from sqlalchemy import update

        from moeforge.service.schema import JobRow

        with self.db.session() as s:
            if s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == frm).values(status=to)).rowcount:
                add_event(s, job_id, message)

    def _finish(self, job_id: str, status: str, *, error: dict | None = None, message: str | None = None) -> None:
        from moeforge.service.schema import JobRow

        with self.db.session() as s:
            row = s.get(JobRow, job_id)
            if row.status in ("succeeded", "failed", "cancelled"):
                return
            row.status, row.finished_at = status, now()
            if error is not None:
                row.error = dumps(error)
            add_event(s, job_id, message or f"job {status}: {error['message'] if error else ''}",
                      level="error" if status == "failed" else "info")

    # --- exports ----------------------------------------------------------------------------------------------------------

    def export_next(self) -> bool:
        from sqlalchemy import select

        from moeforge.service.schema import ExportRow, JobRow

        with self.db.session() as s:
            row = s.scalar(select(ExportRow).where(ExportRow.status.in_(("queued", "running"))).order_by(ExportRow.created_at).limit(1))
            if row is None:
                return False
            row.status = "running"
            job = s.get(JobRow, row.job_id) if row.job_id is not None else None
        try:
            grants = self._export_grants(row)
            summary, tar = self._export(row, job, grants)
        except Exception as exc:  # a bug fails the export too, rather than making it again on every pass
            message = str(exc) if isinstance(exc, MoeforgeError) else internal(f"export {row.id}")
            with self.db.session() as s:
                fresh = s.get(ExportRow, row.id)
                fresh.status, fresh.error, fresh.finished_at = "failed", message, now()
                if row.job_id is not None:
                    add_event(s, row.job_id, f"export {row.id} failed: {message}", level="error")
            return True
        from moeforge.store.protocol import sha256_stream

        with open(tar, "rb") as f:
            digest, size = sha256_stream(f)
        with self.db.session() as s:
            fresh = s.get(ExportRow, row.id)
            fresh.status, fresh.summary, fresh.bytes, fresh.sha256, fresh.finished_at = "succeeded", dumps(summary), size, digest, now()
            self._charge_exports(s, row, grants)
            if row.job_id is not None:
                add_event(s, row.job_id, f"exported: {summary['k']} of {summary['num_experts']} experts per layer, bundle "
                          f"{size:,} bytes ({row.id})", data={"export": row.id})
        return True

    def _export_grants(self, row) -> dict:
        """entry → the grant it is exported under (None: own or shared); refused if a grant was revoked since the request."""
        from moeforge.service.errors import APIError
        from moeforge.service.routes.exports import export_right

        grants = {}
        with self.db.session() as s:
            for i, entry in enumerate(loads(row.models) or [row.entry_id]):
                try:
                    grant = export_right(s, self.library, row.tenant_id, entry, f"models.{i}")
                except APIError as exc:
                    raise ConfigError(f"no longer exportable: {exc.message}") from None
                grants[entry] = None if grant is None else {"id": grant.id, "listing": grant.listing_id,
                                                            "terms": loads(grant.terms), "granted_at": stamp(grant.decided_at)}
        return grants

    def _charge_exports(self, session, row, grants: dict) -> None:
        """Mark each grant as exported under (its bundles keep their terms), and charge flat per-export prices."""
        from moeforge.service.auth import tenant_named
        from moeforge.service.market.ledger import lineage_nodes, post_revenue
        from moeforge.service.market.schema import GrantRow

        node = lineage_nodes(session, tenant_named(session, self.settings.subnet_owner))
        for entry, grant in sorted(grants.items()):
            if grant is None:
                continue
            fresh = session.get(GrantRow, grant["id"])
            if fresh.exported_at is None:
                fresh.exported_at = now()
            price = grant["terms"]["price"]
            if price["kind"] == "per_export" and price["micros"] > 0:
                post_revenue(session, kind="export", period=now().strftime("%Y-%m-%d"), customer=row.tenant_id, entry=entry,
                             micros=price["micros"], source=row.id, node=node)

    def _export(self, row, job, grants: dict) -> tuple[dict, Path]:
        from moeforge.cli.bundle import build, default_key
        from moeforge.cli.export import export
        from moeforge.deploy.bundle import generate_key
        from moeforge.deploy.export import read_sidecar
        from moeforge.service.routes.exports import tar_path

        work = self.settings.exports() / row.id
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        if job is not None:
            base = job.model
            data = self.run_dir(job.id) / DATA_FILE.format(domain=loads(job.problem)["domain"])
        else:
            base, data = self.settings.default_base, work / "data.jsonl"
            self._write_file_records(row.file_id, data)
        entries = loads(row.models) or [row.entry_id]
        export(model=Path(self.settings.bases[base]), out=work / "export", entry=entries, delta=None, data=str(data),
               prompt_field="prompt", response_field="response", text_field=None, coverage=float(row.coverage), k=None,
               gap_budget=0.01, score="token", profile_tokens=16_384, eval_tokens=16_384, catalog=self.settings.database,
               library_store=self.settings.library_store, device=self.settings.device)
        key = default_key()
        if not key.is_file():
            generate_key(key)
        build(work / "export", work / "bundle", key=key, tar=True, wheelhouse=False,
              licences=self._licence_texts(row, entries, grants))
        tar = tar_path(self.settings, row.id)
        (work / "bundle.tar").replace(tar)
        sidecar = read_sidecar(work / "export")
        shutil.rmtree(work)
        return {"k": sidecar.get("k"), "num_experts": sidecar.get("num_experts"), "gaps": sidecar.get("gaps"),
                "grants": {e: g["id"] for e, g in grants.items() if g is not None}}, tar

    def _licence_texts(self, row, entries: list[str], grants: dict) -> dict[str, str]:
        """LICENSES/ files of the bundle: each entry's licence (its listing's, or its manifest's) and GRANTS.json."""
        from sqlalchemy import select

        from moeforge.service.market.schema import ListingRow
        from moeforge.service.market.terms import Licence

        texts = {}
        with self.db.session() as s:
            for entry in entries:
                grant = grants.get(entry)
                if grant is not None:
                    licence = Licence.model_validate(grant["terms"]["licence"])
                else:
                    listed = s.scalar(select(ListingRow.licence).where(ListingRow.entry_id == entry))
                    spdx = self.library.manifest(entry).license
                    licence = Licence.model_validate_json(listed) if listed else None
                    if licence is None:
                        texts[f"entry-{entry[:12]}-LICENSE.txt"] = f"Licence of library entry {entry}: {spdx}\n"
                        continue
                texts[f"entry-{entry[:12]}-LICENSE.txt"] = f"Licence of library entry {entry}:\n\n{licence.text()}"
        texts["GRANTS.json"] = json.dumps({"export": row.id, "tenant": row.tenant_id,
                                           "grants": {e: g for e, g in sorted(grants.items()) if g is not None}},
                                          indent=2, sort_keys=True) + "\n"
        return texts

    def _write_file_records(self, file_id: str, out: Path) -> None:
        from moeforge.atomic import write_text
        from moeforge.service.schema import FileRow

        with self.db.session() as s:
            f = s.get(FileRow, file_id)
        write_text(out, "".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n" for r in self._file_records(f)))


def _trained_tokens(net) -> int:
    """Tokens the job's miners trained on, summed from their `trained` events (a round trained again after a restart
    counts once per miner)."""
    from moeforge.network.observe import read_events

    total = 0
    for member in net.members:
        if member.role == "miner":
            rounds = {e["round"]: e.get("tokens", 0) for e in read_events(member.run_dir) if e["event"] == "trained"}
            total += sum(rounds.values())
    return total


def internal(what: str) -> str:
    """The customer's message for a bug met while handling `what` (called in an except block); the trace goes to the
    worker's log, not to the customer."""
    import sys

    log.error("%s: %s", what, traceback.format_exc())
    return f"internal error ({type(sys.exception()).__name__}); it was logged by the worker"


def _num(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def main_loop(settings: ServiceSettings) -> None:
    """Run the worker until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Worker(settings).run(stop)
