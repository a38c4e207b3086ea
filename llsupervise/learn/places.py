"""Places synthesis treats specially: where secrets live, and names that churn. Pure.

**Sensitive places** hold secrets. A learned rule is never widened into or over them; a run that
read one gets a rule of its own, and the review at the end of ``learn`` names it:

- beneath ``$HOME``: :data:`HOME_SECRETS` (ssh and gpg keys, cloud and registry credentials, ...);
- system files: :data:`SYSTEM_SECRETS` (shadow and gshadow with their backups, ``/etc/ssh``,
  ``/etc/sudoers*``, TLS private keys, Kerberos keytabs, VPN and Wi-Fi secrets, ...);
- ``/root`` and every other user's home (``/home/*`` other than ``$HOME``);
- private keys anywhere, by name: :data:`SECRET_NAMES`.

**Churning names** are replaced under the same or a new name between runs (git pack files and
loose objects, lock files, editor swap files, compiler and ``mktemp`` temporaries, Python bytecode
caches): a rule naming one would be stale by the next run, so they get one rule on their
directory, with a comment saying why (:func:`churn`).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Sequence

from llsupervise.learn.paths import is_beneath

#: Beneath ``$HOME``.
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc",
                ".git-credentials", ".pgpass", ".password-store", ".config/gcloud",
                ".local/share/keyrings", ".vault-token", ".pki", ".mozilla", ".config/gh",
                ".config/chromium", ".config/google-chrome")  # fmt: skip
#: System files and directories holding secrets.
SYSTEM_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                  "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private",
                  "/etc/security/opasswd", "/etc/krb5.keytab", "/etc/wireguard",
                  "/etc/NetworkManager/system-connections", "/etc/ipsec.secrets",
                  "/etc/ppp/chap-secrets", "/etc/ppp/pap-secrets", "/etc/libvirt/secrets",
                  "/etc/letsencrypt", "/var/lib/sss", "/root")  # fmt: skip
#: File names of private keys and keystores, wherever they are.
SECRET_NAMES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk",
                "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
                "*_rsa")  # fmt: skip
#: Where users' homes are: all but ``$HOME`` are other users'.
HOMES = "/home"


def secret_points(home: str | None) -> list[str]:
    """Every sensitive directory or file named by path (not by name pattern)."""
    found = [posixpath.join(home, s) for s in HOME_SECRETS] if home else []
    return found + [s for s in SYSTEM_SECRETS if not (home and is_beneath(home, s))]


def is_secret(path: str, home: str | None, points: Sequence[str]) -> bool:
    """Whether ``path`` is or lies in a sensitive place (see the module docstring)."""
    if any(is_beneath(path, s) for s in points):
        return True
    if is_beneath(path, HOMES) and path != HOMES and not (home and is_beneath(path, home)):
        # Another user's home, unless it is the way to ours (/home itself, /home/u above it).
        return not (home and is_beneath(home, path))
    name = posixpath.basename(path)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAMES)


#: (pattern on the path, which directory the rule goes on, why). The directory is the part of
#: the match up to the group named ``dir``.
_CHURN: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?P<dir>.*/\.git/objects)/.+"),
     "git's object store: gc and fetch replace pack files and loose objects"),
    (re.compile(r"(?P<dir>.*/\.git/refs)/.+"), "git refs: gc packs them, commits and fetches "
                                                "rewrite them"),
    (re.compile(r"(?P<dir>.*/\.git/logs)/.+"), "git reflogs: rewritten by every ref update"),
    (re.compile(r"(?P<dir>.*/__pycache__)/[^/]+\.pyc"), "Python bytecode caches: rewritten "
                                                         "when the source changes"),
    (re.compile(r"(?P<dir>.*)/[^/]+\.lock"), "lock files: created and removed around each use"),
    (re.compile(r"(?P<dir>.*)/(?:\.[^/]*\.sw[a-p]|[^/]+~|\.#[^/]*|#[^/]*#|4913)"),
     "editor swap and backup files"),
    (re.compile(r"(?P<dir>.*)/cc[A-Za-z0-9]{6}\.[a-z]+"), "compiler temporaries"),
    (re.compile(r"(?P<dir>.*)/tmp\.[A-Za-z0-9]{6,}"), "mktemp temporaries: a new name each run"),
)  # fmt: skip


def churn(path: str) -> tuple[str, str] | None:
    """(the directory a rule for ``path`` should name, why) when ``path``'s name churns."""
    for pattern, why in _CHURN:
        match = pattern.fullmatch(path)
        if match is not None:
            return match.group("dir") or "/", why
    return None
