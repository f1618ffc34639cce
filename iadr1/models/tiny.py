"""Random tiny checkpoints of each family, built offline in about a second, for tests and the CPU demo.

A tiny checkpoint is a real `save_pretrained` folder (config, safetensors, tokenizer, processor, chat
template) that transformers and vLLM load exactly like a hub checkpoint of the family: same model class,
same processor classes, the family's real chat template and special tokens.
Only the sizes are tiny and the weights random.

    path = build_tiny("qwen2_vl", "/tmp/tiny-qwen2vl")   # about 1 s, under 3 MB

Constraints that shape the defaults (ENVIRONMENT.md): vLLM's CPU attention needs a head_dim in
{32, 64, 80, 96, 112, 128}; Qwen's M-RoPE sections must sum to head_dim / 2; LLaVA-OneVision's SigLIP
weights must be saved as `vision_tower.vision_model.*` for vLLM. The method's tags (`<think>`, `<answer>`,
...) stay plain text.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from iadr1.errors import ConfigError

TINY_FAMILIES: tuple[str, ...] = (
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "llava_next", "llava_onevision", "internvl",
)  # fmt: skip

# 56x56 .. 112x112 px: 4 to 16 image tokens per image for the Qwen families (14 px patches merged 2x2).
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
# Fixed-resolution vision towers (CLIP / SigLIP): 28 px images, 14 px patches, 4 patches per image.
_TINY_IMAGE_SIZE = 28
_PATCH = 14

# ------------------------------------------------------------------------------------------------------------
# Chat templates: the families' real ones, as shipped with Qwen/Qwen2-VL-2B-Instruct (Qwen2.5-VL uses the
# same), llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf and
# llava-hf/llava-onevision-qwen2-0.5b-si-hf.
# Note: the LLaVA templates render all images of a turn first, then all text (the families were trained so).
# ------------------------------------------------------------------------------------------------------------
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ "
    "message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}"
    ": "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value "
    "+ 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_en"
    "d|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% "
    "endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% "
    "endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}"
    "}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% "
    "endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') "
    "%}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '<\\s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% "
    "endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + "
    "content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# InternVL3 (OpenGVLab/InternVL3-1B-hf): ChatML, one `<IMG_CONTEXT>` marker per image, which the processor
# expands to `<img>` + 256 x tiles `<IMG_CONTEXT>` + `</img>` (here 4 per tile).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_LLAMA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_ONEVISION_SPECIALS = [*_QWEN_SPECIALS[:3], "<image>", "<video>"]
_INTERNVL_SPECIALS = [*_QWEN_SPECIALS[:3], "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
# InternVL's tiles: 56 px (4 x 4 patches of 14, pixel-shuffled by 0.5 to 4 tokens); up to 4 tiles and a thumbnail.
_INTERNVL_TILE = 56
_INTERNVL_MAX_TILES = 4


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------
_WORDS = [
    "yes",
    "no",
    "Yes",
    "No",
    "the",
    "a",
    "an",
    "image",
    "images",
    "query",
    "test",
    "reference",
    "normal",
    "sample",
    "template",
    "defect",
    "defects",
    "anomaly",
    "anomalies",
    "any",
    "are",
    "there",
    "is",
    "in",
    "of",
    "on",
    "at",
    "to",
    "and",
    "with",
    "without",
    "compare",
    "inspection",
    "surface",
    "structural",
    "expert",
    "scratch",
    "stain",
    "dirt",
    "hole",
    "crack",
    "dent",
    "contamination",
    "foreign",
    "object",
    "debris",
    "missing",
    "part",
    "notch",
    "gap",
    "chip",
    "deformation",
    "bent",
    "warping",
    "damage",
    "breakage",
    "fracture",
    "abrasion",
    "wear",
    "mark",
    "color",
    "texture",
    "fabric",
    "metal",
    "wood",
    "leather",
    "tile",
    "carpet",
    "grid",
    "screw",
    "bottle",
    "cable",
    "pill",
    "capsule",
    "transistor",
    "zipper",
    "top",
    "bottom",
    "left",
    "right",
    "upper",
    "lower",
    "center",
    "middle",
    "corner",
    "edge",
    "region",
    "area",
    "small",
    "large",
    "thin",
    "long",
    "dark",
    "bright",
    "line",
    "spot",
    "shape",
    "I",
    "see",
    "looks",
    "appears",
    "clean",
    "uniform",
    "following",
    "which",
    "can",
    "be",
    "used",
    "as",
    "compare",
    "being",
    "queried",
    "please",
    "answer",
    "by",
    "directly",
    "you",
    "your",
    "task",
    "detect",
    "if",
    "system",
    "user",
    "assistant",
    "helpful",
    "think",
    "location",
    "type",
    "A",
    "B",
]
_TAGS = ("<think>", "</think>", "<location>", "</location>", "<type>", "</type>", "<answer>", "</answer>")


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred sentences in the method's vocabulary, so the tags and yes/no get compact tokens."""
    rng = random.Random(seed)
    out = [
        "<think>The surface looks uniform.</think><answer>No</answer>",
        "<think>A dark line at the top left.</think><location>top left</location><type>scratch</type>"
        "<answer>Yes</answer>",
        "Are there any defects in the query image? Please answer by yes or no.",
    ]
    for _ in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        tag = rng.choice(_TAGS[::2])
        out.append(f"{tag}{words}{tag.replace('<', '</')}" if rng.random() < 0.5 else words.capitalize() + ".")
    return out


