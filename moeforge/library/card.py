"""An entry's model card: README.md in Hugging Face card conventions, generated from its manifest.

YAML front matter (huggingface_hub's ModelCardData): `base_model`, `base_model_relation: finetune`,
`license`, `datasets`, `tags`, `model-index` with the measured results. The body lists the slots,
metrics (with what they were measured on), lineage and contributors, so a reader of the card
alone knows what the expert set is, where it came from and who is paid for it.
"""

from datetime import datetime

from moeforge.library.entry import EntryManifest

# SPDX id → the Hugging Face Hub's licence identifier (the Hub uses lower case; "other" for the rest)
_HUB_LICENSES = {"Apache-2.0": "apache-2.0", "MIT": "mit", "BSD-3-Clause": "bsd-3-clause", "CC-BY-4.0": "cc-by-4.0",
                 "CC-BY-SA-4.0": "cc-by-sa-4.0", "CC-BY-NC-4.0": "cc-by-nc-4.0", "CC0-1.0": "cc0-1.0", "OpenRAIL": "openrail",
                 "LLAMA-3.1": "llama3.1", "GPL-3.0-only": "gpl-3.0", "LGPL-3.0-only": "lgpl-3.0", "MPL-2.0": "mpl-2.0"}
# vendored corpus names → the Hub dataset they were drawn from
_DATASETS = {"math": "openai/gsm8k", "medical": "abachaa/MTS-Dialog", "wikitext": "Salesforce/wikitext",
             "champ": "champ", "python": "cpython"}


def model_card(entry_id: str, manifest: EntryManifest, *, created_at: datetime | None = None, retired: str | None = None) -> str:
    """The card's full text (front matter + body)."""
    from huggingface_hub import EvalResult, ModelCardData

    m = manifest.metrics
    dataset = _DATASETS.get(manifest.domain, manifest.domain)
    results = []
    if m.domain_loss_after is not None:
        results.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=f"{manifest.domain} (held out)",
                                  metric_type="loss", metric_value=round(m.domain_loss_after, 6), metric_name="held-out loss (nats/token)"))
    if m.general_ppl_after is not None:
        results.append(EvalResult(task_type="text-generation", dataset_type="Salesforce/wikitext", dataset_name="WikiText-2 test",
                                  metric_type="perplexity", metric_value=round(m.general_ppl_after, 4), metric_name="perplexity"))
    for task, value in sorted(m.tasks.items()):
        results.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task, metric_type=task,
                                  metric_value=value))
    data = ModelCardData(
        base_model=manifest.base_model, base_model_relation="finetune", license=_HUB_LICENSES.get(manifest.license, "other"),
        license_name=None if manifest.license in _HUB_LICENSES else manifest.license, datasets=[dataset],
        tags=["moeforge", "mixture-of-experts", "esft", manifest.model_type, f"domain:{manifest.domain}"],
        model_name=f"moeforge-{manifest.domain}-{entry_id[:12]}", eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n\n{_body(entry_id, manifest, created_at, retired)}"


def _body(entry_id: str, manifest: EntryManifest, created_at: datetime | None, retired: str | None) -> str:
    m = manifest.metrics
    layers: dict[int, list[int]] = {}
    for layer, expert in manifest.slots:
        layers.setdefault(layer, []).append(expert)
    lines = [f"# {manifest.domain} experts for {manifest.base_model}", ""]
    if retired is not None:
        lines += [f"> **Retired**: {retired}. Kept so that anything built on it still resolves; not offered for new jobs.", ""]
    lines += [
        f"A moeforge library entry: {len(manifest.slots)} routed experts of `{manifest.base_model}` fine-tuned by "
        "expert-specialised fine-tuning (ESFT) on the domain's data; every other weight is the base's. Apply them to the base "
        "with `moeforge library` (entry id below) or export a right-sized model.",
        "",
        f"- entry id: `{entry_id}`",
        f"- base model fingerprint: `{manifest.base_fingerprint}` ({manifest.model_type})",
        f"- trained by: {'the network (job ' + str(manifest.job_id) + ')' if manifest.source == 'network' else manifest.source}"
        + (f", record `{manifest.record_digest}`" if manifest.record_digest else ""),
        f"- data fingerprint: `{manifest.data_fingerprint}`" if manifest.data_fingerprint else "- data fingerprint: not recorded",
        f"- licence: {manifest.license}",
    ]
    if created_at is not None:
        lines.append(f"- deposited: {created_at.strftime('%Y-%m-%d %H:%M UTC')}")
    lines += ["", "## Experts (layer: routed experts)", ""]
    lines += [f"- layer {layer}: {', '.join(map(str, experts))}" for layer, experts in sorted(layers.items())]
    lines += ["", "## Metrics", "", "Measured on data the training never saw.", "", "| metric | base experts | this entry |",
              "|---|---|---|"]
    lines.append(f"| held-out {manifest.domain} loss (nats/token{_tokens(m.domain_tokens)}) | {_num(m.domain_loss_before)} | "
                 f"{_num(m.domain_loss_after)} |")
    lines.append(f"| WikiText-2 test perplexity | {_num(m.general_ppl_before)} | {_num(m.general_ppl_after)} |")
    for task, value in sorted(m.tasks.items()):
        lines.append(f"| {task} | | {value:.4f} |")
    lines += ["", "## Lineage", ""]
    if manifest.parents:
        lines += [f"- {p.relation.replace('_', ' ')} from `{p.entry}` ({p.slots} experts)" for p in manifest.parents]
    else:
        lines.append(f"- trained from the base model `{manifest.base_model}`")
    lines += ["", "## Contributors", ""]
    if manifest.contributors:
        lines += ["| contributor | role | share |", "|---|---|---|"]
        lines += [f"| `{c.id}` | {c.role} | {c.share:.4f} |" for c in manifest.contributors]
    else:
        lines.append("- none recorded")
    lines += ["", "## Software", ""] + [f"- {k} {v}" for k, v in sorted(manifest.versions.items())]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def _tokens(n: int | None) -> str:
    return f", {n:,} tokens" if n else ""
