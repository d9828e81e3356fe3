"""``OrganismVLM``: the tiny trained VLM behind the one ``spatialkit.models.vlm.VLM`` interface.

    vlm = load_or_train(preset("default"))          # loads from the checkpoint store, or trains (minutes on CPU)
    df = evaluate(vlm, wherebench(vlm.config), "test")   # one row per item: family, task, correct, ...
    accuracy_by_task(df)

Prompts are plain words of the organism's vocabulary (unknown words raise a ValueError naming them); the
model answers after an implicit ``<ans>`` token. ``system_prompt=SYSTEM_PROMPT`` (or any known words)
prepends a system prompt, which the organism saw on ``system_prompt_fraction`` of its training examples.
"""

from __future__ import annotations
import contextlib
import math
from typing import ClassVar, Iterator, Sequence
import torch
from spatialkit.models.organism.model import ANS, EOS, IMG, PAD, SYSTEM_PROMPT, TinyVLM, Vocab, to_pixels
from spatialkit.models.posenc import ABSOLUTE, ROTARY, grid_positions, shaw_bias
from spatialkit.models.vlm import (VLM, AttentionFn, Batch, Generation, Prefill, SlotIndexFn, TokenKind, VisualFn,
                                   VisualTokens)
from spatialkit.models.organism.config import OrganismConfig



__all__ = ["OrganismVLM", "OrganismConfig", "SYSTEM_PROMPT", "greedy_continue", "loc_token_ids"]


