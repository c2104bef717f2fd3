"""FAISS index construction for the miner: exact, IVF (float32, float16 or 8-bit keys), HNSW,
IVF-PQ; CPU or GPU."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dist_contrast.negatives.mined import MinerConfig


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(requested: str) -> str:
    """``auto`` -> ``gpu`` when a FAISS GPU is usable, else ``cpu``; ``gpu`` without one fails."""
    if requested == "gpu" and not gpu_available():
        raise ValueError(
            "negatives.miner.device=gpu but this FAISS build sees no GPU (faiss-cpu installed, "
            "or no CUDA device); install faiss-gpu or set negatives.miner.device=auto"
        )
    if requested == "auto":
        return "gpu" if gpu_available() else "cpu"
    return requested


def effective_nlist(cfg: MinerConfig, rows: int) -> int:
    """IVF lists, capped so every list can get training points on a small (test) bank."""
    return max(1, min(cfg.nlist, rows // 8 if rows >= 8 else 1))


def train_centroids(
    cfg: MinerConfig, train: np.ndarray, nlist: int, init: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Spherical k-means centroids of ``train`` (unit centroids suit inner-product search).

    With ``init`` (the previous build's centroids) k-means starts from them and runs
    ``cfg.retrain_iterations``: between rebuilds the keys drift a little, so a few iterations
    re-fit the lists at a fraction of a cold start's cost (10 iterations from random points).
    An ``init`` with fewer lists (the index grew) is topped up with random training points.

    Shape: train [T, D] float32, init [nlist, D] or None -> centroids [nlist, D] float32.
    """
    train = np.ascontiguousarray(train, dtype=np.float32)
    dim = train.shape[1]
    clustering = faiss.Clustering(dim, nlist)
    clustering.spherical = True
    clustering.seed = seed
    # The caller already subsampled (a few points per list keep a rebuild cheap): faiss must
    # neither subsample again (256 per list) nor warn below 39 per list.
    clustering.max_points_per_centroid = max(1, train.shape[0] // nlist + 1)
    clustering.min_points_per_centroid = 1
    clustering.niter = 10
    if init is not None and init.shape[1] == dim and init.shape[0] <= nlist:
        extra = nlist - init.shape[0]
        if extra > 0:
            rng = np.random.default_rng(seed)
            rows = rng.choice(train.shape[0], extra, replace=extra > train.shape[0])
            init = np.concatenate([init, train[rows]])
        clustering.niter = cfg.retrain_iterations
        faiss.copy_array_to_vector(
            np.ascontiguousarray(init, dtype=np.float32).ravel(), clustering.centroids
        )
    clustering.train(train, faiss.IndexFlatIP(dim))
    return faiss.vector_to_array(clustering.centroids).reshape(nlist, dim)


def coarse_quantizer(cfg: MinerConfig, centroids: np.ndarray) -> faiss.Index:
    """The IVF coarse quantizer over ``centroids``: exhaustive, or an HNSW graph.

    Shape: centroids [nlist, D] float32.
    """
    dim = centroids.shape[1]
    quantizer: Any
    if cfg.quantizer == "hnsw":
        quantizer = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = cfg.ef_construction
        # The graph must return nprobe lists per query: its beam is at least that wide.
        quantizer.hnsw.efSearch = max(cfg.ef_search, cfg.nprobe)
    else:
        quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return quantizer


def build_index(
    cfg: MinerConfig,
    dim: int,
    train: np.ndarray,
    *,
    centroids: np.ndarray | None = None,
    seed: int = 0,
) -> faiss.Index:
    """An empty inner-product index of ``cfg.index`` that accepts ``add_with_ids``.

    IVF indexes are trained on ``train`` here (k-means warm-started from ``centroids`` when
    given, see :func:`train_centroids`). They get a hash-table direct map so that
    ``remove_ids`` of a few changed entries costs O(changed), not a scan of every list.

    Shape: train [T, D] float32, centroids [nlist, D] or None.
    """
    metric = faiss.METRIC_INNER_PRODUCT
    if cfg.index == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if cfg.index == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, metric)
        hnsw.hnsw.efSearch = cfg.ef_search
        hnsw.hnsw.efConstruction = cfg.ef_construction
        return faiss.IndexIDMap2(hnsw)
    if cfg.index in ("ivf_pq", "ivf_pq_fs") and dim % cfg.pq_m != 0:
        raise ValueError(f"negatives.miner.pq_m={cfg.pq_m} must divide the embedding dim {dim}")
    train = np.ascontiguousarray(train, dtype=np.float32)
    nlist = effective_nlist(cfg, train.shape[0])
    # A quantizer that already holds nlist centroids makes the IVF index count as trained
    # (IVF-PQ still trains its codebooks on the residuals below).
    quantizer = coarse_quantizer(cfg, train_centroids(cfg, train, nlist, centroids, seed))
    index: Any
    if cfg.index == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    elif cfg.index in ("ivf_fp16", "ivf_sq8"):
        sq = faiss.ScalarQuantizer
        codes = sq.QT_fp16 if cfg.index == "ivf_fp16" else sq.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, codes, metric)
        # 8-bit: the per-dimension ranges of the codes; float16 needs none (marks it trained).
        index.train(train)
    elif cfg.index == "ivf_pq_fs":
        # 4-bit codes in blocks of 32 keys, compared 32 at a time in SIMD registers.
        index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, cfg.pq_m, 4, metric)
        # Codes of the residuals from the list's centroid, not of the raw keys (FAISS's
        # default for inner product): measured recall@64 0.968 against 0.848 at 100k keys.
        index.by_residual = True
        index.train(train)
    else:
        nbits = 8 if train.shape[0] >= 256 * 4 else 4
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, nbits, metric)
        index.train(train)
    index.nprobe = min(cfg.nprobe, nlist)
    if cfg.removes_in_place:  # fast scan's block lists cannot remove through a hash map
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    return index


