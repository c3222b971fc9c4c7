"""Tests for graphbridge.dmvae: the private-shared disentangled multimodal VAE strategy."""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib
from graphbridge.strategies.dmvae import aligner as dmvae_aligner
from graphbridge.strategies.dmvae import model as dmvae_model
from graphbridge.model import translators as translators_lib
from graphbridge.strategies import dmvae
from graphbridge.strategies.dmvae import trainer as dmvae_trainer
from graphbridge.evaluation import retrieval as retrieval_lib

from conftest import load_config_module, make_synthetic_arrays
from graphbridge.training import writers as writers_lib
from graphbridge.runs import experiment
from graphbridge.runs import evaluate as evaluate_run
import graphbridge


def quiet(msg: str) -> None:
  del msg


def tiny_config(steps: int = 40):
  config = load_config_module("configs/dmvae.py").get_config("tiny")
  config.train.steps = steps
  config.train.log_every = 5
  config.train.checkpoint_every = steps
  return config


def synthetic(
  rows=None, paired=(("image", "text"), ("audio", "text")), seed=0
) -> dataset_lib.Dataset:
  dims = {"image": 6, "audio": 6, "text": 8}
  rows = rows or {"image": 64, "audio": 64, "text": 32}
  arrays = make_synthetic_arrays({m: dims[m] for m in rows}, rows, list(paired), seed)
  return readers_lib.from_arrays(arrays, source="<synthetic>")


# ---- closed forms
# ----------------------------------------------------------------------------------


def test_product_of_experts_matches_closed_form():
  # experts N(1, 0.5) and N(-2, 2) in 1-D plus the N(0, 1) prior: precision 1 + 2 + 0.5 = 3.5,
  # mean (2 * 1 + 0.5 * -2) / 3.5 = 1 / 3.5.
  mu = jnp.asarray([[[1.0]], [[-2.0]]])
  logvar = jnp.log(jnp.asarray([[[0.5]], [[2.0]]]))
  mean, lv = dmvae_model.product_of_experts(mu, logvar, jnp.ones((2, 1)))
  np.testing.assert_allclose(mean, [[1.0 / 3.5]], rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(lv), [[1.0 / 3.5]], rtol=1e-6)
  # masking the second expert leaves expert 1 and the prior: precision 3, mean 2 / 3
  mean, lv = dmvae_model.product_of_experts(mu, logvar, jnp.asarray([[1.0], [0.0]]))
  np.testing.assert_allclose(mean, [[2.0 / 3.0]], rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(lv), [[1.0 / 3.0]], rtol=1e-6)
  # no expert present: the prior itself
  mean, lv = dmvae_model.product_of_experts(mu, logvar, jnp.zeros((2, 1)))
  np.testing.assert_allclose(mean, [[0.0]], atol=1e-7)
  np.testing.assert_allclose(lv, [[0.0]], atol=1e-7)


def test_product_of_experts_matches_density_product_numerically():
  # multiply the three densities on a grid and read off mean and variance
  rng = np.random.default_rng(0)
  mus, variances = rng.normal(size=3), rng.uniform(0.2, 3.0, size=3)
  grid = np.linspace(-12, 12, 200001)
  log_density = -0.5 * grid**2
  for m, v in zip(mus, variances):
    log_density += -0.5 * (grid - m) ** 2 / v
  weights = np.exp(log_density - log_density.max())
  weights /= weights.sum()
  mean_numeric = float((weights * grid).sum())
  var_numeric = float((weights * (grid - mean_numeric) ** 2).sum())
  mean, lv = dmvae_model.product_of_experts(
    jnp.asarray(mus, jnp.float32)[:, None, None],
    jnp.log(jnp.asarray(variances, jnp.float32))[:, None, None],
    jnp.ones((3, 1)),
  )
  np.testing.assert_allclose(float(mean[0, 0]), mean_numeric, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(jnp.exp(lv)[0, 0]), var_numeric, rtol=1e-4)


