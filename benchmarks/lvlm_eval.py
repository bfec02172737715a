"""Time and memory per sample of `mmt-ard-eval-lvlm` on one GPU, at LLaVA-1.5-7B's shapes (or another registered
class's, `--lvlm-class`).

A randomly initialised `LlavaForConditionalGeneration` with LLaVA-1.5-7B's configuration (CLIP ViT-L/14 at 336 px,
576 image tokens, a 7B Llama: 32 layers, width 4096) is built on the GPU in bf16 (no download; speed and memory do not
depend on the weights' values), or `--model` loads a real local LVLM. For each batch size and with and without
gradient checkpointing it measures, through the evaluation's own code (`LVLMAdapter`, `text_attack`):

* one attack iteration: the LM cross-entropy of a 12-word reference after the captioning prompt, forward and input
  gradient (the median of `--iters` iterations of `text_attack`), and the CUDA peak memory;
* one greedy caption of 20 new tokens;

and derives the protocol's cost per sample (RobustVLM defaults, one budget): `(max_references + 1 refinement) x
n_iter` attack iterations plus one reply per attack, as an upper bound (samples that reach the stopping score leave
early). Run it twice to see the variation; results go to `--out` as JSON.

    python benchmarks/lvlm_eval.py --out benchmarks/results/lvlm_eval_h200.json        # GPU, a few minutes
    python benchmarks/lvlm_eval.py --shape tiny --batch-sizes 1 2 --iters 2             # the same code on a CPU

Other classes (`--lvlm-class llava_next | llava_onevision | paligemma | idefics3 | smolvlm | gemma3`) are built at
the shapes of a public checkpoint of the class (`FULL_SHAPES`, from its published config.json: reported, not
downloaded here) with random weights and run through `PipelineAdapter`, the class's own image pipeline, at the attack
space `--image-size` (default: a 640x480 COCO-sized image, so the tiling classes cut it into several crops):

    python benchmarks/lvlm_eval.py --lvlm-class idefics3 --batch-sizes 1 2 --out benchmarks/results/lvlm_eval_idefics3_<gpu>.json
    python benchmarks/lvlm_eval.py --lvlm-class gemma3 --shape tiny --batch-sizes 1 --iters 1   # on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

REFERENCE = "a man riding a wave on top of a surfboard in the ocean at sunset"


def llava_7b_config(shape: str):
    """LLaVA-1.5-7B's configuration (`llava-hf/llava-1.5-7b-hf`), or a tiny one of the same structure."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if shape == "7b":
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
        text = LlamaConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            pad_token_id=0,
        )
        return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, image_seq_length=576)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=4
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, image_seq_length=16)


def build(shape: str, model_path: str | None, device: torch.device, dtype: torch.dtype):
    """`(model, processor)`: a local LVLM, or random weights at the chosen shape with a word-level tokenizer."""
    import transformers

    if model_path:
        from mmt_ard.evaluation.lvlm import load_lvlm

        return load_lvlm(model_path, dtype=dtype, device=device)
    from _lvlm_tiny import CHAT_TEMPLATE, build_lvlm_tokenizer

    config = llava_7b_config(shape)
    words = REFERENCE.split() + "provide a short caption for this image .".split()
    tokenizer = build_lvlm_tokenizer(words)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    with torch.device(device):
        model = transformers.LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    side = config.vision_config.image_size
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model.eval(), processor


# per class: the builder's arguments (tower input size, patch size, class-specific token counts), the tower's and the
# language model's config fields at the shape of the public checkpoint named (reported from its config.json)
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
FULL_SHAPES = {
    "llava_next": (  # llava-hf/llava-v1.6-mistral-7b-hf
        dict(image_size=336, patch_size=14),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        dict(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192),
    ),
    "llava_onevision": (  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf (the tower's last layer is not used: 26 kept)
        dict(image_size=384, patch_size=14),
        {**SO400M, "num_hidden_layers": 26},
        dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, max_position_embeddings=32768),
    ),
    "paligemma": (  # google/paligemma-3b-mix-224
        dict(image_size=224, patch_size=14),
        SO400M,
        dict(vocab_size=257216, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
             num_attention_heads=8, num_key_value_heads=1, head_dim=256),
    ),
    "idefics3": (  # HuggingFaceTB/SmolVLM-256M-Instruct's shapes, as an Idefics3 model
        dict(image_size=512, patch_size=16, scale_factor=4, longest_edge=2048),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=8192),
    ),
    "gemma3": (  # google/gemma-3-4b-it
        dict(image_size=896, patch_size=14, tokens_per_image=256),
        SO400M,
        dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
             num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=32768,
             sliding_window=1024),
    ),
}  # fmt: skip
# the same checkpoint as a SmolVLMForConditionalGeneration with SmolVLMProcessor
FULL_SHAPES["smolvlm"] = FULL_SHAPES["idefics3"]


def _rebuilt(config, overrides: dict):
    """The config rebuilt with `overrides` (derived fields such as `head_dim` and `layer_types` recomputed)."""
    data = config.to_dict()
    for derived in ("layer_types", "head_dim"):
        if derived not in overrides:
            data.pop(derived, None)
    data.update(overrides)
    return type(config)(**data)


