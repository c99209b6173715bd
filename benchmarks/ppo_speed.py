"""PPO throughput on CPU: our ``train_ppo`` vs a compact cleanrl-style reference, and env steps/s of MiniGrid / Atari.

Both PPO sides train the same agent on the same env with the same sizes, one torch thread:

    ours  foresight.rl.agents.train_ppo with PPOConfig.cleanrl_cartpole (separate 64-wide tanh actor and critic,
          4 envs x 128 steps, 4 epochs x 4 minibatches, value clipping), on SyncVectorEnv(CartPole-v1, same-step
          autoreset).
    ref   :func:`cleanrl_style_ppo` below: cleanrl ``ppo.py``'s loop rewritten compactly (torch.distributions
          .Categorical, numpy-free buffers), same env construction, sizes and settings. It keeps cleanrl's
          treatment of truncation (no bootstrap), so it does slightly less work than ours per truncated episode.

Each side runs ``--rounds`` rounds of ``--steps`` env steps, interleaved (ref, ours, ref, ours, ...) so that
background load hits both alike. Per round we record wall time and this process's CPU time; with one thread the
CPU time is what a run costs whatever else runs on the machine, so the ratio uses the median CPU-time throughput.

Env throughput: ``--envs`` (16) MiniGrid envs in a SyncVectorEnv stepped with random actions (no agent), for
each MiniGrid id in ``MINIGRID_IDS``, and the same for Atari (8 envs, :func:`foresight.rl.envs.make_atari`) where
``ale-py`` is installed; plus our PPO's own steps/s on MiniGrid (PPOConfig.minigrid, 16 envs).

``--probe FRAMES``: instead, one plain-PPO run (PPOConfig.minigrid, 16 envs, seed 0) of FRAMES env steps on each of
the hard-exploration candidates in ``HARD_IDS``: success (an episode reaching the goal) over all episodes and over
the last 20%, frames/s.

    .venv/bin/python benchmarks/ppo_speed.py                 # writes benchmarks/results/ppo_speed-<date>.json
    .venv/bin/python benchmarks/ppo_speed.py --quick         # fewer steps and rounds
    .venv/bin/python benchmarks/ppo_speed.py --probe 300000  # -> benchmarks/results/ppo_speed-<date>-probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from foresight.rl import agents as AG

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP
MINIGRID_IDS = ("MiniGrid-Empty-8x8-v0", "MiniGrid-DoorKey-8x8-v0", "MiniGrid-MultiRoom-N4-S5-v1")
HARD_IDS = (
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-KeyCorridorS3R2-v0",
    "MiniGrid-MultiRoom-N4-S5-v1",
    "MiniGrid-ObstructedMaze-1Dl-v0",
)
REPO = Path(__file__).resolve().parent.parent


def cartpole(n: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * n, autoreset_mode=SAME_STEP)


# ------------------------------------------------------------------------------------------------
# the reference: cleanrl ppo.py, compact
# ------------------------------------------------------------------------------------------------
def _init(layer: nn.Linear, std: float = 2**0.5) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class CleanRLAgent(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            _init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            _init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            _init(nn.Linear(hidden, 1), 1.0),
        )
        self.actor = nn.Sequential(
            _init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            _init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            _init(nn.Linear(hidden, num_actions), 0.01),
        )

    def get_action_and_value(self, x, action=None):
        probs = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x).squeeze(-1)


def cleanrl_style_ppo(envs: gym.vector.VectorEnv, cfg: AG.PPOConfig, seed: int = 0) -> list[float]:
    """cleanrl ``ppo.py``'s training loop (its defaults come from ``cfg``); returns the episode returns."""
    torch.manual_seed(seed)
    E, T = cfg.num_envs, cfg.num_steps
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = CleanRLAgent(obs_dim, int(envs.single_action_space.n), cfg.hidden)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    obs = torch.zeros(T, E, obs_dim)
    actions, logprobs, rewards, dones, values = (torch.zeros(T, E) for _ in range(5))
    next_obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    next_done = torch.zeros(E)
    num_iterations, batch = cfg.total_steps // (T * E), T * E
    mb_size = batch // cfg.minibatches
    ep_ret, returns = np.zeros(E), []
    for it in range(num_iterations):
        opt.param_groups[0]["lr"] = cfg.lr * (1.0 - it / num_iterations)
        for step in range(T):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value, action, logprob
            o, r, term, trunc, _ = envs.step(action.numpy())
            done = np.logical_or(term, trunc)
            rewards[step] = torch.as_tensor(r, dtype=torch.float32)
            next_obs, next_done = torch.as_tensor(o, dtype=torch.float32), torch.as_tensor(done, dtype=torch.float32)
            ep_ret += r
            for i in np.flatnonzero(done):
                returns.append(float(ep_ret[i]))
                ep_ret[i] = 0.0
        with torch.no_grad():  # cleanrl's GAE (dones[t] = the episode ended before step t)
            next_value = agent.critic(next_obs).squeeze(-1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(T)):
                nextnonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                nextvalues = next_value if t == T - 1 else values[t + 1]
                delta = rewards[t] + cfg.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + cfg.gamma * cfg.gae_lambda * nextnonterminal * lastgaelam
            rets = advantages + values
        b_obs, b_logprobs, b_actions = obs.reshape(batch, -1), logprobs.reshape(-1), actions.reshape(-1)
        b_advantages, b_returns, b_values = advantages.reshape(-1), rets.reshape(-1), values.reshape(-1)
        for _ in range(cfg.epochs):
            perm = torch.randperm(batch)
            for start in range(0, batch, mb_size):
                mb = perm[start : start + mb_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb].long())
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                mb_adv = b_advantages[mb]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                v_clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-cfg.clip, cfg.clip)
                v_loss = 0.5 * torch.max((newvalue - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
                loss = pg_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * v_loss
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                opt.step()
    return returns


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def ppo_ratio(steps: int, rounds: int) -> dict:
    cfg = AG.PPOConfig.cleanrl_cartpole(total_steps=steps)
    rows: dict[str, list[dict[str, float]]] = {"ref": [], "ours": []}
    warm = AG.PPOConfig(**{**cfg.to_dict(), "total_steps": 512})
    cleanrl_style_ppo(cartpole(warm.num_envs), warm)  # first-call costs (allocator, autograd) out of round 0
    AG.train_ppo(cartpole(warm.num_envs), warm)
    for r in range(rounds):
        for side in ("ref", "ours"):
            train = cleanrl_style_ppo if side == "ref" else AG.train_ppo
            wall, cpu = timed(lambda train=train, r=r: train(cartpole(cfg.num_envs), cfg, seed=r))
            rows[side].append(
                {"wall_s": wall, "cpu_s": cpu, "steps_per_s_wall": steps / wall, "steps_per_s_cpu": steps / cpu}
            )
            print(f"round {r} {side:4s}: {steps / cpu:7.0f} steps/s (cpu), {steps / wall:7.0f} (wall)", flush=True)
    med = {s: statistics.median(x["steps_per_s_cpu"] for x in v) for s, v in rows.items()}
    return {
        "env": "CartPole-v1",
        "config": cfg.to_dict(),
        "rounds": rows,
        "median_steps_per_s_cpu": med,
        "ours_over_ref": med["ours"] / med["ref"],
    }


def env_steps_per_s(make, num_envs: int, steps: int) -> dict:
    envs = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=SAME_STEP)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(steps)]
    wall, cpu = timed(lambda: [envs.step(a) for a in actions])
    envs.close()
    n = steps * num_envs
    return {"num_envs": num_envs, "env_steps": n, "steps_per_s_cpu": n / cpu, "steps_per_s_wall": n / wall}


