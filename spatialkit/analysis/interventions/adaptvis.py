"""ScalingVis and AdaptVis (Chen et al., ICML 2025): a temperature on the answer token's image attention.

    with scaling_vis(vlm, alpha=0.8):                  # ScalingVis: every prefill's last row, image keys only
        gens = vlm.generate(images, prompts)
    gens = adapt_vis(vlm, alpha1=0.5, alpha2=1.5, beta=0.4).generate(images, prompts)   # AdaptVis
    by_alpha = scaling_vis_generations(vlm, images, prompts, alphas=(1.0, 0.5, 2.0))    # an α grid, one prefill
    logits = scaled_answer_logits(vlm, vlm.prefill(images, prompts), alpha=2.0)        # the answer row at one α

The official semantics (Chen et al., ICML 2025, and their code): multiply the pre-softmax logits q·k/√d of the *last prompt row*,
*image-key columns only*, by α, in every layer and head, during prefill only (decode steps are unscaled and
see the effect only through the cache). AdaptVis picks α per item: α1 if the confidence C (max softmax
probability of the first generated token of an unscaled greedy pass, rounded to 2 decimals) is below β,
else α2.

How it stays on fused attention. Scaling the image *keys* of one query row by α multiplies exactly that
row's image logits by α, so the last row is one extra ``scaled_dot_product_attention`` call with one query
row and α-scaled image keys (O(L) work and memory), while every other row keeps the layer's own fused
SDPA output. No (L, L) matrix is ever formed.

Why AdaptVis costs little more than one greedy generation. The official code runs two full generations.
But rows 0..L-2 never see the last row (causal attention), so their keys and values are the same with or
without scaling. One unscaled prefill gives the confidence *and* the cache of rows 0..L-2; the gate picks
α; the cache is cropped by one position, the last prompt token is re-run as a single-row step with its
image logits scaled, and greedy decoding continues from there. Extra cost: one single-token step. The same
step serves an α grid: one unscaled prefill, and per α a copy of its cache with the last row rerun
(``scaling_vis_generations``; ``scaled_answer_logits`` stops at that row's logits).

The module also holds the *reference* implementation that mirrors the official code (eager attention,
the logits matrix multiplied in place, two full generations). Tests check the fast path against it; the
benchmark times both. Never use it for experiments: it materialises (B, H, L, L) per layer.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from spatialkit.common.params import check_number
from spatialkit.models.vlm import VLM, AttnCall, Generation, Prefill, TokenKind, softmax_confidence
from spatialkit.analysis.attention import AttentionRecord
from dataclasses import replace
from spatialkit.analysis.attention import row_probs

__all__ = ["scaling_vis", "adapt_vis", "AdaptVis", "AdaptVisGeneration", "LastRowScaling", "check_alpha",
           "check_beta", "fork_prefill", "gate", "measure_scaled", "reference_attention", "reference_scaling_vis",
           "reference_adapt_vis", "scaled_answer_logits", "scaling_vis_generations"]

MAX_ALPHA = 100.0  # beyond this the softmax is a one-hot on the image either way; catches unit mistakes


# --------------------------------------------------------------------------------------------------
# validation (runs before any work)


def check_alpha(value, name: str = "alpha") -> float:
    """A finite float in [0, MAX_ALPHA], or a ValueError that names ``name`` and the allowed range."""
    return check_number(name, value, 0.0, MAX_ALPHA,
                        note="1 = unscaled, < 1 smooths the image attention, > 1 sharpens it")


def check_beta(value, name: str = "beta") -> float:
    """A finite float in [0, 1] (the confidence threshold), or a ValueError naming ``name``."""
    return check_number(name, value, 0.0, 1.0, note="a threshold on the first token's max softmax probability")


def gate(confidence: float, alpha1: float, alpha2: float, beta: float) -> float:
    """AdaptVis' rule: α1 (usually < 1: widen the gaze) when unsure (C < β), else α2 (sharpen)."""
    return alpha1 if confidence < beta else alpha2


# --------------------------------------------------------------------------------------------------
# the fused last-row computation


def last_prompt_rows(call: AttnCall) -> torch.Tensor:
    """(B,) index into the call's query rows of each item's last prompt position (last non-pad key).

    Left padding (HF): always the last row. Right padding (organism): the last non-pad position. A single-
    row call over a cache (the AdaptVis redo step) gives row 0.
    """
    b, _, lq, _ = call.query.shape
    if call.token_kind is None:
        return torch.full((b,), lq - 1, dtype=torch.long, device=call.query.device)
    lk = call.key.shape[-2]
    real = (call.token_kind[:, :lk] != TokenKind.PAD).long()
    last_key = (torch.arange(lk, device=real.device) * real).max(dim=1).values
    return (last_key - (lk - lq)).clamp(0, lq - 1).to(call.query.device)


