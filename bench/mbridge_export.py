#!/usr/bin/env python3
"""The tool users run today, for the Megatron benchmark: mbridge's CPU export of a torch_dist
checkpoint to Hugging Face safetensors, as verl's and mbridge's examples do it (build the
megatron-core model at the checkpoint's TP, dist_checkpointing.load, bridge.save_weights).

    bench/mbridge_export.py ITER_DIR HF_CONFIG_DIR OUT --tp 2

Runs in the sid oracle with megatron-core and mbridge on PYTHONPATH
(../shared/oracle/megatron.md), one gloo process per TP rank, on the local layer spec
(tools/fixtures/make_megatron_fixtures.py's local_spec_bridge: Transformer Engine does not
install on CPU). The vocabulary is padded as bench/gen_ckpt.py pads it (128 x TP). Not a test.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                                "fixtures"))
import make_megatron_fixtures as mmf  # noqa: E402  (stubs the triton-only modules first)


def worker(rank, world, ckpt_dir, hf_dir, out):
    import transformers
    from megatron.core import dist_checkpointing, parallel_state as mpu, tensor_parallel
    from megatron.core.dist_checkpointing.validation import StrictHandling
    from mbridge.core.safetensor_io import SafeTensorIO

    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    mpu.initialize_model_parallel(tensor_model_parallel_size=world)
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    family = hf_config.model_type
    bridge = mmf.local_spec_bridge({"family": family}, hf_config, 128 * world)
    model = bridge.get_model(wrap_with_ddp=False, use_cpu_initialization=True, bf16=True)
    sharded = model[0].sharded_state_dict()
    loaded = dist_checkpointing.load(sharded, ckpt_dir, strict=StrictHandling.LOG_UNEXPECTED)
    model[0].load_state_dict(loaded, strict=False)
    bridge.vocab_size = hf_config.vocab_size
    bridge.safetensor_io = SafeTensorIO(hf_dir)
    bridge.save_weights(model, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_dir")
    parser.add_argument("hf_dir")
    parser.add_argument("out")
    parser.add_argument("--tp", type=int, default=2)
    opts = parser.parse_args()
    mmf.spawn_ranks(worker, opts.tp, opts.ckpt_dir, opts.hf_dir, opts.out)


if __name__ == "__main__":
    main()
