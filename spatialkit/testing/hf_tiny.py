"""Tiny randomly initialised Hugging Face VLMs of the four supported families, built at run time.

No pretrained weights or tokenizers can be downloaded here, so tests (and benchmarks that need a real
transformers model with long sequences) build their own: a byte-level BPE tokenizer trained in
milliseconds on a small scene-world corpus, a chat template shaped like the real one, an image-only
processor (the stock Qwen processors demand a video processor, which needs torchvision, which must
never be installed), and a model from a small config (the config rules are in this module).

    model, processor = build_tiny("qwen2_vl", seed=0)
    vlm = tiny_vlm("qwen3_vl")                  # an HFVLM adapter around a fresh tiny model
    save_tiny("llava", folder)                   # a real folder that spatialkit.models.hf.load() can read
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from spatialkit.models import hf
import json

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]

# Qwen2's pre-tokenizer split (same regex as the real tokenizer), then byte-level mapping.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Shaped like the real Qwen2-VL template (default system prompt included), image before text.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Shaped like llava-hf/llava-1.5-7b-hf's template: "USER: <image>\n{prompt} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }} "
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CORPUS_WORDS = (
    "where is the red green blue yellow purple orange white black square circle triangle star chicken dog cat "
    "cup table chair left right above below on under in front of behind relation to answer with one word "
    "photo image object first second you are a helpful assistant user system yes no what which colour shape"
).split()


def _corpus() -> list[str]:
    words = CORPUS_WORDS
    lines = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    lines += [f"Where is the {a} in relation to the {b}? Answer with left, right, above or below." for a, b in zip(words, words[5:])]
    return lines * 4


def train_tokenizer(family: str, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (deterministic: same corpus, same merges) with the family's specials."""
    specials = LLAVA_SPECIALS if family == "llava" else QWEN_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if family == "llava":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )
        fast.chat_template = LLAVA_CHAT_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        )
        fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _ids(tok, *tokens) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def _text_kwargs(tok, hidden: int, heads: int, kv_heads: int, layers: int) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def build_config(family: str, tok, *, hidden: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2,
                 llava_grid: int = 4):
    """The config of a tiny model. head_dim = hidden/heads; mrope sections sum to head_dim/2.

    Qwen families take images of any size (one LM token per 28 px, Qwen3-VL 32 px, up to 4096 tokens);
    LLaVA's grid is fixed by the config: ``llava_grid`` x ``llava_grid`` tokens from 7·llava_grid px images.
    """
    from transformers import LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig  # optional heavy dependency: only HF-model paths load transformers

    text = _text_kwargs(tok, hidden, heads, kv_heads, layers)
    half = hidden // heads // 2
    img, vid, vstart, vend = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    special = dict(image_token_id=img, video_token_id=vid, vision_start_token_id=vstart, vision_end_token_id=vend)
    if family == "qwen2_vl":
        section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # [16, 24, 24] shape, scaled
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(
            text_config={**text, "rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": 1e6}},
            vision_config=vision, **special,
        )
    if family == "qwen2_5_vl":
        section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": 1e6}},
            vision_config=vision, **special,
        )
    if family == "qwen3_vl":
        section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]  # [24, 20, 20] shape, scaled
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1])
        text = {**text, "head_dim": hidden // heads,
                "rope_parameters": {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True,
                                    "rope_theta": 5e6}}
        return Qwen3VLConfig(text_config=text, vision_config=vision, **special)
    if family == "llava":
        (img,) = _ids(tok, "<image>")
        vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=7 * llava_grid, patch_size=7, projection_dim=32)
        text = {**text, "model_type": "llama"}
        return LlavaConfig(vision_config=vision, text_config=text, image_token_id=img,
                           projector_hidden_act="gelu", vision_feature_layer=-2,
                           vision_feature_select_strategy="default", image_seq_length=llava_grid**2)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def build_processor(family: str, tok, llava_grid: int = 4):
    """The image-only processor of a tiny model (no video processor, so no torchvision)."""

    if family == "llava":
        from transformers import CLIPImageProcessorPil  # optional heavy dependency: only HF-model paths load transformers

        side = 7 * llava_grid
        image = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        return hf.processor_class(family)(
            image_processor=image, tokenizer=tok, chat_template=LLAVA_CHAT_TEMPLATE,
            patch_size=7, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        )
    from transformers import Qwen2VLImageProcessorPil  # optional heavy dependency: only HF-model paths load transformers

    if family == "qwen3_vl":
        image = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                          size={"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 4096})
    else:
        image = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                          size={"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 4096})
    return hf.processor_class(family)(image_processor=image, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)


def build_tiny(family: str, seed: int = 0, **sizes):
    """(model, processor) of a tiny random model; same seed → same weights. ``sizes``: see build_config."""

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    tok = train_tokenizer(family)
    config = build_config(family, tok, **sizes)
    # Seed only this construction; the caller's global RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = hf.model_class(family)._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()
    return model, build_processor(family, tok, llava_grid=sizes.get("llava_grid", 4))


def tiny_vlm(family: str, seed: int = 0, **sizes):
    """An :class:`spatialkit.models.hf.HFVLM` around a fresh tiny model."""

    model, processor = build_tiny(family, seed, **sizes)
    return hf.HFVLM(model, processor, family)


def save_tiny(family: str, folder: str | Path, seed: int = 0, **sizes) -> Path:
    """Write a tiny model + processor to ``folder`` (a stand-in for a downloaded checkpoint)."""
    folder = Path(folder)
    model, processor = build_tiny(family, seed, **sizes)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def image_size(family: str, grid: tuple[int, int] = (2, 3), llava_grid: int = 4) -> tuple[int, int]:
    """(height, width) in pixels of an image that gives a (h', w') grid of LM tokens.

    LLaVA's grid is fixed by its config (``llava_grid`` x ``llava_grid``), whatever ``grid`` says.
    """
    if family == "llava":
        return (7 * llava_grid, 7 * llava_grid)
    px = 32 if family == "qwen3_vl" else 28
    return (grid[0] * px, grid[1] * px)


# -- hub-layout checkpoints ------------------------------------------------------------------------
LLAMA_CORPUS_EXTRA = ["USER: <image>\nWhere is the chicken? ASSISTANT: left", "USER: ASSISTANT: right above below"]


def train_llama_tokenizer(vocab_size: int = 700, *, legacy_layout: bool = True) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Llama tokenizer like llava-hf/llava-1.5-7b-hf's, trained offline in milliseconds.

    Same layout as the Llama/LLaVA tokenizer.json: a BPE over "▁"-marked words with byte fallback
    (ids 0-2 ``<unk> <s> </s>``, 3-258 the bytes ``<0x00>``...``<0xFF>``, then the pieces, then the added
    ``<image>`` and ``<pad>``), BOS prepended. ``legacy_layout``: the normalizer Prepend("▁") + Replace(" ", "▁")
    with no pre-tokenizer (what the hub's tokenizer.json holds: " left" alone becomes "▁" "▁left"); else a
    Metaspace pre-tokenizer (prepend_scheme "first"). Saved, it reloads as transformers' ``LlamaTokenizer``.
    """

    from tokenizers import normalizers, processors  # only when building a tokenizer

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trainer_tok.train_from_iterator(_corpus() + LLAMA_CORPUS_EXTRA * 4, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    pieces = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + byte_tokens + [p for p in pieces if p not in byte_tokens])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if legacy_layout:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.add_special_tokens({"pad_token": "<pad>"})
    fast.add_tokens(["<image>"], special_tokens=True)
    fast.chat_template = LLAVA_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def save_hub_layout(family: str, folder: str | Path, seed: int = 0, *, tokenizer: str = "default",
                    max_shard_size: str = "200KB", **sizes) -> Path:
    """A tiny model saved the way the hub ships the real one: bfloat16 weights in several safetensors shards
    (+ model.safetensors.index.json), config.json with dtype bfloat16, chat_template.json,
    preprocessor_config.json (Qwen: the hub's 12.8 MP max_pixels) and the tokenizer files.

    ``tokenizer="sentencepiece"`` (LLaVA only): the Llama SentencePiece-style tokenizer of
    :func:`train_llama_tokenizer` (saved with tokenizer_class LlamaTokenizer), as llava-hf ships it.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer not in ("default", "sentencepiece"):
        raise ValueError(f"tokenizer must be 'default' or 'sentencepiece', got {tokenizer!r}")
    if tokenizer == "sentencepiece":
        if family != "llava":
            raise ValueError("tokenizer='sentencepiece' is LLaVA's (Qwen ships a byte-level BPE)")

        tok = train_llama_tokenizer()
        config = build_config(family, tok, **sizes)
        config.text_config.bos_token_id = tok.bos_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = hf.model_class(family)._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
        processor = build_processor(family, tok, llava_grid=sizes.get("llava_grid", 4))
    else:
        model, processor = build_tiny(family, seed, **sizes)
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size=max_shard_size)
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)  # preprocessor_config.json, as the hub has it
    template = processor.chat_template
    for stale in ("chat_template.jinja", "processor_config.json") if family != "llava" else ("chat_template.jinja",):
        (folder / stale).unlink(missing_ok=True)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    if family != "llava":
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        pre.update(min_pixels=3136, max_pixels=12845056, image_processor_type="Qwen2VLImageProcessor")
        pre["size"] = {"shortest_edge": 3136, "longest_edge": 12845056}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    if tokenizer == "sentencepiece":
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.update(tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False, legacy=False)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return folder