def _row_mask(call: AttnCall, rows: torch.Tensor) -> torch.Tensor | None:
    """The mask of the chosen query rows, (B, 1 or H, 1, Lk), bool or additive; None if nothing is masked."""
    b, _, lq, _ = call.query.shape
    lk = call.key.shape[-2]
    mask = None
    if call.mask is not None:
        mask = call.mask
        while mask.dim() < 4:
            mask = mask[None]
        mask = mask.expand(b, mask.shape[1], mask.shape[2], lk)
        if mask.shape[2] != 1:  # per-row mask: keep the chosen row only (never expanded over heads)
            mask = mask[torch.arange(b, device=mask.device), :, rows.to(mask.device)].unsqueeze(2)
    if call.is_causal and lq > 1:
        keys = torch.arange(lk, device=call.query.device)
        allowed = keys[None, None, None, :] <= (rows + (lk - lq))[:, None, None, None]
        if not bool(allowed.all()):
            if mask is None:
                mask = allowed
            elif mask.dtype == torch.bool:
                mask = mask & allowed
            else:
                mask = mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)
    return mask


def image_key_factor(call: AttnCall, alpha: torch.Tensor) -> torch.Tensor:
    """(B, Lk) in the keys' dtype: ``alpha[b]`` on item b's image keys, 1 on every other key."""
    if call.token_kind is None:
        raise ValueError("ScalingVis/AdaptVis need the token kinds of the keys (AttnCall.token_kind is None)")
    is_image = (call.token_kind[:, : call.key.shape[-2]] == TokenKind.IMAGE).to(call.key.device)
    return torch.where(is_image, alpha.to(call.key.device, call.key.dtype)[:, None],
                       torch.ones((), dtype=call.key.dtype, device=call.key.device))


def scaled_last_rows(call: AttnCall, rows: torch.Tensor, alpha: torch.Tensor,
                     factor: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, D): attention output of query row ``rows[b]`` with its image logits multiplied by ``alpha[b]``.

    Multiplying the image keys by α multiplies exactly the image columns of q·kᵀ by α, so this is one fused
    SDPA call with one query row; values are untouched. ``factor``: ``image_key_factor(call, alpha)`` when the
    caller has it already.
    """
    if factor is None:
        factor = image_key_factor(call, alpha)
    b = call.query.shape[0]
    batch_index = torch.arange(b, device=call.query.device)
    q_row = call.query[batch_index, :, rows].unsqueeze(2)  # (B, H, 1, D)
    key = call.key * factor[:, None, :, None]
    return call.sdpa(query=q_row, key=key, mask=_row_mask(call, rows))[:, :, 0]


class LastRowScaling:
    """Attention function: fused SDPA everywhere, the last prompt row recomputed with image logits × α.

    ``alpha``: a float or a (B,) tensor (one α per batch item). Scales every call whose query has more than
    one row (prefill); single-row calls (decode steps) pass through unscaled. ``armed_passes`` = n also
    scales the next n forward passes whatever their length (the AdaptVis redo step runs the last prompt
    token alone over the cache); a pass ends at layer ``num_layers - 1``.
    """

    def __init__(self, alpha: float | torch.Tensor, num_layers: int | None = None, armed_passes: int = 0):
        if armed_passes and num_layers is None:
            raise ValueError("armed_passes needs num_layers (to know where a forward pass ends)")
        self.alpha, self.num_layers, self.armed_passes = alpha, num_layers, armed_passes
        self.scaled_calls = 0  # how many layer calls were scaled (tests check prefill-only)
        self._pass = None  # (token kinds, shapes, rows, key factor) of the latest scaled call: see _per_pass

    def _alpha(self, call: AttnCall) -> torch.Tensor:
        b = call.query.shape[0]
        alpha = torch.as_tensor(self.alpha, dtype=torch.float32).reshape(-1)
        if alpha.numel() == 1:
            return alpha.expand(b)
        if alpha.numel() != b:
            raise ValueError(f"got {alpha.numel()} alphas for a batch of {b}")
        return alpha

    def _per_pass(self, call: AttnCall) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, key factor) of ``call``: the same in every layer of one forward pass, so computed in its first
        scaled layer and reused while the token kinds are the same tensor data and the shapes match (the HF
        adapter hands each layer a new view of one tensor: compared by data pointer, shape and strides; the
        kept reference stops that memory from being reused by another tensor meanwhile). Recomputing them in
        every layer was about a third of ScalingVis's overhead over plain attention."""
        kinds = call.token_kind
        shapes = (tuple(call.query.shape), tuple(call.key.shape), call.key.dtype, call.key.device)
        seen = self._pass
        if (kinds is None or seen is None or seen[1] != shapes or seen[0].data_ptr() != kinds.data_ptr()
                or seen[0].shape != kinds.shape or seen[0].stride() != kinds.stride()):
            rows = last_prompt_rows(call)
            seen = (kinds, shapes, rows, image_key_factor(call, self._alpha(call)))
            self._pass = seen if kinds is not None else None
        return seen[2], seen[3]

    def __call__(self, call: AttnCall) -> torch.Tensor:
        armed = self.armed_passes > 0
        if armed and call.layer == self.num_layers - 1:
            self.armed_passes -= 1
        if call.query.shape[-2] == 1 and not armed:
            return call.sdpa()  # decode step: unscaled, it sees the scaled prompt only through the cache
        self.scaled_calls += 1
        rows, factor = self._per_pass(call)
        scaled = scaled_last_rows(call, rows, self._alpha(call), factor)
        if call.query.shape[-2] == 1:
            return scaled.unsqueeze(2)
        out = call.sdpa()  # every row on fused attention; the last prompt row is then replaced
        out[torch.arange(out.shape[0], device=out.device), :, rows] = scaled.to(out.dtype)
        return out


