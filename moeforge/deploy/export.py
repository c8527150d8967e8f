"""`export_model`: a right-sized standard Hugging Face checkpoint of a fine-tuned MoE, with its honest gaps.

DESIGN.md "Deployment". The fine-tuned model (base + library entries' experts) is profiled on the
customer's data; coverage.py picks K experts per layer; slicing.py writes the standard checkpoint.
For a router whose gates a sliced checkpoint changes (softmax over all experts, no renormalisation),
the one correction a config can carry, a constant gate multiplier (`routed_scaling_factor`), is
calibrated by loss on calibration rows of the data, within the network guard's general-drift budget
on WikiText-2 validation rows, and the export is labelled approximate. Then
the domain loss (on other rows of the data) and WikiText-2 perplexity are measured for the unpruned
fine-tuned model, the standard export, and moeforge's exact runtime (exact.py, from the sidecar's
full router rows), and written into the sidecar and the model card.

    out/config.json, model.safetensors, tokenizer*, chat template   a standard checkpoint
    out/moeforge_export.json                                       kept ids → original (layer, expert) and entries; gaps
    out/moeforge_routers.safetensors                               the full router rows, for exact routing
    out/README.md                                                  the model card
"""

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moeforge.deploy.coverage import KeptExperts, keep_experts
from moeforge.deploy.exact import SOFTMAX_ROUTERS, route_exactly
from moeforge.deploy.slicing import build_sliced, router_kind
from moeforge.errors import ArtifactNotFound, DataError
from moeforge.model.families import family_of, moe_layers

log = logging.getLogger(__name__)

SIDECAR = "moeforge_export.json"
ROUTERS = "moeforge_routers.safetensors"
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n"
                 "{% elif message['role'] == 'user' %}Question: {{ message['content'] }}\n"
                 "{% else %}Answer: {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}Answer:{% endif %}")
_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)  # multiples of the base's gate scale tried, extended if the best is the last
GENERAL_ROWS = 32  # WikiText-2 validation rows the calibration keeps within GENERAL_BUDGET (the network guard's defaults)
GENERAL_BUDGET = 0.02


@dataclass(frozen=True)
class Gaps:
    unpruned_domain_loss: float
    unpruned_general_ppl: float
    standard_domain_loss: float
    standard_general_ppl: float
    exact_domain_loss: float | None  # None where the standard export routes exactly already
    exact_general_ppl: float | None

    def gap(self, which: str) -> float | None:
        loss = getattr(self, f"{which}_domain_loss")
        return None if loss is None else loss / self.unpruned_domain_loss - 1


@dataclass(frozen=True)
class ExportReport:
    out: Path
    k: int
    num_experts: int
    routing: str  # router_kind(...).routing
    approximate: bool
    scale: float  # the gate multiplier the standard export carries
    gaps: Gaps
    bytes: int
    kept: KeptExperts
    coverage_k: int  # the K the coverage alone gives (k is smaller when a gap budget took it lower)


