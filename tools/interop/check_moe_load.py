#!/usr/bin/env python3
"""Loads a merged MoE model with real transformers (run under the sid oracle: transformers 5) and
checks it is the reference model.

    check_moe_load.py OUT REFERENCE_DIR EXPECTED_LOGITS.safetensors

AutoModelForCausalLM.from_pretrained(OUT, output_loading_info=True) must report no missing,
unexpected or mismatched keys; its state dict must be torch.equal to the one of
from_pretrained(REFERENCE_DIR) (transformers' own save_pretrained output); and its logits on the
fixed input_ids of EXPECTED_LOGITS must equal those the unsharded model gave when the fixture was
made, and those of the reference model. EXPECTED_LOGITS "-": fixed input ids, and only the
reference model's logits to compare with (checkpoints made by other tools than transformers).
"""
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    out, ref_dir, logits_file = sys.argv[1:4]
    transformers.logging.set_verbosity_error()
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    problems = [f"{k}: {v}" for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                            "mismatched_keys", "error_msgs") and v]
    ref = AutoModelForCausalLM.from_pretrained(ref_dir)
    model.eval()
    ref.eval()
    a, b = model.state_dict(), ref.state_dict()
    if set(a) != set(b):
        problems.append(f"state dict names differ: {sorted(set(a) ^ set(b))[:10]}")
    problems += [f"{k}: loaded value differs from the reference" for k in sorted(set(a) & set(b))
                 if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    if logits_file == "-":
        vocab = ref.config.get_text_config().vocab_size
        saved = {"input_ids": torch.arange(24).reshape(2, 12) * 7 % vocab}
    else:
        saved = load_file(logits_file)
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
        ref_logits = ref(input_ids=saved["input_ids"]).logits
    if not torch.equal(logits, ref_logits):
        problems.append(f"logits differ from the reference model's: max abs diff "
                        f"{(logits - ref_logits).abs().max().item():g}")
    if "logits" in saved and not torch.equal(logits, saved["logits"]):
        problems.append(f"logits differ from the unsharded model's at fixture time: max abs diff "
                        f"{(logits - saved['logits']).abs().max().item():g}")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{type(model).__name__} loads from {out} with no missing/unexpected keys; {len(a)} "
          f"parameters equal to the reference; logits {tuple(logits.shape)} identical "
          f"(transformers {transformers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