# --------------------------------------------------------------------------------------------------
# ScalingVis


@contextlib.contextmanager
def scaling_vis(vlm: VLM, alpha: float) -> Iterator[LastRowScaling]:
    """Context manager: inside it, every prefill (``vlm.generate``, ``vlm.logits``) scales the last prompt
    row's image logits by ``alpha`` in every layer and head; decode steps are unscaled. Restores on exit.

    Meant for generation (the official protocol). Under ``vlm.logits`` the scaled row is the batch's last
    non-pad position, so for ``score_options`` it would be the last option token, not the prompt's end.
    """
    alpha = check_alpha(alpha)
    hook = LastRowScaling(alpha)
    with vlm.attention_hook(hook):
        yield hook


# --------------------------------------------------------------------------------------------------
# ScalingVis at several α from one prompt pass


def fork_prefill(prefill: Prefill) -> Prefill:
    """A copy of an undecoded ``prefill`` with a cache of its own: decoding the copy leaves the original (and
    every other copy) as it was, so one prompt pass can be decoded several ways."""
    if prefill.decoded:
        raise ValueError("fork_prefill: this Prefill was already decoded (its cache holds generated tokens)")
    return replace(prefill, state=copy.deepcopy(prefill.state))  # the batch and first logits are only read


def _rerun_scaled(alpha: float, num_layers: int, seen: list) -> Callable[[list[int]], LastRowScaling]:
    """``decode``'s ``attention_fn_for``: α on the rerun of the last prompt row, decode steps unscaled."""

    def fn_for(items: list[int]) -> LastRowScaling:
        seen.append(list(items))
        return LastRowScaling(alpha, num_layers=num_layers, armed_passes=1)

    return fn_for


@torch.no_grad()
def scaled_answer_logits(vlm: VLM, prefill: Prefill, alpha: float) -> torch.Tensor:
    """(B, V) next-token logits at each item's last prompt position with that row's image logits × ``alpha``:
    what a prefill under ``scaling_vis(vlm, alpha)`` gives as ``first_logits``, from an unscaled ``prefill``
    (left as it was) at the cost of one single-token step. No row before the last attends to it (causal
    attention), so their keys and values are the unscaled pass's; the last position is rerun alone over a copy
    of the cache (``VLM.decode(rerun_last=True)``, one new token), and its logits are read where the LM computes
    them, the unembedding (``output_embeddings``): ``decode`` returns tokens, not distributions."""
    alpha = check_alpha(alpha)
    groups: list[list[int]] = []
    logits: list[torch.Tensor] = []

    def keep(_module, _inputs, output):  # one call per group: its rerun row (no decode step follows one token)
        logits.append(output.reshape(len(groups[-1]), -1, output.shape[-1])[:, -1])

    handle = vlm.output_embeddings().register_forward_hook(keep)
    try:
        vlm.decode(fork_prefill(prefill), 1, attention_fn_for=_rerun_scaled(alpha, vlm.num_layers, groups),
                   rerun_last=True)
    finally:
        handle.remove()
    if len(logits) != len(groups) or sorted(i for g in groups for i in g) != list(range(len(prefill.first_logits))):
        raise RuntimeError(f"scaled_answer_logits: {len(logits)} unembedding calls for {len(groups)} reruns of "
                           f"{len(prefill.first_logits)} items; expected one per rerun, every item once")
    out = torch.empty_like(prefill.first_logits)
    for items, value in zip(groups, logits):
        out[items] = value.to(out.dtype)
    return out


