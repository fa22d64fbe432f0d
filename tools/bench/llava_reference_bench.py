#!/usr/bin/env python3
"""transformers' side of `icet bench`: the same stages, shapes and counting rules, so that the two
are compared in one run on one machine (the GPU check script runs both).

  make DIR [--shape llava-7b|small|vitb-llama768|tiny] [--text-layers N] [--dtype bf16|f32]
      A random-weight LlavaForConditionalGeneration with LLaVA-1.5-7B's shapes (CLIP ViT-L/14-336,
      Llama-2-7B width) and N text layers (the full 32 need 14 GB; per-layer costs scale), saved as
      safetensors with the fixtures' tokenizer (its `<image>` id becomes image_token_index). No
      download: the GPU machines have no network. `small` is LLaVA at an eighth of the width (CPU-sized);
      `vitb-llama768` with --text-layers 8 is the 0.19 G-parameter CPU shape (ViT-B/14 at 224 px,
      768-wide Llama with GQA and a 32k vocabulary).
  bench DIR --device cuda|cpu [--dtype bf16] [--vision-batches 1,8] [--batch-sizes 1,8,32]
        [--new-tokens 32] [--repeat 3] [--threads N] [--out FILE]
      vision: N images, every hidden state (output_hidden_states), the projector on each (what a
      sweep over every layer does per image);
      prefill: B copies of the llava-v1 prompt to the first logits (one forward, cache built),
      less the vision pass at the default layer that transformers runs inside it;
      decode: generate(min_new_tokens = max_new_tokens = --new-tokens), each step timed by a
      stopping criterion that synchronises; the median step from the third token on.
      Medians of --repeat after a warm-up, synchronised. Prints one row per stage like icet bench
      and writes JSON.

Run with the fixtures venv here (tools/fixtures/.venv) or the GPU machine's python.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "llava-tiny"
LLAVA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{prompt} ASSISTANT:")

SHAPES = {
    "llava-7b": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        text=dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                  vocab_size=32064, max_position_embeddings=4096),
    ),
    "small": dict(  # CPU-sized: the same structure at an eighth of the width
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                    image_size=224, patch_size=14, projection_dim=256, hidden_act="quick_gelu"),
        text=dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=8,
                  vocab_size=32064, max_position_embeddings=2048),
    ),
    # The 0.19 G-parameter shape of issue 15: CLIP ViT-B (768 wide, 12 layers, 12 heads) at 224 px
    # with 14-pixel patches (257 tokens), a 768-wide 8-layer Llama with grouped-query attention
    # (12 query heads over 4 key/value heads) and a 32k vocabulary. Use --text-layers 8.
    "vitb-llama768": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        text=dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12, num_key_value_heads=4,
                  vocab_size=32064, max_position_embeddings=2048),
    ),
    "tiny": dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    image_size=56, patch_size=14, projection_dim=64, hidden_act="quick_gelu"),
        text=dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4,
                  vocab_size=600, max_position_embeddings=512),
    ),
}


def make(args) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    out = Path(args.dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shape = SHAPES[args.shape]
    tiny = json.loads((TINY / "config.json").read_text())
    image_id = tiny["image_token_index"]
    text = LlamaConfig(num_hidden_layers=args.text_layers, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=tiny["pad_token_id"], **shape["text"])
    config = LlavaConfig(vision_config=CLIPVisionConfig(**shape["vision"]).to_dict(), text_config=text.to_dict(),
                         image_token_index=image_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=tiny["pad_token_id"])
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    start = time.time()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "processor_config.json"]:
        shutil.copy(TINY / f, out / f)
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    size = shape["vision"]["image_size"]
    pre.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    params = sum(p.numel() for p in model.parameters())
    print(f"made {out}: {args.shape} with {args.text_layers} text layers, {params / 1e9:.2f} G parameters, "
          f"{args.dtype}, {time.time() - start:.1f} s", file=sys.stderr)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, repeat: int, fn) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flop_model(config) -> dict:
    """The counting rules of `icet bench` (crates/probe-cli/src/bench.rs, FlopModel)."""
    v, t = config.vision_config, config.text_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    d, inter = v.hidden_size, v.intermediate_size
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inter) + 4 * tokens * tokens * d
    h, ti = t.hidden_size, t.intermediate_size
    hd = getattr(t, "head_dim", None) or h // t.num_attention_heads
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    slots = tokens - 1
    layer_weights = h * (q + 2 * kv) + q * h + 3 * h * ti
    return {
        "vision_per_image": 2 * (tokens - 1) * 3 * v.patch_size ** 2 * d + v.num_hidden_layers * per_layer
        + (v.num_hidden_layers + 1) * 2 * slots * (d * h + h * h),
        "text_linear_per_token": 2 * t.num_hidden_layers * layer_weights,
        "text_attention_per_pair": 4 * t.num_hidden_layers * q,
        "lm_head": 2 * h * t.vocab_size,
        "text_weight_elements": t.num_hidden_layers * layer_weights + h * t.vocab_size,
    }


def step_clock_class():
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        """Called once per generated token, after its logits: the time between calls is one step."""

        def __init__(self, device: str):
            self.device = device
            self.stamps = []

        def __call__(self, input_ids, scores, **kwargs):
            sync(self.device)
            self.stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepClock


@torch.no_grad()
def bench(args) -> None:
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration, StoppingCriteriaList

    StepClock = step_clock_class()
    if args.threads:
        # Intra-op threads (the GEMMs and attention); inter-op parallelism is unused in eager mode.
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    dev = args.device
    model = LlavaForConditionalGeneration.from_pretrained(args.dir, dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    processor = AutoProcessor.from_pretrained(args.dir)
    image = Image.open(args.image).convert("RGB")
    flops = flop_model(model.config)
    rows = []
    for n in args.vision_batches:
        px = processor.image_processor([image] * n, return_tensors="pt")["pixel_values"].to(dev, dtype)

        def vision():
            out = model.model.vision_tower(px, output_hidden_states=True)
            return [model.model.multi_modal_projector(h[:, 1:]) for h in out.hidden_states]

        s = timed(dev, args.repeat, vision)
        rows.append(dict(stage="vision", batch=n, seconds=s, throughput=n / s, unit="images/s",
                         tflops=n * flops["vision_per_image"] / s / 1e12))
    text = LLAVA_V1.format(prompt=args.prompt)
    for b in args.batch_sizes:
        enc = processor(images=[image] * b, text=[text] * b, return_tensors="pt").to(dev)
        enc["pixel_values"] = enc["pixel_values"].to(dtype)
        length = enc["input_ids"].shape[1]

        # Both stages include the vision pass at the default layer, as icet's generate does not:
        # it is measured above and subtracted here so the stages compare like for like.
        px = enc["pixel_values"]
        vis = timed(dev, args.repeat, lambda: model.get_image_features(pixel_values=px))

        def prefill():
            return model(**enc, use_cache=True, logits_to_keep=1)

        p = max(timed(dev, args.repeat, prefill) - vis, 1e-9)
        steps = []
        for _ in range(args.repeat + 1):
            clock = StepClock(dev)
            model.generate(**enc, do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           pad_token_id=model.config.pad_token_id, stopping_criteria=StoppingCriteriaList([clock]))
            # stamps[k] ends token k+1; decode steps are the gaps from token 2 on.
            steps += [t1 - t0 for t0, t1 in zip(clock.stamps[1:], clock.stamps[2:])]
        step = statistics.median(steps)
        pairs = length * (length + 1) // 2
        prefill_flops = b * (length * flops["text_linear_per_token"] + pairs * flops["text_attention_per_pair"]
                             + flops["lm_head"])
        ctx = length + args.new_tokens // 2
        step_flops = b * (flops["text_linear_per_token"] + ctx * flops["text_attention_per_pair"] + flops["lm_head"])
        rows.append(dict(stage="prefill", batch=b, seconds=p, throughput=b * length / p, unit="tokens/s",
                         tflops=prefill_flops / p / 1e12))
        rows.append(dict(stage="decode", batch=b, seconds=step, throughput=b / step, unit="tokens/s",
                         tflops=step_flops / step / 1e12,
                         weight_gbps=flops["text_weight_elements"] * torch.finfo(dtype).bits / 8 / step / 1e9))
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {name}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, prompt {length} tokens, median of {args.repeat}")
    for r in rows:
        gbps = f"{r['weight_gbps']:.1f}" if "weight_gbps" in r else ""
        print(f"REF {r['stage']:<8} {r['batch']:>6} {r['seconds'] * 1e3:>9.3f} ms {r['throughput']:>9.1f} {r['unit']:<9} "
              f"{r['tflops']:>10.4f} {gbps:>12}")
    if args.out:
        Path(args.out).write_text(json.dumps({"reference": "transformers", "device": name, "dtype": args.dtype,
                                              "threads": torch.get_num_threads(),
                                              "prompt_tokens": length, "flops": flops, "measurements": rows},
                                             indent=1) + "\n")


def compare(args) -> None:
    """Rows of `icet bench --out` beside the reference's: icet / transformers throughput."""
    ours = {(m["stage"], m["batch"]): m for m in json.loads(Path(args.icet).read_text())["measurements"]}
    ref = {(m["stage"], m["batch"]): m for m in json.loads(Path(args.reference).read_text())["measurements"]}
    print(f"{'stage':<8} {'batch':>6} {'icet':>14} {'transformers':>14} {'ratio':>7}  unit")
    for key in sorted(set(ours) & set(ref), key=lambda k: (["vision", "prefill", "decode"].index(k[0]), k[1])):
        o, r = ours[key], ref[key]
        print(f"RATIO {key[0]:<8} {key[1]:>6} {o['throughput']:>14.1f} {r['throughput']:>14.1f} "
              f"{o['throughput'] / r['throughput']:>7.2f}  {o['unit']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--shape", choices=sorted(SHAPES), default="llava-7b")
    m.add_argument("--text-layers", type=int, default=4)
    m.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    b = sub.add_parser("bench")
    b.add_argument("dir")
    b.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    b.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    b.add_argument("--image", default=str(REPO / "demo" / "images" / "checker.png"))
    b.add_argument("--prompt", default="Describe the image in detail.")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    b.add_argument("--vision-batches", type=ints, default=[1, 4])
    b.add_argument("--batch-sizes", type=ints, default=[1, 8, 32])
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    b.add_argument("--out")
    c = sub.add_parser("compare")
    c.add_argument("icet")
    c.add_argument("reference")
    args = p.parse_args()
    {"make": make, "bench": bench, "compare": compare}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