def test_gaussian_kl_matches_closed_form():
  # KL(N(mu, s^2) || N(0, 1)) = -log s + (s^2 + mu^2) / 2 - 1/2, summed over dimensions
  mu = np.asarray([[1.0, 0.0, -0.5]])
  var = np.asarray([[1.0, np.e, 0.25]])
  expected = np.sum(-0.5 * np.log(var) + 0.5 * (var + mu**2) - 0.5)
  got = dmvae_model.gaussian_kl(jnp.asarray(mu), jnp.log(jnp.asarray(var)))
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  np.testing.assert_allclose(
    dmvae_model.gaussian_kl(jnp.zeros((2, 4)), jnp.zeros((2, 4))), [0.0, 0.0], atol=1e-7
  )
  # Monte Carlo check of the same quantity: E_q[log q - log p]
  rng = np.random.default_rng(1)
  z = mu + np.sqrt(var) * rng.normal(size=(400000, 3))
  log_q = -0.5 * ((z - mu) ** 2 / var + np.log(2 * np.pi * var))
  log_p = -0.5 * (z**2 + np.log(2 * np.pi))
  np.testing.assert_allclose(np.mean(np.sum(log_q - log_p, axis=1)), expected, rtol=2e-2)


def test_vmf_term_is_kappa_times_one_minus_cosine():
  x = jnp.asarray([[3.0, 4.0]])  # not normalised: the term normalises the target
  x_hat = jnp.asarray([[1.0, 0.0]])
  np.testing.assert_allclose(dmvae_model.vmf_nll(x_hat, x, 10.0), [10.0 * (1 - 0.6)], rtol=1e-6)


# ---- missing modalities ------------------------------------------------------------------------


def test_masked_rows_give_no_gradient_to_missing_modalities():
  spec = dmvae_model.DMVAESpec(
    dims=(("image", 6), ("text", 8)),
    shared_dim=4,
    private_dim=2,
    arch=translators_lib.TranslatorArch(hidden=(8,)),
  )
  params = dmvae_model.init_params(spec, 0)
  rng = np.random.default_rng(0)
  xs = {
    "image": jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
    "text": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
  }
  present = {"image": jnp.ones(5), "text": jnp.zeros(5)}  # text missing on every row

  losses = jax.jit(
    lambda p, x, mask: dmvae_model.row_losses(spec, p, x, mask, jax.random.PRNGKey(0))
  )
  grads = jax.jit(jax.grad(lambda p: jnp.mean(losses(p, xs, present)[0])))(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))
  assert norm(grads["enc:text"]) == 0.0 and norm(grads["dec:text"]) == 0.0
  assert norm(grads["enc:image"]) > 0.0 and norm(grads["dec:image"]) > 0.0
  # the text values of a missing row do not matter
  changed = {**xs, "text": xs["text"] * 100.0 + 3.0}
  np.testing.assert_array_equal(losses(params, xs, present)[0], losses(params, changed, present)[0])
  # with text present the cross terms appear
  _, parts = losses(params, xs, {"image": jnp.ones(5), "text": jnp.ones(5)})
  _, parts_missing = losses(params, xs, present)
  assert float(jnp.min(parts["cross"])) > 0.0
  np.testing.assert_array_equal(parts_missing["cross"], 0.0)


def test_rows_with_missing_modalities_train():
  # three modalities; only a third of the image rows and half the audio rows have a text partner,
  # and image and audio are never paired: the unpaired rows train through the unimodal ELBO.
  arrays = make_synthetic_arrays(
    {"image": 6, "audio": 6, "text": 8},
    {"image": 60, "audio": 60, "text": 30},
    [("image", "text"), ("audio", "text")],
    seed=3,
  )
  image_pairs = arrays["pairs_image__text"]
  arrays["pairs_image__text"] = image_pairs[image_pairs[:, 0] % 3 == 0]
  audio_pairs = arrays["pairs_audio__text"]
  arrays["pairs_audio__text"] = audio_pairs[audio_pairs[:, 0] % 2 == 0]
  dataset = readers_lib.from_arrays(arrays, source="<partly paired>")
  config = tiny_config(steps=60)
  result = dmvae_trainer.train(config, None, dataset, log=quiet)
  groups = [g.modalities for g in dmvae_trainer.training_groups(dataset, dataset.names, 1.0, quiet)]
  assert ("image",) in groups and ("audio",) in groups
  unpaired_images = np.setdiff1d(
    np.nonzero(dataset.modalities["image"].train)[0], dataset.pairs_for("image", "text")[:, 0]
  )
  assert len(unpaired_images) > 20
  aligner = dmvae_aligner.DMVAEAligner(result.spec, result.params)
  rows = retrieval_lib.retrieval_rows(aligner, dataset, split="test")
  by_pair = {(r["query"], r["gallery"]): r for r in rows if r["level"] == "class"}
  row = by_pair[("image", "text")]
  assert row["mAP"] > row["chance_mAP"] + 0.2, row