@torch.no_grad()
def scaling_vis_generations(vlm: VLM, images: Sequence, prompts: Sequence[str], alphas: Sequence[float],
                            max_new_tokens: int = 8) -> dict[float, list[Generation]]:
    """{α: greedy generations under ``scaling_vis(vlm, α)``} (α = 1: plain ``generate``) from one unscaled
    prefill: each α ≠ 1 reruns the last prompt position alone over a copy of its cache with the image logits
    scaled, then decodes unscaled, as ``AdaptVis`` does for its one chosen α. The same answers as one
    ``vlm.generate`` per α, which ran the vision tower and the whole prompt again for every α."""
    check_number("max_new_tokens", max_new_tokens, 1, None, int)
    alphas = list(dict.fromkeys(check_alpha(a, "alphas") for a in alphas))
    if not alphas:
        raise ValueError("scaling_vis_generations: parameter 'alphas' is empty; allowed: one or more α in [0, 100]")
    prefill = vlm.prefill(images, prompts)
    out = {}
    for alpha in alphas:
        if alpha == 1.0:
            out[alpha] = vlm.decode(fork_prefill(prefill), max_new_tokens)
        else:
            out[alpha] = vlm.decode(fork_prefill(prefill), max_new_tokens, rerun_last=True,
                                    attention_fn_for=_rerun_scaled(alpha, vlm.num_layers, []))
    return out


# --------------------------------------------------------------------------------------------------
# AdaptVis


@dataclass
class AdaptVisGeneration(Generation):
    """A greedy generation under AdaptVis, with the gate's input and choice."""

    confidence: float = float("nan")  # C: rounded max softmax prob of the unscaled first token
    alpha: float = 1.0  # the α the gate chose


class AdaptVis:
    """Confidence-gated ScalingVis, one prefill + one single-token redo + greedy decoding. See module doc."""

    def __init__(self, vlm: VLM, alpha1: float, alpha2: float, beta: float):
        self.alpha1, self.alpha2 = check_alpha(alpha1, "alpha1"), check_alpha(alpha2, "alpha2")
        self.beta = check_beta(beta)
        self.vlm = vlm

    def choose(self, confidence: float) -> float:
        return gate(confidence, self.alpha1, self.alpha2, self.beta)

    @torch.no_grad()
    def generate(self, images: Sequence, prompts: Sequence[str], max_new_tokens: int = 8) -> list[AdaptVisGeneration]:
        check_number("max_new_tokens", max_new_tokens, 1, None, int)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        # 1) unscaled prefill: the confidence, and the keys/values of rows 0..L-2 (no row sees the last one)
        prefill = self.vlm.prefill(images, prompts)
        confidence = [softmax_confidence(row) for row in prefill.first_logits]
        alphas = [self.choose(c) for c in confidence]
        # 2) the last prompt position again, alone over the cache, image logits scaled; 3) greedy decoding,
        # unscaled (the scaled row lives on in the cache)
        redos: list[LastRowScaling] = []

        def redo_for(items: list[int]) -> LastRowScaling:  # scales one pass (the rerun), then decode steps pass
            redos.append(LastRowScaling(torch.tensor([alphas[i] for i in items]), num_layers=self.vlm.num_layers,
                                        armed_passes=1))
            return redos[-1]

        gens = self.vlm.decode(prefill, max_new_tokens, attention_fn_for=redo_for, rerun_last=True)
        if not redos or any(r.armed_passes for r in redos):
            raise RuntimeError("AdaptVis: the redo step did not reach every layer")
        return [AdaptVisGeneration(text=g.text, token_ids=g.token_ids, first_token_prob=g.first_token_prob,
                                   confidence=c, alpha=a) for g, c, a in zip(gens, confidence, alphas)]


