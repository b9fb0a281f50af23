"""A PyTorch F's state_dict imported onto pmjax's networks (`pmjax.torch_weights`,
`python -m pmjax.import_base --torch_state_dict`): logits equal PyTorch's for every
mapped architecture, clear refusals, and end to end (import, parity model, evaluate,
serve). Skipped where PyTorch is absent (CI installs it: .ci/run)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from pmjax import models, tasks, torch_weights as tw  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_twin(name, shape, seed=0, num_classes=10):
  """pmjax network `name` and its PyTorch twin with random weights and batch-norm
  statistics (`torch_weights.random_twin`)."""
  model = models.get_model(name, num_classes)
  return model, tw.random_twin(model, shape, seed)


def torchvision_resnet18_keys():
  """torchvision.models.resnet18().state_dict()'s keys, in its order (written out:
  torchvision does not install beside the CPU torch here)."""
  bn = lambda p: [f'{p}.{k}' for k in ('weight', 'bias', 'running_mean', 'running_var',
                                       'num_batches_tracked')]
  keys = ['conv1.weight'] + bn('bn1')
  for layer in range(1, 5):
    for block in range(2):
      p = f'layer{layer}.{block}'
      keys += [f'{p}.conv1.weight'] + bn(f'{p}.bn1') + [f'{p}.conv2.weight'] + bn(f'{p}.bn2')
      if layer > 1 and block == 0:
        keys += [f'{p}.downsample.0.weight'] + bn(f'{p}.downsample.1')
  return keys + ['fc.weight', 'fc.bias']


# Every architecture with a PyTorch twin the issue names (and the 3-channel mlp, whose
# first Linear needs the NCHW -> NHWC reordering).
# The full-size ones take seconds each: in the slow tier.
ARCHITECTURES = [('mlp', (28, 28, 1)), ('mlp', (32, 32, 3)), ('lenet5', (28, 28, 1)),
                 pytest.param('resnet18', (32, 32, 3), marks=pytest.mark.slow),
                 pytest.param('vgg11', (32, 32, 3), marks=pytest.mark.slow),
                 pytest.param('resnet18_imagenet', (224, 224, 3), marks=pytest.mark.slow)]


@pytest.mark.parametrize('name,shape', ARCHITECTURES)
def test_imported_logits_equal_pytorchs(name, shape, tmp_path):
  model, twin = random_twin(name, shape, num_classes=1000 if 'imagenet' in name else 10)
  state = twin.state_dict()
  if name == 'resnet18_imagenet':   # as torchvision names them
    assert len(state) == len(torchvision_resnet18_keys())
    state = dict(zip(torchvision_resnet18_keys(), state.values()))
  path = str(tmp_path / 'f.pt')
  torch.save(state, path)
  loaded = tw.load_state_dict(path)
  variables = tw.to_flax(loaded, model, tasks.init_variables(model, 1, shape), shape)
  x = np.random.default_rng(1).normal(size=(3, shape[-1], *shape[:2])).astype(np.float32)
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x)).numpy()
  ours = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  assert np.max(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(theirs))
  assert tw.verify(model, variables, loaded, shape) <= 1e-4


@pytest.mark.slow
def test_a_mismatch_names_the_first_layer_that_differs():
  shape = (32, 32, 3)
  model, twin = random_twin('resnet8', shape)
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  variables = tw.to_flax(state, model, tasks.init_variables(model, 0, shape), shape)
  variables['params']['BasicBlock_1']['BatchNorm_0']['scale'] *= 1.5   # a wrong mapping
  with pytest.raises(tw.TorchImportError, match=r"first mismatching layer: PyTorch "
                     r"'features.4.bn1' vs pmjax 'BasicBlock_1/BatchNorm_0'"):
    tw.verify(model, variables, state, shape)
  # Against the user's own reference logits (any architecture): a wrong F is refused.
  x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    logits = twin(torch.from_numpy(x)).numpy()
  good = tw.to_flax(state, model, tasks.init_variables(model, 0, shape), shape)
  assert tw.verify(model, good, state, shape, reference={'x': x, 'logits': logits}) <= 1e-4
  with pytest.raises(tw.TorchImportError, match='differ from the reference logits'):
    tw.verify(model, variables, state, shape, reference={'x': x, 'logits': logits})


def test_another_architecture_a_wrong_shape_and_a_pickle_payload_are_refused(tmp_path):
  marker = tmp_path / 'payload_ran'

  class Payload:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  evil = str(tmp_path / 'evil.pt')
  torch.save({'fc.weight': torch.zeros(10, 4), 'x': Payload()}, evil)
  with pytest.raises(tw.TorchImportError, match=r'refused.*GLOBAL posix.system.*never '
                     r'unpickles code'):
    tw.load_state_dict(evil)
  assert not marker.exists()
  plain = str(tmp_path / 'tensor.pt')
  torch.save(torch.zeros(3), plain)
  with pytest.raises(tw.TorchImportError, match='not a state_dict'):
    tw.load_state_dict(plain)
  nan = str(tmp_path / 'nan.pt')
  torch.save({'fc.weight': torch.full((2, 2), float('nan'))}, nan)
  with pytest.raises(tw.TorchImportError, match=r"tensor 'fc.weight' holds NaN or Inf"):
    tw.load_state_dict(nan)
  with pytest.raises(tw.TorchImportError, match='no such file'):
    tw.load_state_dict(str(tmp_path / 'missing.pt'))

  shape = (32, 32, 3)
  resnet = models.get_model('resnet8', 10)
  template = tasks.init_variables(resnet, 0, shape)
  mlp = models.get_model('mlp', 10)
  _, lenet = random_twin('lenet5', (28, 28, 1))
  with pytest.raises(tw.TorchImportError, match=r"layer 0: the state_dict's '0' \(conv "
                     r"6x1x5x5\) does not match pmjax's 'Dense_0' \(linear 784x200\).*another "
                     r"architecture"):
    tw.to_flax({k: v.numpy() for k, v in lenet.state_dict().items()}, mlp,
               tasks.init_variables(mlp, 0, (28, 28, 1)), (28, 28, 1))
  _, wide = random_twin('resnet18', shape)     # resnet18's widths into resnet8
  with pytest.raises(tw.TorchImportError, match=r"shape mismatch at the state_dict's "
                     r"'features.0' \(conv 64x3x3x3\) -> pmjax 'Conv_0' \(conv 3x3x3x16\)"):
    tw.to_flax({k: v.numpy() for k, v in wide.state_dict().items()}, resnet, template, shape)
  _, own = random_twin('resnet8', shape)
  short = {k: v.numpy() for k, v in own.state_dict().items() if not k.startswith('head.')}
  with pytest.raises(tw.TorchImportError, match=r"has 24 layers and pmjax's network 25 "
                     r"\(first unmatched: 'Dense_0'"):
    tw.to_flax(short, resnet, template, shape)


@pytest.mark.slow
def test_the_gap_table_script(tmp_path):
  """launch/torch_import_gaps.py (RESULTS.md's table) on the smallest network."""
  out = subprocess.run([sys.executable, 'launch/torch_import_gaps.py', '--archs=mlp',
                        f'--json={tmp_path / "gaps.json"}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = json.load(open(tmp_path / 'gaps.json'))
  assert row['network'] == 'mlp' and 0 <= row['gap'] <= 1e-4 and row['parameters'] == 178110
  assert '| mlp | 28x28x1 | 178,110 |' in out.stdout


@pytest.mark.slow
def test_end_to_end_a_pytorch_f_imported_protected_evaluated_and_served(mnist_dir, tfds_dir,
                                                                       tmp_path):
  """launch/torch_f_end_to_end.py --smoke: a LeNet-5 written and trained in PyTorch,
  imported by `python -m pmjax.import_base` (checked against that network's own logits,
  --torch_reference), a parity model trained for it, evaluated; pmjax measures the test
  accuracy PyTorch measured. Then the parity workdir is served in-process: the served
  labels are F's."""
  root = tmp_path / 'r'
  data = [f'--config_override=data.data_dir={tfds_dir}', '--config_override=data.download=false',
          '--config_override=data.verify_md5=false']
  out = subprocess.run(
      [sys.executable, 'launch/torch_f_end_to_end.py', f'--root={root}', '--smoke',
       f'--manual_dir={mnist_dir}', '--epochs=1', '--parity_epochs=1'] + data, cwd=REPO,
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert abs(row['pmjax_test_A_a'] - row['torch_test_accuracy']) <= 1 / 200 + 1e-6
  assert row['logit_gap'] <= 1e-4 and 0.0 <= row['A_d'] <= 1.0
  again = subprocess.run([sys.executable, '-m', 'pmjax.import_base',
                          f'--torch_state_dict={root / "model.pt"}',
                          '--config=configs/mnist.py:stage=base,model=lenet5',
                          f'--workdir={root / "f"}'], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 1 and 'already holds a run' in again.stderr

  from pmjax.serving import bench
  parts = bench.make_parts(str(root / 'concat_k2'))
  fe = bench.build_frontend('coded', 2, parts).start()
  queries = parts.splits.test_x[:6]
  try:
    answers = [fut.result(timeout=60) for fut in [fe.submit(q) for q in queries]]
  finally:
    fe.close()
  expected = np.argmax(np.asarray(parts.base_fn(parts.base_vars, queries)), -1)
  # F's own answers carry F's labels; an answer the coded policy rebuilt from the parity
  # output (it arrived first) carries the one-epoch parity model's reconstruction.
  from_f = [(int(np.argmax(a.output)), int(e)) for a, e in zip(answers, expected)
            if not a.reconstructed]
  assert from_f and all(got == want for got, want in from_f)
  assert all(a.output.shape == (10,) for a in answers)
