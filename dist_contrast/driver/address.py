"""Which Ray cluster to reach, and its token: one place for ``train``, ``sweep`` and ``submit``.

Two addresses name a cluster. ``RAY_ADDRESS=host:6379`` (the head's GCS) is what a driver joins
to run the workers itself (:func:`cluster_address`, :func:`check_reachable`);
``http://host:8265`` (the head's dashboard) is where jobs are submitted
(:func:`job_server_address`). Each is refused, in one line, where the other is needed.

Ray's token authentication: the token comes from ``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's own order); a client sends it only in
token mode, which :func:`enable_token_auth_if_available` turns on when one of them has it. The
token itself is never read into a message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from dist_contrast.errors import UserError

#: Where a job server listens when nothing says otherwise (``ray start --head`` here).
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: The head's GCS port when an address names none.
GCS_PORT = 6379
#: Seconds :func:`check_reachable` waits for the head to answer.
REACH_TIMEOUT_S = 5.0
HOW_TO_GET_TOKEN = (
    "on the head node `ray get-auth-token` prints it; with KubeRay it is the auth_token of the "
    "Secret named after the RayCluster"
)


# ----------------------------------------------------------------------------- a cluster to join


def cluster_address(environ: Mapping[str, str] | None = None) -> str | None:
    """``RAY_ADDRESS`` when it names a cluster to join (unset, empty or ``local``: None)."""
    env = os.environ if environ is None else environ
    address = env.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at the
    cluster's GCS address. A job-server URL is refused: it is for ``dist-contrast submit``."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":  # Ray finds the cluster started on this machine itself
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"RAY_ADDRESS={address} is a job-server URL; send the run there with "
            "`dist-contrast submit CONFIG --address URL`, or set RAY_ADDRESS to the head's GCS "
            f"address host:{GCS_PORT}"
        )
    parsed = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        port = parsed.port or GCS_PORT
    except ValueError:
        raise UserError(
            f"RAY_ADDRESS={address} has no valid port; give the head's GCS address "
            f"host:{GCS_PORT}"
        ) from None
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc}); "
            "start it or unset RAY_ADDRESS to run locally"
        ) from None


# ----------------------------------------------------------------------------- a job server


def job_server_address(address: str | None = None,
                       environ: Mapping[str, str] | None = None) -> str:
    """The job server's URL: ``address``, else ``RAY_API_SERVER_ADDRESS`` or an http(s)
    ``RAY_ADDRESS``, else :data:`DEFAULT_ADDRESS`. A GCS address (``host:6379``) is refused:
    jobs go to the dashboard's port (8265)."""
    env = os.environ if environ is None else environ
    chosen = address or env.get("RAY_API_SERVER_ADDRESS")
    if not chosen:
        ray_address = env.get("RAY_ADDRESS", "").strip()
        chosen = ray_address if ray_address.startswith(("http://", "https://")) else None
        if ray_address and chosen is None and ray_address not in ("local", "auto"):
            raise UserError(
                f"RAY_ADDRESS={ray_address} is a cluster (GCS) address; jobs go to the head's "
                "job server: pass --address http://<head>:8265 or set RAY_ADDRESS to that URL"
            )
    chosen = (chosen or DEFAULT_ADDRESS).rstrip("/")
    if not chosen.startswith(("http://", "https://")):
        raise UserError(
            f"--address {chosen} is not a job server URL; give the head's dashboard URL, "
            "e.g. http://<head>:8265"
        )
    return chosen


# ----------------------------------------------------------------------------- the token


def token_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Where this process's Ray token comes from, in Ray's order (``RAY_AUTH_TOKEN``, then
    ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``), or None. Never the token itself.
    A ``RAY_AUTH_TOKEN_PATH`` that cannot be read is one line (Ray would abort the process)."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            text = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UserError(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({exc.strerror or exc}); point it "
                "at the file that holds the cluster's token, or unset it"
            ) from None
        if not text:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is empty; put the cluster's token in it")
        return f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if default.read_text().strip():
            return "~/.ray/auth_token"
    return None


def enable_token_auth_if_available(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Turn on Ray's token mode (``RAY_AUTH_MODE=token``) when a token is at hand and no mode
    was chosen; return where the token comes from (see :func:`token_source`), or None.

    Ray reads the mode when it connects: call this before ``ray.init`` or a job client.
    """
    env = os.environ if environ is None else environ
    source = token_source(env)
    if source is not None and "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"
    return source
