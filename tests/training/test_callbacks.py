"""Checkpoints that follow a moved run folder."""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from protloc.training.callbacks import RelocatableCheckpoint, relocate


def test_recorded_paths_move_with_the_folder():
    state = {"dirpath": "/a/run/checkpoints/frozen", "best_model_path": "/a/run/checkpoints/frozen/best.ckpt",
             "last_model_path": "", "kth_best_model_path": "/a/run/checkpoints/frozen/best.ckpt",
             "best_k_models": {"/a/run/checkpoints/frozen/best.ckpt": 0.5}, "best_model_score": 0.5,
             "monitor": "val_f1_macro"}
    moved = relocate(state, "/a/run/checkpoints/frozen", "/b/y/checkpoints/frozen")
    assert moved == {**state, "dirpath": "/b/y/checkpoints/frozen", "best_model_path": "/b/y/checkpoints/frozen/best.ckpt",
                     "kth_best_model_path": "/b/y/checkpoints/frozen/best.ckpt",
                     "best_k_models": {"/b/y/checkpoints/frozen/best.ckpt": 0.5}}
    # A sibling folder whose name merely starts the same is not inside the old one.
    assert relocate({"best_model_path": "/a/run/checkpoints/frozen2/x"}, "/a/run/checkpoints/frozen", "/b") == \
        {"best_model_path": "/a/run/checkpoints/frozen2/x"}


def test_the_checkpoint_state_is_keyed_as_lightnings(tmp_path):
    """So that checkpoints written with a plain ModelCheckpoint (earlier versions) resume."""
    options = dict(dirpath=tmp_path, filename="best", monitor="val_f1_macro", mode="max", save_top_k=1)
    assert RelocatableCheckpoint(**options).state_key == ModelCheckpoint(**options).state_key
    checkpoint = RelocatableCheckpoint(**options)
    checkpoint.load_state_dict({**checkpoint.state_dict(), "dirpath": "/elsewhere", "best_model_score": 0.25,
                                "best_model_path": "/elsewhere/best.ckpt"})
    assert checkpoint.best_model_score == 0.25 and checkpoint.best_model_path == str(tmp_path / "best.ckpt")