def export_model(model, tokenizer, profile, out: Path, *, calibration: tuple, evaluation: tuple, coverage: float = 0.9,
                 k: int | None = None, score: str = "token", sources: dict | None = None, seq_len: int = 256,
                 general_tokens: int = 16_384, card: dict | None = None, gap_budget: float | None = None) -> ExportReport:
    """Export `model` (already holding its fine-tuned experts; left unchanged) to `out`.

    `profile`: the fine-tuned model's routing on the customer's data; `calibration`/`evaluation`: (input_ids, labels)
    rows of that data, the first to calibrate the correction, the second to measure the gaps; `sources`: (layer, expert)
    → the library entry its weights came from (else the base). `gap_budget` (with k None): below the coverage's K, the
    smallest K whose loss on the calibration rows, as served (exact where exact.py applies), stays within that share of
    the unpruned model's (calibration rows only: the evaluation rows that report the gap never choose it)."""
    from moeforge.atomic import write_folder
    from moeforge.eval.domain import rows_loss
    from moeforge.eval.general import general_perplexity

    kept = keep_experts(profile, coverage=coverage, score=score, k=k)
    kind = router_kind(model.config)
    layers = moe_layers(model)
    base_scale = float(getattr(model.config, kind.scale_key, 1.0) or 1.0) if kind.scale_key else 1.0
    full_rows = {layer.index: layer.router.weight.detach().clone() for layer in layers}
    if gap_budget is not None and k is None:
        kept = _smallest_within(model, profile, kept, calibration, gap_budget, score=score, full_rows=full_rows, base_scale=base_scale)

    def losses(m) -> tuple[float, float]:
        d = rows_loss(m, *evaluation).loss
        g = general_perplexity(m, tokenizer, seq_len=seq_len, max_tokens=general_tokens).perplexity
        return d, g

    unpruned = losses(model)
    sliced = build_sliced(model, kept.kept)
    scale = base_scale
    if kind.routing == "denominator" and kind.scale_key is not None:
        from moeforge.eval.general import general_reference_rows

        general_rows = general_reference_rows(tokenizer, seq_len=seq_len, rows=GENERAL_ROWS)
        limit = rows_loss(model, *general_rows).loss + math.log1p(GENERAL_BUDGET)
        scale = _calibrate(sliced, kind.scale_key, base_scale, calibration, general_rows, limit)
    standard = losses(sliced)
    exact = (None, None)
    if kind.routing == "denominator" and model.config.model_type in SOFTMAX_ROUTERS:
        runtime = build_sliced(model, kept.kept)
        route_exactly(runtime, full_rows, kept.kept, scale=base_scale)
        exact = losses(runtime)
    gaps = Gaps(unpruned[0], unpruned[1], standard[0], standard[1], exact[0], exact[1])
    approximate = kind.routing != "exact"
    sidecar = {
        "version": 1, "base_model": getattr(model.config, "_name_or_path", None), "model_type": model.config.model_type,
        "k": kept.k, "num_experts": layers[0].num_experts, "coverage": coverage, "score": score, "gap_budget": gap_budget,
        "coverage_k": keep_experts(profile, coverage=coverage, score=score).k,
        "routing": kind.routing, "approximate": approximate, "scale_key": kind.scale_key, "base_scale": base_scale, "scale": scale,
        "layers": {str(layer): [{"id": new, "original": orig, "entry": (sources or {}).get((layer, orig))}
                                for new, orig in enumerate(ids)] for layer, ids in kept.kept.items()},
        "covered": {str(layer): share for layer, share in kept.covered.items()},
        "gaps": {**asdict(gaps), "standard_domain_gap": gaps.gap("standard"), "exact_domain_gap": gaps.gap("exact")},
        **(card or {}),
    }

    def fill(folder: Path) -> None:
        sliced.save_pretrained(folder)
        tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
        tokenizer.save_pretrained(folder)
        save_file({f"{layer.prefix}.{family_of(model.config).router}.weight": w.contiguous()
                   for layer in layers for w in [full_rows[layer.index]]}, folder / ROUTERS, metadata={"format": "pt"})
        (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        (folder / "README.md").write_text(_card(sidecar, card or {}))

    write_folder(Path(out), fill)
    size = sum(p.stat().st_size for p in Path(out).glob("*.safetensors") if p.name != ROUTERS)
    log.debug("exported K=%d of %d experts per layer to %s (%s)", kept.k, layers[0].num_experts, out,
             "approximate routing" if approximate else "exact routing")
    return ExportReport(Path(out), kept.k, layers[0].num_experts, kind.routing, approximate, scale, gaps, size, kept,
                        sidecar["coverage_k"])


def read_sidecar(folder: Path) -> dict:
    """An export's sidecar (moeforge_export.json), checked for what the runtime and the ledger read."""
    folder = Path(folder)
    if not (folder / SIDECAR).is_file():
        raise ArtifactNotFound(f"{folder}: not a moeforge export (no {SIDECAR}); run `moeforge export`.")
    try:
        sidecar = json.loads((folder / SIDECAR).read_text())
        for experts in sidecar["layers"].values():
            for e in experts:
                int(e["id"]), int(e["original"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / SIDECAR}: not a valid export sidecar ({exc}).") from None
    return sidecar


def load_exact(folder: Path, device: str = "cpu"):
    """An export with moeforge's exact routing (from its sidecar's full router rows): (model, sidecar)."""
    from moeforge.model.load import load_model

    folder = Path(folder)
    sidecar = read_sidecar(folder)
    if not (folder / ROUTERS).is_file():
        raise ArtifactNotFound(f"{folder}: no {ROUTERS} (the full router rows exact routing needs).")
    kept = {int(layer): tuple(e["original"] for e in experts) for layer, experts in sidecar["layers"].items()}
    model = load_model(folder).to(device)
    if sidecar["routing"] == "denominator" and model.config.model_type in SOFTMAX_ROUTERS:
        rows = load_file(folder / ROUTERS)
        router = family_of(model.config).router
        full = {layer.index: rows[f"{layer.prefix}.{router}.weight"] for layer in moe_layers(model)}
        route_exactly(model, full, kept, scale=float(sidecar["base_scale"]))
    return model, sidecar


def _served(model, kept: dict, full_rows: dict, base_scale: float):
    """The sliced model as `moeforge serve` runs it by default: exact routing where exact.py applies."""
    sliced = build_sliced(model, kept)
    if router_kind(model.config).routing == "denominator" and model.config.model_type in SOFTMAX_ROUTERS:
        route_exactly(sliced, full_rows, kept, scale=base_scale)
    return sliced


def _smallest_within(model, profile, start: KeptExperts, rows: tuple, budget: float, *, score: str, full_rows: dict,
                     base_scale: float) -> KeptExperts:
    """Step K down from `start.k` towards top-k while the served model's calibration loss stays within the budget."""
    from moeforge.eval.domain import rows_loss

    reference = rows_loss(model, *rows).loss
    best = start
    for k in range(start.k - 1, profile.top_k - 1, -1):
        candidate = keep_experts(profile, score=score, k=k)
        loss = rows_loss(_served(model, candidate.kept, full_rows, base_scale), *rows).loss
        if loss > reference * (1 + budget):
            break
        best = candidate
    log.debug("gap budget %.3f: K %d (coverage gave %d)", budget, best.k, start.k)
    return best


def _calibrate(sliced, key: str, base_scale: float, rows: tuple, general_rows: tuple, general_limit: float) -> float:
    """The gate multiplier (a line over multiples of the base's) with the lowest loss on the calibration rows among those
    that keep the general loss (WikiText-2 validation rows) within the budget of the unpruned model's, as the network's
    guard does; if none does, the one with the lowest general loss."""
    from moeforge.eval.domain import rows_loss

    def loss_at(scale: float) -> tuple[float, float]:
        setattr(sliced.config, key, scale)
        _set_scale(sliced, key, scale)
        return rows_loss(sliced, *rows).loss, rows_loss(sliced, *general_rows).loss

    def pick(tried: dict) -> float:
        within = {s: v for s, v in tried.items() if v[1] <= general_limit}
        return min(within, key=lambda s: within[s][0]) if within else min(tried, key=lambda s: tried[s][1])

    tried = {base_scale * f: loss_at(base_scale * f) for f in _SCALES}
    best = pick(tried)
    while best == min(tried) and len(tried) < 20:  # at the edge of the grid: extend it
        nxt = best * 0.8
        tried[nxt] = loss_at(nxt)
        if pick(tried) != nxt:
            break
        best = nxt
    loss_at(best)
    log.debug("calibrated %s = %.4f (losses %s; base scale %.4f gives %s)", key, best, tried[best], base_scale, tried[base_scale])
    return best


def _set_scale(model, key: str, scale: float) -> None:
    """Modules that copied the config's scale at construction get the new one too."""
    for module in model.modules():
        if hasattr(module, key):
            setattr(module, key, scale)


def _card(sidecar: dict, card: dict) -> str:
    g = sidecar["gaps"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:+.2f}%"

    lines = [
        "---", f"base_model: {card.get('base_model_name', sidecar['base_model'])}", "base_model_relation: finetune",
        f"license: {card.get('license', 'apache-2.0')}", "tags:", "- moeforge", "- mixture-of-experts", "- right-sized", "---", "",
        f"# Right-sized {card.get('domain', 'domain')} export ({sidecar['k']} of {sidecar['num_experts']} experts per layer)", "",
        f"Kept by {sidecar['score']} coverage {sidecar['coverage']:g} of the fine-tuned model's routing on the domain's data. "
        f"Loads with `transformers.AutoModelForCausalLM.from_pretrained` (no remote code).", "",
        "## Routing", "",
        ("Routing in this standard checkpoint is **approximate**: " + {
            "denominator": "the router takes a softmax over all experts without renormalising, so dropping experts changes "
                           "every kept gate per token; the checkpoint carries the best constant correction found "
                           f"(`{sidecar['scale_key']}` = {sidecar['scale']:.4f}, calibrated by loss)" if sidecar["scale_key"] else
                           "the router takes a softmax over all experts without renormalising, so dropping experts changes "
                           "every kept gate per token, and this family's config has no constant to correct it",
            "groups": "the router's expert groups do not carry over to the kept experts (n_group set to 1)",
        }[sidecar["routing"]] + ". moeforge's runtime routes exactly from `moeforge_routers.safetensors`."
         if sidecar["approximate"] else "Routing is **exact** up to the choice among kept experts: this router's gates do not "
                                        "depend on the dropped experts."), "",
        "| model | domain loss | gap | WikiText-2 perplexity |", "|---|---|---|---|",
        f"| unpruned fine-tuned | {g['unpruned_domain_loss']:.4f} | | {g['unpruned_general_ppl']:.2f} |",
        f"| this checkpoint (standard) | {g['standard_domain_loss']:.4f} | {pct(g['standard_domain_gap'])} | {g['standard_general_ppl']:.2f} |",
    ]
    if g["exact_domain_loss"] is not None:
        lines.append(f"| moeforge exact routing | {g['exact_domain_loss']:.4f} | {pct(g['exact_domain_gap'])} | "
                     f"{g['exact_general_ppl']:.2f} |")
    lines += ["", "## Experts", "", "`moeforge_export.json` maps each kept expert's new id to its original (layer, expert) "
              "and the library entry its weights came from."]
    entries = sorted({e["entry"] for experts in sidecar["layers"].values() for e in experts if e["entry"]})
    lines += [f"- library entry `{e}`" for e in entries] or ["- every expert is the base model's"]
    return "\n".join(lines) + "\n"
