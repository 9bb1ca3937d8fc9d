"""The `config.data` section: where training data comes from and how rows are packed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import ml_collections

from lwm.config import config_section, parse_section
from lwm.errors import ConfigError

PackingMode = Literal["first_fit", "greedy", "pad"]
LongExamples = Literal["split", "truncate", "drop"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "dataset"
    """What the trainer reads: `dataset` (this loader) or `synthetic` (the trainer's own source)."""
    path: str = ""
    """Directory written by `lwm data build` (holds dataset_info.json and array_record shards)."""
    split: str = "train"
    """Split to read."""
    packing: PackingMode = "first_fit"
    """`first_fit`: each example goes to the first open row with room (`open_rows` rows kept open);
    `greedy`: one open row, closed as soon as the next example does not fit; `pad`: one example per
    row, padded. Packed examples never see each other (segment ids, positions restart)."""
    open_rows: int = 8
    """first_fit only: rows kept open at once; when all are too full, the fullest is emitted."""
    long_examples: LongExamples = "split"
    """Examples longer than seq_len: `split` into seq_len chunks (each its own segment), `truncate`
    to the first chunk, or `drop`."""
    shuffle: bool = True
    """Shuffle examples (per process shard, reshuffled each epoch) with the iterator's seed."""
    num_epochs: int = 0
    """Passes over the data; 0 = repeat forever (training). A finite run ends with a partial batch
    dropped."""
    pad_id: int = 0
    """Token written at padded positions (masked by segment_ids=0 and loss_mask=0)."""
    text_vocab_size: int = 0
    """If > 0, refuse (before training) a dataset holding a text id >= this (set from the model)."""
    vision_vocab_size: int = 0
    """If > 0, refuse a dataset holding a vision code >= this (set from the model)."""
    prefetch: int = 2
    """Batches prepared ahead in a background thread (0 = none)."""
    min_example_len: int = 0
    """Skip examples shorter than this many tokens (0 = keep all): a long-context stage reads only
    the long tasks of a dataset that mixes lengths. Counted with the dropped long examples."""
    position_stretch: float = 1.0
    """PoSE-style position skipping (Zhu et al. 2023): > 1 opens one random gap in each packed
    example's positions so they spread over up to `position_stretch` x seq_len; a stage then sees
    relative distances beyond its row length at the row length's cost. 1 = contiguous positions.
    The gap is a function of the iterator seed and the example, so resumed runs see the same."""
    eval_fraction: float = 0.0
    """Share of `path`'s records held out as the validation split (`train.eval_every`): a fixed
    subset, the same in every run and stage, that training never reads. 0 = none."""
    eval_path: str = ""
    """A separate dataset (built by `lwm data build`) to evaluate on instead of `eval_fraction`;
    training then reads all of `path`."""
    vision_fraction: float = 0.0
    """`synthetic` source only: share of rows whose second document is made of vision codes."""

    def __post_init__(self):
        if self.packing not in ("first_fit", "greedy", "pad"):
            raise ConfigError(
                f"data.packing must be first_fit, greedy or pad, got {self.packing!r}"
            )
        if self.long_examples not in ("split", "truncate", "drop"):
            raise ConfigError(
                f"data.long_examples must be split, truncate or drop, got {self.long_examples!r}"
            )
        if self.open_rows < 1:
            raise ConfigError(f"data.open_rows must be >= 1, got {self.open_rows}")
        if self.num_epochs < 0:
            raise ConfigError(f"data.num_epochs must be >= 0, got {self.num_epochs}")
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch must be >= 0, got {self.prefetch}")
        if self.min_example_len < 0:
            raise ConfigError(f"data.min_example_len must be >= 0, got {self.min_example_len}")
        if not self.position_stretch >= 1.0:
            raise ConfigError(f"data.position_stretch must be >= 1, got {self.position_stretch}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0.0 <= self.vision_fraction <= 1.0:
            raise ConfigError(f"data.vision_fraction must be in [0, 1], got {self.vision_fraction}")
        if self.eval_fraction and self.eval_path:
            raise ConfigError("set data.eval_fraction or data.eval_path, not both")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | DataConfig) -> DataConfig:
        """From the `data` section or an existing DataConfig (see `lwm.config.parse_section`)."""
        return parse_section(cls, d, "data")

    def replace(self, **kw: Any) -> DataConfig:
        return dataclasses.replace(self, **kw)


def default_data_config(**fields: Any) -> ml_collections.ConfigDict:
    """The `config.data` section with every field at its default (for config files)."""
    return config_section(DataConfig, "data", **fields)


def run_data_config(section: Any) -> DataConfig:
    """A training run's `config.data` section, parsed once: without a `source` the trainer
    reads its synthetic source (older configs' `{source: synthetic, vision_fraction}` sections
    included)."""
    values = dict(section.to_dict() if hasattr(section, "to_dict") else (section or {}))
    values.setdefault("source", "synthetic")
    return DataConfig.from_dict(values)
