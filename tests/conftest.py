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