def minigrid_rows(num_envs: int, steps: int, ppo_steps: int) -> dict:
    import minigrid  # noqa: F401  (registers the ids)

    out = {}
    for env_id in MINIGRID_IDS:
        out[env_id] = env_steps_per_s(lambda env_id=env_id: gym.make(env_id), num_envs, steps)
        print(f"{env_id}: {out[env_id]['steps_per_s_cpu']:.0f} env steps/s (cpu, random actions)", flush=True)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(MINIGRID_IDS[1])] * num_envs, autoreset_mode=SAME_STEP)
    cfg = AG.PPOConfig.minigrid(total_steps=ppo_steps)
    cfg = AG.PPOConfig(**{**cfg.to_dict(), "num_envs": num_envs})
    wall, cpu = timed(lambda: AG.train_ppo(envs, cfg, seed=0))
    out["ppo_" + MINIGRID_IDS[1]] = {
        "env_steps": ppo_steps,
        "steps_per_s_cpu": ppo_steps / cpu,
        "steps_per_s_wall": ppo_steps / wall,
    }
    print(f"PPO on {MINIGRID_IDS[1]}: {ppo_steps / cpu:.0f} env steps/s (cpu, learning included)", flush=True)
    return out


def atari_rows(num_envs: int, steps: int) -> dict:
    try:
        import ale_py  # noqa: F401
    except ImportError:
        return {"skipped": "ale-py not installed"}
    from foresight.rl.envs import make_atari

    row = env_steps_per_s(lambda: make_atari("ALE/Breakout-v5"), num_envs, steps)
    print(f"ALE/Breakout-v5 (standard wrappers): {row['steps_per_s_cpu']:.0f} env steps/s (cpu)", flush=True)
    return {"ALE/Breakout-v5": row}