def build_class(name: str, shape: str, device: torch.device, dtype: torch.dtype):
    """`(model, processor)` of a registered class: the tiny builder of tests/_lvlm_tiny.py at the class's input
    geometry, then (`shape="full"`) the model rebuilt on `device` with the public checkpoint's tower and LM shapes."""
    import _lvlm_tiny as tiny

    builders = {
        "llava_next": lambda **kw: tiny.build_tiny_llava(next_=True, **kw),
        "llava_onevision": tiny.build_tiny_onevision,
        "paligemma": tiny.build_tiny_paligemma,
        "idefics3": tiny.build_tiny_idefics3,
        "smolvlm": lambda **kw: tiny.build_tiny_idefics3(smolvlm=True, **kw),
        "gemma3": tiny.build_tiny_gemma3,
    }
    if shape == "tiny":
        model, processor = tiny.build_tiny_class(name)
        return model.to(device, dtype).eval(), processor
    geometry, vision, text = FULL_SHAPES[name]
    small, processor = builders[name](**geometry)  # a tiny model at the class's input geometry: the processor
    config = small.config
    config.vision_config = _rebuilt(config.vision_config, vision)
    config.text_config = _rebuilt(config.text_config, text)
    with torch.device(device):
        model = type(small)._from_config(config, dtype=dtype)
    return model.eval(), processor


def measure(adapter, batch: int, iters: int, device: torch.device) -> dict:
    from mmt_ard.evaluation.lvlm import text_attack

    h, w = adapter.image_size
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    prompts = [adapter.prompt("Provide a short caption for this image.")] * batch
    refs = [REFERENCE] * batch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    text_attack(adapter, x, prompts, refs, eps=4 / 255, n_iter=1, seed=0, keys=[str(i) for i in range(batch)])  # warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(3):
        sync()
        start = time.perf_counter()
        text_attack(adapter, x, prompts, refs, eps=4 / 255, n_iter=iters, seed=i, keys=[str(j) for j in range(batch)])
        sync()
        # n_iter iterations plus the loss at the start point: n_iter + 1 forward/backward passes
        times.append((time.perf_counter() - start) / (iters + 1))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    sync()
    start = time.perf_counter()
    adapter.generate(x, prompts, 20)
    sync()
    gen = time.perf_counter() - start
    return {
        "batch_size": batch,
        "attack_iteration_s": statistics.median(times),
        "attack_iteration_s_per_sample": statistics.median(times) / batch,
        "generate_20_tokens_s": gen,
        "peak_memory_gib": peak,
    }


def main() -> None:
    from mmt_ard.evaluation.lvlm import LVLMAdapter, LVLMProtocol
    from mmt_ard.evaluation.lvlm.model import PipelineAdapter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["7b", "full", "tiny"], default="7b", help="7b/full: the public shapes")
    parser.add_argument("--lvlm-class", default="llava", choices=["llava", *FULL_SHAPES], help="registered class")
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], help="attack space H W (not llava)")
    parser.add_argument("--model", default=None, help="a local LVLM folder instead of random weights")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--iters", type=int, default=5, help="attack iterations per timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    if args.lvlm_class == "llava":
        model, processor = build("tiny" if args.shape == "tiny" else "7b", args.model, device, dtype)
    else:
        model, processor = build_class(args.lvlm_class, "tiny" if args.shape == "tiny" else "full", device, dtype)
    build_s = time.perf_counter() - start
    proto = LVLMProtocol()
    attacks = proto.max_references + (1 if proto.refine else 0)
    rows = []
    for checkpointing in (False, True):
        if args.lvlm_class == "llava":
            adapter = LVLMAdapter(model, processor, gradient_checkpointing=checkpointing)
        else:
            adapter = PipelineAdapter(
                model, processor, gradient_checkpointing=checkpointing, image_size=tuple(args.image_size)
            )
        for batch in args.batch_sizes:
            try:
                row = measure(adapter, batch, args.iters, device)
            except torch.OutOfMemoryError:
                row = {"batch_size": batch, "out_of_memory": True}
                torch.cuda.empty_cache()
            row["gradient_checkpointing"] = checkpointing
            if "attack_iteration_s" in row:
                iterations = attacks * proto.n_iter * row["attack_iteration_s"]
                row["protocol_s_per_sample_per_eps_upper_bound"] = (
                    iterations + attacks * row["generate_20_tokens_s"]
                ) / batch
            rows.append(row)
            print(json.dumps(row), flush=True)
    from mmt_ard.evaluation.robust_eval import package_versions

    result = {
        "shape": args.model or args.shape,
        "lvlm_class": type(model).__name__,
        "attack_space": adapter.attack_space(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "build_s": build_s,
        "protocol": {"n_iter": proto.n_iter, "attacks_per_sample_per_eps": attacks, "eps": len(proto.eps)},
        "rows": rows,
        "versions": package_versions(),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
