"""Default settings shared by every experiment config (configs/*.py start from `base_config()`)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with defaults tuned on the embedded digits set."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.strategy = (
    "graph"  # a registered strategy: graph | pivot | pairwise | cmcr | dmvae (strategies/)
  )

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # the embedded set; or set data.path to a .npz / folder of .npy
  c.data.path = ""
  c.data.batch_size = 128
  c.data.host_sampling = False  # draw batches on the host, reading only their rows from a folder of
  # memory-mapped .npy files (data larger than RAM); see docs/scaling.md
  c.data.prefetch = 4  # host sampling: batches read ahead, each on its own thread

  c.mesh = ml_collections.ConfigDict()  # devices (docs/scaling.md); one device: no mesh at all
  c.mesh.data = -1  # batch split over this many devices; -1 = all the edges axis leaves
  c.mesh.edges = 1  # bucket edge axis split over this many devices (wide graphs)
  c.mesh.shard_data_rows = (
    False  # device sampling: split embedding tables by rows over the data axis
  )

  c.graph = ml_collections.ConfigDict()
  c.graph.edges = ""  # "" = both directions of every pair set in the data
  c.graph.extra_edges = ""  # e.g. "image->audio,audio->image": edges trained by cycles only
  c.graph.frozen = ""  # edges held fixed (grafting)
  c.graph.virtual_nodes = (
    ""  # nodes without data (projection spaces), "name:dim,...", e.g. "shared:256"
  )

  c.model = ml_collections.ConfigDict()
  c.model.hidden = (256,)  # hidden widths of each edge's MLP translator
  c.model.activation = "gelu"  # translators.ACTIVATIONS
  c.model.layer_norm = True  # LayerNorm after each hidden layer
  c.model.residual = False  # add the input to the output where d_in == d_out
  c.model.linear_rank = -1  # a linear path beside each translator's MLP, which is a residual
  # starting at zero; each edge with pairs starts as the ridge map of
  # them (training/closed_form.py). r > 0: full map, or rank-r factors
  # where smaller; 0: none; -1 auto: the widest hidden layer for the
  # graph loss plan, none for pivot/pairwise/cmcr
  c.model.compute_dtype = "float32"  # "bfloat16": matmuls in bf16, params/optimizer stay f32
  c.model.impl = "flax"  # "fused": hidden layers as one Dense+bias+activation block whose
  # backward recomputes the activation and sums the bias gradient in
  # one pass (same parameters; needs layer_norm=False)
  c.model.edge_apply = "auto"  # "batched" | "per_edge" | "auto": how a bucket's stacked edges run
  # (same parameters, same function); auto = per_edge on CPU, batched
  # on GPU/TPU (translators.resolve_edge_apply, docs/performance.md)

  c.loss = ml_collections.ConfigDict()
  c.loss.edge_cos = 1.0  # per-edge 1 - cos(f(x_a), y_b) on pairs
  c.loss.infonce = 0.5  # per-edge symmetric InfoNCE on pairs
  c.loss.temperature = 0.07
  c.loss.learn_temperature = False
  c.loss.infonce_positives = "auto"  # per pair set: "pair" (each pair its own positive) where pairs
  # join instances, "label" (same-class rows) where pairs are
  # class-level; see data.choose_positives. Or force "label"/"pair"
  c.loss.cycle_weights = (0.2,)  # weight of 2-cycles (then 3-cycles, ...): a->b->a on a's own rows
  c.loss.supervised_edges = ""  # "" = every trainable edge with pairs
  c.loss.cycle_starts = ""  # "" = every modality
  c.loss.structure = 0.0  # neighbourhood-structure regulariser: each modality's batch
  # similarity structure kept by its translations (off: see
  # docs/unpaired.md for the benchmark)
  c.loss.structure_temperature = 0.1
  c.loss.aligned_batches = False  # instance-aligned data (row i of every modality = one sample):
  # one batch per modality serves pair terms and cycles

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # train.OPTIMIZERS: adam | adamw | sgd
  c.optim.lr = 2e-3  # peak learning rate (after warmup; cosine decay over train.steps)
  c.optim.warmup_steps = 30
  c.optim.final_lr_fraction = 0.05  # lr at the end of train.steps, as a fraction of optim.lr
  c.optim.b1 = 0.9  # adam / adamw moments
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0  # adamw only
  c.optim.grad_clip = 1.0  # global-norm clip; 0 = none
  c.optim.mu_dtype = ""  # "bfloat16": Adam's first moment stored in bf16 ("" = param dtype)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 400  # main phase (then finetune.steps more)
  c.train.log_every = 10  # metrics.jsonl / TensorBoard points (40 on a default run's curves)
  c.train.print_every = 50  # console progress lines (steps/s, ETA, learning rate)
  c.train.tensorboard = True  # also TensorBoard events in workdir/tensorboard (needs tensorboardX)
  c.train.validate_every = 0  # > 0: every N steps, retrieval mAP on held-back train rows (val/mAP);
  c.train.validate_fraction = 0.1  # the fraction of train rows held back (never trained on); see
  # graphbridge/validation.py
  c.train.keep_best = False  # with validate_every > 0: end with the params of the best val/mAP step
  # (early stopping; for few pairs of large dims, where the MLP overfits)
  c.train.select_edges = -1  # per-edge selection on held-back pairs (training/selection.py):
  # -1 auto = on where edges start in closed form (model.linear_rank):
  # some pairs of each pair set held back, each edge ends at its best
  # step if that beats its start, else at its start refitted on all
  # pairs; 0 = off (the trained params stay)
  c.train.select_every = 25  # steps between scores of the held-back pairs
  c.train.select_confidence = 0.95  # one-sided paired t-test: the best step beats the start
  c.train.select_patience = 4  # stop training once this many scores in a row improved no edge
  # (early stopping; 0 = never; not with a fine-tuning phase)
  c.train.checkpoint_every = 200  # per-edge Orbax checkpoints under workdir/checkpoints
  c.train.keep_checkpoints = 2
  c.train.skip_nonfinite = (
    True  # a NaN/inf step leaves params untouched, then the run stops naming it
  )
  c.train.allow_resume_changes = (
    False  # resume although config, loss plan or data changed (recorded in
  )
  # the checkpoints' meta); see docs/reliability.md

  c.pseudo = (
    ml_collections.ConfigDict()
  )  # self-training on pseudo-pairs of unpaired rows (pseudo.py)
  c.pseudo.rounds = -1  # rounds after the first training (0 = off); each trains from scratch.
  # -1 = auto: 2 where every pair set is instance-level (the rule of
  # loss.infonce_positives="auto"), 0 on class-level pairs (digits),
  # where pseudo-pairs wreck zero-shot; pseudo.resolve_rounds
  c.pseudo.method = "sinkhorn"  # sinkhorn (entropic OT, mutual argmax of the plan) | mutual_nn
  c.pseudo.gate = "probe"  # probe: paired hops gated by a cross-fitted precision estimate, never-
  # paired modalities by composed hops | agreement: two-sided agreement
  c.pseudo.min_precision = 0.5  # probe gate: least estimated precision of a pair set's matches
  c.pseudo.probe_folds = (
    4  # probe gate: folds of each pair set's own pairs (held out, hidden, matched)
  )
  c.pseudo.min_new_pairs = (
    -1
  )  # probe gate: least pairs of a new (composed) edge; -1: the smallest pair set's
  c.pseudo.min_agreement = 0.5  # agreement gate: matches found again from the other side
  c.pseudo.max_rows = 4000  # unpaired train rows per modality considered
  c.pseudo.new_edges = True  # also pair modalities never paired (grows the graph)
  c.pseudo.epsilon = 0.02  # Sinkhorn entropic regularisation (cost 1 - cos)

  c.finetune = ml_collections.ConfigDict()  # contrastive fine-tuning phase after train.steps
  c.finetune.steps = 0  # 0 = no fine-tuning phase
  c.finetune.edge_cos = 0.0  # loss weights during the phase (other weights kept as they are)
  c.finetune.infonce = 1.0
  c.finetune.cycle_scale = 0.0  # cycle weights multiplied by this
  c.finetune.lr_scale = 0.1  # constant lr = optim.lr * lr_scale

  # strategy-specific settings (used when c.strategy selects them)
  c.pivot = ml_collections.ConfigDict()  # ImageBind / VIP-ANT binding to one pivot modality
  c.pivot.modality = ""  # "" = the modality in the most pair sets (text here)
  c.pivot.edge_cos = 0.0  # pure InfoNCE, as ImageBind
  c.pivot.infonce = 1.0
  c.pairwise = ml_collections.ConfigDict()  # CLIP-style: every modality into one shared space
  c.pairwise.dim = 256
  c.pairwise.edge_cos = 0.0
  c.pairwise.infonce = 1.0
  c.cmcr = ml_collections.ConfigDict()  # C-MCR: connect two contrastive spaces via the shared one
  c.cmcr.shared = ""  # "" = the modality paired with exactly two others (text here)
  c.cmcr.dim = 256  # dim of each stage-1 contrastive space
  c.cmcr.common_dim = 256
  c.cmcr.stage1_steps = 0  # 0 = train.steps
  c.cmcr.temperature = 0.07  # InfoNCE temperature of stage 2
  c.cmcr.memory_temperature = (
    0.05  # softmax temperature reading pseudo embeddings from the memory banks
  )
  c.cmcr.noise_std = 0.04  # Gaussian noise added before the stage-2 projectors
  c.cmcr.memory_size = 1024  # rows of each memory bank (unpaired rows of the non-shared modality)
  c.cmcr.inter_weight = 1.0  # InfoNCE of the shared rows across spaces
  c.cmcr.pseudo_weight = 1.0  # InfoNCE of the pseudo pairs
  c.cmcr.intra_weight = 0.5  # 1 - cos closing the gap inside each space
  c.dmvae = (
    ml_collections.ConfigDict()
  )  # DMVAE: private-shared multimodal VAE (graphbridge/dmvae.py)
  c.dmvae.shared_dim = 32  # shared latent z_s (retrieval space)
  c.dmvae.private_dim = 16  # private latent z_p^m of each modality
  c.dmvae.kappa = 0.0  # vMF concentration of the reconstruction term; 0 = each modality's dim
  c.dmvae.cross_weight = 1.0  # weight of cross-reconstruction (decode b from a's shared latent)
  c.dmvae.unpaired_weight = 1.0  # weight of the unimodal ELBO on single rows (0: paired rows only)
  c.posthoc = "none"  # after any strategy: aligners.POSTHOC (none | center | procrustes | cca)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # evaluate.SPLITS: test | train | all
  c.eval.ks = (1, 5, 10)  # Recall@k columns
  c.eval.max_queries = 0  # retrieval: score a seeded sample of this many query rows per route
  # against the whole gallery (0: every row); reported when used
  c.eval.paths = ""  # extra named routes to report, e.g. "image->text->audio"
  c.eval.routes = "auto"  # never-paired modalities: "ensemble" averages the similarities of
  # the fewest-hop routes meeting between query and gallery (one per
  # meeting node); "ensemble_all" also in their own spaces; "best":
  # one route; "auto": ensemble_all where every pair set is instance-
  # level, else ensemble (docs/evaluation.md, "Routes")
  c.eval.csls_k = 0  # > 0: CSLS hubness correction with k neighbours (transductive)
  c.eval.querybank_k = -1  # > 0: query-bank hubness correction, k neighbours among the query
  # modality's train rows (inductive); 0 off; -1 auto: 10 where every
  # pair set is instance-level, else off (docs/evaluation.md, "Hubness")
  c.eval.cycle_length = 3  # reconstruction table: cycles of up to this many hops
  c.eval.path_hops = 3  # reconstruction table: paths a->...->b of up to this many hops
  c.eval.tables = ""  # report tables (evaluators.EVALUATORS), e.g. "retrieval,gap"; "" = all
  c.eval.plot_dpi = 120  # PNG resolution (300 for print)
  c.eval.plot_formats = "png"  # "png,pdf" or "png,svg": vector copies beside each PNG

  c.compare = ml_collections.ConfigDict()  # launch/compare.py: every strategy, several seeds
  c.compare.strategies = "graph,pivot,pairwise,cmcr,dmvae"
  c.compare.seeds = 3
  c.compare.posthoc = "none,center"  # post-hoc variants evaluated for every trained strategy
  c.compare.baselines = "ridge,cca"  # linear baselines (through the pivot where never paired)
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
  c.dmvae.shared_dim = 16
  c.dmvae.private_dim = 8
  c.pseudo.rounds = 0  # auto would train twice on instance-level toy data
  return c