def probe(frames: int, ids: list[str]) -> dict:
    import minigrid  # noqa: F401

    out = {}
    for env_id in ids:
        envs = gym.vector.SyncVectorEnv([lambda env_id=env_id: gym.make(env_id)] * 16, autoreset_mode=SAME_STEP)
        cfg = AG.PPOConfig.minigrid(total_steps=frames)
        t0, c0 = time.perf_counter(), time.process_time()
        _, res = AG.train_ppo(envs, cfg, seed=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        succ, ends = np.asarray(res.episode_successes, float), np.asarray(res.episode_end_steps)
        last = ends > 0.8 * res.env_steps
        rets = np.asarray(res.episode_returns)
        out[env_id] = {
            "frames": res.env_steps,
            "episodes": len(succ),
            "success_all": float(succ.mean()) if len(succ) else 0.0,
            "success_last20": float(succ[last].mean()) if last.any() else 0.0,
            "return_last20": float(rets[last].mean()) if last.any() else 0.0,
            "first_success_frame": int(ends[succ > 0][0]) if succ.any() else -1,
            "frames_per_s_wall": res.env_steps / wall,
            "frames_per_s_cpu": res.env_steps / cpu,
        }
        print(env_id, out[env_id], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20_480, help="env steps per PPO round (multiple of 512)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--envs", type=int, default=16, help="MiniGrid envs stepped together")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    p.add_argument("--probe", type=int, default=0, help="FRAMES: plain-PPO probe of the hard MiniGrid tasks instead")
    p.add_argument("--ids", default=",".join(HARD_IDS), help="comma-separated MiniGrid ids for --probe")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/ppo_speed-<date>[-probe].json)")
    args = p.parse_args()
    torch.set_num_threads(1)
    record: dict = {
        "benchmark": "ppo_speed",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": 1,
    }
    if args.probe:
        record["probe"] = probe(args.probe, args.ids.split(","))
        suffix = "-probe"
    else:
        steps, rounds = (4096, 2) if args.quick else (args.steps, args.rounds)
        record["ppo_cartpole"] = ppo_ratio(steps, rounds)
        record["minigrid_env"] = minigrid_rows(args.envs, 200 if args.quick else 1000, 4096 if args.quick else 16_384)
        record["atari_env"] = atari_rows(8, 100 if args.quick else 500)
        suffix = ""
        print(f"ours / ref (median CPU-time steps/s): {record['ppo_cartpole']['ours_over_ref']:.2f}")
    out = (
        Path(args.out)
        if args.out
        else REPO / "benchmarks" / "results" / f"ppo_speed-{time.strftime('%Y%m%d')}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    try:
        shown = out.resolve().relative_to(REPO)
    except ValueError:
        shown = out.name
    print(f"wrote {shown}")


if __name__ == "__main__":
    main()
