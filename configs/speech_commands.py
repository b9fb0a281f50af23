"""Google Speech Commands v0.01 (30 words), the original's speech `vgg11` on 161x101x1
spectrograms, `sum` parity models (the original's gcommands config).

    python -m pmjax.train --config=configs/speech_commands.py:stage=base \
        --config.data.manual_dir=RAW --workdir=/tmp/gsc_base
    python -m pmjax.train --config=configs/speech_commands.py:stage=parity,k=2 \
        --config.data.manual_dir=RAW --config.base_workdir=/tmp/gsc_base --workdir=/tmp/gsc_k2

RAW holds speech_commands_v0.01.tar.gz, or its extracted tree as
RAW/speech_commands_v0.01/ (pmjax/data/speech_commands.py: splits from the official
validation and testing lists, the original's STFT features). Prepared: 65 KB of
float32 spectrogram per clip, several GB in all, so training streams them
(data.pipeline='auto').
Models: model=vgg11_speech (default) or lenet_speech (the original's two);
code=sum (default; the original's) or concat (k spectrograms downsampled side by
side). Base recipe: Adam 1e-3, batch 100 (GCommandsPytorch's defaults), 30
epochs with a cosine decay instead of its up to 100 with early stopping;
parity: the default (Adam 1e-3, wd 1e-5, batch 64 groups for k=2, 100 epochs;
the original ran 1000). GPU-sized; `smoke` (a narrow VGG on a few clips) runs on
a CPU in seconds. Real-archive results: not measured (the archive is not
available offline here; see RESULTS.md).
Arguments: see configs/default.py.
"""

from configs import default


def get_config(arg=None):
  c = default.get_config(arg, dataset='speech_commands', model='vgg11_speech',
                         base_epochs=30, base_batch_size=100, code='sum')
  c.data.augment = False
  c.eval_batch_size = min(c.eval_batch_size, 200)
  if c.smoke:
    if c.model == 'vgg11_speech':
      c.model = 'vgg11_speech_narrow'
    c.data.train_limit, c.data.val_limit, c.data.test_limit = 64, 16, 16
    c.base.batch_size, c.parity.batch_size = 16, 8
    c.eval_batch_size = 16
    c.scan_unroll = 1   # a rolled scan compiles once per stage: faster for a few steps
  return c
