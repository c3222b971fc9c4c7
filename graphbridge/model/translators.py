"""Flax MLP translators, held stacked by bucket, and path composition.

Edges with the same (d_in, d_out, architecture, trainable) share a *bucket*: their parameters are
stacked along a leading axis and applied with one batched call (`nn.vmap` over the stack, i.e. one
batched matmul per layer). `EdgeLayout` is the static map edge -> (bucket, index) computed once per
graph. Parameters flow as `{bucket_key: stacked_params}`; `unstack` gives the per-edge view
`{"image->text": params}` used by checkpoints and by users.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Mapping, Sequence
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from graphbridge.core.graph import Edge, ModalityGraph, Path, path_edges, path_name
from graphbridge.core.errors import GraphError
from graphbridge.core.fields import CHOICES


PyTree = Any


_ACTIVATIONS: dict[str, Callable] = {
  "gelu": functools.partial(nn.gelu, approximate=True),
  "gelu_exact": functools.partial(nn.gelu, approximate=False),
  "relu": nn.relu,
  "silu": nn.silu,
  "tanh": jnp.tanh,
}


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


ACTIVATIONS = CHOICES["model.activation"]  # the keys of _ACTIVATIONS (a test checks)


COMPUTE_DTYPES = CHOICES["model.compute_dtype"]  # the keys of _DTYPES


MLP_IMPLS = CHOICES["model.impl"]


EDGE_APPLY = CHOICES["model.edge_apply"]


def dtype_from_name(name: str):
  try:
    return _DTYPES[name]
  except KeyError:
    raise ValueError(f"unknown compute dtype {name!r} (choices: {', '.join(_DTYPES)})") from None


@dataclasses.dataclass(frozen=True)
class TranslatorArch:
  """Architecture of one translator MLP: d_in -> hidden[0] -> ... -> hidden[-1] -> d_out."""

  hidden: tuple[int, ...] = (512, 512)
  activation: str = "gelu"
  layer_norm: bool = False  # LayerNorm after each hidden Dense, before the activation
  residual: bool = False  # add a skip path (identity if d_in == d_out, else a bias-free Dense)
  # how the hidden layers run (same parameters, same function): "flax" (nn.Dense + activation,
  # autodiff) or "fused" (dense_bias_act: saves only the pre-activation, recomputes the activation's
  # derivative in float32 and reduces the bias gradient in the same backward pass). Not part of
  # `tag`, so bucket keys and checkpoints do not depend on it.
  impl: str = "flax"
  # how a bucket's edges run together (same parameters, same function; not part of `tag`):
  # "batched" (one batched matmul per layer over the stacked edges), "per_edge" (the stacked
  # parameters split once per call and one 2-D matmul per edge and layer), or "auto": per_edge where
  # JAX runs on CPU and the bucket has 2..PER_EDGE_MAX_EDGES edges, batched elsewhere (see
  # `resolve_edge_apply`; measured in docs/performance.md).
  edge_apply: str = "auto"
  # a linear path beside the MLP: out = linear(x) + mlp(x), the MLP's output layer starting at
  # zero (so a closed-form start of the linear path is the whole translator at step 0). 0: none;
  # r > 0: a full [d_in, d_out] map, or rank r factors where those are smaller (`linear_rank`).
  linear: int = 0

  def __post_init__(self):
    object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
    object.__setattr__(self, "linear", int(self.linear))
    if any(h <= 0 for h in self.hidden):
      raise ValueError(f"translator hidden sizes must be positive, got {self.hidden}")
    if self.linear < 0:
      raise ValueError(
        f"translator linear rank must be >= 0 (0: no linear path), got {self.linear}"
      )
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
        f"unknown activation {self.activation!r} (choices: {', '.join(_ACTIVATIONS)})"
      )
    if self.impl not in MLP_IMPLS:
      raise ValueError(f"unknown translator impl {self.impl!r} (choices: {', '.join(MLP_IMPLS)})")
    if self.edge_apply not in EDGE_APPLY:
      raise ValueError(f"unknown edge_apply {self.edge_apply!r} (choices: {', '.join(EDGE_APPLY)})")
    if self.impl == "fused" and self.layer_norm:
      raise ValueError(
        "translator impl 'fused' needs layer_norm=False (the fused block is "
        "Dense + bias + activation)"
      )

  @property
  def tag(self) -> str:
    parts = ["h" + "x".join(map(str, self.hidden)) if self.hidden else "linear", self.activation]
    if self.layer_norm:
      parts.append("ln")
    if self.residual:
      parts.append("res")
    if self.linear:
      parts.append(f"lin{self.linear}")
    return "-".join(parts)

  def to_dict(self) -> dict:
    out = {
      "hidden": list(self.hidden),
      "activation": self.activation,
      "layer_norm": self.layer_norm,
      "residual": self.residual,
    }
    if self.impl != "flax":
      out["impl"] = self.impl
    if self.linear:  # absent in runs without a linear path (and in every run before it existed)
      out["linear"] = self.linear
    return out  # edge_apply is left out: how edges run is no part of a saved model

  @classmethod
  def from_dict(cls, data: Mapping) -> "TranslatorArch":
    return cls(
      hidden=tuple(data["hidden"]),
      activation=data["activation"],
      layer_norm=bool(data["layer_norm"]),
      residual=bool(data["residual"]),
      impl=data.get("impl", "flax"),
      linear=int(data.get("linear", 0)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def dense_bias_act(x: jax.Array, kernel: jax.Array, bias: jax.Array, activation: str) -> jax.Array:
  """act(x @ kernel + bias) in x's dtype: x [rows, d_in], kernel [d_in, h], bias [h] -> [rows, h].

  Same value as nn.Dense followed by the activation (matmul with float32 accumulation, bias added
  in x's dtype; the activation evaluated in float32, then cast). The backward pass keeps only the
  pre-activation, recomputes the activation's derivative in float32 and sums the bias gradient
  from the same float32 values, so one memory pass over [rows, h] serves both."""
  return _dense_bias_act_fwd(x, kernel, bias, activation)[0]


def _dense_bias_act_fwd(x, kernel, bias, activation):
  z = jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
  z = z + bias.astype(x.dtype)
  y = _ACTIVATIONS[activation](z.astype(jnp.float32)).astype(x.dtype)
  return y, (x, kernel, bias, z)


def _dense_bias_act_bwd(activation, residuals, g):
  x, kernel, bias, z = residuals
  _, act_vjp = jax.vjp(_ACTIVATIONS[activation], z.astype(jnp.float32))
  dz32 = act_vjp(g.astype(jnp.float32))[0]
  dz = dz32.astype(x.dtype)
  d_bias = jnp.sum(dz32, axis=0).astype(bias.dtype)
  d_kernel = jnp.dot(x.T, dz, preferred_element_type=jnp.float32).astype(kernel.dtype)
  d_x = jnp.dot(dz, kernel.astype(x.dtype).T, preferred_element_type=jnp.float32).astype(x.dtype)
  return d_x, d_kernel, d_bias


dense_bias_act.defvjp(_dense_bias_act_fwd, _dense_bias_act_bwd)


class _DenseAct(nn.Module):
  """Parameters exactly as nn.Dense (kernel lecun_normal, bias zeros, same names), applied with
  dense_bias_act."""

  features: int
  activation: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    lead = x.shape[:-1]
    y = dense_bias_act(
      x.astype(self.dtype).reshape(-1, x.shape[-1]),
      kernel.astype(self.dtype),
      bias.astype(self.dtype),
      self.activation,
    )
    return y.reshape(lead + (self.features,))


class Translator(nn.Module):
  """x: [..., d_in] -> [..., d_out]. Params in float32; matmuls in `dtype` (e.g. bfloat16)."""

  d_out: int
  arch: TranslatorArch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = _ACTIVATIONS[self.arch.activation]
    h = x.astype(self.dtype)
    for i, width in enumerate(self.arch.hidden):
      if self.arch.impl == "fused":
        h = _DenseAct(width, self.arch.activation, dtype=self.dtype, name=f"dense_{i}")(h)
        continue
      h = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=f"dense_{i}")(h)
      if self.arch.layer_norm:
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=f"norm_{i}")(h)
      h = act(h)
    # with a linear path the MLP is a residual on it that starts at zero
    zero = dict(kernel_init=nn.initializers.zeros_init()) if self.arch.linear else {}
    out = nn.Dense(self.d_out, dtype=self.dtype, param_dtype=jnp.float32, name="out", **zero)(h)
    if self.arch.linear:
      out = out + self._linear(x.astype(self.dtype))
    if self.arch.residual:
      if x.shape[-1] == self.d_out:
        out = out + x.astype(self.dtype)
      else:
        out = out + nn.Dense(
          self.d_out, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name="skip"
        )(x.astype(self.dtype))
    return out

  def _linear(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    rank = linear_rank(x.shape[-1], self.d_out, self.arch.linear)
    if rank == 0:
      return dense(self.d_out, name="linear")(x)
    return dense(self.d_out, name="linear_out")(dense(rank, use_bias=False, name="linear_in")(x))


def linear_rank(d_in: int, d_out: int, cap: int) -> int:
  """Rank of the factored linear path (linear_in [d_in, r], linear_out [r, d_out]) for a cap of r,
  or 0 where the full [d_in, d_out] map has no more parameters than the factors (then it is
  exact: any map fits)."""
  return 0 if d_in * d_out <= cap * (d_in + d_out) else int(cap)


def set_linear_map(edge_params: PyTree, bias, kernel=None, factors=None) -> PyTree:
  """One edge's params with its linear path set to x -> x @ kernel + bias (a full path: kernel
  [d_in, d_out]) or x -> x @ a @ b + bias (a path factored at rank r: factors (a [d_in, r],
  b [r, d_out])); every other parameter is kept. With the MLP residual's output layer at zero
  (its start) the translator is then that map."""
  out = dict(edge_params)
  if (kernel is None) == (factors is None):
    raise ValueError("set_linear_map: give a kernel (full path) or factors (factored path)")
  have = "linear" if "linear" in out else "linear_in" if "linear_in" in out else None
  want = "linear" if kernel is not None else "linear_in"
  if have != want:
    raise ValueError(
      f"set_linear_map: the edge's linear path is {have or 'absent'}, got "
      + ("a full kernel" if kernel is not None else "factors")
    )
  f32 = lambda v: jnp.asarray(np.asarray(v), jnp.float32)
  if kernel is not None:
    out["linear"] = {"kernel": f32(kernel), "bias": f32(bias)}
    return out
  a, b = factors
  out["linear_in"] = {"kernel": f32(a)}
  out["linear_out"] = {"kernel": f32(b), "bias": f32(bias)}
  return out


# One module applied to a stack of edges: params [E, ...], x [E, rows, d_in] -> [E, rows, d_out].
StackedTranslator = nn.vmap(
  Translator, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0, out_axes=0
)


def translator_flops(d_in: int, d_out: int, arch: TranslatorArch) -> int:
  """Forward matmul FLOPs per row (2 * multiply-adds)."""
  widths = (d_in,) + arch.hidden + (d_out,)
  macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  if arch.residual and d_in != d_out:
    macs += d_in * d_out
  if arch.linear:
    rank = linear_rank(d_in, d_out, arch.linear)
    macs += d_in * d_out if rank == 0 else rank * (d_in + d_out)
  return 2 * macs


@dataclasses.dataclass(frozen=True)
class Bucket:
  key: str
  d_in: int
  d_out: int
  arch: TranslatorArch
  trainable: bool
  edges: tuple[Edge, ...]

  @property
  def size(self) -> int:
    return len(self.edges)


def _stable_seed(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class EdgeLayout:
  """Static description of the translators of a graph: which bucket and row each edge lives in."""

  graph: ModalityGraph
  arch_by_edge: tuple[tuple[Edge, TranslatorArch], ...]
  frozen: frozenset[Edge]
  buckets: tuple[Bucket, ...]

  @classmethod
  def build(
    cls,
    graph: ModalityGraph,
    arch: TranslatorArch | Mapping[str, TranslatorArch],
    frozen: Sequence[Edge | str] = (),
  ) -> "EdgeLayout":
    if isinstance(arch, TranslatorArch):
      arch_for = {e: arch for e in graph.edges}
    else:
      arch_for = {graph.edge(k): v for k, v in arch.items()}
      missing = [e.name for e in graph.edges if e not in arch_for]
      if missing:
        raise GraphError(f"no translator architecture given for edges: {', '.join(missing)}")
    frozen_set = frozenset(graph.edge(e) for e in frozen)
    groups: dict[tuple, list[Edge]] = {}
    dims = graph.dims
    for edge in graph.edges:  # graph order => deterministic bucket order and rows
      signature = (dims[edge.src], dims[edge.dst], arch_for[edge], edge not in frozen_set)
      groups.setdefault(signature, []).append(edge)
    buckets = []
    for (d_in, d_out, a, trainable), edges in groups.items():
      key = f"{d_in}x{d_out}-{a.tag}" + ("" if trainable else "-frozen")
      buckets.append(Bucket(key, d_in, d_out, a, trainable, tuple(edges)))
    return cls(graph, tuple((e, arch_for[e]) for e in graph.edges), frozen_set, tuple(buckets))

  # -- lookups --
  @functools.cached_property
  def _where(self) -> dict[Edge, tuple[str, int]]:
    return {e: (b.key, i) for b in self.buckets for i, e in enumerate(b.edges)}

  @functools.cached_property
  def bucket_by_key(self) -> dict[str, Bucket]:
    return {b.key: b for b in self.buckets}

  def where(self, edge: Edge | str) -> tuple[str, int]:
    return self._where[self.graph.edge(edge)]

  def bucket_of(self, edge: Edge | str) -> Bucket:
    return self.bucket_by_key[self.where(edge)[0]]

  def arch_of(self, edge: Edge | str) -> TranslatorArch:
    return self.bucket_of(edge).arch

  @property
  def trainable_buckets(self) -> tuple[Bucket, ...]:
    return tuple(b for b in self.buckets if b.trainable)

  @property
  def frozen_buckets(self) -> tuple[Bucket, ...]:
    return tuple(b for b in self.buckets if not b.trainable)

  @property
  def trainable_edges(self) -> tuple[Edge, ...]:
    return tuple(e for b in self.trainable_buckets for e in b.edges)

  def to_dict(self) -> dict:
    return {
      "graph": self.graph.to_dict(),
      "arch": {e.name: a.to_dict() for e, a in self.arch_by_edge},
      "frozen": sorted(e.name for e in self.frozen),
    }


def _edge_rng(edge: Edge, seed) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), _stable_seed(edge.name))


@functools.lru_cache(maxsize=None)
def _jitted_init(specs: tuple[tuple[Edge, int, int, TranslatorArch], ...]):
  """One compiled program that initialises every edge in `specs` (one compile, not one per
  shape)."""
  # `impl` changes how layers run, never their parameters: one init program serves every impl
  specs = tuple(
    (e, d_in, d_out, dataclasses.replace(arch, impl="flax", edge_apply="auto"))
    for e, d_in, d_out, arch in specs
  )
  return _jitted_init_flax(specs)


@functools.lru_cache(maxsize=None)
def _jitted_init_flax(specs: tuple[tuple[Edge, int, int, TranslatorArch], ...]):
  def init(seed):
    return {
      e.name: Translator(d_out, arch).init(_edge_rng(e, seed), jnp.zeros((1, d_in), jnp.float32))[
        "params"
      ]
      for e, d_in, d_out, arch in specs
    }

  return jax.jit(init)


def init_edge_params(edge: Edge, d_in: int, d_out: int, arch: TranslatorArch, seed: int) -> PyTree:
  """One edge's params. The RNG depends only on (seed, edge name), never on bucket membership,
  so the same edge starts from the same weights whichever graph it is part of."""
  return init_many([(edge, d_in, d_out, arch)], seed)[edge.name]


def init_many(specs, seed: int) -> dict[str, PyTree]:
  """{edge_name: params} for [(edge, d_in, d_out, arch), ...], compiled as one program."""
  return _jitted_init(tuple(specs))(jnp.int32(seed))


def init_params(layout: EdgeLayout, seed: int, trainable_only: bool = False) -> dict[str, PyTree]:
  """{bucket_key: stacked params [E_b, ...]} for every bucket (or only trainable ones)."""
  specs = [
    (edge, bucket.d_in, bucket.d_out, bucket.arch)
    for bucket in layout.buckets
    if bucket.trainable or not trainable_only
    for edge in bucket.edges
  ]
  return stack(layout, init_many(specs, seed), trainable_only=trainable_only)


def stack(
  layout: EdgeLayout,
  per_edge: Mapping[str, PyTree],
  trainable_only: bool = False,
  buckets: Sequence[Bucket] | None = None,
) -> dict[str, PyTree]:
  """{edge_name: params} -> {bucket_key: params stacked along axis 0}."""
  if buckets is None:
    buckets = layout.trainable_buckets if trainable_only else layout.buckets
  out = {}
  for bucket in buckets:
    missing = [e.name for e in bucket.edges if e.name not in per_edge]
    if missing:
      raise GraphError(f"missing parameters for edges: {', '.join(missing)}")
    trees = [per_edge[e.name] for e in bucket.edges]
    out[bucket.key] = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  return out


def unstack(layout: EdgeLayout, stacked: Mapping[str, PyTree]) -> dict[str, PyTree]:
  """{bucket_key: stacked} -> {edge_name: params} (only for the buckets present)."""
  out = {}
  for key, tree in stacked.items():
    bucket = layout.bucket_by_key[key]
    for i, edge in enumerate(bucket.edges):
      out[edge.name] = jax.tree.map(lambda x, i=i: x[i], tree)
  return out


def count_params(tree: PyTree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def bucket_param_count(bucket: Bucket) -> int:
  """Parameters of one edge of `bucket` (from shapes only: nothing is initialised)."""
  edge = bucket.edges[0]
  return count_params(
    jax.eval_shape(lambda: init_edge_params(edge, bucket.d_in, bucket.d_out, bucket.arch, 0))
  )


PER_EDGE_MAX_EDGES = 32  # auto: a bucket of more edges stays batched (compile time grows with E)


PER_EDGE_MIN_FLOPS = 16e6  # auto: per edge only where one edge's call has this many forward FLOPs


def resolve_edge_apply(bucket: Bucket, backend: str | None = None, rows: int | None = None) -> str:
  """ "batched" or "per_edge" for this bucket (model.edge_apply, "auto" resolved).

  auto = per_edge on CPU for a bucket of 2..PER_EDGE_MAX_EDGES edges whose call moves enough work
  (rows per edge x the translator's forward FLOPs per row >= PER_EDGE_MIN_FLOPS; `rows` None: not
  checked): XLA's CPU backend runs a batched matmul over stacked edges well below its 2-D GEMM rate,
  so E 2-D matmuls on the split parameters are faster there (measured 1.12-1.20x per step,
  docs/performance.md), but they compile E times the matmuls (seconds more per program), and on tiny
  calls the split costs more than it saves. On GPU/TPU one batched call per layer is one kernel and
  stays. One edge is the same either way."""
  mode = bucket.arch.edge_apply
  if mode != "auto":
    return mode
  backend = backend or jax.default_backend()
  if backend != "cpu" or not 1 < bucket.size <= PER_EDGE_MAX_EDGES:
    return "batched"
  if (
    rows is not None
    and rows * translator_flops(bucket.d_in, bucket.d_out, bucket.arch) < PER_EDGE_MIN_FLOPS
  ):
    return "batched"
  return "per_edge"


def _split_edges(tree: PyTree, n: int) -> list[PyTree]:
  """Stacked [n, ...] leaves -> n per-edge trees (jnp.split: its gradient is one concatenate)."""
  leaves, treedef = jax.tree.flatten(tree)
  parts = [[q[0] for q in jnp.split(leaf, n, axis=0)] for leaf in leaves]
  return [jax.tree.unflatten(treedef, [p[i] for p in parts]) for i in range(n)]


def apply_bucket(
  bucket: Bucket, bucket_params: PyTree, x: jax.Array, dtype=jnp.float32
) -> jax.Array:
  """x: [E_b, rows, d_in] -> [E_b, rows, d_out]: every edge of the bucket, as one batched call
  or one call per edge (`resolve_edge_apply`); the same function of the same parameters."""
  if bucket.size == 1 or resolve_edge_apply(bucket, rows=x.shape[1]) == "batched":
    return StackedTranslator(bucket.d_out, bucket.arch, dtype=dtype).apply(
      {"params": bucket_params}, x
    )
  module = Translator(bucket.d_out, bucket.arch, dtype=dtype)
  per_edge = _split_edges(bucket_params, bucket.size)
  xs = _split_edges(x, bucket.size)
  return jnp.stack([module.apply({"params": p}, xe) for p, xe in zip(per_edge, xs)])


def apply_edge(
  layout: EdgeLayout,
  params: Mapping[str, PyTree],
  edge: Edge | str,
  x: jax.Array,
  dtype=jnp.float32,
) -> jax.Array:
  """x: [rows, d_src] -> [rows, d_dst] through one edge. `params` stacked ({bucket_key: ...})."""
  one, bucket = edge_params(layout, params, edge)
  return Translator(bucket.d_out, bucket.arch, dtype=dtype).apply({"params": one}, x)


def edge_params(layout: EdgeLayout, params: Mapping[str, PyTree], edge: Edge | str):
  """(the params of one edge, sliced from its bucket's stack; its bucket)."""
  key, index = layout.where(edge)
  bucket = layout.bucket_by_key[key]
  if key not in params:
    raise GraphError(
      f"edge {bucket.edges[index].name}: no parameters for bucket {key!r} "
      f"(have: {', '.join(params)})"
    )
  return jax.tree.map(lambda p: p[index], params[key]), bucket


def _check_input(layout: EdgeLayout, path: Path, x) -> None:
  d_src = layout.graph.dim(path[0])
  if x.ndim != 2 or x.shape[-1] != d_src:
    raise ValueError(
      f"path {path_name(path)}: input must be [rows, {d_src}] ({path[0]} embeddings), "
      f"got shape {tuple(x.shape)}"
    )


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@functools.partial(jax.jit, static_argnames=("layout", "path", "dtype_name", "normalize_output"))
def _compose_jit(layout, params, path, x, dtype_name, normalize_output):
  dtype = dtype_from_name(dtype_name)
  for edge in path_edges(path):
    x = apply_edge(layout, params, edge, x, dtype)
  x = x.astype(jnp.float32)
  return normalize(x) if normalize_output else x


def compose(
  layout: EdgeLayout,
  params: Mapping[str, PyTree],
  path: str | Sequence[str],
  x,
  dtype_name: str = "float32",
  normalize_output: bool = True,
) -> jax.Array:
  """Translate x along a path, e.g. compose(layout, params, "image->text->audio", x_image).

  x: [rows, d_src] float32 -> [rows, d_dst] float32 (L2-normalised unless normalize_output=False).
  params: stacked ({bucket_key: ...}) or per-edge ({"image->text": ...}) translator params.
  Jitted per (layout, path); a new batch size retraces, a new batch of the same size does not.
  """
  parsed = layout.graph.parse_path(path)
  if params and all("->" in k for k in params):  # per-edge view: stack the buckets this path needs
    needed = {layout.bucket_of(e).key for e in path_edges(parsed)}
    params = stack(layout, params, buckets=[layout.bucket_by_key[k] for k in needed])
  x = jnp.asarray(x, jnp.float32)
  _check_input(layout, parsed, x)
  return _compose_jit(layout, dict(params), parsed, x, dtype_name, normalize_output)
