"""One process of the data-parallel commentary tests (test_distributed_learn.py).

- `python _dp_learn.py learn RANK WORLD PORT OUT`: learn a weighting commentary with both
  algorithms in float64 on this process's slice of every batch; save the teacher.
- `torchrun ... _dp_learn.py fail ARGS...`: the `commentaries` command line, with the
  meta-gradient of rank 1 raising at its second meta-step.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch


def tiny64():
    """A small float64 data set whose validation split (31) does not divide evenly."""
    sys.path.insert(0, os.path.dirname(__file__))
    from commentary_helpers import make_tiny

    return make_tiny(n=62, dtype=torch.float64)


def learn_both(dp) -> dict:
    from implicitgrad_commentaries import WeightingCommentary, learn
    from implicitgrad_commentaries.learn import Implicit, Unroll

    torch.set_default_dtype(torch.float64)
    data = tiny64()
    out = {}
    for name, method in [
        ("unroll", Unroll(inner_steps=3)),
        ("ift", Implicit(student_steps=2)),
    ]:
        torch.manual_seed(0)
        commentary = WeightingCommentary(data.spec)
        history = learn(commentary, data, method, steps=3, batch_size=32, data_parallel=dp)
        out[name] = {k: v.detach().clone() for k, v in commentary.phi().items()}
        out[f"{name}/val_loss"] = torch.tensor(history.val_loss)
    return out


def main() -> None:
    suite = sys.argv[1]
    if suite == "learn":
        import torch.distributed as dist

        import implicitgrad as ig

        rank, world, port, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=30),
        )
        results = learn_both(ig.DataParallel())
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()
    elif suite == "fail":
        from implicitgrad_commentaries.cli import main as cli
        from implicitgrad_commentaries.learning import learner

        if os.environ["RANK"] == "1":
            real, calls = learner.meta_gradient, []

            def failing(*args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    raise ValueError("injected failure on rank 1")
                return real(*args, **kwargs)

            learner.meta_gradient = failing
        raise SystemExit(cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
