"""PyTorch DistributedDataParallel training that uses fabric's environment contract.

One process per fabric allocation, or one per GPU under torchrun (see README.md). It reads:

  MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK
                           torch.distributed's env:// rendezvous; fabric sets them for gang
                           jobs. Absent: a single process, world of one.
  CUDA_VISIBLE_DEVICES     the GPUs (or MIG slices) fabric granted, by UUID; so the process
                           sees exactly those, numbered from 0, and uses cuda:LOCAL_RANK.
  FABRIC_CHECKPOINT_DIR    rank 0 writes checkpoint.pt there every --checkpoint-every steps...
  FABRIC_CHECKPOINT_COMMIT ...and then runs this command with " --step N" appended (fabric sets it
                           to its `fabric checkpoint commit`; outside fabric it is skipped).
  FABRIC_RESTORE_DIR       set when the job resumes: every rank loads checkpoint.pt from there.

It learns to tell apart the three arms of a noisy spiral, the same task as examples/train.
On SIGTERM (fabric's cancel or preemption) all ranks agree to stop after the current step,
rank 0 checkpoints and commits, and every rank exits with code 143.
"""

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

CHECKPOINT_FILE = "checkpoint.pt"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=int(os.environ.get("TRAIN_STEPS", "600")))
    p.add_argument("--checkpoint-every", type=int, default=int(os.environ.get("TRAIN_CHECKPOINT_EVERY", "50")))
    p.add_argument("--batch", type=int, default=64, help="per-process batch size")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args()
    if args.steps < 1 or args.checkpoint_every < 1 or args.batch < 1:
        p.error("--steps, --checkpoint-every and --batch must be positive")
    return args


def spiral(seed, points_per_class=2000, classes=3, radius=3.0):
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(1, points_per_class + 1, dtype=torch.float32) / points_per_class
    xs, ys = [], []
    for c in range(classes):
        angle = c * 2 * math.pi / classes + r * 1.5 * math.pi + torch.randn(points_per_class, generator=g) * 0.15
        xs.append(torch.stack([radius * r * torch.sin(angle), radius * r * torch.cos(angle)], dim=1))
        ys.append(torch.full((points_per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


class Net(nn.Module):
    def __init__(self, hidden, classes=3):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(x)


def setup_distributed():
    """env:// rendezvous from fabric's variables; a world of one when they are absent."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        # CUDA_VISIBLE_DEVICES holds only this allocation's GPUs: index LOCAL_RANK among them.
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return device


def commit_command():
    """FABRIC_CHECKPOINT_COMMIT, else `fabric checkpoint commit` when running under fabric."""
    command = os.environ.get("FABRIC_CHECKPOINT_COMMIT")
    if command is not None:
        return command or None  # set but empty: commits are off
    if os.environ.get("FABRIC_JOB_ID") and shutil.which("fabric"):
        return "fabric checkpoint commit"
    return None


def save_checkpoint(directory, step, model, optimizer, sampler_states, command):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    tmp = path + ".tmp"
    state = {
        "step": step,
        "model": model.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "samplers": sampler_states,  # one per rank
    }
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves the old checkpoint or the new one, never half of one
    print(f"checkpoint step {step} saved", flush=True)
    if command is None:
        return
    env = dict(os.environ, FABRIC_CHECKPOINT_STEP=str(step))
    result = subprocess.run(f"{command} --step {step}", shell=True, env=env)
    if result.returncode == 0:
        print(f"checkpoint step {step} committed", flush=True)
    else:
        print(f"train: committing checkpoint step {step} failed (exit {result.returncode}); training goes on", file=sys.stderr, flush=True)


def main():
    args = parse_args()
    device = setup_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    checkpoint_dir = os.environ.get("FABRIC_CHECKPOINT_DIR")
    restore_dir = os.environ.get("FABRIC_RESTORE_DIR")
    command = commit_command() if rank == 0 else None

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    x, y = spiral(args.seed)
    x, y = x.to(device), y.to(device)
    model = DDP(Net(args.hidden).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # Each rank draws its own minibatches from its own stream; all streams go into the checkpoint.
    sampler_gen = torch.Generator().manual_seed(args.seed * 1000 + rank)

    step = 0
    if restore_dir:
        state = torch.load(os.path.join(restore_dir, CHECKPOINT_FILE), map_location=device)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        samplers = state["samplers"]
        if len(samplers) == world:
            sampler_gen.set_state(samplers[rank])
        else:  # resumed on a different number of processes: fresh per-rank streams
            sampler_gen.manual_seed(args.seed * 1000 + rank + 7919 * state["step"])
        step = state["step"]
        if rank == 0:
            print(f"resumed from step {step}", flush=True)

    stop_requested = False

    def on_sigterm(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    stop = torch.zeros(1, device=device)

    while step < args.steps:
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=sampler_gen).to(device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over all ranks here
        optimizer.step()
        step += 1

        # Every rank must agree to stop at the same step, or the others would hang in all-reduce.
        stop.fill_(1.0 if stop_requested else 0.0)
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        stopping = stop.item() > 0

        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            with torch.no_grad():
                logits = model.module(x)
                full_loss = F.cross_entropy(logits, y).item()
                accuracy = (logits.argmax(dim=1) == y).float().mean().item()
            print(f"step {step}/{args.steps} loss {full_loss:.4f} accuracy {accuracy:.3f} world {world}", flush=True)
        if checkpoint_dir and (step % args.checkpoint_every == 0 or step == args.steps or stopping):
            sampler_states = [None] * world
            dist.all_gather_object(sampler_states, sampler_gen.get_state())
            if rank == 0:
                save_checkpoint(checkpoint_dir, step, model, optimizer, sampler_states, command)
            dist.barrier()  # nobody runs ahead while the checkpoint is written and committed
        if stopping:
            if rank == 0:
                print(f"stopping at step {step}: SIGTERM", flush=True)
            dist.destroy_process_group()
            sys.exit(143)

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
