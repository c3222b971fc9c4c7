#!/usr/bin/env python3
"""Build the bridge benchmark sets: instance-level multi-view data paired along a tree or a chain.

Run from the repository root (about 20 s, most of it FSDD feature extraction)::

    python tools/build_bridges.py                 # mv6, mv8 and fsdd_chain
    python tools/build_bridges.py --only mv6      # one set
    python tools/build_bridges.py --check         # rebuild in memory, compare with the files

* ``mv6``: 6 hand-made feature views of each of scikit-learn's 1,797 8x8 digit images, paired
  only along a tree of 5 edges; each edge has its own disjoint slice of 120 train images.
* ``mv8``: the same 6 views plus two (local binary patterns, random Fourier features of the
  pixels) on a deeper tree of 7 edges (up to 6 hops between never-paired views), 120 pairs per edge.
* ``fsdd_chain``: 4 audio feature views of each of FSDD's 3,000 recordings, paired along a chain
  of 3 edges, 300 train recordings per edge; FSDD's documented split (takes 0-4 test).

Every view of an instance carries the same ``<m>_id`` (the image index / the recording's row in
sorted file-name order) and ``<m>_label`` (the digit). Each modality's rows are shuffled by its own
seeded permutation, so row i of two modalities is not the same instance: only ids (and the pairs)
say which rows belong together. Pairs join train rows only; test rows are never paired. Rows that
are in no pair are most of the train rows: they reach training only through the unpaired-row losses.

Deterministic: fixed seed, fixed zip timestamps, so reruns give identical bytes. Embeddings are
stored as float16 (the loader casts to float32 and L2-normalises rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# graphbridge from the repository root; build_digits (audio front end, npz writer) beside this file
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import build_digits as bd  # noqa: E402

SEED = 20261204
HERE = (
  Path(__file__).resolve().parents[1] / "graphbridge" / "datasets"
)  # the sets the package loads
CLASS_NAMES = bd.CLASS_NAMES

MV6_VIEWS = ("pix", "prof", "dct", "hog", "mom", "polar")
MV6_EDGES = (("pix", "dct"), ("dct", "hog"), ("hog", "polar"), ("dct", "prof"), ("prof", "mom"))
MV8_VIEWS = MV6_VIEWS + ("lbp", "rff")
MV8_EDGES = MV6_EDGES + (("polar", "lbp"), ("lbp", "rff"))
IMAGE_PAIRS_PER_EDGE = 120
FSDD_VIEWS = ("mfcc", "mel", "spec", "wave")
FSDD_EDGES = (("mfcc", "mel"), ("mel", "spec"), ("spec", "wave"))
FSDD_PAIRS_PER_EDGE = 300

SETS = {
  "mv6": dict(
    views=MV6_VIEWS, edges=MV6_EDGES, pairs_per_edge=IMAGE_PAIRS_PER_EDGE, source="image"
  ),
  "mv8": dict(
    views=MV8_VIEWS, edges=MV8_EDGES, pairs_per_edge=IMAGE_PAIRS_PER_EDGE, source="image"
  ),
  "fsdd_chain": dict(
    views=FSDD_VIEWS, edges=FSDD_EDGES, pairs_per_edge=FSDD_PAIRS_PER_EDGE, source="fsdd"
  ),
}


def rng_for(*stage) -> np.random.Generator:
  """An independent, reproducible stream per stage; strings (set names) enter by their CRC32."""
  import zlib

  return np.random.default_rng(
    [SEED] + [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in stage]
  )


# ---- image views (8x8 images, intensities 0..16)
# ---------------------------------------------------


def _upsample(imgs: np.ndarray, factor: int = 2) -> np.ndarray:
  from scipy.ndimage import zoom

  return np.stack([zoom(im, factor, order=1) for im in imgs])


def view_pix(imgs):
  """[N, 64] raw pixels."""
  return imgs.reshape(len(imgs), -1)


def view_prof(imgs):
  """[N, 16] row and column intensity profiles (sums)."""
  return np.concatenate([imgs.sum(2), imgs.sum(1)], axis=1)


def view_dct(imgs, k: int = 6):
  """[N, 36] low-frequency 2-D DCT-II coefficients of the square-rooted image (a nonlinear view)."""
  from scipy.fft import dctn

  coef = dctn(np.sqrt(imgs), axes=(1, 2), norm="ortho")
  return coef[:, :k, :k].reshape(len(imgs), -1)


def view_hog(imgs, cells: int = 4, bins: int = 9):
  """[N, 144] gradient-orientation histograms: 16x16 upsampled image, 4x4 cells, 9 unsigned bins,
  magnitude-weighted, each cell L2-normalised."""
  up = _upsample(imgs)
  gy, gx = np.gradient(up, axis=(1, 2))
  mag = np.hypot(gx, gy)
  ang = np.mod(np.arctan2(gy, gx), np.pi)
  b = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
  n, h, w = up.shape
  ch, cw = h // cells, w // cells
  out = np.zeros((n, cells, cells, bins))
  for i in range(cells):
    for j in range(cells):
      bb = b[:, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].reshape(n, -1)
      mm = mag[:, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].reshape(n, -1)
      for k in range(bins):
        out[:, i, j, k] = (mm * (bb == k)).sum(1)
  out /= np.sqrt((out**2).sum(-1, keepdims=True) + 1e-3)
  return out.reshape(n, -1)


def view_mom(imgs):
  """[N, 10] image moments: log mass, centroid (2), normalised central moments of order 2 (3) and 3
  (4)."""
  n = len(imgs)
  yy, xx = np.mgrid[0:8, 0:8].astype(float)
  m = imgs.sum((1, 2)) + 1e-9
  cy = (imgs * yy).sum((1, 2)) / m
  cx = (imgs * xx).sum((1, 2)) / m
  dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
  feats = [np.log(m), cy, cx]
  for p, q in ((2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3)):
    mu = (imgs * dy**p * dx**q).sum((1, 2)) / m
    feats.append(np.sign(mu) * np.abs(mu) ** (1.0 / (p + q)))  # root keeps the scales comparable
  return np.stack(feats, axis=1).reshape(n, -1)


def view_polar(imgs, rings: int = 4, sectors: int = 8):
  """[N, 32] share of the ink in each (ring, sector) cell around the image's centroid."""
  n = len(imgs)
  yy, xx = np.mgrid[0:8, 0:8].astype(float)
  m = imgs.sum((1, 2)) + 1e-9
  cy = (imgs * yy).sum((1, 2)) / m
  cx = (imgs * xx).sum((1, 2)) / m
  dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
  r = np.hypot(dy, dx)
  ring = np.minimum((r / 5.0 * rings).astype(int), rings - 1)
  sector = np.minimum(
    ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * sectors).astype(int), sectors - 1
  )
  cell = ring * sectors + sector
  out = np.zeros((n, rings * sectors))
  for c in range(rings * sectors):
    out[:, c] = (imgs * (cell == c)).sum((1, 2)) / m
  return out


