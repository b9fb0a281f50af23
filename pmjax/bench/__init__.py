


def start_table_bench():
  """What the table benches (code_table, goal_table, byzantine) set first: orbax's
  per-restore INFO logs off unless --verbosity is given, and synchronous CPU dispatch
  (their codec timings are of tiny calls). Returns the parsed flags."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  return f
