"""FAISS index construction for the miner: exact, IVF-Flat, HNSW, IVF-PQ; CPU or GPU."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dist_contrast.negatives.config import MinerConfig


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


def build_index(cfg: MinerConfig, dim: int, train: np.ndarray) -> faiss.Index:
    """An empty inner-product index of ``cfg.index`` that accepts ``add_with_ids``.

    IVF indexes are trained on ``train`` here. They get a hash-table direct map so that
    ``remove_ids`` of a few changed entries costs O(changed), not a scan of every list.

    Shape: train [T, D] float32.
    """
    metric = faiss.METRIC_INNER_PRODUCT
    if cfg.index == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if cfg.index == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, metric)
        hnsw.hnsw.efSearch = cfg.ef_search
        # efConstruction well above M keeps the graph's recall near the exact search's.
        hnsw.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
        return faiss.IndexIDMap2(hnsw)
    nlist = effective_nlist(cfg, train.shape[0])
    quantizer = faiss.IndexFlatIP(dim)
    index: Any
    if cfg.index == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    else:
        if dim % cfg.pq_m != 0:
            raise ValueError(
                f"negatives.miner.pq_m={cfg.pq_m} must divide the embedding dim {dim}"
            )
        nbits = 8 if train.shape[0] >= 256 * 4 else 4
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, nbits, metric)
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.nprobe = min(cfg.nprobe, nlist)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    return index


def remove_ids(index: faiss.Index, ids: np.ndarray) -> None:
    """Remove ``ids`` from an exact/IVF index (HNSW cannot remove: the caller rebuilds)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    selector = faiss.IDSelectorArray(ids.shape[0], faiss.swig_ptr(ids))
    index.remove_ids(selector)


class SearchIndex:
    """The CPU master index plus, on a GPU machine, a GPU copy used for searching.

    Updates go to the CPU index (every type supports ``add_with_ids`` there); the GPU copy is
    re-made after each refresh. HNSW has no FAISS GPU version and stays on the CPU.
    """

    def __init__(self, cpu_index: faiss.Index, device: str, kind: str) -> None:
        self.cpu = cpu_index
        self.device = device if kind != "hnsw" else "cpu"
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