class OrganismVLM(VLM):
    family = "organism"

    def __init__(self, model: TinyVLM, vocab: Vocab, config: OrganismConfig | None = None, device="cpu"):
        self.device, self.dtype = torch.device(device), torch.float32
        self.model, self.vocab, self.config = model.to(self.device), vocab, config
        self._visual_fns: list[VisualFn] = []
        self._attention_fns: list[AttentionFn] = []
        self.metrics: dict = {}

    # -- inputs ---------------------------------------------------------------------------------
    def _encode_words(self, text: str, what: str) -> list[int]:
        unknown = self.vocab.unknown(text)
        if unknown:
            raise ValueError(f"{what} {text!r} has words the organism's vocabulary does not know: {unknown}")
        return self.vocab.encode(text)

    def _layout(self, tails: list[list[int]], system_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded rows [system?][<img> x N][tail]: (input_ids, token_kind), both (B, L) long."""
        sys_ids = self._encode_words(system_prompt, "system_prompt") if system_prompt else []
        h, w = self.model.grid
        length = len(sys_ids) + h * w + max(len(t) for t in tails)
        ids = torch.full((len(tails), length), self.vocab[PAD], dtype=torch.long)
        kind = torch.full((len(tails), length), int(TokenKind.PAD), dtype=torch.long)
        for b, tail in enumerate(tails):
            row = sys_ids + [self.vocab[IMG]] * (h * w) + tail
            ids[b, : len(row)] = torch.tensor(row)
            kind[b, : len(sys_ids)] = int(TokenKind.SYSTEM)
            kind[b, len(sys_ids): len(sys_ids) + h * w] = int(TokenKind.IMAGE)
            kind[b, len(sys_ids) + h * w: len(row)] = int(TokenKind.TEXT)
        return ids.to(self.device), kind.to(self.device)

    def _pixels(self, images) -> torch.Tensor:
        pixels = to_pixels(images).to(self.device)
        size = self.model.cfg.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"images must be {size}x{size} pixels for this organism, got {tuple(pixels.shape[-2:])}")
        return pixels

    def prepare(self, images: Sequence, prompts: Sequence[str], *, system_prompt: str | None = None) -> Batch:
        pixels = self._pixels(images)
        if pixels.shape[0] != len(prompts):
            raise ValueError(f"got {pixels.shape[0]} images but {len(prompts)} prompts")
        ids, kind = self._layout([self._encode_words(p, "prompt") + [self.vocab[ANS]] for p in prompts], system_prompt)
        h, w = self.model.grid
        return Batch(inputs={"pixel_values": pixels, "input_ids": ids}, token_kind=kind, grids=[(h, w)] * len(prompts),
                     prompts=list(prompts))

    # -- running --------------------------------------------------------------------------------
    def _visual(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B*N, d) visual tokens after every active visual hook (in the order they were entered)."""
        tokens = self.model.encode_image(pixels)
        b, n, d = tokens.shape
        vt = VisualTokens(tokens=tokens.reshape(b * n, d), grids=[self.model.grid] * b)
        for fn in self._visual_fns:
            vt = fn(vt)
        if vt.tokens.shape != (b * n, d):
            raise ValueError(f"a visual hook returned tokens of shape {tuple(vt.tokens.shape)}, expected {(b * n, d)}")
        return vt.tokens

    @property
    def _attention_fn(self) -> AttentionFn | None:
        return self._attention_fns[-1] if self._attention_fns else None

    def _hidden(self, batch: Batch, visual: torch.Tensor | None = None) -> torch.Tensor:
        if visual is None:
            visual = self._visual(batch.inputs["pixel_values"])
        return self.model.hidden(None, batch.inputs["input_ids"], batch.token_kind, visual=visual,
                                 attention_fn=self._attention_fn)

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model.lm_head(self._hidden(batch))

    @torch.no_grad()
    def score_options(self, images, prompts, options, *, system_prompt: str | None = None) -> torch.Tensor:
        """(B, K) summed log-likelihood of each option's words after ``<ans>`` (-inf pads ragged option lists)."""
        if len(options) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(options)} option lists")
        k_max = max(len(o) for o in options)
        prompt_ids = [self._encode_words(p, "prompt") + [self.vocab[ANS]] for p in prompts]
        tails, owner, option_len = [], [], []
        for b, (p, opts) in enumerate(zip(prompt_ids, options)):
            for o in opts:
                ids = self._encode_words(o, "option")
                tails.append(p + ids)
                owner.append(b)
                option_len.append(len(ids))
        pixels = self._pixels(images)
        if pixels.shape[0] != len(prompts):
            raise ValueError(f"got {pixels.shape[0]} images but {len(prompts)} prompts")
        visual = self._visual(pixels)  # hooks run once per image; its options share the result
        n = self.model.grid[0] * self.model.grid[1]
        ids, kind = self._layout(tails, system_prompt)
        visual_rows = visual.view(len(prompts), n, -1)[torch.tensor(owner, device=self.device)].reshape(len(tails) * n, -1)
        rows = Batch(inputs={"input_ids": ids}, token_kind=kind, grids=[self.model.grid] * len(tails))
        logp = self.model.lm_head(self._hidden(rows, visual_rows)).log_softmax(-1)  # (R, L, V)
        ends = (rows.token_kind != TokenKind.PAD).sum(1)  # one past the last option word
        scores = torch.full((len(prompts), k_max), float("-inf"), device=self.device)
        counters = [0] * len(prompts)
        for r, (b, m) in enumerate(zip(owner, option_len)):
            pos = torch.arange(int(ends[r]) - m, int(ends[r]), device=self.device)  # option word positions
            word_ids = rows.inputs["input_ids"][r, pos]
            scores[b, counters[b]] = logp[r, pos - 1, word_ids].sum()
            counters[b] += 1
        return scores

    @torch.no_grad()
    def generate(self, images, prompts, max_new_tokens: int = 8, *, system_prompt: str | None = None) -> list[Generation]:
        """Greedy decoding with a KV cache; rows are grouped by prompt length (no padding inside a group)."""
        return self.decode(self.prefill(images, prompts, system_prompt=system_prompt), max_new_tokens)

    @torch.no_grad()
    def prefill(self, images, prompts, *, system_prompt: str | None = None) -> Prefill:
        """One cached prefill per group of equal prompt length (right padding would otherwise put pad keys
        between the prompt and the generated tokens)."""
        batch = self.prepare(images, prompts, system_prompt=system_prompt)
        lengths = (batch.token_kind != TokenKind.PAD).sum(1).tolist()
        visual = self._visual(batch.inputs["pixel_values"]).view(len(prompts), -1, self.model.cfg.lm_dim)
        groups = []
        first = None
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            ids = batch.inputs["input_ids"][rows, :length]
            kind = batch.token_kind[rows, :length]
            cache = self.model.new_cache()
            hidden = self.model.hidden(None, ids, kind, visual=visual[rows].reshape(-1, visual.shape[-1]),
                                       attention_fn=self._attention_fn, cache=cache)
            logits = self.model.lm_head(hidden[:, -1])
            if first is None:
                first = logits.new_empty(len(prompts), logits.shape[-1])
            first[rows] = logits
            groups.append({"rows": rows, "ids": ids, "kind": kind, "cache": cache, "logits": logits})
        return Prefill(first_logits=first, batch=batch, state=groups)

    @torch.no_grad()
    def decode(self, prefill: Prefill, max_new_tokens: int = 8, *, attention_fn_for=None,
               rerun_last: bool = False) -> list[Generation]:
        prefill.start_decode(max_new_tokens)
        results: list[Generation | None] = [None] * len(prefill.first_logits)
        eos = self.vocab[EOS]
        for group in prefill.state:
            ids, kind, cache, logits = group["ids"], group["kind"], group["cache"], group["logits"]
            fn = attention_fn_for(list(group["rows"])) if attention_fn_for is not None else self._attention_fn
            if rerun_last:
                for layer in cache:
                    layer["k"], layer["v"] = layer["k"][:, :, :-1], layer["v"][:, :, :-1]
                cache[0]["kind"] = kind[:, :-1]
                hidden = self.model.hidden(None, ids[:, -1:], kind[:, -1:], attention_fn=fn, cache=cache,
                                           positions=self.model.positions(kind)[:, -1:])
                logits = self.model.lm_head(hidden[:, -1])
            first_prob = logits.softmax(-1).max(-1).values
            generated = greedy_continue(self.model, logits, kind, cache, eos, max_new_tokens, fn)
            for j, i in enumerate(group["rows"]):
                token_ids = generated[j]
                results[i] = Generation(text=self.vocab.decode(token_ids), token_ids=token_ids,
                                        first_token_prob=float(first_prob[j]))
        return results  # type: ignore[return-value]

    # -- hooks ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def visual_hook(self, fn: VisualFn):
        self._visual_fns.append(fn)
        try:
            yield self
        finally:
            self._visual_fns.remove(fn)

    @contextlib.contextmanager
    def attention_hook(self, fn: AttentionFn):
        """The innermost active attention hook computes every LM layer's attention."""
        self._attention_fns.append(fn)
        try:
            yield self
        finally:
            self._attention_fns.remove(fn)

    # what vision_position_hook moves, per ViT position encoding (ModelConfig.vision_posenc)
    VISION_POSITION_SIGNALS: ClassVar[dict[str, str]] = {
        "none": "nothing: this ViT has no position encoding (vision_posenc 'none'), so moving it is the identity",
        "learned": "the ViT's learned position-table rows added to the patch embeddings",
        "sincos2d": "the ViT's 2D sine-cosine position rows added to the patch embeddings",
        "rpe2d": "the (row, column) places from which every ViT attention layer reads its relative-position bias",
        "rope1d": "the slot indices by which every ViT attention layer rotates queries and keys",
        "rope2d": "the (row, column) ids by which every ViT attention layer rotates queries and keys",
        "mrope": "the (t, row, column) ids by which every ViT attention layer rotates queries and keys",
    }

    @property
    def vision_position_signal(self) -> str:
        return self.VISION_POSITION_SIGNALS[self.model.cfg.vision_posenc]

    @contextlib.contextmanager
    def vision_position_hook(self, fn: SlotIndexFn) -> Iterator[None]:
        """Move only the ViT's own position signal (see :meth:`VLM.vision_position_hook`).

        The organism's ViT has no merge: LM slot s is patch s. A forward pre-hook on the ViT (``model.vision``)
        asks ``fn`` for the slot index of the call's images (checked: one permutation of its own slots per
        image) and a forward hook clears it after the call (also on error). While it is set, the ViT's
        position encoding (``model.vision.pe``) hands patch s, per image, the signal of patch ``index[s]``:

        * absolute codes ("learned", "sincos2d"): ``pe.add`` adds the table rows ``table[index]`` (B, N, d)
          instead of ``table`` (N, d): exactly the sum the ViT computes with its table rows permuted;
        * rotary ("rope1d", "rope2d", "mrope"): ``pe.angles`` returns the rows of the unpermuted angles
          gathered by the index (B, N, Dh/2), so every block rotates patch s's query and key as patch
          ``index[s]``'s (rope1d: by its slot index);
        * relative bias ("rpe2d"): ``pe.bias`` reads the row and column offset tables at the offsets between the
          permuted places, p[index[j]] - p[index[i]], in every block;
        * "none": nothing to move (the index is still asked for and checked).

        These are instance attributes set on ``pe`` for the duration of the context (its class methods stay
        untouched; the attributes are removed and the hooks unregistered on exit, also on error). No parameter
        or buffer changes; an identity index (or no index) calls the original methods: bit-identical outputs.
        Training never enters this context."""
        vit = self.model.vision
        pe, (h, w), posenc = vit.pe, vit.grid, self.model.cfg.vision_posenc
        n = h * w
        state: dict = {}  # "local": (B, N) per-image patch index of the running ViT call, None = identity

        def before(module, args, kwargs):
            pixels = args[0] if args else kwargs["pixels"]
            b = int(pixels.shape[0])
            index, identity = self._slot_index(fn, [(h, w)] * b)
            state["local"] = None if identity else (index.view(b, n) - torch.arange(b)[:, None] * n).to(pixels.device)

        def after(module, args, output):
            state.pop("local", None)

        originals = {name: pe.__dict__[name] for name in ("add", "angles", "bias") if name in pe.__dict__}
        overrides: dict = {}
        if posenc in ABSOLUTE:
            add = pe.add

            def permuted_add(x, grid):
                local = state.get("local")
                if local is None:
                    return add(x, grid)
                pe._check_tokens(x, grid)
                return x + pe.table_for(grid).to(device=x.device, dtype=x.dtype)[local]

            overrides["add"] = permuted_add
        elif posenc in ROTARY:
            angles = pe.angles

            def permuted_angles(positions):
                local = state.get("local")
                out = angles(positions)
                return out if local is None or out.ndim != 2 else out[local]

            overrides["angles"] = permuted_angles
        elif posenc == "rpe2d":
            bias = pe.bias

            def permuted_bias(q, grid):
                local = state.get("local")
                if local is None:
                    return bias(q, grid)
                if q.shape[-2] != n or tuple(grid) != (h, w):
                    raise ValueError(f"q has {q.shape[-2]} tokens on grid {grid}, the ViT's grid is {(h, w)}")
                pos = grid_positions(h, w).to(q.device)[local]  # (B, N, 3): patch s at the place of index[s]
                k = pe.max_distance

                def offsets(p):  # (B, 1, N, N) table index of clip(p_j - p_i) per image
                    return ((p[:, None, :] - p[:, :, None]).clamp(-k, k) + k)[:, None]

                logits = shaw_bias(q, pe.row_table, offsets(pos[..., 1])) + shaw_bias(q, pe.col_table,
                                                                                      offsets(pos[..., 2]))
                return logits / math.sqrt(pe.head_dim)

            overrides["bias"] = permuted_bias
        handles = []
        try:
            handles.append(vit.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(vit.register_forward_hook(after, always_call=True))
            for name, value in overrides.items():
                object.__setattr__(pe, name, value)
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name in overrides:
                if name in originals:
                    object.__setattr__(pe, name, originals[name])
                else:
                    pe.__dict__.pop(name, None)
            state.clear()

    @torch.no_grad()
    def visual_tokens(self, batch: Batch) -> VisualTokens:
        return VisualTokens(tokens=self._visual(batch.inputs["pixel_values"]), grids=list(batch.grids))

    @property
    def num_layers(self) -> int:
        return self.model.cfg.lm_layers

    @torch.no_grad()
    def text_embeddings(self, batch: Batch) -> torch.Tensor:
        return self.model.tok_emb(batch.inputs["input_ids"][batch.text_mask])

    # -- model parts ----------------------------------------------------------------------------
    @property
    def lm_layers(self) -> torch.nn.ModuleList:
        return self.model.blocks

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_emb

    def output_embeddings(self) -> torch.nn.Module:
        return self.model.lm_head

    def location_token_ids(self) -> torch.Tensor:
        return loc_token_ids(self.vocab, device=self.device)

    # -- differentiable LM pass -----------------------------------------------------------------
    def append_tokens(self, batch: Batch, suffixes) -> Batch:
        """Rows are right-padded: each suffix goes right after its row's last non-pad token."""
        if len(suffixes) != batch.token_kind.shape[0]:
            raise ValueError(f"got {len(suffixes)} suffixes for a batch of {batch.token_kind.shape[0]}")
        ends = (batch.token_kind != TokenKind.PAD).sum(1).tolist()
        width = max(e + len(s) for e, s in zip(ends, suffixes))
        old_ids, old_kind = batch.inputs["input_ids"], batch.token_kind
        ids = torch.full((len(ends), width), self.vocab[PAD], dtype=old_ids.dtype, device=old_ids.device)
        kind = torch.full((len(ends), width), int(TokenKind.PAD), dtype=old_kind.dtype, device=old_kind.device)
        ids[:, : old_ids.shape[1]], kind[:, : old_kind.shape[1]] = old_ids[:, :width], old_kind[:, :width]
        for r, (end, suffix) in enumerate(zip(ends, suffixes)):
            ids[r, end: end + len(suffix)] = torch.as_tensor(list(suffix), dtype=ids.dtype)
            kind[r, end: end + len(suffix)] = int(TokenKind.TEXT)
        return Batch(inputs=dict(batch.inputs, input_ids=ids), token_kind=kind, grids=list(batch.grids),
                     prompts=list(batch.prompts))

    def lm_hidden(self, batch: Batch, visual: torch.Tensor | None = None) -> torch.Tensor:
        if visual is None:
            visual = self._visual(batch.inputs["pixel_values"])
        return self.model.hidden(None, batch.inputs["input_ids"], batch.token_kind, visual=visual,
                                 attention_fn=self._attention_fn)


def loc_token_ids(vocab: Vocab, device=None) -> torch.Tensor:
    """Ids of loc0, loc1, ... in order (as many as the vocabulary holds)."""
    locs = [w for w in vocab.words if w.startswith("loc") and w[3:].isdigit()]
    locs.sort(key=lambda w: int(w[3:]))
    if len(locs) < 2:
        raise ValueError("the organism's vocabulary has no loc tokens; PIN needs OrganismConfig.data.loc_grid >= 2")
    return torch.tensor([vocab[w] for w in locs], dtype=torch.long, device=device)


def greedy_continue(model: TinyVLM, logits: torch.Tensor, kind: torch.Tensor, cache: list, eos: int,
                    max_new_tokens: int, attention_fn: AttentionFn | None = None) -> list[list[int]]:
    """Greedy decoding after a prefill: ``logits`` (B, V) at the last prompt position, ``kind`` (B, L) the
    prompt's token kinds, ``cache`` the prefill's KV cache (extended in place). Token ids per row, up to eos."""
    out, done = [], torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    for _ in range(max_new_tokens):
        next_id = logits.argmax(-1)
        out.append(next_id)
        done |= next_id == eos
        if bool(done.all()) or len(out) == max_new_tokens:
            break
        kind = torch.cat([kind, torch.full_like(kind[:, :1], int(TokenKind.TEXT))], 1)
        hidden = model.hidden(None, next_id[:, None], kind[:, -1:], attention_fn=attention_fn, cache=cache,
                              positions=model.positions(kind)[:, -1:])
        logits = model.lm_head(hidden[:, -1])
    return [ids[: ids.index(eos)] if eos in ids else ids for ids in torch.stack(out, 1).tolist()]