def adapt_vis(vlm: VLM, alpha1: float, alpha2: float, beta: float) -> AdaptVis:
    """AdaptVis with the official hyper-parameters' meaning (validated here, before any work)."""
    return AdaptVis(vlm, alpha1, alpha2, beta)


# --------------------------------------------------------------------------------------------------
# the reference: mirrors the official code (eager attention, logits multiplied in place, two generations)


class reference_attention:
    """Eager attention over the full (B, H, Lq, Lk) logits; on prefill calls the last prompt row's image
    columns are multiplied by α in place before the mask and softmax (as the official code does)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, call: AttnCall) -> torch.Tensor:
        key, value = call.expand_kv(call.key), call.expand_kv(call.value)
        logits = (call.query @ key.transpose(-1, -2)) * call.scale  # (B, H, Lq, Lk)
        if call.query.shape[-2] > 1 and self.alpha != 1.0:
            rows = last_prompt_rows(call)
            lk = key.shape[-2]
            for b in range(logits.shape[0]):
                image_cols = (call.token_kind[b, :lk] == TokenKind.IMAGE).nonzero().squeeze(1)
                logits[b, :, rows[b], image_cols] *= self.alpha
        mask = call.full_mask()
        if mask is not None:
            logits = logits + mask
        return logits.float().softmax(-1).to(value.dtype) @ value


@contextlib.contextmanager
def reference_scaling_vis(vlm: VLM, alpha: float) -> Iterator[None]:
    """ScalingVis the official way (eager attention for every call, in-place logit scaling)."""
    with vlm.attention_hook(reference_attention(check_alpha(alpha))):
        yield


def reference_adapt_vis(vlm: VLM, alpha1: float, alpha2: float, beta: float, images: Sequence,
                        prompts: Sequence[str], max_new_tokens: int = 8) -> list[AdaptVisGeneration]:
    """AdaptVis the official way: a full unscaled greedy generation, then a second full generation with the
    chosen α (items grouped by α), both on eager attention."""
    chooser = AdaptVis(vlm, alpha1, alpha2, beta)
    with reference_scaling_vis(vlm, 1.0):
        first = vlm.generate(images, prompts, max_new_tokens=max_new_tokens)
    confidence = [math.floor(g.first_token_prob * 100 + 0.5) / 100 for g in first]
    alphas = [chooser.choose(c) for c in confidence]
    results: list[AdaptVisGeneration | None] = [None] * len(prompts)
    for alpha in sorted(set(alphas)):
        rows = [i for i, a in enumerate(alphas) if a == alpha]
        with reference_scaling_vis(vlm, alpha):
            gens = vlm.generate([images[i] for i in rows], [prompts[i] for i in rows], max_new_tokens=max_new_tokens)
        for i, g in zip(rows, gens):
            results[i] = AdaptVisGeneration(text=g.text, token_ids=g.token_ids, first_token_prob=g.first_token_prob,
                                            confidence=confidence[i], alpha=alpha)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# what the answer token looks at under scaling (for before/after heatmaps)


class _ScaledProbe(LastRowScaling):
    """ScalingVis that also records, on the prefill, the last prompt row's post-softmax attention as scaled."""

    def __init__(self, alpha: float, rows: torch.Tensor):
        super().__init__(alpha)
        self.rows, self.layers = rows, {}

    def __call__(self, call: AttnCall) -> torch.Tensor:
        if call.query.shape[-2] > 1:


            is_image = call.token_kind[:, : call.key.shape[-2]] == TokenKind.IMAGE
            factor = torch.where(is_image, float(self.alpha), 1.0).to(call.key.dtype)
            scaled = replace(call, key=call.key * factor[:, None, :, None].to(call.key.device))
            self.layers[call.layer] = row_probs(scaled, self.rows).cpu()
        return super().__call__(call)


def measure_scaled(vlm: VLM, batch, alpha: float):
    """``spatialkit.analysis.attention.measure`` under ScalingVis(α): the last prompt token's attention in every layer,
    with its image logits scaled (later layers also differ through the scaled rows' outputs). α = 1 gives the
    unscaled probe's record."""

    alpha = check_alpha(alpha)
    rows = batch.last_index().view(-1, 1).cpu()
    probe = _ScaledProbe(alpha, rows)
    with vlm.attention_hook(probe):
        vlm.logits(batch)
    probs = torch.stack([probe.layers[i] for i in range(len(probe.layers))])
    return AttentionRecord(probs=probs, rows=rows, token_kind=batch.token_kind.cpu(), grids=list(batch.grids))
