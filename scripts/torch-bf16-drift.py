#!/usr/bin/env python3
"""How far transformers itself drifts in bf16 on the committed tiny fixtures.

The bf16 tolerances of the GPU parity tests (tests/gpu_parity.rs, the `gpu_*_bf16` tests of
tests/mllama_parity.rs and tests/judges_parity.rs) are set above what this prints: the same
checkpoints run by transformers with `model.to(torch.bfloat16)` and compared, with the tests'
own error measures, against the f32 references the fixtures record —

  - first-step logits (and classifier logits): max |bf16 - ref| / max |ref| per case;
  - greedy decoding: the largest recorded top-2 margin at which bf16 picks another token than
    the f32 reference did (tokens at larger margins must agree; below it they may legitimately flip).

A random-weight tiny model is chaotic in bf16, so these are far from bf16's 2^-9 rounding.

    /work/main/tools/fixtures/.venv/bin/python scripts/torch-bf16-drift.py
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def llava(name: str) -> None:
    from transformers import LlavaForConditionalGeneration

    d = ROOT / name
    r = json.load(open(d / "reference.json"))
    t = load_file(str(d / "reference.safetensors"))
    model = LlavaForConditionalGeneration.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32)
    model = model.eval().to(torch.bfloat16)
    embed, proj = model.model.language_model.embed_tokens, model.model.multi_modal_projector
    worst_logits = worst_vision = flip = 0.0
    with torch.no_grad():
        for img in ("square", "wide"):
            if f"hidden.{img}.0" not in t:
                continue
            hs = model.model.vision_tower(t[f"pixel_values.{img}"].to(torch.bfloat16)[None], output_hidden_states=True)
            for layer, h in enumerate(hs.hidden_states):
                worst_vision = max(worst_vision, rel(h[0], t[f"hidden.{img}.{layer}"]))
        for c in r["cases"]:
            px = t[f"pixel_values.{c['image']}"].to(torch.bfloat16)
            h = model.model.vision_tower(px[None], output_hidden_states=True).hidden_states[c["resolved_layer"]][0]
            feats = proj(h[1:] if r["vision_feature_select_strategy"] == "default" else h)
            ids = torch.tensor(c["prompt_ids"])
            seq = embed(ids).clone()
            seq[ids == r["image_token_id"]] = feats
            for step, want in enumerate(c["token_ids"]):
                out = model.model.language_model(inputs_embeds=seq[None], use_cache=False)
                logits = model.lm_head(out.last_hidden_state)[0, -1].float()
                if step == 0:
                    worst_logits = max(worst_logits, rel(logits, t[c["logits"]]))
                got = int(torch.argmax(logits))
                if got != want:
                    flip = max(flip, c["margins"][step])
                    break
                seq = torch.cat([seq, embed(torch.tensor([got]))], 0)
    print(f"{name}: vision {worst_vision:.3e}, first-step logits {worst_logits:.3e}, largest flipping margin {flip:.3f}")


def classifier(name: str) -> None:
    from transformers import AutoModelForSequenceClassification

    d = ROOT / "judges" / name
    r = json.load(open(d / "reference.json"))
    model = AutoModelForSequenceClassification.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    model = model.eval().to(torch.bfloat16)
    worst = 0.0
    with torch.no_grad():
        for c in r["cases"]:
            logits = model(input_ids=torch.tensor([c["input_ids"]])).logits[0]
            worst = max(worst, rel(logits, torch.tensor(c["logits"])))
    print(f"{name}: logits {worst:.3e}")


def guard(name: str, vision: bool) -> None:
    d = ROOT / "judges" / name
    r = json.load(open(d / "reference.json"))
    t = load_file(str(d / "reference.safetensors"))
    if vision:
        from transformers import AutoProcessor, MllamaForConditionalGeneration

        model = MllamaForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
        processor = AutoProcessor.from_pretrained(str(d))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    model = model.eval().to(torch.bfloat16)
    worst = flip = 0.0
    with torch.no_grad():
        for c in r["cases"]:
            if vision:
                user = ([{"type": "image", "path": str((d / c["image"]).resolve())}] if c["image"] else []) + [
                    {"type": "text", "text": c["prompt"]}
                ]
                msgs = [{"role": "user", "content": user}]
                if c["response"] is not None:
                    msgs.append({"role": "assistant", "content": [{"type": "text", "text": c["response"]}]})
                enc = processor.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt")
                if "pixel_values" in enc:
                    enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
                assert enc["input_ids"][0].tolist() == c["input_ids"]
            else:
                enc = {"input_ids": torch.tensor([c["input_ids"]])}
            gen = model.generate(**enc, do_sample=False, max_new_tokens=len(c["generated"]), output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=0)
            worst = max(worst, rel(gen.scores[0][0], t[c["logits"]]))
            tokens = gen.sequences[0, len(c["input_ids"]):].tolist()
            for step, want in enumerate(c["generated"]):
                if step >= len(tokens) or tokens[step] != want:
                    flip = max(flip, c["margins"][step])
                    break
    print(f"{name}: first-step logits {worst:.3e}, largest flipping margin {flip:.3f}")


if __name__ == "__main__":
    for n in ("llava-tiny", "llava-tiny-gqa"):
        llava(n)
    for n in ("gpt2-reward-tiny", "bert-toxic-tiny", "roberta-toxic-tiny"):
        classifier(n)
    guard("llama-guard-tiny", vision=False)
    guard("llama-guard-vision-tiny", vision=True)
