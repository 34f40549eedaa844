"""Stopping a training run on a signal: SIGTERM (what SLURM and Kubernetes send before a
kill) or SIGINT asks the loop to stop after its current step with a checkpoint; a second
signal ends the process at once."""
import os
import signal
import threading

import jittor as jt
import numpy as np

__all__ = ["TrainingStopped", "StopSignals"]


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint; `signum` is the signal."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While training: SIGTERM / SIGINT ask the loop to stop after the current step (the
    first one only sets a flag); a second one ends the process at once, by the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.saved = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            for s in self.SIGNALS:  # restart system calls (SA_RESTART): Jittor's C++ and
                signal.siginterrupt(s, False)  # MPI code fail on EINTR
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\n{name} again: stopping now, without a checkpoint\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        os.write(2, f"\n{name} received: the run stops after this step with a checkpoint "
                    f"(send it again to stop at once)\n".encode())

    def requested(self, world):
        """The signal that asks to stop (0: none); under MPI any rank's, agreed by all."""
        if world == 1:
            return self.signum or 0
        got = np.array([self.signum == s for s in self.SIGNALS], np.int32)
        got = jt.array(got).mpi_all_reduce("add").numpy()  # Jittor's MPI sums (no max)
        return next((int(s) for s, n in zip(self.SIGNALS, got) if n), 0)
