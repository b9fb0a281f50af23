"""HTTP request bodies of the Ray Serve app: one query or a batch of them, checked.

    parser = QueryParser(query_shape=(28, 28, 1), query_dtype=np.uint8, validate=fe.validate)
    xs, batched = parser.parse(body, content_type)   # xs: (n, *query_shape)

A body is JSON `{"x": nested list}` or one `.npy` array (`Content-Type:
application/x-npy`, never unpickled). An array of the query's shape is one query
(`batched` False: answered with one dict); one with an extra leading axis is a batch
of queries (answered with `{"answers": [...]}`). JSON values are cast to the query's
dtype when they fit. Any other body is a ValueError naming the problem and the fix.
"""

import io
import json

import numpy as np

NPY_TYPE = 'application/x-npy'


def encode(x, kind: str = 'npy') -> tuple:
  """(body, content type) of queries `x` as a client sends them: `.npy` or JSON."""
  if kind == 'json':
    return json.dumps({'x': np.asarray(x).tolist()}).encode(), 'application/json'
  buf = io.BytesIO()
  np.save(buf, np.asarray(x), allow_pickle=False)
  return buf.getvalue(), NPY_TYPE


class QueryParser:
  """Turns request bodies into checked query arrays (`validate`: one query's check)."""

  def __init__(self, query_shape, query_dtype, validate, max_body_bytes: int = 0,
               max_batch: int = 64):
    self.query_shape, self.query_dtype = tuple(query_shape), np.dtype(query_dtype)
    self.validate, self.max_batch = validate, max_batch
    nbytes = int(np.prod(self.query_shape)) * self.query_dtype.itemsize
    # JSON spends up to ~8 characters on a number: max_batch queries of it, and headroom
    self.max_body_bytes = max_body_bytes or max_batch * 8 * nbytes + 65536

  def parse(self, body: bytes, content_type: str) -> tuple:
    """(queries of shape (n, *query_shape), whether the body held a batch)."""
    if len(body) > self.max_body_bytes:
      raise ValueError(f'request body of {len(body)} bytes is over the limit of '
                       f'{self.max_body_bytes}; send one query of shape {self.query_shape} '
                       f'or a batch of at most {self.max_batch}')
    if content_type.split(';')[0].strip() == NPY_TYPE:
      try:
        x = np.load(io.BytesIO(body), allow_pickle=False)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'body is not a readable .npy array ({type(e).__name__}: {e})') from e
    else:
      x = self._cast_json(self._json_array(body))
    return self.check(x)

  def check(self, x) -> tuple:
    """(checked queries (n, *query_shape), batched) of an array-like `x`."""
    x = np.asarray(x)
    if x.ndim == len(self.query_shape) + 1 and x.shape[1:] == self.query_shape:
      if not 1 <= len(x) <= self.max_batch:
        raise ValueError(f'a batch holds 1 to {self.max_batch} queries (got {len(x)}); '
                         f'split it over several requests')
      return np.stack([self.validate(q) for q in x]), True
    return self.validate(x)[None], False

  @staticmethod
  def _json_array(body):
    try:
      doc = json.loads(body)
    except ValueError as e:
      raise ValueError(f'body is neither JSON {{"x": nested list}} nor {NPY_TYPE} '
                       f'({e})') from e
    if not isinstance(doc, dict) or 'x' not in doc:
      raise ValueError('JSON body must be an object {"x": nested list of the query}')
    try:
      x = np.asarray(doc['x'])
    except ValueError as e:
      raise ValueError(f'"x" is not a rectangular nested list ({e})') from e
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
      raise ValueError(f'"x" must hold numbers (got {x.dtype})')
    return x

  def _cast_json(self, x):
    want = self.query_dtype
    if np.issubdtype(want, np.integer):
      if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.isfinite(x)):
          raise ValueError('query contains NaN or Inf values')
        raise ValueError(f'"x" must hold integers for this server\'s {want} queries '
                         f'(got {x.dtype})')
      info = np.iinfo(want)
      if x.size and (x.min() < info.min or x.max() > info.max):
        raise ValueError(f'"x" values must be in [{info.min}, {info.max}] ({want}); got '
                         f'[{x.min()}, {x.max()}]')
    return x.astype(want)
