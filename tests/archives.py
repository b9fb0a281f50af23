"""Test helpers for the synthetic archives (`pmjax.data.synthetic`)."""


def data_config(config_module, raw, tfds_dir, arg='smoke', **data):
  """`config_module.get_config(arg)` reading raw files from `raw` offline, prepared data
  in `tfds_dir`, no progress bar; `data` overrides config.data fields."""
  c = config_module.get_config(arg)
  c.data.update(dict(manual_dir=raw, data_dir=tfds_dir, download=False, **data))
  c.progress_bar = False
  return c
