"""The local server's generation engine: concurrent requests decoded together, token by token, metered per expert.

One worker thread owns the model. It takes every request waiting when a batch starts (up to
`max_batch`), left-pads their prompts into one batch and decodes them step by step with the KV
cache, handing each request its new text as it comes (for streaming) and finishing each on its own
stop: end of text, a stop string, or max_tokens. Requests that arrive meanwhile wait for the next
batch. Because routing is per token, a RoutingRecorder on the routers tells exactly which routed
experts processed each real token of each request (padding excluded): those counts are its usage.
"""

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from moeforge.model.routing import RoutingRecorder

log = logging.getLogger(__name__)


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    out: "queue.Queue[tuple[str, object]]" = field(default_factory=queue.Queue)  # ("text", str) … ("done", Result)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Result:
    text: str
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int
    experts: Counter  # (layer, expert id in the served model) → tokens routed to it
    ttft_s: float | None


class Engine:
    def __init__(self, model, tokenizer, *, max_batch: int = 16):
        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self._queue: queue.Queue[Request] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moeforge-engine", daemon=True)
        self.batches = 0  # batches run, and the largest one, for tests and metrics
        self.largest_batch = 0

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> Request:
        self._queue.put(request)
        return request

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [r for r in batch if not r.cancelled.is_set()] or []
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                self._generate(batch)
            except Exception as exc:  # a failed batch fails its requests, never the server
                log.exception("generation failed")
                for r in batch:
                    r.out.put(("error", f"generation failed: {type(exc).__name__}: {exc}"))

    @torch.no_grad()
    def _generate(self, batch: list[Request]) -> None:
        device = next(self.model.parameters()).device
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        generators = [torch.Generator().manual_seed(r.seed) if r.seed is not None else None for r in batch]
        made: list[list[int]] = [[] for _ in batch]
        texts = [""] * len(batch)
        done: list[str | None] = [None] * len(batch)
        experts = [Counter() for _ in batch]
        first_token = [None] * len(batch)
        past, step_ids, step_mask = None, ids, mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        steps = max(r.max_tokens for r in batch)
        with RoutingRecorder(self.model) as recorder:
            for _ in range(steps):
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True)
                past = out.cache
                self._meter(recorder, step_mask, done, experts)
                logits = out.logits[:, -1, :].float()
                nxt = torch.full((len(batch),), self.pad, dtype=torch.long)
                for i, r in enumerate(batch):
                    if done[i] is not None:
                        continue
                    if r.cancelled.is_set():
                        done[i] = "cancelled"
                        continue
                    token = _sample(logits[i], r.temperature, r.top_p, generators[i])
                    nxt[i] = token
                    if token == self.eos:
                        done[i] = "stop"
                        continue
                    made[i].append(token)
                    text = self.tokenizer.decode(made[i], skip_special_tokens=True)
                    cut = _stop_at(text, r.stop)
                    if cut is not None:
                        text, done[i] = text[:cut], "stop"
                    if first_token[i] is None:
                        first_token[i] = time.monotonic() - r.submitted
                    if len(text) > len(texts[i]):
                        r.out.put(("text", text[len(texts[i]):]))
                    texts[i] = text
                    if done[i] is None and len(made[i]) >= r.max_tokens:
                        done[i] = "length"
                if all(d is not None for d in done):
                    break
                live = torch.tensor([d is None for d in done], dtype=torch.long, device=device)
                step_ids, step_mask = nxt.view(-1, 1).to(device), live.view(-1, 1)
                mask = torch.cat([mask, step_mask], dim=1)
                positions = positions[:, -1:] + 1
        for i, r in enumerate(batch):
            r.out.put(("done", Result(texts[i], done[i] or "length", len(r.prompt_ids), len(made[i]), experts[i], first_token[i])))

    def _meter(self, recorder: RoutingRecorder, step_mask: torch.Tensor, done: list, experts: list[Counter]) -> None:
        """Add each live row's real tokens' routed experts of this forward to its counter."""
        rows, cols = step_mask.shape
        real = step_mask.bool().cpu()
        for layer, routing in recorder.pop().layers.items():
            ids = routing.ids.view(rows, cols, -1).cpu()
            for i in range(rows):
                if done[i] is not None and cols == 1:
                    continue
                chosen = ids[i][real[i]].reshape(-1).tolist()
                experts[i].update((layer, e) for e in chosen)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None
