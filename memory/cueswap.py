"""Does a trained Distracting Memory world model predict the reward from the cue? A causal test for
any backbone [ours].

    python -m memory.cueswap --logdir docs/results/memory/dm100/rssm_seed0 [--draws 5]

A reward accuracy above 50% need not come from memory: a fixed test set can favour one answer, and a
model can learn which end square tends to pay. The test asks the model itself. Each held-out test
episode is replayed in the env (its layout from envs.env_seed(memory.seed, index), as
memory/collect.py drew it, and its recorded actions) twice:

    original   the cue as recorded; the replay must reproduce the recorded frames exactly (checked)
    swapped    the cue square painted in the colour of the other end square; the frames differ only
               while the cue is in view (checked), the agent steps onto the same end square, and its
               reward flips (checked)

The reward predicted at the decision step (thresholded at 0.5), in inference (the whole episode
observed) and in imagination (the context observed, the rest imagined), is compared across the pair:

    flipped              the prediction differs between original and swapped: the cue decided it
    right_on_both        right on the original and on the swapped episode: a model that ignores the
                         cue cannot be (its two predictions agree while the two answers differ)
    resampled_flipped    the baseline: how often the prediction differs between two draws of the
                         latents on the original episode (the posterior and prior are sampled), i.e.
                         what 'flipped' would be from sampling noise alone
    accuracy, accuracy_swapped   reward accuracy on the originals and on the swapped episodes

Each is the mean over --draws draws; draw d uses torch seed seed + d for the original and the swapped
pass (the same random numbers, as the tensors have the same shapes) and seed + draws + d for the
resampled pass. Prints a table and writes <logdir>/eval/cueswap.json.
"""
from __future__ import annotations


import numpy as np
import torch

from common.cli import fail
from envs import env_seed
from memory import metrics
from memory.collect import Spec
from memory.cell import cell_arguments, command, load_cell, write_result
from memory.evaluate import predict_rewards
from memory.probe import cue_frames

MODES = ("inference", "imagination")