def as_ivf(index: faiss.Index) -> Any:
    """The IVF index inside ``index`` (through ID maps and wrappers), or None for other types."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def ivf_centroids(index: faiss.Index) -> np.ndarray | None:
    """The coarse centroids of an IVF index (None for other types), to warm-start a rebuild.

    Shape: -> [nlist, D] float32.
    """
    ivf = as_ivf(index)
    if ivf is None:
        return None
    return np.asarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)


def imbalance(index: faiss.Index) -> float | None:
    """The IVF lists' imbalance factor, lists · Σ size² / (Σ size)² (1 = even; None if not
    IVF): how many times the average search scans more entries than with even lists."""
    ivf = as_ivf(index)
    if ivf is None or ivf.ntotal == 0:
        return None
    return float(ivf.invlists.imbalance_factor())


def remove_ids(index: faiss.Index, ids: np.ndarray) -> None:
    """Remove ``ids`` from an exact/IVF index (HNSW cannot remove: the caller rebuilds)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    selector: Any
    if as_ivf(index) is not None:
        # IVF with a hash-table direct map looks each id up, O(len(ids)); it takes only an array.
        selector = faiss.IDSelectorArray(ids.shape[0], faiss.swig_ptr(ids))
    else:
        # A flat index tests every entry: a hashed set keeps each test O(1), where an array
        # scans all of ``ids`` per entry (measured: 0.64 s vs 7 ms for 5k ids in 200k).
        selector = faiss.IDSelectorBatch(ids.shape[0], faiss.swig_ptr(ids))
    index.remove_ids(selector)


class SearchIndex:
    """The CPU master index plus, on a GPU machine, a GPU copy used for searching.

    Updates go to the CPU index (every type supports ``add_with_ids`` there); the GPU copy is
    re-made after each refresh. HNSW and fast scan have no FAISS GPU version and stay on the
    CPU (``gpu_capable`` False).
    """

    def __init__(self, cpu_index: faiss.Index, device: str, gpu_capable: bool) -> None:
        self.cpu = cpu_index
        self.device = device if gpu_capable else "cpu"
        self._resources: Any = None
        self._gpu: Any = None
        self.sync()

    def sync(self) -> None:
        """Refresh the GPU copy after the CPU index changed."""
        if self.device != "gpu":
            return
        if self._resources is None:
            self._resources = faiss.StandardGpuResources()
        self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self.cpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products; missing results have id -1.

        Shape: queries [Q, D] float32 -> scores [Q, k], ids [Q, k] int64.
        """
        index = self._gpu if self._gpu is not None else self.cpu
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)
