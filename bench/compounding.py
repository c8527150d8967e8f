"""Compounding: does a job that warm-starts from the expert library reach the cold job's result sooner?

Issue 11's benchmark; DESIGN.md "The library". On the testbed:

1. Build a library by centralised ESFT (profile → ESFT-Token selection → train) on maths (GSM8K), code
   (CPython) and medical (MTS-Dialog, every section but FAM/SOCHX), each deposited with its routing
   profile and held-out metrics.
2. A new maths job on CHAMP (competition maths: another source than GSM8K), split train / validation /
   held-out by a salted hash. `match` ranks the library for its train split (the GSM8K entry must
   come first). Then a cold run (experts from the base) and a warm run (`--warm-start auto`: the
   selected experts that the top match trained start from its weights), same selection, same data,
   same schedule. Each run's learning rate is searched on the *validation* split alone (doubling or
   halving until the best is interior); the held-out curves of the picked runs are reported.
3. `tokens_to_cold_final_ratio`: the tokens the warm run needs until its held-out loss reaches the
   cold run's final held-out loss (linear between checkpoints), over the cold run's tokens. Target
   ≤ 0.5, aim ≤ 0.33.
4. The same for a medical job on the FAM/SOCHX section of MTS-Dialog, which the library's medical
   entry never saw (`second_domain`).
5. `slot_rule`: the held-out loss, before any training, of the warm starts the per-slot rules give
   (the top entry alone; the top two by "first", the better by loss, and by "average").

    .venv/bin/python bench/compounding.py            # the default testbed; writes bench/results/compounding.json + .png
"""

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from line_search import doubling, halving, line_search
from base import testbed_base
from provenance import Run

from moeforge.data.corpora import load_corpus
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.records import Record
from moeforge.data.splits import split_records
from moeforge.eval.domain import domain_loss, packed_rows, rows_loss
from moeforge.eval.general import general_perplexity
from moeforge.library.deposit import deposit
from moeforge.library.entry import Contributor, Metrics
from moeforge.library.match import match_records
from moeforge.library.open import open_library
from moeforge.library.warm import warm_start
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.slices import apply_slice, extract_slice
from moeforge.profile.selection import select_experts
from moeforge.profile.stats import ProfileConfig, profile_records
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

