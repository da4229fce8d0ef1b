#!/usr/bin/env python3
"""The tool users run today for the Hugging Face -> Megatron direction, for the benchmark:
verl's scripts/converter_hf_to_mcore.py as it runs with mbridge (build the megatron-core model at
the target TP, bridge.load_weights from the Hugging Face safetensors, dist_checkpointing.save of
its sharded state dict), on CPU.

    bench/mbridge_import.py HF_DIR OUT --tp 2

Runs in the sid oracle with megatron-core and mbridge on PYTHONPATH
(../shared/oracle/megatron.md), one gloo process per TP rank, on the local layer spec
(tools/fixtures/make_megatron_fixtures.py's local_spec_bridge: Transformer Engine does not
install on CPU); the vocabulary padded to 128 x TP, as convert --to megatron's default. Not a test.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                                "fixtures"))
import make_megatron_fixtures as mmf  # noqa: E402  (stubs the triton-only modules first)
import torch.distributed as dist  # noqa: E402


def worker(rank, world, hf_dir, out):
    import transformers
    from megatron.core import dist_checkpointing, parallel_state as mpu, tensor_parallel

    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    mpu.initialize_model_parallel(tensor_model_parallel_size=world)
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    bridge = mmf.local_spec_bridge({"family": hf_config.model_type}, hf_config, 128 * world)
    model = bridge.get_model(wrap_with_ddp=False, use_cpu_initialization=True, bf16=True)
    bridge.load_weights(model, hf_dir)
    if rank == 0:
        os.makedirs(out, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model[0].sharded_state_dict(), out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir")
    parser.add_argument("out")
    parser.add_argument("--tp", type=int, default=2)
    opts = parser.parse_args()
    mmf.spawn_ranks(worker, opts.tp, opts.hf_dir, opts.out)


if __name__ == "__main__":
    main()
