"""Per-run speed and accuracy from metrics.jsonl: time per epoch, images (or groups)/s.

    python launch/epoch_stats.py W [W ...]

Epoch 1 includes compilation, so the speed is the median over later epochs.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pmjax import metrics, runs  # noqa: E402  (one reader of metrics.jsonl; configs migrated)


def stats(workdir):
  rows = metrics.read_metrics(workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = runs.migrate_config(json.load(f))
  timed = rows[1:] or rows
  last = rows[-1]
  out = {'workdir': workdir, 'stage': config['stage'], 'epochs': last['epoch'],
         'train_s_per_epoch': statistics.median(r['train_time_s'] for r in timed)}
  per_s = statistics.median(r['groups_per_s'] for r in timed)
  if config['stage'] == 'base':
    out['images_per_s'] = per_s
    out['test_A_a'] = last.get('test_A_a')
  else:
    out['groups_per_s'] = per_s
    out['images_per_s'] = per_s * config['code']['k']
    out['test_A_d_top1'] = last.get('test_A_d_top1')
  return out


if __name__ == '__main__':
  for w in sys.argv[1:]:
    print(json.dumps(stats(w)))
