"""Time and memory per sample of `mmt-ard-eval-lvlm` on one GPU, at LLaVA-1.5-7B's shapes.

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

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--model", default=None, help="a local LVLM folder instead of random weights")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--iters", type=int, default=5, help="attack iterations per timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    model, processor = build(args.shape, args.model, device, dtype)
    build_s = time.perf_counter() - start
    proto = LVLMProtocol()
    attacks = proto.max_references + (1 if proto.refine else 0)
    rows = []
    for checkpointing in (False, True):
        adapter = LVLMAdapter(model, processor, gradient_checkpointing=checkpointing)
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
