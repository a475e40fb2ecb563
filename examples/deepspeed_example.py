"""Train with a DeepSpeed engine on CPU under PerfMonitor, then print the report.

The model has a large embedding table, so AdamW's update over its parameters dominates each step:
the monitor times ``engine.step()`` (ZeRO's partitioned update included) and recommends a fix in
DeepSpeed's terms. One ``perf.step()`` per micro-batch; a step is one optimizer update.

    python examples/deepspeed_example.py [--stage 2] [--accumulation 2] [--logdir runs/deepspeed]
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported

import deepspeed
import torch

from perfcallback import PerfMonitor


class BagOfWords(torch.nn.Module):
    """A 50k x 64 embedding bag and a linear head: 3.2M parameters, cheap forward."""

    def __init__(self, vocab: int = 50_000, dim: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab, dim)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="optimizer updates")
    parser.add_argument("--logdir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0",
                           WORLD_SIZE="1", LOCAL_RANK="0").items():
        os.environ.setdefault(key, value)
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")

    model = BagOfWords()
    config = {
        "train_micro_batch_size_per_gpu": 16,
        "gradient_accumulation_steps": args.accumulation,
        "zero_optimization": {"stage": args.stage, "overlap_comm": False},
        "zero_allow_untested_optimizer": True,  # a client torch optimizer under ZeRO
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                      config=config)
    batches = [(torch.randint(0, 50_000, (16, 32)), torch.randint(0, 2, (16,)))
               for _ in range(args.steps * args.accumulation)]

    with PerfMonitor(model=engine, optimizer=ds_optimizer, logdir=args.logdir,
                     warmup_steps=5, window_steps=10) as perf:
        for tokens, labels in perf.wrap_loader(batches):
            with perf.step():  # one block per micro-batch: the step ends at the update
                loss = torch.nn.functional.cross_entropy(engine(tokens), labels)
                engine.backward(loss)  # DeepSpeed's gradient reduction included
                engine.step()  # ZeRO's partitioned update and parameter gathering included
    print(perf.report())
    print(f"DeepSpeed optimizer updates: {engine.global_steps}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
