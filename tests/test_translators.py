"""Tests for graphbridge.translators: layout buckets, stacked params, batched application,
compose."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from graphbridge.model import translators as translators_lib
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph

ARCH = translators_lib.TranslatorArch(hidden=(16,), activation="gelu")


@pytest.fixture(scope="module")
def graph():
  # image and depth share a dim, so image->depth / depth->image / image->audio ... share buckets
  return ModalityGraph.build(
    {"image": 6, "text": 8, "audio": 6, "depth": 6},
    [
      "image->text",
      "text->image",
      "audio->text",
      "text->audio",
      "image->depth",
      "depth->image",
      "audio->image",
      "image->audio",
    ],
  )


@pytest.fixture(scope="module")
def layout(graph):
  return translators_lib.EdgeLayout.build(graph, ARCH)


@pytest.fixture(scope="module")
def params(layout):
  return translators_lib.init_params(layout, seed=0)


def plain_apply(per_edge, graph, edge, x):
  """One edge through its own unstacked params, no stacking involved."""
  dst = edge.split("->")[1]
  return translators_lib.Translator(graph.dim(dst), ARCH).apply({"params": per_edge[edge]}, x)


def test_buckets_group_edges_by_shape(layout):
  by_key = {b.key: tuple(e.name for e in b.edges) for b in layout.buckets}
  assert by_key == {
    "6x8-h16-gelu": ("image->text", "audio->text"),
    "6x6-h16-gelu": ("image->audio", "image->depth", "audio->image", "depth->image"),
    "8x6-h16-gelu": ("text->image", "text->audio"),
  }
  assert layout.where("audio->image") == ("6x6-h16-gelu", 2)
  assert layout.bucket_of("text->audio").size == 2
  with pytest.raises(GraphError, match="no edge text->depth in graph"):
    layout.where("text->depth")


def test_frozen_edges_get_their_own_bucket(graph):
  layout = translators_lib.EdgeLayout.build(graph, ARCH, frozen=["image->text"])
  assert layout.where("image->text") == ("6x8-h16-gelu-frozen", 0)
  assert layout.where("audio->text") == ("6x8-h16-gelu", 0)
  assert [b.key for b in layout.frozen_buckets] == ["6x8-h16-gelu-frozen"]
  assert "image->text" not in {e.name for e in layout.trainable_edges}
  trainable = translators_lib.init_params(layout, seed=0, trainable_only=True)
  assert "6x8-h16-gelu-frozen" not in trainable and len(trainable) == 3


def test_per_edge_arch_mapping(graph):
  wide = translators_lib.TranslatorArch(
    hidden=(32,), activation="relu", layer_norm=True, residual=True
  )
  arch = {e: ARCH for e in graph.edge_names}
  arch["image->depth"] = wide
  layout = translators_lib.EdgeLayout.build(graph, arch)
  assert layout.arch_of("image->depth") == wide
  assert layout.where("image->depth") == ("6x6-h32-relu-ln-res", 0)
  del arch["text->audio"]
  with pytest.raises(GraphError, match="no translator architecture given for edges: text->audio"):
    translators_lib.EdgeLayout.build(graph, arch)


def test_arch_validation_and_round_trip():
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    translators_lib.TranslatorArch(hidden=(4,), activation="swish")
  with pytest.raises(ValueError, match="hidden sizes must be positive"):
    translators_lib.TranslatorArch(hidden=(4, 0))
  arch = translators_lib.TranslatorArch(
    hidden=[8, 4], activation="silu", layer_norm=True, residual=True
  )
  assert arch.hidden == (8, 4)
  assert translators_lib.TranslatorArch.from_dict(arch.to_dict()) == arch
  assert translators_lib.TranslatorArch(hidden=()).tag == "linear-gelu"


def test_stack_unstack_round_trip(layout, params):
  per_edge = translators_lib.unstack(layout, params)
  assert set(per_edge) == set(layout.graph.edge_names)
  again = translators_lib.stack(layout, per_edge)
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  kernel = per_edge["image->depth"]["dense_0"]["kernel"]
  assert kernel.shape == (6, 16)
  np.testing.assert_array_equal(kernel, params["6x6-h16-gelu"]["dense_0"]["kernel"][1])
  del per_edge["depth->image"]
  with pytest.raises(GraphError, match="missing parameters for edges: depth->image"):
    translators_lib.stack(layout, per_edge)


def test_edge_init_does_not_depend_on_the_rest_of_the_graph(layout, params):
  small = translators_lib.EdgeLayout.build(
    ModalityGraph.build({"image": 6, "depth": 6}, ["image->depth"]), ARCH
  )
  alone = translators_lib.unstack(small, translators_lib.init_params(small, seed=0))["image->depth"]
  together = translators_lib.unstack(layout, params)["image->depth"]
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(together)):
    np.testing.assert_array_equal(a, b)
  # different edges (and seeds) start from different weights
  other = translators_lib.unstack(layout, params)["depth->image"]
  assert not np.allclose(other["dense_0"]["kernel"], together["dense_0"]["kernel"])
  reseeded = translators_lib.unstack(small, translators_lib.init_params(small, seed=1))[
    "image->depth"
  ]
  assert not np.allclose(reseeded["dense_0"]["kernel"], alone["dense_0"]["kernel"])


def test_apply_bucket_equals_each_edge_alone(layout, params):
  bucket = layout.bucket_by_key["6x6-h16-gelu"]
  per_edge = translators_lib.unstack(layout, params)
  x = jax.random.normal(jax.random.PRNGKey(0), (bucket.size, 5, 6))
  y = translators_lib.apply_bucket(bucket, params[bucket.key], x)
  assert y.shape == (4, 5, 6)
  for i, edge in enumerate(bucket.edges):
    expected = plain_apply(per_edge, layout.graph, edge.name, x[i])
    np.testing.assert_allclose(y[i], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
      translators_lib.apply_edge(layout, params, edge, x[i]), expected, rtol=1e-5, atol=1e-6
    )
  # the edges really differ
  assert float(jnp.abs(y[0] - y[1]).max()) > 1e-3


def test_translator_variants():
  # shapes shared with the other tests (6 -> 8, hidden 16) keep eager compiles few
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 6)))
  for arch, names in [
    (translators_lib.TranslatorArch(hidden=(16,), layer_norm=True), {"dense_0", "norm_0", "out"}),
    (translators_lib.TranslatorArch(hidden=(16,), residual=True), {"dense_0", "out", "skip"}),
  ]:
    module = translators_lib.Translator(8, arch)
    p = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
    assert set(p) == names
    assert jax.jit(module.apply)({"params": p}, x).shape == (5, 8)
  # residual with d_in == d_out is an identity skip: no extra params, output = mlp + x
  arch = translators_lib.TranslatorArch(hidden=(16,), residual=True)
  p = jax.jit(translators_lib.Translator(6, arch).init)(jax.random.PRNGKey(0), x)["params"]
  assert set(p) == {"dense_0", "out"}
  plain = jax.jit(
    translators_lib.Translator(6, translators_lib.TranslatorArch(hidden=(16,))).apply
  )({"params": p}, x)
  np.testing.assert_allclose(
    jax.jit(translators_lib.Translator(6, arch).apply)({"params": p}, x),
    plain + x,
    rtol=1e-5,
    atol=1e-6,
  )


def test_compose_equals_chain_of_edges(layout, params):
  per_edge = translators_lib.unstack(layout, params)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (7, 6)))
  h = plain_apply(per_edge, layout.graph, "image->text", x)
  h = plain_apply(per_edge, layout.graph, "text->audio", h)
  raw = np.asarray(h)
  expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
  out = translators_lib.compose(layout, params, "image->text->audio", x)
  assert out.shape == (7, 6)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
  # per-edge params give the same answer; unnormalised output is the raw chain
  np.testing.assert_allclose(
    translators_lib.compose(layout, per_edge, ("image", "text", "audio"), x), out, rtol=1e-6
  )
  np.testing.assert_allclose(
    translators_lib.compose(layout, params, "image->text->audio", x, normalize_output=False),
    raw,
    rtol=1e-5,
    atol=1e-6,
  )
  # bfloat16 matmuls stay close to float32
  low = translators_lib.compose(layout, params, "image->text->audio", x, dtype_name="bfloat16")
  assert low.dtype == jnp.float32
  assert float(jnp.min(jnp.sum(low * out, axis=1))) > 0.98


def test_compose_errors(layout, params):
  x = np.ones((3, 6), np.float32)
  with pytest.raises(
    ValueError,
    match=r"path image->text: input must be \[rows, 6\] \(image embeddings\), "
    r"got shape \(3, 8\)",
  ):
    translators_lib.compose(layout, params, "image->text", np.ones((3, 8), np.float32))
  with pytest.raises(ValueError, match=r"input must be \[rows, 6\]"):
    translators_lib.compose(layout, params, "image->text", np.ones((6,), np.float32))
  with pytest.raises(
    GraphError, match=r"path image->text->depth: no edge text->depth in graph \(edges: "
  ):
    translators_lib.compose(layout, params, "image->text->depth", x)
  with pytest.raises(GraphError, match="unknown modality 'video'"):
    translators_lib.compose(layout, params, "image->video", x)
  partial = {k: v for k, v in params.items() if k != "8x6-h16-gelu"}
  with pytest.raises(GraphError, match=r"no parameters for bucket '8x6-h16-gelu'"):
    translators_lib.compose(layout, partial, "image->text->audio", x)
  with pytest.raises(ValueError, match="unknown compute dtype 'float8'"):
    translators_lib.compose(layout, params, "image->text", x, dtype_name="float8")


def test_flops_count():
  arch = translators_lib.TranslatorArch(hidden=(16, 4))
  assert translators_lib.translator_flops(6, 8, arch) == 2 * (6 * 16 + 16 * 4 + 4 * 8)
  res = translators_lib.TranslatorArch(hidden=(16,), residual=True)
  assert translators_lib.translator_flops(6, 8, res) == 2 * (6 * 16 + 16 * 8 + 6 * 8)
  assert translators_lib.translator_flops(6, 6, res) == 2 * (6 * 16 + 16 * 6)
