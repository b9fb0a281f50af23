"""What the command lines share: one-line errors for mistakes a user can fix.

An error whose message names the problem and the fix (a corrupt checkpoint, a
missing raw file, a config that cannot run, a workdir in use) is printed as one
`error: ...` line on stderr, and the command exits with status 1: no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys

from pmjax import checkpoint, config_utils, models, runs, torch_weights
from pmjax.data import builders

USER_ERRORS = (checkpoint.CheckpointError, builders.RawFileError, builders.PreparedDataError,
               config_utils.ConfigError, runs.WorkdirBusyError, FloatingPointError,
               models.ModelError, torch_weights.TorchImportError)


@contextlib.contextmanager
def user_errors(*more):
  """Turns the errors that name their own fix (and `more`) into one line and exit 1."""
  try:
    yield
  except USER_ERRORS + more as e:
    print(f'error: {e}', file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a failed orbax/tensorstore read can leave callbacks that print an
    # unrelated "Event loop is closed" traceback at interpreter shutdown.
    os._exit(1)
