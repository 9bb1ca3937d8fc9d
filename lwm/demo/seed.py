"""One seed per demo run: `demo.seed` (`lwm demo --seed N`) drives everything random in a run, and
the work directory records it.

    demo.seed -> the generated data: corpus (and so the tokenizer), needle tasks, copy drills,
                 their shuffle (text); training questions, their shuffle (video)
              -> train.seed: parameter init, the trainer's data order and training rng
              -> vqgan_train.seed (video): the VQGAN's init and batches

The evals keep their own fixed seeds (the `NeedleSpec` seeds of `lwm.demo.pipeline.eval_specs`,
`demo.eval_seed` for video), so runs with different seeds answer the same questions.

`WORKDIR/demo.json` records the demo and its seed before any work; rerunning resumes under the
same seed, and a different one is refused before anything is written (use a fresh --workdir).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from lwm.errors import LwmError

RECORD = "demo.json"
DEMO_DIRS = ("data", "train", "results")


def apply_seed(config: ml_collections.ConfigDict) -> int:
    """Sets the training seeds from `demo.seed` (see the module docstring); returns it."""
    seed = config.demo.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LwmError(f"demo.seed must be a non-negative integer, got {seed!r}")
    with config.unlocked():
        config.train.seed = seed
        if "vqgan_train" in config:
            config.vqgan_train.seed = seed
    return seed


def claim_workdir(root: pathlib.Path, kind: str, seed: int) -> None:
    """Records `{"demo": kind, "seed": seed}` in a fresh work directory, or checks an existing
    record (a one-line error on a different demo or seed, nothing touched). A work directory
    from before seeds were recorded holds seed 0's run (the only seed the demo then had)."""
    from lwm.io import write_json

    if root.exists() and not root.is_dir():
        raise LwmError(f"--workdir {root} is not a directory")
    path = root / RECORD
    if path.is_file():
        try:
            rec = json.loads(path.read_text())
            have_kind, have_seed = rec["demo"], rec["seed"]
        except (ValueError, KeyError, TypeError):
            raise LwmError(f"{path} is not a demo record; use a fresh --workdir") from None
        if have_kind != kind:
            raise LwmError(
                f"{root} holds a `lwm demo{'' if have_kind == 'text' else ' --video'}` run; "
                "use a fresh --workdir"
            )
        if have_seed != seed:
            raise LwmError(
                f"{root} holds the run of seed {have_seed}, not {seed}: rerun with --seed "
                f"{have_seed} to resume it, or use a fresh --workdir for seed {seed}"
            )
        return
    legacy = root.is_dir() and any((root / d).exists() for d in DEMO_DIRS)
    if legacy and seed != 0:
        raise LwmError(
            f"{root} holds a demo run from before seeds were recorded (seed 0), not seed "
            f"{seed}: use a fresh --workdir"
        )
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, {"demo": kind, "seed": seed})
