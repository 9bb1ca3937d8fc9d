"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# ../shared beside the repo; a git worktree elsewhere can point LWM_SHARED_DIR at it.
SHARED_DIR = pathlib.Path(os.environ.get("LWM_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def llama2_tokenizer_path() -> pathlib.Path:
    """The LLaMA-2 sentencepiece model from ../shared (skips when absent)."""
    path = SHARED_DIR / "data" / "llama2-tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} not present (read-only shared data beside the repo)")
    return path


# The slowest test files, slowest first. `make test` hands whole files to two workers
# (`--dist loadfile`) in collection order; started last, a 2-minute file kept one worker busy
# alone for minutes after the other had finished. Longest first balances the two.
SLOW_FILES = (
    "test_start_from_modern.py",
    "test_real_model.py",
    "test_kv_quant.py",
    "test_demo.py",
    "test_lwm_recipes.py",
    "test_multiprocess_failure.py",
    "test_train_resume.py",
    "test_vqgan_train.py",
    "test_demo_video.py",
    "test_attention_hybrid.py",
    "test_prefix.py",
    "test_attention_multiprocess.py",
    "test_sp_cost.py",
    "test_inference_plan.py",
    "test_device_check.py",
    "test_restore_noise.py",
    "test_train_eval.py",
    "test_convert_from_gguf.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))
