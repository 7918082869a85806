"""Credentials in URIs (`http://user:password@host`, `postgresql://u:p@db/x`) are kept out of
everything the tool writes or prints: log lines, MLflow params/tags/artifacts, run records and
Hydra's own files. This module is the one place that decides what a credential looks like.

The connection itself still uses the full URI; only what is shown or stored is redacted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, open_dict, read_write

# scheme://userinfo@ : userinfo runs up to the last '@' before the host (a password may hold an
# unencoded '@'); it stops at whitespace and at the characters that end an authority.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"]*)@")
MASK = "***"


def _mask(match: re.Match[str]) -> str:
    user, has_password, _ = match.group("userinfo").partition(":")
    # A user name alone may be a token (`https://<token>@host`): masked whole.
    shown = f"{user}:{MASK}" if has_password else MASK
    return f"{match.group('scheme')}{shown}@"


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it masked: `http://user:***@host`."""
    return _USERINFO.sub(_mask, text) if "@" in text else text


def redact_file(path: Path) -> None:
    """Rewrite a text file (e.g. Hydra's `.hydra/config.yaml`) with its credentials masked."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    masked = redact(text)
    if masked != text:
        path.write_text(masked)


def install_log_redaction() -> None:
    """Mask credentials in every log record this process creates, whichever library logs it
    (Hydra prints each job's overrides, MLflow and we print the tracking URI)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: left to logging's own error report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


CREDENTIAL_ENV_PREFIX = "FASHION_SWEEPS_CREDENTIAL_"


def _to_environment(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    if userinfo.startswith("${"):  # moved already: a reference, not a credential
        return match.group(0)
    name = CREDENTIAL_ENV_PREFIX + hashlib.sha256(userinfo.encode()).hexdigest()[:12].upper()
    os.environ[name] = userinfo
    return f"{match.group('scheme')}${{oc.env:{name}}}@"


def credentials_to_environment(config: DictConfig | ListConfig) -> None:
    """Move the credentials of every URI in `config` (values and Hydra's override strings, in
    place) into environment variables of this process, leaving `${oc.env:NAME}` in their place.
    Launchers pickle the config for their jobs (submitit, SLURM: world-readable files); the jobs
    inherit the environment and resolve the reference, so no file holds the password."""
    with read_write(config), open_dict(config):
        keys = range(len(config)) if isinstance(config, ListConfig) else list(config.keys())
        for key in keys:
            node = config._get_node(key)
            if isinstance(node, (DictConfig, ListConfig)):
                credentials_to_environment(node)
                continue
            value = node._value() if node is not None else None
            if isinstance(value, str) and "@" in value:
                moved = _USERINFO.sub(_to_environment, value)
                if moved != value:
                    config[key] = moved