# ---- training on digits ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  return readers_lib.load_digits()


@pytest.fixture(scope="module")
def digits_run(digits, tmp_path_factory):
  config = tiny_config(steps=120)
  config.train.log_every = 10
  workdir = str(tmp_path_factory.mktemp("dmvae_digits"))
  result = dmvae_trainer.train(config, workdir, digits, log=quiet)
  return config, workdir, result


def test_elbo_falls_on_digits(digits, digits_run):
  config, _, result = digits_run
  groups = dmvae_trainer.training_groups(
    digits, digits.names, float(config.dmvae.unpaired_weight), quiet
  )
  loss_fn = jax.jit(
    dmvae_trainer.make_loss_fn(result.spec, groups, 256, float(config.dmvae.cross_weight))
  )
  arrays = dmvae_trainer.sampler_arrays(digits, groups)
  key = jax.random.PRNGKey(123)  # same rows and noise before and after training
  before = float(
    loss_fn(dmvae_model.init_params(result.spec, int(config.seed)), {}, arrays, key)[0]
  )
  after = float(loss_fn(result.params, {}, arrays, key)[0])
  assert after < 0.9 * before, (before, after)
  curve = [
    r["loss/total"] for r in writers_lib.read_metrics(os.path.join(digits_run[1], "metrics.jsonl"))
  ]
  assert len(curve) == 12 and curve[-1] < curve[0]


def test_zero_shot_retrieval_through_shared_latent_on_tiny_digits(digits, digits_run):
  _, _, result = digits_run
  aligner = dmvae_aligner.DMVAEAligner(result.spec, result.params)
  rows = retrieval_lib.retrieval_rows(
    aligner, digits, split="test", pairs=[("image", "audio"), ("audio", "image")]
  )
  assert {r["route"] for r in rows} == {"image->shared<-audio", "audio->shared<-image"}
  for r in rows:
    assert r["hops"] == 2
    assert r["mAP"] > 2 * r["chance_mAP"] + 0.05, r
  translated = retrieval_lib.retrieval_rows(
    dmvae_aligner.DMVAEAligner(result.spec, result.params, mode="translate"),
    digits,
    split="test",
    pairs=[("image", "audio")],
  )
  assert translated[0]["route"] == "image->shared->audio"
  assert translated[0]["mAP"] > translated[0]["chance_mAP"] + 0.1, translated[0]


