"""A checkpoint is written whole even when SIGTERM or SIGINT arrives meanwhile: the interruption
is held back and delivered right after."""

from __future__ import annotations

import os
import signal

import pytest

from dat_exp.interrupts import interrupts_held


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@pytest.fixture
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, as the entry point installs it."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interruption_during_the_write_arrives_after_it(tmp_path, sigterm_interrupts, signum):
    last = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        last.write_bytes(b"a")
        os.kill(os.getpid(), signum)  # delivered here without the hold
        last.write_bytes(b"a" * 1000)
    assert last.read_bytes() == b"a" * 1000
    assert signal.getsignal(signal.SIGTERM) is _interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_an_interruption_nothing_happens_and_handlers_are_back(sigterm_interrupts):
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGTERM) is _interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_trainer_holds_interruptions_while_it_saves(monkeypatch, sigterm_interrupts):
    from ultralytics.models.yolo.detect import DetectionTrainer

    from dat_exp.trainer import DATDetectionTrainer

    written = []

    def save_model(self) -> bool:  # Ultralytics' save, interrupted half-way
        written.append("first half")
        os.kill(os.getpid(), signal.SIGTERM)
        written.append("second half")
        return True

    monkeypatch.setattr(DetectionTrainer, "save_model", save_model)
    trainer = DATDetectionTrainer.__new__(DATDetectionTrainer)  # no dataset, no model needed
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model()
    assert written == ["first half", "second half"]