def _build_tokenizer(specials: list[str], vocab_size: int, seed: int, corpus: Sequence[str] = (), **named: str):
    """A byte-level BPE tokenizer (trained here) wrapped in `PreTrainedTokenizerFast`, specials first.

    `corpus`: extra training texts (e.g. the demo's answers, which then take far fewer tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_corpus(seed=seed), *corpus], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in named.values()]})
    return fast


# ------------------------------------------------------------------------------------------------------------
# Per-family builders
# ------------------------------------------------------------------------------------------------------------
def _text_kwargs(hidden_size: int, num_layers: int, vocab_size: int) -> dict:
    heads = max(1, hidden_size // 64)  # head_dim 64: accepted by vLLM's CPU attention
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 4096,
    }


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen M-RoPE (temporal, height, width) sections summing to head_dim / 2, in the published 2:3:3 "
    "proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _build_qwen(
    family: str,
    hidden_size: int,
    num_layers: int,
    vocab: int,
    seed: int,
    corpus: Sequence[str] = (),
    vision: dict | None = None,
):
    from transformers import Qwen2VLImageProcessor

    v = {"depth": None, "dim": 64, "patch_size": _PATCH, **(vision or {})}
    vis_dim, patch = int(v["dim"]), int(v["patch_size"])

    tok = _build_tokenizer(_QWEN_SPECIALS, vocab, seed, corpus, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = _text_kwargs(hidden_size, num_layers, len(tok))
    head_dim = hidden_size // text["num_attention_heads"]
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1e6,
        "mrope_section": _mrope_section(head_dim),
    }
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }
    heads = max(2, vis_dim // 32)  # heads of 32
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
        min_pixels=TINY_MIN_PIXELS,
        max_pixels=TINY_MAX_PIXELS,
        patch_size=patch,
    )
    # The towers of Qwen2.5-VL and Qwen3-VL share these options (an MLP width, a merger to the text width).
    later_tower = {
        "depth": v["depth"] or 2,
        "hidden_size": vis_dim,
        "intermediate_size": vis_dim * 2,
        "num_heads": heads,
        "out_hidden_size": hidden_size,
        "patch_size": patch,
    }
    if family == "qwen2_vl":
        from transformers import (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )

        vision = {
            "depth": v["depth"] or 1,
            "embed_dim": vis_dim,
            "hidden_size": hidden_size,
            "num_heads": heads,
            "mlp_ratio": 2,
            "patch_size": patch,
        }
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls, video_cls = (
            Qwen2VLForConditionalGeneration,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        import transformers
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        # Qwen3-VL: learned absolute position embeddings in the tower (bilinearly interpolated to each image's
        # patch grid; here one per patch of a 112 px image), interleaved M-RoPE in the language model, deep-stack
        # features of the first block added to the first language-model layer, q/k norms, head_dim 64. The MoE
        # variant (Qwen3-VL-30B-A3B, 235B-A22B) has the same tower and processor; its MLPs are 4 experts, 2 per token.
        grid = -(-112 // patch)
        vision = {**later_tower, "num_position_embeddings": grid * grid, "deepstack_visual_indexes": [0]}
        text["head_dim"] = head_dim
        text["rope_parameters"] = {**text["rope_parameters"], "rope_theta": 5e6, "mrope_interleaved": True}
        moe = family == "qwen3_vl_moe"
        if moe:
            # Qwen3's MoE renormalises the top-k router weights: vLLM 0.32 reads `norm_topk_prob`, which transformers
            # 5.19's config class does not declare (it is kept as an extra attribute, and saved).
            text.update(
                num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size // 2, decoder_sparse_step=1,
                norm_topk_prob=True,
            )  # fmt: skip
        name = "Qwen3VLMoe" if moe else "Qwen3VL"
        config = getattr(transformers, f"{name}Config")(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls, video_cls = (
            getattr(transformers, f"{name}ForConditionalGeneration"),
            Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )
    else:
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLVideoProcessor,
        )

        depth = later_tower["depth"]
        vision = {**later_tower, "fullatt_block_indexes": [depth - 1], "window_size": 4 * patch}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls, video_cls = (
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLVideoProcessor,
        )
    video_processor = video_cls(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
        min_pixels=TINY_MIN_PIXELS,
        max_pixels=TINY_MAX_PIXELS,
        patch_size=patch,
    )
    processor = proc_cls(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return model_cls(config), processor, tok


def _clip_like(kind: str, hidden_size: int) -> dict:
    """A one-layer CLIP/SigLIP vision tower on 28 px images (4 patches), two heads of 32."""
    extra = {"vision_use_head": False} if kind.startswith("siglip") else {}  # LLaVA-OV uses patch features only
    return {
        **extra,
        "model_type": kind,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": _TINY_IMAGE_SIZE,
        "patch_size": _PATCH,
        "projection_dim": 64,
    }


def _build_llava(family: str, hidden_size: int, num_layers: int, vocab: int, seed: int, corpus: Sequence[str] = ()):
    named = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    tok = _build_tokenizer(_LLAMA_SPECIALS, vocab, seed, corpus, **named)
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in _LLAMA_SPECIALS}
    text = {
        "model_type": "llama" if family == "llava" else "mistral",
        **_text_kwargs(hidden_size, num_layers, len(tok)),
    }
    text.update(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    if family == "llava_next":
        text["sliding_window"] = None  # LLaVA-1.6-Mistral attends over the full context
    size = {"shortest_edge": _TINY_IMAGE_SIZE}
    crop = {"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE}
    common = {
        "text_config": text,
        "vision_config": _clip_like("clip_vision_model", hidden_size),
        "image_token_index": ids["<image>"],
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -1,
        "tie_word_embeddings": False,
        "pad_token_id": ids["<pad>"],
    }
    if family == "llava":
        from transformers import (
            CLIPImageProcessor,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        config = LlavaConfig(image_seq_length=(_TINY_IMAGE_SIZE // _PATCH) ** 2, **common)
        image_processor = CLIPImageProcessor(size=size, crop_size=crop)
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        return LlavaForConditionalGeneration(config), processor, tok

    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(image_grid_pinpoints=pinpoints, image_seq_length=4, **common)
    image_processor = LlavaNextImageProcessor(size=size, crop_size=crop, image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE,
    )
    return LlavaNextForConditionalGeneration(config), processor, tok


def _build_onevision(hidden_size: int, num_layers: int, vocab: int, seed: int, corpus: Sequence[str] = ()):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = _build_tokenizer(_ONEVISION_SPECIALS, vocab, seed, corpus, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in _ONEVISION_SPECIALS}
    text = {"model_type": "qwen2", **_text_kwargs(hidden_size, num_layers, len(tok))}
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=_clip_like("siglip_vision_model", hidden_size),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"],
    )
    size = {"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints)
    video_processor = LlavaOnevisionVideoProcessor(size=size)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        num_image_tokens=(_TINY_IMAGE_SIZE // _PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor, tok


def _build_internvl(hidden_size: int, num_layers: int, vocab: int, seed: int, corpus: Sequence[str] = ()):
    """InternVL3 in the transformers format (`model_type: internvl`): an InternViT tower, the pixel-shuffle MLP
    projector and a Qwen2 language model, with the GotOcr2 tiling image processor of the `-hf` checkpoints."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}  # fmt: skip
    tok = _build_tokenizer(
        _INTERNVL_SPECIALS, vocab, seed, corpus, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=named,
    )  # fmt: skip
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in _INTERNVL_SPECIALS}
    text = {"model_type": "qwen2", **_text_kwargs(hidden_size, num_layers, len(tok))}
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    tokens_per_tile = (_INTERNVL_TILE // _PATCH) ** 2 // 4  # pixel shuffle by 0.5 in both directions
    config = InternVLConfig(
        vision_config={
            "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 128,
            "image_size": [_INTERNVL_TILE, _INTERNVL_TILE], "patch_size": [_PATCH, _PATCH],
        },
        text_config=text,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )  # fmt: skip
    size = {"height": _INTERNVL_TILE, "width": _INTERNVL_TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size, crop_to_patches=True, min_patches=1, max_patches=_INTERNVL_MAX_TILES
        ),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return InternVLForConditionalGeneration(config), processor, tok


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
def build_tiny(
    family: str,
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    vocab_size: int = 600,
    seed: int = 0,
    corpus: Sequence[str] = (),
    vision_depth: int | None = None,
    vision_dim: int = 64,
    patch_size: int = _PATCH,
) -> Path:
    """Build a random tiny checkpoint of `family` into `out_dir` and return the folder.

    `hidden_size` must be a multiple of 64 (attention heads of 64, which vLLM's CPU kernels accept). The
    result is checked by loading it back through `from_pretrained`. Same seed, same weights.
    `corpus`: extra texts the tokenizer is trained on besides its generic corpus (the demo passes its training
    answers, so that they take fewer tokens).
    `vision_depth`, `vision_dim`, `patch_size` (Qwen families only): the vision tower's blocks (default 1 for
    Qwen2-VL, 2 for Qwen2.5-VL), width (a multiple of 32) and patch side in pixels; smaller patches see finer
    detail at the cost of more image tokens (the demo uses 7 px patches: docs/demo.md).
    """
    import torch
    from transformers import GenerationConfig

    from iadr1.models.registry import get_family

    fam = get_family(family)
    if fam.name not in TINY_FAMILIES:
        raise ConfigError(f"no tiny builder for family {fam.name!r}; available: {', '.join(TINY_FAMILIES)}")
    if hidden_size % 64 or hidden_size <= 0:
        raise ConfigError(f"hidden_size must be a positive multiple of 64, got {hidden_size}")
    if num_layers < 1:
        raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
    vision = {"depth": vision_depth, "dim": vision_dim, "patch_size": patch_size}
    if (vision_depth, vision_dim, patch_size) != (None, 64, _PATCH):
        if not fam.dynamic_resolution:  # a fixed-size CLIP/SigLIP tower: its patch grid is not ours to shape
            raise ConfigError(f"vision_depth/vision_dim/patch_size are for the Qwen families, not {fam.name}")
        if vision_dim % 32 or vision_dim <= 0 or patch_size < 2 or (vision_depth is not None and vision_depth < 1):
            raise ConfigError(
                f"bad vision tower: depth {vision_depth}, dim {vision_dim} (a multiple of 32), "
                f"patch {patch_size} (>= 2)"
            )

    torch.manual_seed(seed)
    if fam.dynamic_resolution:
        model, processor, tok = _build_qwen(fam.name, hidden_size, num_layers, vocab_size, seed, corpus, vision)
    elif fam.name in ("llava", "llava_next"):
        model, processor, tok = _build_llava(fam.name, hidden_size, num_layers, vocab_size, seed, corpus)
    elif fam.name == "internvl":
        model, processor, tok = _build_internvl(hidden_size, num_layers, vocab_size, seed, corpus)
    else:
        model, processor, tok = _build_onevision(hidden_size, num_layers, vocab_size, seed, corpus)

    eos = tok.convert_tokens_to_ids(tok.eos_token)
    pad = tok.convert_tokens_to_ids(tok.pad_token)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=tok.bos_token_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(out)
    processor.save_pretrained(out)
    if fam.name == "llava_onevision":
        _nest_siglip_weights(out)
    _check_loads(out, fam.model_class)
    return out


def _nest_siglip_weights(out: Path) -> None:
    """Rename `...vision_tower.X` to `...vision_tower.vision_model.X` in the saved weights.

    transformers 5.19 saves LLaVA-OneVision's SigLIP tower without the `vision_model` level that hub
    checkpoints (and vLLM's loader) use; transformers reads both spellings, vLLM only the hub one.
    """
    from safetensors.torch import load_file, save_file

    for f in out.glob("*.safetensors"):
        tensors = load_file(f)
        renamed = {}
        for k, v in tensors.items():
            if "vision_tower." in k and "vision_tower.vision_model." not in k:
                k = k.replace("vision_tower.", "vision_tower.vision_model.", 1)
            renamed[k] = v
        save_file(renamed, f, metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.exists():  # not written for a single small file, but keep the index consistent if it is
        data = json.loads(index.read_text())
        data["weight_map"] = {
            (k.replace("vision_tower.", "vision_tower.vision_model.", 1) if "vision_model." not in k else k): v
            for k, v in data["weight_map"].items()
        }
        index.write_text(json.dumps(data, indent=2))


def _check_loads(out: Path, model_class: str) -> None:
    """Load the folder back with the family's class and processor, so a broken build fails here, not in a "
    "test."""
    import transformers

    from iadr1.models.loading import load_processor

    load_processor(out)
    cls = getattr(transformers, model_class)
    _, info = cls.from_pretrained(out, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k]
    if missing:
        raise RuntimeError(f"tiny checkpoint {out} reloads with missing weights: {sorted(missing)[:5]}")
