"""The declared config: every field a run reads, with its default, meaning, choices and range.

configs/*.py start from `base_config()`; `complete(config)` fills in what a config written by an
older version (or built by hand) leaves out; core/fields.py checks a config against these
declarations; docs/config.md is generated from them (`python -m graphbridge.runs.config_reference`,
checked by the tests). Nothing else restates a default.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections


from graphbridge.core.field_types import (  # noqa: F401 (Field, _int, above: used by configs)
  COUNT,
  NON_NEGATIVE,
  POSITIVE_INT,
  Field,
  _field,
  _int,
  above,
  at_least,
)


SECTIONS = {
  "": "Top level",
  "data": "Data: where the embeddings come from and how batches are drawn",
  "mesh": "Devices (docs/scaling.md); one device: no mesh at all",
  "graph": "Graph: the translator edges",
  "model": "Translators: each edge's MLP",
  "loss": "Losses of the translator graph",
  "optim": "Optimizer",
  "train": "Training loop, checkpoints, validation",
  "pseudo": "Self-training on pseudo-pairs of unpaired rows (strategies/pseudo.py)",
  "finetune": "Contrastive fine-tuning phase after train.steps",
  "pivot": "strategy=pivot: ImageBind / VIP-ANT binding to one pivot modality",
  "pairwise": "strategy=pairwise: CLIP-style, every modality into one shared space",
  "cmcr": "strategy=cmcr: C-MCR, two contrastive spaces connected through the shared modality",
  "dmvae": "strategy=dmvae: private-shared multimodal VAE",
  "eval": "Evaluation: the report",
  "compare": "launch/compare.py: every strategy, several seeds",
}

FIELDS: tuple[Field, ...] = (
  _field(
    "seed",
    0,
    "seed of initialisation, batches, samples",
    check=(lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
  ),
  _field(
    "strategy",
    "graph",
    "the method: graph | pivot | pairwise | cmcr | dmvae, a registered one, or "
    "'package.module[:ATTR]' (docs/extending.md)",
  ),
  _field(
    "posthoc",
    "none",
    "post-hoc alignment after any strategy, fitted on train rows",
    choices=("none", "center", "procrustes", "cca"),
  ),
  # data
  _field(
    "data.name", "digits", "an embedded set (digits, mv6, mv8, fsdd_chain); data.path wins when set"
  ),
  _field("data.path", "", "a .npz or a folder of .npy files with your embeddings (docs/data.md)"),
  _field(
    "data.batch_size", 128, "rows per pair set and per cycle start in a step", check=POSITIVE_INT
  ),
  _field(
    "data.unsplit",
    "stop",
    "a modality whose test rows include training rows (no <m>_train/<m>_test arrays): stop "
    "(an error naming the fix, before anything trains), auto (a seeded 80/20 split, the rows of "
    "one id kept together, said before training), same (evaluate on the training rows: the "
    "numbers measure fit)",
    choices=("stop", "auto", "same"),
  ),
  _field(
    "data.host_sampling",
    False,
    "draw batches on the host, reading only their rows from memory-mapped "
    ".npy files (data larger than RAM; docs/scaling.md)",
  ),
  _field(
    "data.prefetch",
    16,
    "host sampling: steps read ahead, each on its own thread (more overlap reads from disk when "
    "the tables are not in the page cache; each queued batch holds its float16 rows on the "
    "device: B x sum of dims x 2 bytes)",
    check=POSITIVE_INT,
  ),
  # mesh
  _field(
    "mesh.data",
    -1,
    "devices the batch is split over; -1: all that mesh.edges leaves",
    check=(lambda v: _int(v) and (v == -1 or v >= 1), "-1 (all devices) or an integer >= 1"),
  ),
  _field(
    "mesh.edges",
    1,
    "devices a bucket's stacked edges are split over (wide graphs)",
    check=POSITIVE_INT,
  ),
  _field(
    "mesh.shard_data_rows",
    False,
    "device sampling: split the embedding tables by rows over the data axis",
  ),
  # graph
  _field(
    "graph.edges",
    "",
    "the edges, 'a->b,b->a,...'; '' = both directions of every pair set in the data",
  ),
  _field("graph.extra_edges", "", "edges trained by cycles only, e.g. 'image->audio,audio->image'"),
  _field("graph.frozen", "", "edges held fixed (a graft sets them)"),
  _field("graph.virtual_nodes", "", "nodes without data (projection spaces), 'name:dim,...'"),
  # model
  _field(
    "model.hidden",
    (256,),
    "hidden widths of each edge's MLP",
    check=(lambda v: all(_int(h) and h > 0 for h in v), "positive integers"),
  ),
  _field(
    "model.activation",
    "gelu",
    "activation of the hidden layers",
    choices=("gelu", "gelu_exact", "relu", "silu", "tanh"),
  ),
  _field("model.layer_norm", True, "LayerNorm after each hidden layer"),
  _field("model.residual", False, "add the input to the output where d_in == d_out"),
  _field(
    "model.linear_rank",
    -1,
    "a linear path beside each translator's MLP, which becomes a residual starting at zero; "
    "each edge with pairs starts as their ridge map (training/closed_form.py). r > 0: a full "
    "map, or rank-r factors where smaller; 0: none; -1 auto: the widest hidden layer for the "
    "graph loss plan, none for pivot/pairwise/cmcr",
    check=(lambda v: _int(v) and v >= -1, "-1 (auto), 0 (none) or a rank >= 1"),
  ),
  _field(
    "model.compute_dtype",
    "float32",
    "dtype of the matmuls (params and optimizer stay float32)",
    choices=("float32", "bfloat16", "float16"),
  ),
  _field(
    "model.impl",
    "flax",
    "fused: hidden layers as one block whose backward recomputes the activation "
    "(same parameters; needs layer_norm=False)",
    choices=("flax", "fused"),
  ),
  _field(
    "model.edge_apply",
    "auto",
    "how a bucket's stacked edges run (same function): auto = per_edge on "
    "CPU, batched on GPU/TPU (docs/performance.md)",
    choices=("auto", "batched", "per_edge"),
  ),
  # loss
  _field(
    "loss.edge_cos", 1.0, "weight of per-edge 1 - cos(f(x_a), y_b) on pairs", check=NON_NEGATIVE
  ),
  _field("loss.infonce", 0.5, "weight of per-edge symmetric InfoNCE on pairs", check=NON_NEGATIVE),
  _field("loss.temperature", 0.07, "InfoNCE temperature", check=above(0)),
  _field("loss.learn_temperature", False, "learn the InfoNCE temperature (CLIP's clamp at 100)"),
  _field(
    "loss.infonce_positives",
    "auto",
    "per pair set: pair (each pair its own positive) where pairs join "
    "instances, label (same-class rows) where they are class-level; auto reads the pairs",
    choices=("auto", "label", "pair"),
  ),
  _field(
    "loss.cycle_weights",
    (0.2,),
    "weights of 2-cycles, 3-cycles, ...: a->b->a on a's own rows",
    check=(
      lambda v: all(isinstance(w, (int, float)) and w >= 0 for w in v),
      "numbers >= 0 (weights of 2-, 3-, ... cycles)",
    ),
  ),
  _field(
    "loss.supervised_edges", "", "edges with pair terms; '' = every trainable edge with pairs"
  ),
  _field("loss.cycle_starts", "", "modalities cycles start from; '' = every modality"),
  _field(
    "loss.structure",
    0.0,
    "neighbourhood-structure regulariser weight (docs/unpaired.md)",
    check=NON_NEGATIVE,
  ),
  _field(
    "loss.structure_temperature",
    0.1,
    "softmax temperature of the structure regulariser",
    check=above(0),
  ),
  _field(
    "loss.aligned_batches",
    False,
    "instance-aligned data (row i of every modality = one sample): one "
    "batch per modality serves pair terms and cycles",
  ),
  # optim
  _field("optim.name", "adam", "the optimizer", choices=("adam", "adamw", "sgd")),
  _field(
    "optim.lr",
    2e-3,
    "peak learning rate (after warmup; cosine decay over train.steps)",
    check=above(0),
  ),
  _field("optim.warmup_steps", 30, "linear warmup steps", check=COUNT),
  _field(
    "optim.final_lr_fraction",
    0.05,
    "lr at the end of train.steps, as a fraction of optim.lr",
    check=NON_NEGATIVE,
  ),
  _field("optim.b1", 0.9, "Adam's first-moment decay", check=(lambda v: 0 <= v < 1, "in [0, 1)")),
  _field(
    "optim.b2", 0.999, "Adam's second-moment decay", check=(lambda v: 0 <= v < 1, "in [0, 1)")
  ),
  _field("optim.weight_decay", 0.0, "adamw's decoupled weight decay", check=NON_NEGATIVE),
  _field(
    "optim.grad_clip",
    1.0,
    "global-norm gradient clip; 0 = none",
    check=(lambda v: v >= 0, ">= 0 (0 = no clipping)"),
  ),
  _field(
    "optim.mu_dtype",
    "",
    "dtype of Adam's first moment ('' = the params')",
    choices=("", "float32", "bfloat16"),
  ),
  # train
  _field("train.steps", 400, "steps of the main phase (then finetune.steps more)", check=COUNT),
  _field(
    "train.log_every", 10, "steps between metrics.jsonl / TensorBoard points", check=POSITIVE_INT
  ),
  _field("train.print_every", 50, "steps between console progress lines", check=POSITIVE_INT),
  _field(
    "train.tensorboard", True, "also TensorBoard events in workdir/tensorboard (needs tensorboardX)"
  ),
  _field(
    "train.validate_every",
    0,
    "> 0: every N steps, retrieval mAP on held-back train rows (val/mAP)",
    check=(lambda v: _int(v) and v >= 0, "an integer >= 0 (0 = off)"),
  ),
  _field(
    "train.validate_fraction",
    0.1,
    "the fraction of train rows held back for validation",
    check=(lambda v: 0 < v < 1, "in (0, 1)"),
  ),
  _field(
    "train.keep_best",
    False,
    "with validate_every > 0: end with the params of the best validated step",
  ),
  _field(
    "train.select_edges",
    -1,
    "per-edge selection on held-back pairs (training/selection.py): -1 auto = on where edges "
    "start in closed form (model.linear_rank): some pairs of each pair set are held back, and "
    "each edge ends at its best step if that beats its start, else at its start refitted on all "
    "pairs; 0 = off (the trained params stay); 1 = on",
    check=(lambda v: _int(v) and -1 <= v <= 1, "-1 (auto), 0 (off) or 1 (on)"),
  ),
  _field(
    "train.select_every", 25, "steps between scores of the held-back pairs", check=POSITIVE_INT
  ),
  _field(
    "train.select_confidence",
    0.95,
    "one-sided paired t-test: how sure the best step must be to beat the edge's start",
    check=(lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1) (0: any gain)"),
  ),
  _field(
    "train.select_patience",
    4,
    "stop training once this many scores in a row improved no edge (early stopping; 0 = never; "
    "not with a fine-tuning phase)",
    check=COUNT,
  ),
  _field(
    "train.checkpoint_every",
    200,
    "steps between per-edge Orbax checkpoints; 0 = only the last step",
    check=(lambda v: _int(v) and v >= 0, "an integer >= 0 (0 = only the last step)"),
  ),
  _field(
    "train.keep_checkpoints",
    2,
    "checkpoint steps kept",
    check=(lambda v: _int(v) and v >= 1, "an integer >= 1 (0 would delete the trained weights)"),
  ),
  _field(
    "train.skip_nonfinite",
    True,
    "a NaN/inf step leaves params untouched, then the run stops naming it",
  ),
  _field(
    "train.allow_resume_changes",
    False,
    "resume although config, loss plan or data changed "
    "(recorded in the checkpoints; docs/reliability.md)",
  ),
  # pseudo
  _field(
    "pseudo.rounds",
    -1,
    "self-training rounds after the first training (0 = off; each from scratch); "
    "-1 = auto: 2 where every pair set is instance-level, else 0",
    check=(
      lambda v: _int(v) and v >= -1,
      "an integer >= 0, or -1 for auto (2 rounds where every pair set is instance-level)",
    ),
  ),
  _field(
    "pseudo.method",
    "sinkhorn",
    "matching of unpaired rows: sinkhorn (entropic OT, mutual argmax) or mutual nearest neighbours",
    choices=("sinkhorn", "mutual_nn"),
  ),
  _field(
    "pseudo.gate",
    "probe",
    "probe: pair sets gated by a cross-fitted precision estimate; agreement: two-sided agreement",
    choices=("probe", "agreement"),
  ),
  _field(
    "pseudo.min_precision",
    0.5,
    "probe gate: least estimated precision of a pair set's matches",
    check=(lambda v: 0 <= v <= 1, "in [0, 1]"),
  ),
  _field(
    "pseudo.probe_folds",
    4,
    "probe gate: folds of each pair set's own pairs",
    check=at_least(2, True),
  ),
  _field(
    "pseudo.min_new_pairs",
    -1,
    "probe gate: least pairs of a new (composed) edge; -1: the smallest pair set's",
    check=(lambda v: _int(v) and v >= -1, "an integer >= -1"),
  ),
  _field(
    "pseudo.min_agreement",
    0.5,
    "agreement gate: matches found again from the other side",
    check=(lambda v: 0 <= v <= 1, "in [0, 1]"),
  ),
  _field(
    "pseudo.max_rows", 4000, "unpaired train rows per modality considered", check=POSITIVE_INT
  ),
  _field("pseudo.new_edges", True, "also pair modalities never paired (grows the graph)"),
  _field("pseudo.epsilon", 0.02, "Sinkhorn entropic regularisation (cost 1 - cos)", check=above(0)),
  # finetune
  _field("finetune.steps", 0, "steps of the fine-tuning phase; 0 = none", check=COUNT),
  _field("finetune.edge_cos", 0.0, "loss.edge_cos during the phase", check=NON_NEGATIVE),
  _field("finetune.infonce", 1.0, "loss.infonce during the phase", check=NON_NEGATIVE),
  _field(
    "finetune.cycle_scale",
    0.0,
    "cycle weights multiplied by this during the phase",
    check=NON_NEGATIVE,
  ),
  _field(
    "finetune.lr_scale", 0.1, "constant lr of the phase = optim.lr * lr_scale", check=above(0)
  ),
  # strategies
  _field("pivot.modality", "", "the pivot; '' = the modality in the most pair sets"),
  _field(
    "pivot.edge_cos",
    0.0,
    "loss.edge_cos of pivot binding (0: pure InfoNCE, as ImageBind)",
    check=NON_NEGATIVE,
  ),
  _field("pivot.infonce", 1.0, "loss.infonce of pivot binding", check=NON_NEGATIVE),
  _field("pairwise.dim", 256, "dim of the shared space", check=POSITIVE_INT),
  _field("pairwise.edge_cos", 0.0, "loss.edge_cos of pairwise training", check=NON_NEGATIVE),
  _field("pairwise.infonce", 1.0, "loss.infonce of pairwise training", check=NON_NEGATIVE),
  _field("cmcr.shared", "", "the shared modality; '' = the one paired with exactly two others"),
  _field("cmcr.dim", 256, "dim of each stage-1 contrastive space", check=POSITIVE_INT),
  _field("cmcr.common_dim", 256, "dim of the common space", check=POSITIVE_INT),
  _field(
    "cmcr.stage1_steps",
    0,
    "steps of stage 1; 0 = train.steps",
    check=(lambda v: _int(v) and v >= 0, "an integer >= 0 (0 = train.steps)"),
  ),
  _field("cmcr.temperature", 0.07, "InfoNCE temperature of stage 2", check=above(0)),
  _field(
    "cmcr.memory_temperature",
    0.05,
    "softmax temperature reading pseudo embeddings from the memory banks",
    check=above(0),
  ),
  _field(
    "cmcr.noise_std", 0.04, "Gaussian noise added before the stage-2 projectors", check=NON_NEGATIVE
  ),
  _field(
    "cmcr.memory_size",
    1024,
    "rows of each memory bank (unpaired rows of the non-shared modality)",
    check=POSITIVE_INT,
  ),
  _field("cmcr.inter_weight", 1.0, "InfoNCE of the shared rows across spaces", check=NON_NEGATIVE),
  _field("cmcr.pseudo_weight", 1.0, "InfoNCE of the pseudo pairs", check=NON_NEGATIVE),
  _field("cmcr.intra_weight", 0.5, "1 - cos closing the gap inside each space", check=NON_NEGATIVE),
  _field("dmvae.shared_dim", 32, "shared latent z_s (the retrieval space)", check=POSITIVE_INT),
  _field("dmvae.private_dim", 16, "private latent z_p of each modality", check=COUNT),
  _field(
    "dmvae.kappa",
    0.0,
    "vMF concentration of the reconstruction term; 0 = each modality's dim",
    check=NON_NEGATIVE,
  ),
  _field(
    "dmvae.cross_weight",
    1.0,
    "weight of cross-reconstruction (decode b from a's shared latent)",
    check=NON_NEGATIVE,
  ),
  _field(
    "dmvae.unpaired_weight",
    1.0,
    "weight of the unimodal ELBO on single rows (0: paired rows only)",
    check=NON_NEGATIVE,
  ),
  # eval
  _field("eval.split", "test", "the rows evaluated", choices=("test", "train", "all")),
  _field(
    "eval.ks",
    (1, 5, 10),
    "the k of the R@k columns",
    check=(
      lambda v: len(v) > 0 and all(_int(k) and k >= 1 for k in v),
      "integers >= 1 (the k of R@k)",
    ),
  ),
  _field(
    "eval.max_queries",
    0,
    "score a seeded sample of this many query rows per route (0: every row)",
    check=(lambda v: _int(v) and v >= 0, "an integer >= 0 (0: every query)"),
  ),
  _field("eval.paths", "", "extra named routes to report, e.g. 'image->text->audio'"),
  _field(
    "eval.routes",
    "auto",
    "never-paired modalities: ensemble (fewest-hop routes meeting between them), "
    "ensemble_all (also in their own spaces), best (one route); auto: ensemble_all where every "
    "pair set is instance-level, else ensemble",
    choices=("auto", "ensemble", "ensemble_all", "best"),
  ),
  _field(
    "eval.csls_k", 0, "> 0: CSLS hubness correction with k neighbours (transductive)", check=COUNT
  ),
  _field(
    "eval.querybank_k",
    -1,
    "> 0: query-bank hubness correction with k neighbours among the query "
    "modality's train rows; 0 off; -1 auto: 10 where every pair set is instance-level",
    check=(
      lambda v: _int(v) and v >= -1,
      "an integer >= 0 (0: off), or -1 for auto (10 where every pair set is instance-level)",
    ),
  ),
  _field(
    "eval.cycle_length",
    3,
    "reconstruction table: cycles of up to this many hops",
    check=at_least(2, True),
  ),
  _field(
    "eval.path_hops", 3, "reconstruction table: paths of up to this many hops", check=POSITIVE_INT
  ),
  _field("eval.tables", "", "report tables, e.g. 'retrieval,gap'; '' = all (docs/extending.md)"),
  _field(
    "eval.plot_dpi",
    120,
    "PNG resolution (300 for print)",
    check=(lambda v: _int(v) and 10 <= v <= 2400, "an integer in [10, 2400]"),
  ),
  _field("eval.plot_formats", "png", "'png,pdf' or 'png,svg': vector copies beside each PNG"),
  # compare
  _field("compare.strategies", "graph,pivot,pairwise,cmcr,dmvae", "the strategies compared"),
  _field("compare.seeds", 3, "seeds per strategy", check=POSITIVE_INT),
  _field(
    "compare.posthoc",
    "none,center",
    "post-hoc variants evaluated for every trained strategy",
    items=("none", "center", "procrustes", "cca"),
  ),
  _field(
    "compare.baselines",
    "ridge,cca",
    "linear baselines (through the pivot where never paired)",
    items=("ridge", "cca"),
  ),
)

# a graft config's own block (configs/graft_audio.py): launch/graft.py
GRAFT_FIELDS: tuple[Field, ...] = (
  _field("graft.modality", "", "the node to add (in the data, not in the old graph)"),
  _field(
    "graft.connect_to",
    "",
    "old nodes to join it to, both directions; '' = every old node the data pairs it with",
  ),
  _field(
    "graft.base_modalities", "", "--base only: '' = every modality of the data but graft.modality"
  ),
  _field("graft.from_workdir", "", "set by the graft: the run it grafted onto"),
  _field("graft.from_step", 0, "set by the graft: the step it grafted onto"),
)


def default(key: str):
  """The declared default of a dotted key."""
  for f in (*FIELDS, *GRAFT_FIELDS):
    if f.key == key:
      return f.default
  raise KeyError(f"no config field {key!r} is declared")


def _build(fields: tuple[Field, ...]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for f in fields:
    *parents, leaf = f.key.split(".")
    node = c
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = f.default
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with its default."""
  return _build(FIELDS)


