#!/usr/bin/env python3
"""Loads a Megatron checkpoint that ckptstream wrote (convert --to megatron) into real
megatron-core models, the referee of the writer:

  1. Megatron-LM's own load_checkpoint (what `--load` does in training) into a GPTModel built at
     the layout of CASE (which may differ from the layout the checkpoint was written for: torch_dist
     reshards), with the default strictness;
  2. for torch_dist also dist_checkpointing.load(model.sharded_state_dict(), DIR) directly, with
     the default strictness (every key the model asks for, at its exact global shape);
  3. every parameter of the loaded model compared bit for bit with a model mbridge filled from the
     Hugging Face weights (the mapping users run today); padded vocabulary rows must be zero.

    tools/oracle-run.sh --suite sid --bind /work/main --bind OUT -- env \
        PYTHONPATH=/opt/mlm:/opt/mbridge python3 tools/interop/load_megatron_checkpoint.py \
        SAVE_DIR HF_DIR '{"family": "qwen2", "fmt": "torch_dist", "tp": 2}' [--divisor 16]

SAVE_DIR holds latest_checkpointed_iteration.txt (convert's --layout megatron-lm). Runs on CPU
with gloo and the local layer spec (../shared/oracle/megatron.md); not run by CI.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import make_megatron_fixtures as mmf  # noqa: E402  (stubs the triton-only modules first)
import torch  # noqa: E402


def world_of(case):
    tp, pp = case.get("tp", 1), case.get("pp", 1)
    dp = max(1, case.get("ep", 1) * case.get("etp", 1) // tp)
    return tp * pp * dp


def worker(rank, world, case, save_dir, hf_dir, divisor, result_file):
    mmf._DIVISIBLE_BY = divisor
    import transformers
    from megatron.core import dist_checkpointing, parallel_state as mpu, tensor_parallel
    from megatron.training import global_vars
    from megatron.training import checkpointing
    from megatron.training.checkpointing import load_checkpoint

    def read_tracker(path):  # a CPU stand-in: the original all-reduces a CUDA tensor
        text = open(path).read().strip()
        return (0, True) if text == "release" else (int(text), False)

    checkpointing.read_metadata = read_tracker

    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    case = dict(case, world=world)
    args = mmf._megatron_args(case, hf_config, tempfile.mkdtemp())
    args.load = save_dir
    args.no_load_optim = True
    args.no_load_rng = True
    global_vars.set_args(args)
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator

    init_num_microbatches_calculator(rank, None, args.global_batch_size, args.micro_batch_size,
                                     args.data_parallel_size)
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=case.get("tp", 1),
        pipeline_model_parallel_size=case.get("pp", 1),
        virtual_pipeline_model_parallel_size=case.get("vpp"),
        expert_model_parallel_size=case.get("ep", 1),
        expert_tensor_parallel_size=case.get("etp", 1))
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    problems = []

    bridge = mmf.local_spec_bridge(case, hf_config, divisor * case.get("tp", 1))
    model = bridge.get_model(wrap_with_ddp=False, use_cpu_initialization=True, bf16=True)
    iteration, _ = load_checkpoint(model, None, None, strict=True)

    if case["fmt"] == "torch_dist":
        # The loader's direct call, default strictness (assume_ok_unexpected).
        ckpt = os.path.join(save_dir, "release")
        # All virtual-pipeline chunks in one call, as Megatron-LM's loader does: the integrity
        # check spans every chunk of every rank.
        sharded = {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(model)}
        loaded = dist_checkpointing.load(sharded, ckpt)  # merged with the common state
        for i, chunk in enumerate(model):
            chunk.load_state_dict(loaded[f"model{i}"], strict=True)

    reference = bridge.get_model(wrap_with_ddp=False, use_cpu_initialization=True, bf16=True)
    bridge.load_weights(reference, hf_dir)
    mmf._load_local_experts(bridge, reference, hf_dir, mpu)
    if hf_config.tie_word_embeddings:
        mmf._sync_tied_output(reference, mpu)
    vocab = (getattr(hf_config, "text_config", None) or hf_config).vocab_size
    compared = 0
    for ours, theirs in zip(model, reference):
        theirs_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            q = theirs_params[name]
            a, b = p.detach(), q.detach()
            if "word_embeddings" in name or "output_layer" in name:
                rows = vocab - mpu.get_tensor_model_parallel_rank() * a.shape[0]
                rows = max(0, min(rows, a.shape[0]))
                if a.shape[0] != 1 and torch.count_nonzero(a[rows:]) != 0:
                    problems.append(f"{name}: padded vocabulary rows are not zero")
                a, b = a[:rows], b[:rows]
            compared += 1
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                problems.append(f"{name}: differs from mbridge's fill ({a.dtype} {tuple(a.shape)} "
                                f"vs {b.dtype} {tuple(b.shape)})")
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump({"rank": rank, "iteration": iteration, "compared": compared,
                   "problems": problems}, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("save_dir")
    parser.add_argument("hf_dir")
    parser.add_argument("case", help="JSON: family, fmt, tp, pp, vpp, ep, etp, first_stage_layers")
    parser.add_argument("--divisor", type=int, default=16,
                        help="--make-vocab-size-divisible-by the checkpoint was written with")
    opts = parser.parse_args()
    case = json.loads(opts.case)
    result = tempfile.mktemp(prefix="mcore-load-result-")
    mmf.spawn_ranks(worker, world_of(case), case, opts.save_dir, opts.hf_dir, opts.divisor, result)
    problems, compared = [], 0
    for rank in range(world_of(case)):
        with open(f"{result}.{rank}") as f:
            r = json.load(f)
        compared += r["compared"]
        problems += [f"rank {rank}: {p}" for p in r["problems"]]
    for p in problems:
        print("problem:", p)
    print(f"load_checkpoint + dist_checkpointing.load: {compared} parameters compared with "
          f"mbridge's fill, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
