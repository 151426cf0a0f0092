"""Checkpoints: written and read by :mod:`perception.utils.checkpoint` (where they live so that the inference side
reads them without importing the engine); the engine's names for them."""
from perception.utils.checkpoint import (FORMAT, VERSION, CheckpointError, load_checkpoint, remove_temporary_files,
                                         rng_state, save_checkpoint, set_rng_state)

__all__ = ["FORMAT", "VERSION", "CheckpointError", "load_checkpoint", "remove_temporary_files", "rng_state",
           "save_checkpoint", "set_rng_state"]
