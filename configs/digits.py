"""Translator graph on the embedded tri-modal digits set (image / audio / text).

Pairs are class-level and only image<->text and audio<->text, so image<->audio retrieval is
zero-shot through the text pivot. Run:

  python launch/train.py --config=configs/digits.py --workdir=/tmp/gb

Shrunk for tests (a few seconds): --config=configs/digits.py:tiny
Any field can be overridden from flags, e.g. --config.train.steps=1000 --config.loss.cycle_weights='(0.5,0.25)'
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.strategy = "graph"

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"          # the embedded set; or set data.path to a .npz / folder of .npy
  c.data.path = ""
  c.data.batch_size = 128

  c.graph = ml_collections.ConfigDict()
  c.graph.edges = ""              # "" = both directions of every pair set in the data
  c.graph.extra_edges = ""        # e.g. "image->audio,audio->image": edges trained by cycles only
  c.graph.frozen = ""             # edges held fixed (grafting)

  c.model = ml_collections.ConfigDict()
  c.model.hidden = (256,)
  c.model.activation = "gelu"
  c.model.layer_norm = True
  c.model.residual = False
  c.model.compute_dtype = "float32"   # "bfloat16": matmuls in bf16, params/optimizer stay f32

  c.loss = ml_collections.ConfigDict()
  c.loss.edge_cos = 1.0           # per-edge 1 - cos(f(x_a), y_b) on pairs
  c.loss.infonce = 0.5            # per-edge symmetric InfoNCE on pairs
  c.loss.temperature = 0.07
  c.loss.learn_temperature = False
  c.loss.infonce_positives = "label"  # class-level pairs: same-class rows are positives
  c.loss.cycle_weights = (0.2,)   # weight of 2-cycles (then 3-cycles, ...): a->b->a on a's own rows
  c.loss.supervised_edges = ""    # "" = every trainable edge with pairs
  c.loss.cycle_starts = ""        # "" = every modality

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.final_lr_fraction = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 400
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.skip_nonfinite = True

  c.finetune = ml_collections.ConfigDict()   # contrastive fine-tuning phase after train.steps
  c.finetune.steps = 0
  c.finetune.edge_cos = 0.0
  c.finetune.infonce = 1.0
  c.finetune.cycle_scale = 0.0
  c.finetune.lr_scale = 0.1

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.ks = (1, 5, 10)
  c.eval.paths = ""               # extra named routes to report, e.g. "image->text->audio"

  if arg == "tiny":
    c.data.batch_size = 32
    c.model.hidden = (32,)
    c.train.steps = 30
    c.train.log_every = 10
    c.train.checkpoint_every = 15
    c.optim.warmup_steps = 5
  elif arg not in (None, ""):
    raise ValueError(f"configs/digits.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