def graft_config() -> ml_collections.ConfigDict:
  """base_config() plus the graft block."""
  c = base_config()
  c.update(_build(GRAFT_FIELDS))
  return c


def _merge(base: Mapping, given: Mapping) -> dict:
  out = dict(base)
  for key, value in given.items():
    both = isinstance(base.get(key), Mapping) and isinstance(value, Mapping)
    out[key] = _merge(base[key], value) if both else value
  return out


def complete(config) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with every declared field it lacks at its default (a config
  written by an older version, or built by hand); its own fields, extra blocks included, kept."""
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  base = graft_config() if "graft" in given else base_config()
  return ml_collections.ConfigDict(_merge(base.to_dict(), given))


def shrink_for_tests(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The 'tiny' variant: a few seconds on a laptop CPU."""
  c.data.batch_size = 32
  c.model.hidden = (32,)
  c.train.steps = 30
  c.train.log_every = 10
  c.train.print_every = 10
  c.train.checkpoint_every = 15
  c.optim.warmup_steps = 5
  c.pairwise.dim = 32
  c.cmcr.dim = 32
  c.cmcr.common_dim = 32
  c.cmcr.memory_size = 64
  c.compare.seeds = 2
  c.dmvae.shared_dim = 16
  c.dmvae.private_dim = 8
  c.pseudo.rounds = 0  # auto would train twice on instance-level toy data
  return c