def replay(env, seed: int, actions: np.ndarray, cue: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replay an episode: reset `env` (a wrapped distracting_memory env) with `seed`, repaint the
    cue as colour `cue` (None: as drawn), then step the recorded one-hot actions (T, A) from step 1.
    Returns (images (T, S, S, 3) uint8, rewards (T,))."""
    obs, _ = env.reset(seed=seed)
    inner = env.unwrapped
    if cue is not None:
        inner.paint_cue(cue)
        obs = {"image": inner.render_view()}
    images, rewards = [obs["image"]], [0.0]
    for action in actions[1:]:
        obs, reward, _, _, _ = env.step(action)
        images.append(obs["image"])
        rewards.append(reward)
    return np.stack(images), np.array(rewards, np.float32)


def swap_pair(env, seed: int, episode: dict) -> dict:
    """The swapped copy of a recorded episode (module docstring): its arrays with the images, the
    rewards and the cue colour replaced. Raises ValueError when the replay does not reproduce the
    recording, or the swap changes anything but the cue frames and the reward."""
    images, rewards = replay(env, seed, episode["action"])
    if not (np.array_equal(images, episode["image"]) and np.array_equal(rewards, episode["reward"])):
        raise ValueError("the env does not reproduce the recorded episode (a dataset made by another "
                         "version of the env?): rebuild the dataset")
    other = next(c for c in env.unwrapped.end_colours() if c != env.unwrapped.cue)
    images, rewards = replay(env, seed, episode["action"], cue=other)
    t = metrics.decision_step(episode["reward_step"])
    changed = np.flatnonzero((images != episode["image"]).any((1, 2, 3)))
    if not len(changed) or changed[-1] >= cue_frames(episode):
        raise ValueError(f"swapping the cue changed frames {changed.tolist()}, not only the cue frames "
                         f"0..{cue_frames(episode) - 1}")
    flipped = episode["reward"].copy()
    flipped[t] = 1.0 - flipped[t]
    if not np.array_equal(rewards, flipped):
        raise ValueError("swapping the cue did not flip the reward at the decision step")
    return {**episode, "image": images, "reward": rewards, "cue": np.full_like(episode["cue"], other)}


def decisions(wm, episodes: list[dict], seed: int, chunk: int) -> dict[str, np.ndarray]:
    """Thresholded reward predictions at the decision step, per mode: {mode: bool (N,)}, with the
    torch generator seeded once before the first episode."""
    torch.manual_seed(seed)
    out = {m: [] for m in MODES}
    for e in episodes:
        pred = predict_rewards(wm, e, chunk=chunk, device=wm.device, images=False)  # rewards only
        t = metrics.decision_step(e["reward_step"])
        for m in MODES:
            out[m].append(float(pred[m][t]) > 0.5)
    return {m: np.array(v) for m, v in out.items()}


@torch.no_grad()
def cueswap(wm, originals: list[dict], swapped: list[dict], *, draws: int, seed: int = 0,
            chunk: int = 512) -> dict:
    """The scores of the module docstring: {mode: {score: mean over draws}}, with 'per_draw'.
    chunk: steps per pass of the posterior (the evaluation's: train.seq_len)."""
    truth = np.array([e["reward"][metrics.decision_step(e["reward_step"])] > 0.5 for e in originals])
    per_draw = {m: {k: [] for k in ("accuracy", "accuracy_swapped", "flipped", "right_on_both",
                                    "resampled_flipped")} for m in MODES}
    for d in range(draws):
        a, b = decisions(wm, originals, seed + d, chunk), decisions(wm, swapped, seed + d, chunk)
        again = decisions(wm, originals, seed + draws + d, chunk)
        for m in MODES:
            scores = {"accuracy": a[m] == truth, "accuracy_swapped": b[m] == ~truth, "flipped": a[m] != b[m],
                      "right_on_both": (a[m] == truth) & (b[m] == ~truth), "resampled_flipped": a[m] != again[m]}
            for k, v in scores.items():
                per_draw[m][k].append(float(v.mean()))
    return {m: {k: float(np.mean(v)) for k, v in per_draw[m].items()} for m in MODES} | {
        "episodes": len(originals), "draws": draws, "per_draw": per_draw}


def main(argv=None) -> None:
    args = cell_arguments("memory.cueswap", __doc__, "a trained Distracting Memory cell", argv)
    config, wm, test, updates = load_cell(args.logdir)
    m = config.memory
    if len(test) != config.offline.test_episodes:
        fail(f"{args.logdir}: {config.offline.test_episodes - len(test)} test episodes of the dataset are "
             "unreadable, so the episodes cannot be matched to their seeds: rebuild the dataset")
    spec, out = Spec.from_config(config), args.logdir / "eval" / "cueswap.json"
    env = spec.build()
    try:
        first = m.episodes - len(test)  # the test episodes are the dataset's last indices
        swapped = [swap_pair(env, env_seed(m.seed, first + i), e) for i, e in enumerate(test)]
        result = {"updates": updates, **cueswap(wm, test, swapped, draws=args.draws, seed=args.seed,
                                                    chunk=config.train.seq_len)}
        write_result(out, result)
    except (ValueError, OSError) as e:
        fail(f"{args.logdir}: {e}")
    finally:
        env.close()
    print(f"{args.logdir} ({config.backbone}) at {updates} updates, {result['episodes']} test episodes, "
          f"{args.draws} draws")
    print("| mode | accuracy | accuracy, cue swapped | flipped | right on both | flipped by resampling |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        r = result[mode]
        print(f"| {mode} | {r['accuracy']:.1%} | {r['accuracy_swapped']:.1%} | {r['flipped']:.1%} | "
              f"{r['right_on_both']:.1%} | {r['resampled_flipped']:.1%} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    command(main)