RESULTS = Path(__file__).parent / "results" / "compounding.json"
PLOT = Path(__file__).parent / "results" / "compounding.png"
CHAMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "champ" / "champ.jsonl"
SECTION = "FAM/SOCHX"  # the medical job's section; the library's medical entry is trained on every other section
SALT = "compounding-bench"
QUICK = {"preset": "small", "profile_tokens": 4096, "library_tokens": 8192, "job_epochs": 1, "eval_tokens": 2048,
         "checkpoints": 2, "lr": 1e-2, "batch_size": 4, "max_moves": 0}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--testbed", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--champ", type=Path, default=CHAMP, help="CHAMP's champ.jsonl")
    parser.add_argument("--profile-tokens", type=int, default=32_768)
    parser.add_argument("--library-tokens", type=int, default=200_000, help="training tokens of each library job")
    parser.add_argument("--job-epochs", type=int, default=4, help="passes over the new job's train split (cold and warm alike)")
    parser.add_argument("--eval-tokens", type=int, default=32_768, help="tokens per held-out or general evaluation")
    parser.add_argument("--checkpoints", type=int, default=10, help="evaluations along each new-job run")
    parser.add_argument("--lr", type=float, default=2e-3, help="the library jobs' lr, and where each new-job search starts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-moves", type=int, default=6, help="lr doublings/halvings per direction (0: no search)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=None, help=f"the loss-curve PNG (default: beside --out, {PLOT.name})")
    parser.add_argument("--quick", action="store_true", help=f"a tiny configuration for a smoke run: {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    plot = args.plot or args.out.with_suffix(".png")
    if not args.champ.is_file():
        raise SystemExit(f"error: {args.champ}: CHAMP's champ.jsonl is not there (the shared data folder, or pass --champ).")
    logging.basicConfig(level=logging.WARNING)

    testbed = testbed_base(args.preset, args.testbed)
    base_dir, model, tokenizer = testbed.folder, testbed.model, testbed.tokenizer
    fingerprint = model_fingerprint(model)
    seq_len = testbed.seq_len
    with tempfile.TemporaryDirectory(prefix="moeforge-compounding-") as folder:
        library = open_library(f"sqlite:///{folder}/catalog.sqlite", f"{folder}/store")  # a fresh library, every run alike
        bench = Bench(model, tokenizer, fingerprint, seq_len, args, library)
        medical_train, medical_test = load_corpus("medical", "train"), load_corpus("medical", "test")
        sources = {
            "math": (load_corpus("math", "train"), load_corpus("math", "test")),
            "python": (load_corpus("python", "train"), load_corpus("python", "test")),
            "medical": ([r for r in medical_train if not _section(r, SECTION)], [r for r in medical_test if not _section(r, SECTION)]),
        }
        entries = {}
        for domain, (train, test) in sources.items():
            entries[domain] = bench.library_job(domain, train, test)
            print(f"library: {domain} entry {entries[domain]['entry'][:12]}… held-out loss "
                  f"{entries[domain]['domain_loss_before']:.4f} → {entries[domain]['domain_loss_after']:.4f}", flush=True)
        names = {e["entry"]: d for d, e in entries.items()}
        champ = bench.new_job("champ", _champ_records(args.champ), names)
        medical = bench.new_job(f"medical {SECTION}",
                                [r for r in (*medical_train, *medical_test) if _section(r, SECTION)], names)

    _plot({"CHAMP (maths)": champ, f"MTS-Dialog {SECTION} (medical)": medical}, plot)
    result = {
        **{k: champ[k] for k in ("match_top1", "match_scores", "tokens_to_cold_final_ratio", "cold_final_loss", "warm_final_loss",
                                  "general_ppl_cold", "general_ppl_warm")},
        "second_domain": {k: medical[k] for k in ("match_top1", "match_scores", "tokens_to_cold_final_ratio", "cold_final_loss",
                                                   "warm_final_loss", "general_ppl_cold", "general_ppl_warm")},
        "targets": {"tokens_to_cold_final_ratio": 0.5, "aim": 0.33},
        "library": entries,
        "jobs": {"champ": champ, "medical": medical},
        "plot": str(plot),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    for name, job in (("CHAMP", champ), (f"medical {SECTION}", medical)):
        print(f"{name}: match top-1 {job['match_top1']} · cold final {job['cold_final_loss']:.4f} (lr {job['cold']['lr']:g}) · "
              f"warm final {job['warm_final_loss']:.4f} (lr {job['warm']['lr']:g}) · warm tokens to the cold final ÷ cold tokens "
              f"{_ratio(job['tokens_to_cold_final_ratio'])} (target ≤ 0.5) · general ppl cold {job['general_ppl_cold']:.2f}, "
              f"warm {job['general_ppl_warm']:.2f}")
    return run.write(args.out, result)


class Bench:
    """The base model, its tokenizer, the run's settings and its library: each job leaves the base as it found it."""

    def __init__(self, model, tokenizer, fingerprint: str, seq_len: int, args, library):
        self.model, self.tokenizer, self.fingerprint, self.seq_len, self.args = model, tokenizer, fingerprint, seq_len, args
        self.library = library

    def profile(self, records):
        return profile_records(self.model, self.tokenizer, records, ProfileConfig(tokens=self.args.profile_tokens, seq_len=self.seq_len,
                                                                                  saliency=False), base_fingerprint=self.fingerprint)

    def packed(self, records):
        return pack_examples(encode_records(records, self.tokenizer), self.seq_len, self.tokenizer.pad_token_id)

    def scores(self, records) -> tuple[float, float]:
        d = domain_loss(self.model, self.tokenizer, records, seq_len=self.seq_len, max_tokens=self.args.eval_tokens).loss
        g = general_perplexity(self.model, self.tokenizer, seq_len=self.seq_len, max_tokens=self.args.eval_tokens).perplexity
        return d, g

    def library_job(self, domain: str, train, test) -> dict:
        """Profile, select, train, deposit one library entry; the base is left as it was."""
        profile = self.profile(train)
        slots = select_experts(profile).slots()
        before = self.scores(test)
        cfg = TrainConfig(lr=self.args.lr, tokens=self.args.library_tokens, batch_size=self.args.batch_size, warmup_steps=5,
                          weight_decay=0.0, checkpoint_every=0, seed=0)
        original = extract_slice(self.model, slots, self.fingerprint)
        delta, _ = train_experts(self.model, slots, self.packed(train), cfg, base_fingerprint=self.fingerprint)
        apply_slice(self.model, delta)
        after = self.scores(test)
        experts = extract_slice(self.model, slots, self.fingerprint)
        apply_slice(self.model, original)
        entry, _ = deposit(self.library, self.model, self.fingerprint, experts, profile_json=profile.model_dump_json().encode(),
                           domain=domain, license="Apache-2.0", source="train", contributors=(Contributor(id="bench", role="owner", share=1.0),),
                           metrics=Metrics(domain_loss_before=before[0], domain_loss_after=after[0], general_ppl_before=before[1],
                                           general_ppl_after=after[1]))
        return {"entry": entry, "slots": len(slots), "domain_loss_before": before[0], "domain_loss_after": after[0],
                "general_ppl_before": before[1], "general_ppl_after": after[1]}

    def new_job(self, name: str, records, names: dict[str, str]) -> dict:
        splits = split_records(records, SALT, validation=0.15, heldout=0.2)
        train, val, held = splits.train, splits.validation, splits.heldout
        profile = self.profile(train)
        slots = select_experts(profile).slots()
        ranking = match_records(self.library, self.model, self.tokenizer, train, self.fingerprint, seq_len=self.seq_len,
                                selected={(s.layer, s.expert) for s in slots}, query=profile)
        top = ranking[0]
        packed = self.packed(train)
        val_rows, held_rows = packed_rows(self.tokenizer, val, seq_len=self.seq_len), packed_rows(self.tokenizer, held, seq_len=self.seq_len)
        print(f"{name}: {len(train)} train / {len(val)} validation / {len(held)} held-out records, {packed.n_tokens:,} train "
              f"tokens, {len(slots)} experts selected; match: " + ", ".join(f"{names[c.entry]} {c.similarity:.3f}"
                                                                           + ("" if c.loss_gain is None else f" (gain {c.loss_gain:+.4f})")
                                                                           for c in ranking), flush=True)
        slot_rule = self.slot_rules(slots, [c.entry for c in ranking[:2]], held_rows, names)
        runs = {}
        for start in ("cold", "warm"):
            entries = [top.entry] if start == "warm" else []
            runs[start] = self.search(slots, packed, val_rows, held_rows, entries)
            print(f"  {start}: lr {runs[start]['lr']:g}, validation {runs[start]['validation_loss']:.4f}, held-out "
                  f"{runs[start]['curve'][-1]['heldout_loss']:.4f} (tried {sorted(runs[start]['tried'])})", flush=True)
        cold, warm = runs["cold"], runs["warm"]
        target = cold["curve"][-1]["heldout_loss"]
        return {
            "records": {"train": len(train), "validation": len(val), "heldout": len(held)}, "train_tokens": packed.n_tokens,
            "slots": len(slots), "match_top1": names[top.entry],
            "match_scores": [{"domain": names[c.entry], **{k: v for k, v in c.to_json().items() if k != "entry"}, "entry": c.entry}
                             for c in ranking],
            "warm_start": [{"entry": s.entry, "slots": s.slots} for s in warm["sources"]],
            "tokens_to_cold_final_ratio": _tokens_to(warm["curve"], target) / cold["curve"][-1]["tokens"]
            if _tokens_to(warm["curve"], target) is not None else None,
            "cold_final_loss": target, "warm_final_loss": warm["curve"][-1]["heldout_loss"],
            "general_ppl_cold": cold["general_ppl"], "general_ppl_warm": warm["general_ppl"],
            "cold": {k: v for k, v in cold.items() if k != "sources"}, "warm": {k: v for k, v in warm.items() if k != "sources"},
            "slot_rule": slot_rule,
        }

    def slot_rules(self, slots, entries: list[str], held_rows, names: dict[str, str]) -> dict:
        """Held-out loss before any training of the warm starts the per-slot rules give (library/warm.py): the top
        entry alone, and the top two by "first" (the better by loss) and by "average"."""
        cap = max(1, self.args.eval_tokens // self.seq_len)
        starts = {"base": [], "top1": entries[:1]}
        if len(entries) > 1:
            starts |= {"top2_first": entries, "top2_average": entries}
        out = {}
        for name, chosen in starts.items():
            original = extract_slice(self.model, slots, self.fingerprint)
            sources = warm_start(self.model, self.library, chosen, slots, self.fingerprint,
                                 rule="average" if name.endswith("average") else "first") if chosen else []
            out[name] = {"heldout_loss": rows_loss(self.model, held_rows[0][:cap], held_rows[1][:cap]).loss,
                         "sources": {names[s.entry]: s.slots for s in sources}}
            apply_slice(self.model, original)
        print("  warm starts before training (held-out loss): " + ", ".join(f"{k} {v['heldout_loss']:.4f}" for k, v in out.items()),
              flush=True)
        return out

    def search(self, slots, packed, val_rows, held_rows, entries: list[str]) -> dict:
        """The lr with the lowest final validation loss, doubling or halving from --lr until the best is interior."""
        tried: dict[float, dict] = {}

        def trial(lr: float) -> dict:
            if lr not in tried:
                tried[lr] = self.run(slots, packed, val_rows, held_rows, entries, lr)
            return tried[lr]

        best = line_search(trial, self.args.lr, doubling, halving, key="validation_loss", value="lr", max_moves=self.args.max_moves)
        return {**best, "tried": {lr: r["validation_loss"] for lr, r in tried.items()}}

    def run(self, slots, packed, val_rows, held_rows, entries: list[str], lr: float) -> dict:
        """One training run (from the base, or warm from `entries`) with held-out and validation losses along it."""
        original = extract_slice(self.model, slots, self.fingerprint)
        sources = warm_start(self.model, self.library, entries, slots, self.fingerprint) if entries else []
        steps = max(1, self.args.job_epochs * packed.input_ids.shape[0] // self.args.batch_size)
        cfg = TrainConfig(lr=lr, steps=steps, batch_size=self.args.batch_size, warmup_steps=max(1, steps // 20), weight_decay=0.0,
                          checkpoint_every=0, seed=0)
        every = max(1, steps // self.args.checkpoints)
        curve = [self.point(0, 0, val_rows, held_rows)]

        def on_step(info):
            if info.step % every == 0 or info.step == info.steps:
                curve.append(self.point(info.step, info.step * self.args.batch_size * self.seq_len, val_rows, held_rows))

        started = time.perf_counter()
        delta, _ = train_experts(self.model, slots, packed, cfg, base_fingerprint=self.fingerprint, on_step=on_step)
        apply_slice(self.model, delta)
        general = general_perplexity(self.model, self.tokenizer, seq_len=self.seq_len, max_tokens=self.args.eval_tokens).perplexity
        apply_slice(self.model, original)
        return {"lr": lr, "steps": steps, "validation_loss": curve[-1]["validation_loss"], "curve": curve, "general_ppl": general,
                "seconds": round(time.perf_counter() - started, 1), "sources": sources}

    def point(self, step: int, tokens: int, val_rows, held_rows) -> dict:
        training = self.model.training
        self.model.eval()
        try:
            cap = max(1, self.args.eval_tokens // self.seq_len)
            return {"step": step, "tokens": tokens,
                    "validation_loss": rows_loss(self.model, val_rows[0][:cap], val_rows[1][:cap]).loss,
                    "heldout_loss": rows_loss(self.model, held_rows[0][:cap], held_rows[1][:cap]).loss}
        finally:
            self.model.train(training)


def _tokens_to(curve: list[dict], target: float) -> float | None:
    """Tokens at which the curve first reaches `target` (linear between checkpoints); None if it never does."""
    for a, b in zip(curve, curve[1:]):
        if a["heldout_loss"] <= target:
            return a["tokens"]
        if b["heldout_loss"] <= target:
            frac = (a["heldout_loss"] - target) / (a["heldout_loss"] - b["heldout_loss"])
            return a["tokens"] + frac * (b["tokens"] - a["tokens"])
    return curve[0]["tokens"] if curve and curve[0]["heldout_loss"] <= target else None


def _champ_records(path: Path) -> list[Record]:
    """CHAMP problems in GSM8K's question/answer form, so the maths entry's experts meet the format they learnt."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            item = json.loads(line)
            out.append(Record(prompt=f"Question: {item['problem']}\nAnswer:", response=f" {item['solution']}\n#### {item['answer']}",
                              source=f"champ.jsonl:{number}"))
    return out


def _section(record: Record, section: str) -> bool:
    return f"Clinical note ({section}):" in record.prompt


def _ratio(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.3f}"


def _plot(jobs: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * len(jobs), 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    for ax, (title, job) in zip(figure.subplots(1, len(jobs), squeeze=False)[0], jobs.items()):
        for start, style in (("cold", "o-"), ("warm", "s-")):
            curve = job[start]["curve"]
            ax.plot([c["tokens"] for c in curve], [c["heldout_loss"] for c in curve], style, markersize=3,
                    label=f"{start} (lr {job[start]['lr']:g})" + (f", from the {job['match_top1']} entry" if start == "warm" else ""))
        ax.axhline(job["cold_final_loss"], color="grey", linestyle=":", linewidth=1, label="cold final")
        ax.set(title=f"{title}: ratio {_ratio(job['tokens_to_cold_final_ratio'])}", xlabel="training tokens", ylabel="held-out loss (nats/token)")
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
