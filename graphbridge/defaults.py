"""Default settings shared by every experiment config (configs/*.py start from `base_config()`)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with defaults tuned on the embedded digits set."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.strategy = "graph"            # graph | pivot | pairwise | cmcr (see graphbridge/strategies.py)

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"          # the embedded set; or set data.path to a .npz / folder of .npy
  c.data.path = ""
  c.data.batch_size = 128
  c.data.host_sampling = False    # draw batches on the host, reading only their rows from a folder of
                                  # memory-mapped .npy files (data larger than RAM); see docs/scaling.md
  c.data.prefetch = 4             # host sampling: batches read ahead, each on its own thread

  c.mesh = ml_collections.ConfigDict()      # devices (docs/scaling.md); one device: no mesh at all
  c.mesh.data = -1                # batch split over this many devices; -1 = all the edges axis leaves
  c.mesh.edges = 1                # bucket edge axis split over this many devices (wide graphs)
  c.mesh.shard_data_rows = False  # device sampling: split embedding tables by rows over the data axis

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
  c.loss.aligned_batches = False  # instance-aligned data (row i of every modality = one sample):
                                  # one batch per modality serves pair terms and cycles

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
  c.train.log_every = 10           # metrics.jsonl / TensorBoard points (40 on a default run's curves)
  c.train.print_every = 50         # console progress lines (steps/s, ETA, learning rate)
  c.train.tensorboard = True       # also TensorBoard events in workdir/tensorboard (needs tensorboardX)
  c.train.validate_every = 0       # > 0: every N steps, retrieval mAP on held-back train rows (val/mAP);
  c.train.validate_fraction = 0.1  # the fraction of train rows held back (never trained on); see
                                   # graphbridge/validation.py
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.skip_nonfinite = True
  c.train.allow_resume_changes = False  # resume a workdir although config, loss plan or data changed
                                   # (recorded in the checkpoints' meta); see docs/reliability.md

  c.finetune = ml_collections.ConfigDict()   # contrastive fine-tuning phase after train.steps
  c.finetune.steps = 0
  c.finetune.edge_cos = 0.0
  c.finetune.infonce = 1.0
  c.finetune.cycle_scale = 0.0
  c.finetune.lr_scale = 0.1

  # strategy-specific settings (used when c.strategy selects them)
  c.pivot = ml_collections.ConfigDict()      # ImageBind / VIP-ANT binding to one pivot modality
  c.pivot.modality = ""           # "" = the modality in the most pair sets (text here)
  c.pivot.edge_cos = 0.0          # pure InfoNCE, as ImageBind
  c.pivot.infonce = 1.0
  c.pairwise = ml_collections.ConfigDict()   # CLIP-style: every modality into one shared space
  c.pairwise.dim = 256
  c.pairwise.edge_cos = 0.0
  c.pairwise.infonce = 1.0
  c.cmcr = ml_collections.ConfigDict()       # C-MCR: connect two contrastive spaces via the shared one
  c.cmcr.shared = ""              # "" = the modality paired with exactly two others (text here)
  c.cmcr.dim = 256                # dim of each stage-1 contrastive space
  c.cmcr.common_dim = 256
  c.cmcr.stage1_steps = 0         # 0 = train.steps
  c.cmcr.temperature = 0.07
  c.cmcr.memory_temperature = 0.05
  c.cmcr.noise_std = 0.04
  c.cmcr.memory_size = 1024
  c.cmcr.inter_weight = 1.0
  c.cmcr.pseudo_weight = 1.0
  c.cmcr.intra_weight = 0.5
  c.posthoc = "none"              # after any strategy: none | center | procrustes | cca

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.ks = (1, 5, 10)
  c.eval.paths = ""               # extra named routes to report, e.g. "image->text->audio"
  c.eval.plot_dpi = 120           # PNG resolution (300 for print)
  c.eval.plot_formats = "png"     # "png,pdf" or "png,svg": vector copies beside each PNG

  c.compare = ml_collections.ConfigDict()    # launch/compare.py: every strategy, several seeds
  c.compare.strategies = "graph,pivot,pairwise,cmcr"
  c.compare.seeds = 3
  c.compare.posthoc = "none,center"   # post-hoc variants evaluated for every trained strategy
  c.compare.baselines = "ridge,cca"   # linear baselines (through the pivot where never paired)
  return c


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
  return c
