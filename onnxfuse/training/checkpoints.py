"""Checkpoints of a training run: one file per training phase in the checkpoint folder (`train.pt`,
and e.g. `tpp.pt` for a method that trains before the compression), replaced atomically, holding the
parameters, the optimizer, the loss curve, the validations and the best weights so far. A checkpoint
carries the digest of what defines its run (teacher, student, data, options), so `--resume` never
continues a different run. Checkpoints are not outputs: Ctrl-C keeps them; the run that created the
folder removes it when it has finished (training/__init__.py: `remove_checkpoints`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from ..errors import OnnxfuseError
from ..scratch import interrupts_held

FORMAT = 1


def run_key(*parts: bytes | str) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class Store:
    def __init__(self, folder: str | os.PathLike, key: str, resume: bool, phase: str = "train"):
        self.folder, self.key = Path(folder), key
        self.path = self.folder / f"{phase}.pt"
        if self.folder.exists() and not self.folder.is_dir():
            raise OnnxfuseError(f"{self.folder}: the checkpoint folder is a file")
        if resume and not any(self.folder.glob("*.pt")):
            raise OnnxfuseError(f"{self.folder}: no checkpoint to resume from")
        if not resume and self.path.is_file():
            raise OnnxfuseError(f"{self.folder} holds the checkpoint of an earlier run: add --resume to continue it, "
                                "or remove the folder")

    def save(self, view, optimizer, state) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "key": self.key, "view": view.state_dict(), "optimizer": optimizer.state_dict(),
                   "state": dataclasses.asdict(state)}
        with interrupts_held():
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.folder)
            os.close(fd)
        try:
            torch.save(payload, tmp)
            with interrupts_held():
                os.replace(tmp, self.path)
        except BaseException:
            with interrupts_held():
                Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, view, optimizer) -> dict:
        """Restore the parameters and the optimizer; returns the rest of the saved state."""
        try:
            payload = torch.load(self.path, map_location=next(view.parameters()).device, weights_only=True)
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise OnnxfuseError(f"{self.path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
        if payload.get("format") != FORMAT or payload.get("key") != self.key:
            raise OnnxfuseError(f"{self.path} is the checkpoint of another run (other models, data or options); "
                                "remove it to start afresh")
        view.load_state_dict(payload["view"])
        optimizer.load_state_dict(payload["optimizer"])
        return payload["state"]

    @property
    def saved(self) -> bool:
        return self.path.is_file()