def test_checkpoint_round_trip(digits, digits_run):
  config, workdir, result = digits_run
  loaded = dmvae_trainer.load(workdir)
  assert loaded.step == int(config.train.steps)
  assert loaded.spec == result.spec
  assert set(loaded.params) == {f"{k}:{m}" for m in digits.names for k in ("enc", "dec")}
  for name, tree in result.params.items():
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(loaded.params[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  items = sorted(os.listdir(loaded.step_dir))
  assert "module.enc.image" in items and "module.dec.text" in items
  # training again in the same workdir resumes at the final step: nothing runs, same params
  again = dmvae_trainer.train(config, workdir, digits, log=quiet)
  assert again.steps_run == 0
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(result.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_continues_bit_identically(tmp_path):
  dataset = synthetic()
  config = tiny_config(steps=20)
  config.train.checkpoint_every = 10
  workdir = str(tmp_path / "run")
  straight = dmvae_trainer.train(config, workdir, dataset, log=quiet)
  # as if stopped after step 10: without the final checkpoint, training again resumes from step 10
  import shutil

  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  messages = []
  resumed = dmvae_trainer.train(config, workdir, dataset, log=messages.append)
  assert resumed.steps_run == 10 and any("resumed from checkpoint step 10" in m for m in messages)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- grafting ----------------------------------------------------------------------------------


def _tree_hashes(root: str) -> dict[str, str]:
  out = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_graft_trains_new_modality_and_leaves_old_modules_byte_identical(tmp_path):
  dataset = synthetic()
  config = tiny_config(steps=40)
  old_dir, new_dir = str(tmp_path / "old"), str(tmp_path / "new")
  base = dmvae_trainer.train(
    config, old_dir, dataset_lib.subset_modalities(dataset, ["image", "text"]), log=quiet
  )
  before = _tree_hashes(old_dir)
  grafted = dmvae.graft(config, old_dir, new_dir, dataset, log=quiet)
  assert _tree_hashes(old_dir) == before  # the old run is untouched
  old = dmvae_trainer.load(old_dir)
  new = dmvae_trainer.load(new_dir)
  assert set(grafted.item_digests) == {"enc:image", "dec:image", "enc:text", "dec:text"}
  for module in grafted.item_digests:  # items copied byte for byte
    assert dmvae.module_digest(old.step_dir, module) == dmvae.module_digest(new.step_dir, module)
    for a, b in zip(jax.tree.leaves(base.params[module]), jax.tree.leaves(new.params[module])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert set(grafted.result.trainable) == {"enc:audio", "dec:audio"}
  assert new.meta["frozen"] == sorted(grafted.item_digests)
  # the grafted modality retrieves through the old shared latent, zero-shot to image
  rows = retrieval_lib.retrieval_rows(
    dmvae_aligner.DMVAEAligner(new.spec, new.params),
    dataset,
    split="test",
    pairs=[("audio", "text"), ("audio", "image")],
  )
  for r in rows:
    assert r["mAP"] > r["chance_mAP"] + 0.15, r


# ---- the pipeline ------------------------------------------------------------------------------


def test_pipeline_reports_shared_and_translation_routes_and_evaluates_workdir(tmp_path):
  path = str(tmp_path / "tri.npz")
  synthetic().save(path)
  config = tiny_config(steps=20)
  config.data.path = path
  workdir = str(tmp_path / "run")
  summary = experiment.train_and_evaluate(config, workdir, log=quiet, plots=False)
  assert summary["strategy"] == "dmvae" and summary["step"] == 20
  routes = {(r["route"], r["named_route"]) for r in summary["rows"]}
  assert ("image->shared<-audio", False) in routes and ("image->shared->audio", True) in routes
  assert len(routes) == 12  # 6 ordered pairs, each in the shared latent and by translation
  assert os.path.exists(os.path.join(workdir, "report.md"))
  again = evaluate_run.evaluate_workdir(workdir, out=str(tmp_path / "eval"), plots=False, log=quiet)
  before = {(r["route"], r["level"]): r["mAP"] for r in summary["rows"]}
  after = {(r["route"], r["level"]): r["mAP"] for r in again["rows"]}
  assert after == pytest.approx(before, abs=1e-6)


def test_api_loads_a_dmvae_workdir(digits_run):
  """graphbridge.load on a DMVAE workdir: the shared latent and translation through the same Run."""
  _, workdir, _ = digits_run
  run = graphbridge.load(workdir)
  assert run.strategy == "dmvae" and set(run.modalities) == {"image", "audio", "text"}
  x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
  shared = run.translate(x, "image->shared")
  assert shared.shape == (3, run.model.spec.shared_dim)
  np.testing.assert_allclose(np.linalg.norm(shared, axis=1), 1.0, rtol=1e-5)
  assert run.translate(x, "image->shared->audio").shape == (3, 200)
  with pytest.raises(AttributeError, match="no translator graph"):
    run.edge_params()
