"""Where the checkpoints go: on a cluster of several nodes, an ``experiment.output_dir`` on
one node's own disk is a warning (every rank writes into one folder)."""

from __future__ import annotations

import os
from pathlib import Path

#: Filesystems that several machines mount (plus every FUSE filesystem: s3fs, gcsfuse,
#: JuiceFS, sshfs ...). Anything else (ext4, xfs, btrfs, overlay, tmpfs ...) is one node's own.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "virtiofs", "9p", "afs", "ocfs2", "gfs2", "wekafs", "panfs",
})


def filesystem_type(path: str, mounts: str | None = None) -> str:
    """The type of the filesystem ``path`` is on (``mounts``: the text of /proc/self/mounts,
    read when not given); "unknown" when the mount table cannot be read."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.abspath(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_storage(output_dir: str, nodes: int, mounts: str | None = None) -> list[str]:
    """One line when a cluster of ``nodes`` > 1 nodes would write checkpoints to a path on
    this node's own disk: every rank writes its files into one checkpoint folder, and a
    restart on another node reads them back, so ``experiment.output_dir`` must be a shared
    filesystem (the same path on every node) or an object store URI."""
    if nodes <= 1 or "://" in output_dir:
        return []
    kind = filesystem_type(output_dir, mounts)
    if kind in SHARED_FILESYSTEMS or kind.startswith("fuse"):
        return []
    return [
        f"the Ray cluster has {nodes} nodes and experiment.output_dir={output_dir} is on this "
        f"node's own disk ({kind}): checkpoints need storage every node reaches; set "
        "experiment.output_dir to a shared filesystem mounted at the same path on every node "
        "or to an s3:// URI"
    ]