def view_lbp(imgs):
  """[N, 40] rotation-invariant uniform local binary patterns (8 neighbours, 10 codes) of the 16x16
  upsampled image, one histogram per image quadrant."""
  up = _upsample(imgs)
  n, h, w = up.shape
  pad = np.pad(up, ((0, 0), (1, 1), (1, 1)), mode="edge")
  offsets = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
  bits = np.stack(
    [pad[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= up + 0.5 for dy, dx in offsets], -1
  )
  transitions = (bits != np.roll(bits, 1, axis=-1)).sum(-1)
  codes = np.where(transitions <= 2, bits.sum(-1), 9)
  out = []
  for qy in range(2):
    for qx in range(2):
      q = codes[:, qy * h // 2 : (qy + 1) * h // 2, qx * w // 2 : (qx + 1) * w // 2].reshape(n, -1)
      out.append(np.stack([(q == c).mean(1) for c in range(10)], axis=1))
  return np.concatenate(out, axis=1)


def view_rff(imgs, dim: int = 200, gamma: float = 0.5):
  """[N, 200] random Fourier features cos(W x + b) of the pixels scaled to [0, 1] (fixed seed)."""
  x = view_pix(imgs) / 16.0
  rng = rng_for(90)
  w = rng.normal(0.0, np.sqrt(2 * gamma), (x.shape[1], dim)) / np.sqrt(x.shape[1]) * 4.0
  b = rng.uniform(0, 2 * np.pi, dim)
  return np.cos(x @ w + b)


IMAGE_VIEWS = {
  "pix": view_pix,
  "prof": view_prof,
  "dct": view_dct,
  "hog": view_hog,
  "mom": view_mom,
  "polar": view_polar,
  "lbp": view_lbp,
  "rff": view_rff,
}


def image_source():
  """(views {name: [N, d]}, labels [N], train [N] bool): the digits images, 30% stratified test
  split (the split of the embedded digits set, so its test images stay test images here)."""
  from sklearn.datasets import load_digits

  d = load_digits()
  imgs = d.images.astype(np.float64)
  labels = d.target.astype(np.int64)
  test = bd.stratified_test_mask(labels, bd.IMAGE_TEST_FRACTION, bd.rng_for(1))
  return {name: fn(imgs) for name, fn in IMAGE_VIEWS.items()}, labels, ~test


# ---- audio views (FSDD, 8 kHz) -------------------------------------------------------------------


def _frames_power(wave: np.ndarray) -> np.ndarray:
  """[T, NFFT/2+1] power spectrum of 25 ms Hamming frames, 10 ms hop (no pre-emphasis)."""
  x = wave.astype(np.float64) / 32768.0
  if len(x) < bd.WIN:
    x = np.pad(x, (0, bd.WIN - len(x)))
  n_frames = 1 + (len(x) - bd.WIN) // bd.HOP
  idx = np.arange(bd.WIN)[None, :] + bd.HOP * np.arange(n_frames)[:, None]
  return np.abs(np.fft.rfft(x[idx] * np.hamming(bd.WIN), bd.NFFT, axis=1)) ** 2


def audio_mel(wave, fb):
  """[120] pooled log-mel: mean, std and max over time of 40 log-mel bands."""
  lm = bd.log_mel(wave, fb)
  return np.concatenate([lm.mean(0), lm.std(0), lm.max(0)])


def audio_spec(wave):
  """[46] spectral shape: contrast in 7 octave-like bands, 12-bin chroma, centroid, bandwidth,
  roll-off and flatness; mean and std over frames each."""
  p = _frames_power(wave) + 1e-10
  freqs = np.fft.rfftfreq(bd.NFFT, 1.0 / bd.SR)
  edges = [0, 125, 250, 500, 1000, 1750, 2750, 4001]
  contrast = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    band = np.sort(np.log(p[:, (freqs >= lo) & (freqs < hi)]), axis=1)
    k = max(1, int(round(0.2 * band.shape[1])))
    contrast.append(band[:, -k:].mean(1) - band[:, :k].mean(1))
  contrast = np.stack(contrast, 1)
  keep = freqs >= 60
  pitch_class = np.round(12 * np.log2(freqs[keep] / 440.0)).astype(int) % 12
  chroma = np.stack([p[:, keep][:, pitch_class == c].sum(1) for c in range(12)], 1)
  chroma /= chroma.sum(1, keepdims=True)
  total = p.sum(1)
  centroid = (p * freqs).sum(1) / total
  bandwidth = np.sqrt((p * (freqs - centroid[:, None]) ** 2).sum(1) / total)
  rolloff = freqs[np.argmax(np.cumsum(p, 1) >= 0.85 * total[:, None], axis=1)]
  flatness = np.exp(np.log(p).mean(1)) / p.mean(1)
  shape = np.stack([centroid / 1000, bandwidth / 1000, rolloff / 1000, np.log(flatness)], 1)
  feats = np.concatenate([contrast, chroma, shape], 1)
  return np.concatenate([feats.mean(0), feats.std(0)])


def audio_wave(wave, segments: int = 10):
  """[25] time-domain statistics: log duration, log RMS and zero-crossing rate in 10 equal segments,
  peak, crest factor, skewness and kurtosis."""
  x = wave.astype(np.float64) / 32768.0
  bounds = np.linspace(0, len(x), segments + 1).round().astype(int)
  rms, zcr = [], []
  for i in range(segments):
    seg = x[bounds[i] : max(bounds[i + 1], bounds[i] + 2)]
    rms.append(np.log(np.sqrt(np.mean(seg**2)) + 1e-5))
    zcr.append(np.mean(np.abs(np.diff(np.sign(seg))) > 0))
  rms = np.asarray(rms)
  rms_total = np.sqrt(np.mean(x**2)) + 1e-8
  peak = np.abs(x).max() + 1e-8
  centred = x - x.mean()
  sd = centred.std() + 1e-8
  return np.concatenate(
    [
      [np.log(len(x))],
      rms - rms.max(),
      zcr,
      [
        np.log(peak),
        np.log(peak / rms_total),
        np.mean((centred / sd) ** 3),
        np.log(np.mean((centred / sd) ** 4)),
      ],
    ]
  )


def fsdd_source(fsdd_dir: Path):
  """(views {name: [3000, d]}, labels, train): FSDD recordings in sorted file-name order; FSDD's
  documented split (takes 0-4 of every digit and speaker are test, 5-49 train)."""
  from scipy.io import wavfile

  files = sorted((fsdd_dir / "recordings").glob("*.wav"))
  if len(files) != 3000:
    raise RuntimeError(
      f"expected 3000 FSDD recordings under {fsdd_dir / 'recordings'}, found {len(files)}"
    )
  fb = bd.mel_filterbank()
  views = {m: [] for m in FSDD_VIEWS}
  labels, train = [], []
  for f in files:
    digit, _speaker, take = f.stem.split("_")
    sr, wave = wavfile.read(f)
    if sr != bd.SR or wave.ndim != 1:
      raise RuntimeError(f"{f}: expected 8 kHz mono, got sr={sr} shape={wave.shape}")
    views["mfcc"].append(bd.audio_features(wave, fb))
    views["mel"].append(audio_mel(wave, fb))
    views["spec"].append(audio_spec(wave))
    views["wave"].append(audio_wave(wave))
    labels.append(int(digit))
    train.append(int(take) >= 5)
  return (
    {m: np.stack(v) for m, v in views.items()},
    np.asarray(labels, np.int64),
    np.asarray(train, bool),
  )


# ---- assembling a set ----------------------------------------------------------------------------


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  """(x - train mean) / train std, with a std floor of 1e-3 of the largest std (constant features ->
  0)."""
  mu = x[train].mean(0)
  sd = x[train].std(0)
  sd = np.maximum(sd, 1e-3 * sd.max())
  return (x - mu) / sd


def edge_slices(train_ids: np.ndarray, n_edges: int, per_edge: int, rng) -> list[np.ndarray]:
  """Disjoint slices of `per_edge` train instance ids, one per edge."""
  if n_edges * per_edge > len(train_ids):
    raise ValueError(
      f"{n_edges} edges x {per_edge} pairs need more than the {len(train_ids)} train rows"
    )
  chosen = rng.permutation(train_ids)[: n_edges * per_edge]
  return [np.sort(chosen[i * per_edge : (i + 1) * per_edge]) for i in range(n_edges)]


def assemble(name: str, views: dict, labels: np.ndarray, train: np.ndarray) -> dict:
  """The arrays of set `name` in graphbridge's data format (see graphbridge/data.py)."""
  spec = SETS[name]
  n = len(labels)
  ids = np.arange(n, dtype=np.int64)
  arrays, where = {}, {}
  for k, m in enumerate(spec["views"]):
    perm = rng_for(name, 1, k).permutation(n)  # row r of modality m holds instance perm[r]
    emb = standardise(views[m], train)[perm]
    if not np.isfinite(emb).all():
      raise RuntimeError(f"{name}/{m}: non-finite features")
    arrays[f"{m}_emb"] = emb.astype(np.float16)
    arrays[f"{m}_label"] = labels[perm]
    arrays[f"{m}_id"] = ids[perm]
    arrays[f"{m}_train"] = train[perm]
    arrays[f"{m}_test"] = ~train[perm]
    where[m] = np.argsort(perm)  # instance -> row
  slices = edge_slices(ids[train], len(spec["edges"]), spec["pairs_per_edge"], rng_for(name, 2))
  for (a, b), inst in zip(spec["edges"], slices):
    arrays[f"pairs_{a}__{b}"] = np.stack([where[a][inst], where[b][inst]], 1).astype(np.int64)
  arrays["class_names"] = np.asarray(CLASS_NAMES, dtype="<U5")
  return arrays


def build(name: str, fsdd_dir: Path = bd.DEFAULT_FSDD, cache: dict | None = None) -> dict:
  cache = {} if cache is None else cache
  source = SETS[name]["source"]
  if source not in cache:
    cache[source] = image_source() if source == "image" else fsdd_source(fsdd_dir)
  return assemble(name, *cache[source])


def out_path(name: str) -> Path:
  return HERE / name / f"{name}.npz"


def describe(name: str, arrays: dict) -> str:
  from graphbridge.data import readers as readers_lib

  ds = readers_lib.from_arrays(arrays, source=name)
  lines = [
    f"{name}: {len(ds.names)} modalities, pair sets {', '.join(f'{a}-{b}' for a, b in ds.pairs)}",
    ds.summary(),
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument(
    "--only", choices=sorted(SETS), action="append", help="build only this set (repeatable)"
  )
  ap.add_argument(
    "--fsdd", type=Path, default=bd.DEFAULT_FSDD, help="FSDD root (contains recordings/)"
  )
  ap.add_argument(
    "--check", action="store_true", help="rebuild in memory and compare with the files"
  )
  args = ap.parse_args(argv)
  cache: dict = {}
  status = 0
  for name in args.only or list(SETS):
    arrays = build(name, args.fsdd, cache)
    path = out_path(name)
    if args.check:
      with np.load(path, allow_pickle=False) as z:
        same = set(z.files) == set(arrays) and all(np.array_equal(z[k], arrays[k]) for k in arrays)
      print(f"{name}: {'identical to' if same else 'DIFFERS from'} {path}")
      status |= int(not same)
      continue
    path.parent.mkdir(parents=True, exist_ok=True)
    bd.save_npz_deterministic(path, arrays)
    print(describe(name, arrays))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)\n")
  return status


if __name__ == "__main__":
  sys.exit(main())
