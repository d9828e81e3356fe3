"""Answer-row scoring: an organism's multiple-choice scores from one LM row per item instead of one per option.

    df = evaluate(vlm, bench, "test")        # spatialkit.models.evaluate.evaluate's rows, 3-4x less CPU

``OrganismVLM.score_options`` lays out one LM row per option, ``[image][prompt] <ans> [option words]``, and sums
the log-probabilities of the option's words. In a causal LM the ``<ans>`` row sees only the image and the prompt,
so the first word's log-probability is the same in every option's row; when every option is one word (every
question of the zoo's worlds except front/behind's "in front"), one row per item then holds all of its options'
scores. A K-option question costs a K-th of the LM work, and the LM's last block runs only at the rows the
scores read (``TinyVLM.hidden(only=...)``). An option of m words gets a row of its own that stops one word
short, ``<ans> w1 ... w(m-1)``, and is read at its last m positions, as ``score_options`` reads it.

The same scores up to float rounding (tests/test_answer_row.py pins them to ``score_options`` within 1e-5 on
every organism layout); on six zoo organisms and 2000-2800 test items each, no predicted answer differed.
The images are encoded once per batch, through the active visual hooks, exactly as ``score_options`` encodes
them: a hook whose output depends on the whole batch (``blank_visual_tokens`` takes the batch's mean) sees the
same batch.

Falls back to the model's own ``score_options`` while an attention hook is active (ScalingVis and AdaptVis act on
"the last row", which is the last option word in ``score_options``' rows and ``<ans>`` here, so their scores
differ by design) and for any VLM that is not an organism (an HF model's options are tokenizer pieces).

A module of its own because the trainer's validation runs ``spatialkit.models.evaluate`` and the checkpoint store
keys every organism by the code the trainer imports: this module is outside that code, so it moves no checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Sequence

import pandas as pd
import torch

from spatialkit.models import evaluate as plain_evaluate
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.organism.model import ANS, to_pixels
from spatialkit.models.vlm import VLM, TokenKind


def applies(vlm: VLM) -> bool:
    """Whether ``vlm`` is scored at its answer row: an organism with no attention hook active."""
    return isinstance(vlm, OrganismVLM) and vlm._attention_fn is None


@torch.no_grad()
def score_options(vlm: VLM, images, prompts: Sequence[str], options: Sequence[Sequence[str]], *,
                  system_prompt: str | None = None) -> torch.Tensor:
    """``vlm.score_options(images, prompts, options)``, (B, K) summed option log-likelihoods with -inf padding
    ragged lists, from one LM row per item plus one per option of two or more words."""
    kwargs = {"system_prompt": system_prompt} if system_prompt else {}
    if not applies(vlm):
        return vlm.score_options(images, prompts, options, **kwargs)
    if len(options) != len(prompts) or not len(prompts):
        raise ValueError(f"score_options: need one option list per prompt and at least one prompt; got "
                         f"{len(prompts)} prompts and {len(options)} option lists")
    pixels = to_pixels(images).to(vlm.device)
    if pixels.shape[0] != len(prompts):
        raise ValueError(f"score_options: got {pixels.shape[0]} images but {len(prompts)} prompts")
    words = [[vlm._encode_words(o, "option") for o in opts] for opts in options]
    prompt_ids = [vlm._encode_words(p, "prompt") + [vlm.vocab[ANS]] for p in prompts]
    # rows: each item's prompt (it scores the item's one-word options), then each longer option's prompt + all
    # its words but the last; ``reads`` holds (row, item, option, word ids) for every longer option
    tails, owner, reads = list(prompt_ids), list(range(len(prompts))), []
    for b, opts in enumerate(words):
        for k, ids in enumerate(opts):
            if len(ids) > 1:
                reads.append((len(tails), b, k, ids))
                tails.append(prompt_ids[b] + ids[:-1])
                owner.append(b)
    visual = vlm._visual(pixels)  # once per image, through the visual hooks, as score_options does
    n = vlm.model.grid[0] * vlm.model.grid[1]
    ids, kind = vlm._layout(tails, system_prompt)
    visual_rows = visual.view(len(prompts), n, -1)[torch.tensor(owner, device=vlm.device)].reshape(len(tails) * n, -1)
    ends = (kind != TokenKind.PAD).sum(1)  # one past each row's last token
    span = torch.ones(len(tails), dtype=torch.long)  # positions read per row: 1, or m for an m-word option
    for row, _, _, option_ids in reads:
        span[row] = len(option_ids)
    positions = torch.arange(ids.shape[1])
    only = (positions >= (ends.cpu() - span)[:, None]) & (positions < ends.cpu()[:, None])
    hidden = vlm.model.hidden(None, ids, kind, visual=visual_rows, only=only.to(vlm.device))
    logp = vlm.model.lm_head(hidden).float().log_softmax(-1).cpu()  # (read positions in row order, V)
    first = torch.cumsum(span, 0) - span  # each row's first read position in ``logp``
    scores = torch.full((len(prompts), max(len(o) for o in options)), float("-inf"))
    one_word = [(b, k, ids[0]) for b, opts in enumerate(words) for k, ids in enumerate(opts) if len(ids) == 1]
    if one_word:  # item b's row is row b: its first read position is first[b]
        item, option, word = (torch.tensor(column) for column in zip(*one_word))
        scores[item, option] = logp[first[item], word]
    for row, b, k, option_ids in reads:
        at = first[row] + torch.arange(len(option_ids))
        scores[b, k] = logp[at, torch.tensor(option_ids)].sum()
    return scores.to(vlm.device)


@contextlib.contextmanager
def reuse_encoder_outputs(vlm: VLM) -> Iterator[None]:
    """Context manager: inside it, an organism's vision encoder runs once per distinct batch of pixels and its
    output is reused when the same pixels come again; the visual hooks still run on every call, on a copy of it.
    For experiments that score one bench many times under different visual hooks (the permutation test's
    fractions and seeds): the encoder's output does not depend on the hooks, which act after it, so the numbers
    are the same. Evaluation only (the reused output carries no gradient). A no-op for any other VLM; the model
    is restored on exit, also when the body raises."""
    if not isinstance(vlm, OrganismVLM) or "encode_image" in vars(vlm.model):  # not an organism, or already inside
        yield
        return
    model, seen = vlm.model, {}
    encode = model.encode_image

    def encode_once(pixels: torch.Tensor) -> torch.Tensor:
        key = (tuple(pixels.shape), hashlib.sha1(pixels.detach().cpu().numpy().tobytes()).hexdigest())
        if key not in seen:
            with torch.no_grad():
                seen[key] = encode(pixels)
        return seen[key].clone()  # a hook may write into what it is given

    model.encode_image = encode_once  # an instance attribute: it shadows the method until deleted
    try:
        yield
    finally:
        del model.encode_image


class AnswerRowScorer:
    """``vlm`` seen through :func:`score_options`: what ``spatialkit.models.evaluate.evaluate`` calls."""

    def __init__(self, vlm: VLM):
        self.vlm = vlm

    def score_options(self, images, prompts, options, *, system_prompt: str | None = None) -> torch.Tensor:
        return score_options(self.vlm, images, prompts, options, system_prompt=system_prompt)


def evaluate(vlm: VLM, bench, split: str = "test", *, batch_size: int = 256, system_prompt: str | None = None,
             limit: int | None = None) -> pd.DataFrame:
    """``spatialkit.models.evaluate.evaluate`` (one row per item: family, task, relation, gold, predicted,
    ``correct``) with an organism's options scored at the answer row."""
    return plain_evaluate.evaluate(AnswerRowScorer(vlm), bench, split, batch_size=batch_size,
                                   system_prompt=system_prompt, limit=limit)

