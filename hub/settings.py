"""The one table of settings.

Each setting is read, in order of precedence, from the ``CLEANROOM_<NAME>`` environment
variable, from the instance file (TOML, ``CLEANROOM_CONFIG`` or ``<data_dir>/cleanroom.toml``)
and from its default. ``cleanroom config`` prints the effective values with secrets masked;
``docs/configuration.md`` is generated from this table and a test keeps it in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.errors import ConfigurationError

# Earlier versions' built-in keys: public in the source, so refused in every mode.
DEV_SECRET_KEY = "insecure-development-secret-key"  # noqa: S105 - the refused value
DEV_HMAC_KEY = "insecure-development-hmac-key"
PUBLIC_KEYS = (DEV_SECRET_KEY, DEV_HMAC_KEY)

KEYS_FILE = "keys.toml"
"""In development mode, the secret, HMAC and ledger keys generated on first start: in the
data directory, mode 0600 (production sets its own and never uses this file)."""
GENERATED = ("secret_key", "hmac_key", "ledger_key")

CHECKPOINT_KEY_FILE = "ledger-checkpoint-key.pem"
"""In development mode, the Ed25519 key that signs ledger checkpoints: generated on first
use in the data directory, mode 0600 (production names its own file in
``checkpoint_key_path``)."""

LEDGER_KEYS: dict[str, str] = {}
"""The ledger key of each database this process has loaded settings for (the database URL
as SQLAlchemy renders it -> key), so that ``hub.audit`` keys entries appended through any
session of that database. The key itself never goes into the database."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return f"CLEANROOM_{self.name.upper()}"

    @property
    def type(self) -> type:
        return type(self.default)

    def parse(self, raw: Any, source: str) -> Any:
        """Coerce a raw value (string from the environment, TOML value) to this setting's type."""
        kind = self.type
        try:
            if kind is bool:
                if isinstance(raw, bool):
                    value: Any = raw
                elif str(raw).strip().lower() in {"1", "true", "yes", "on"}:
                    value = True
                elif str(raw).strip().lower() in {"0", "false", "no", "off", ""}:
                    value = False
                else:
                    raise ValueError(raw)
            elif kind is int:
                value = int(raw)
            elif kind is float:
                value = float(raw)
            else:
                value = str(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"setting {self.name} ({source}): {raw!r} is not a valid {kind.__name__}"
            ) from None
        if self.choices and value not in self.choices:
            raise ConfigurationError(
                f"setting {self.name} ({source}): {value!r} is not one of {', '.join(self.choices)}"
            )
        return value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "mode",
        "development",
        "`development` or `production`. Production refuses to start with the built-in "
        "secret or HMAC key and marks cookies Secure.",
        choices=("development", "production"),
    ),
    Setting(
        "data_dir",
        "cleanroom-data",
        "Directory for the embedded database, the local object store and the instance file. "
        "Created with mode 0700.",
    ),
    Setting(
        "database_url",
        "",
        "SQLAlchemy URL of the metadata database. Empty means SQLite (WAL) at "
        "`<data_dir>/cleanroom.db`; `postgresql://user:password@host/db` for production.",
        secret=True,
    ),
    Setting(
        "secret_key",
        "",
        "Signs session cookies and CSRF tokens. Production: set a long random value. "
        "Development: generated on first start into `<data_dir>/keys.toml` (mode 0600).",
        secret=True,
    ),
    Setting(
        "hmac_key",
        "",
        "Key of the HMAC-SHA256 pseudonyms (at least 16 bytes). Only the hub holds it. "
        "Production: set it; development: generated like `secret_key`. To rotate, append "
        "the old key to `hmac_previous_keys`, set a new one here and run "
        "`cleanroom pool rotate-keys` (docs/deidentification.md).",
        secret=True,
    ),
    Setting(
        "hmac_previous_keys",
        "",
        "Earlier pseudonym keys, oldest first, separated by commas: with `hmac_key` they form "
        "the key chain new uploads are pseudonymised with, so they join the rotated pool.",
        secret=True,
    ),
    Setting(
        "ledger_key",
        "",
        "Key of the audit ledger's per-entry HMAC-SHA256 (at least 32 characters in "
        "production), kept out of the metadata database so that whoever can write the "
        "database cannot forge an entry. Production: set it; development: generated like "
        "`secret_key`. Not the pseudonym key: rotating that must not break the ledger "
        "(docs/security.md).",
        secret=True,
    ),
    Setting(
        "checkpoint_key_path",
        "",
        "PEM file of the Ed25519 private key that signs ledger checkpoints, outside the "
        "database. Production: required (make one with `cleanroom audit new-key FILE`); "
        "development: empty means `<data_dir>/ledger-checkpoint-key.pem`, generated on "
        "first use (mode 0600).",
    ),
    Setting(
        "checkpoint_interval_minutes",
        60,
        "How often the workers sign a ledger checkpoint (when the ledger has grown) and "
        "push new checkpoints to the institutions' witness stores, retrying failed pushes. "
        "0 turns periodic checkpoints off (`cleanroom audit checkpoint` still makes one).",
    ),
    Setting(
        "deid_k",
        5,
        "The steward's floor for k-anonymity over each upload's quasi-identifiers. A "
        "contributor may ask for more, never less.",
    ),
    Setting(
        "gateway_rate_per_minute",
        60,
        "Sandbox requests naming an agreement (tables, budget, queries, fits, synthetic rows, "
        "the sandbox catalogue) a researcher may make in a sliding minute; counted atomically "
        "in the database, so across every process; beyond it, 429 with Retry-After.",
    ),
    Setting("gateway_timeout_seconds", 30, "Longest a sandbox query may run before it is stopped."),
    Setting("gateway_memory_limit", "1GB", "DuckDB memory limit of each agreement's views."),
    Setting("gateway_threads", 2, "DuckDB threads of each agreement's views."),
    Setting(
        "synth_method",
        "gaussian_copula",
        "Synthesizer used when a synthetic version is asked for without naming one "
        "(SDV's GaussianCopula; CTGAN and TVAE are slower and may be chosen per request).",
        choices=("gaussian_copula", "ctgan", "tvae"),
    ),
    Setting(
        "synth_max_training_rows",
        200_000,
        "Largest seeded sample of a table a synthesizer is trained on.",
    ),
    Setting(
        "synth_gate_quality",
        0.75,
        "Publication gate: lowest SDMetrics quality score a synthetic version may have.",
    ),
    Setting(
        "synth_gate_dcr_overfitting",
        0.9,
        "Publication gate: lowest DCR overfitting protection (synthetic rows no closer to "
        "the training rows than to unseen rows) a synthetic version may have.",
    ),
    Setting(
        "synth_gate_copied_rows",
        0,
        "Publication gate: most synthetic rows that may copy a unique real row.",
    ),
    Setting(
        "deid_scrub_free_text",
        True,
        "Scrub free-text columns (names, identifiers, places replaced by typed placeholders); "
        "false drops them instead.",
    ),
    Setting(
        "public_url",
        "http://127.0.0.1:8000",
        "URL users reach the portal at. An `https://` URL turns on HSTS and Secure cookies.",
    ),
    Setting("host", "127.0.0.1", "Address `cleanroom serve` listens on."),
    Setting(
        "allow_remote_development",
        False,
        "Let a development-mode instance listen beyond loopback. Refused by default: its "
        "demo logins are public and it marks no cookie Secure; use production mode instead.",
    ),
    Setting("port", 8000, "Port `cleanroom serve` listens on."),
    Setting("threads", 8, "Request threads of the WSGI server (waitress)."),
    Setting(
        "trusted_proxy",
        "",
        "Address of the reverse proxy (nginx) whose `X-Forwarded-For` and "
        "`X-Forwarded-Proto` headers are believed. Empty: none is.",
    ),
    Setting(
        "embedded_worker",
        True,
        "Run a job worker thread inside `cleanroom serve` (the embedded default). Turn off "
        "when separate `cleanroom worker` processes run.",
    ),
    Setting(
        "storage_backend",
        "local",
        "Object store for the quarantine and pool zones: `local` directory or `s3`.",
        choices=("local", "s3"),
    ),
    Setting(
        "storage_path",
        "",
        "Root of the local object store. Empty means `<data_dir>/objects`.",
    ),
    Setting("s3_bucket", "", "Bucket of the S3 backend."),
    Setting(
        "s3_endpoint_url",
        "",
        "Endpoint of an S3-compatible store (MinIO, Ceph). Empty means AWS.",
    ),
    Setting("s3_region", "us-east-1", "Region of the S3 backend."),
    Setting(
        "s3_access_key_id",
        "",
        "Access key of the S3 backend. Empty means boto3's usual credential chain.",
        secret=True,
    ),
    Setting("s3_secret_access_key", "", "Secret key of the S3 backend.", secret=True),
    Setting(
        "s3_sse",
        "",
        "Server-side encryption header sent with every object: empty, `AES256` or `aws:kms`.",
        choices=("", "AES256", "aws:kms"),
    ),
    Setting("s3_sse_kms_key_id", "", "KMS key id when `s3_sse` is `aws:kms`."),
    Setting(
        "s3_part_size_mb",
        8,
        "Part size of multipart uploads to S3, in MiB (at least 5).",
    ),
    Setting(
        "max_upload_mb",
        2048,
        "Largest upload accepted, in MiB; larger ones are refused before anything is kept.",
    ),
    Setting(
        "raw_retention_days",
        0,
        "Days the raw (quarantine) copy of an upload is kept after release; 0 deletes it on "
        "release.",
    ),
    Setting(
        "session_idle_minutes",
        30,
        "A portal session ends after this many minutes without a request.",
    ),
    Setting(
        "session_max_hours",
        12,
        "A portal session ends this many hours after sign-in, however active.",
    ),
    Setting(
        "password_min_length",
        12,
        "The shortest password accepted (common and breached passwords are refused at any length).",
    ),
    Setting(
        "login_free_failures",
        3,
        "Failed sign-ins for one user name from one address before each further attempt "
        "must wait (1 s, then doubling).",
    ),
    Setting(
        "login_max_delay_minutes",
        15,
        "The longest wait between attempts for one user name from one address.",
    ),
    Setting(
        "release_approvals",
        2,
        "Independent output checkers' approvals a release request needs (docs/releases.md).",
    ),
    Setting(
        "login_rate_per_minute",
        20,
        "Login attempts accepted per client address per minute; more get HTTP 429.",
    ),
    Setting(
        "token_default_days",
        30,
        "Lifetime of a new API token unless another is asked for.",
    ),
    Setting(
        "token_max_days",
        365,
        "Longest lifetime an API token may be given.",
    ),
    Setting(
        "job_lease_seconds",
        60,
        "A running job whose worker has not reported for this long is taken over by another.",
    ),
    Setting("job_max_attempts", 3, "Attempts before a job is marked failed."),
    Setting("worker_poll_seconds", 1.0, "How often an idle worker looks for work."),
    Setting(
        "task_modules",
        "",
        "Comma-separated Python modules whose import registers extra job kinds (plug-ins).",
    ),
    Setting(
        "sandbox_enabled",
        True,
        "`cleanroom up` also starts the researcher sandbox (JupyterHub and its proxy).",
    ),
    Setting("sandbox_host", "127.0.0.1", "Address JupyterHub's proxy listens on."),
    Setting("sandbox_port", 8001, "Port researchers reach JupyterHub at (its proxy)."),
    Setting(
        "sandbox_public_url",
        "",
        "URL researchers reach the sandbox (JupyterHub) at, linked from the portal as "
        '"Open the sandbox". Empty: `http://<sandbox_host>:<sandbox_port>/` while '
        "`sandbox_enabled` is true, else no link.",
    ),
    Setting("sandbox_hub_port", 8081, "Port of JupyterHub's internal hub API (loopback)."),
    Setting("sandbox_proxy_api_port", 8002, "Port of the proxy's REST API (loopback)."),
    Setting(
        "sandbox_isolation",
        "auto",
        "`system-users`: each researcher's notebook server runs as its own operating-system "
        "user (needs root); `same-user`: as the hub's user, isolation OFF (a laptop); "
        "`auto`: system users when running as root.",
        choices=("auto", "system-users", "same-user"),
    ),
    Setting(
        "sandbox_user_prefix",
        "cr-",
        "Prefix of the operating-system users created for researchers (`cr-<username>`).",
    ),
    Setting(
        "sandbox_home_root",
        "/home",
        "Where the researchers' home directories (mode 0700) are created.",
    ),
    Setting(
        "sandbox_notebook_env",
        ".venv-notebook",
        "Python environment the researchers' notebook servers run from (its "
        "`bin/jupyterhub-singleuser`), relative to the project directory unless absolute. "
        "`make install` builds it from a Python every user can run; with system-users "
        "isolation every directory on its way must be enterable by all.",
    ),
    Setting(
        "sandbox_token_hours",
        8,
        "Lifetime of the `sandbox`-scoped API token put into each notebook server's "
        "environment at spawn.",
    ),
    Setting(
        "sandbox_gateway_url",
        "",
        "URL notebooks reach the query gateway at. Empty: the hub's own address "
        "(`http://<host>:<port>`).",
    ),
    Setting(
        "sandbox_access_check_seconds",
        30,
        "How often JupyterHub re-checks that each running server's researcher is still "
        "named in an active agreement (a server whose user lost the last one is stopped).",
    ),
    Setting(
        "sandbox_service_secret",
        "",
        "Shared secret JupyterHub uses to ask the hub about logins and tokens. Empty: "
        "generated once into `<data_dir>/sandbox-service-secret` (mode 0600).",
        secret=True,
    ),
    Setting("log_level", "INFO", "Python logging level."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


class Settings(Mapping[str, Any]):
    """Effective settings: a read-only mapping, and one typed attribute per setting
    (``settings.deid_k`` is an ``int``), read from :attr:`data` (see the properties made
    from :data:`SETTINGS` below the class; a test keeps the declarations in step)."""

    if TYPE_CHECKING:  # the attributes' types, for mypy; at run time they are properties
        mode: str
        data_dir: str
        database_url: str
        secret_key: str
        hmac_key: str
        hmac_previous_keys: str
        ledger_key: str
        checkpoint_key_path: str
        checkpoint_interval_minutes: int
        deid_k: int
        gateway_rate_per_minute: int
        gateway_timeout_seconds: int
        gateway_memory_limit: str
        gateway_threads: int
        synth_method: str
        synth_max_training_rows: int
        synth_gate_quality: float
        synth_gate_dcr_overfitting: float
        synth_gate_copied_rows: int
        deid_scrub_free_text: bool
        public_url: str
        host: str
        allow_remote_development: bool
        port: int
        threads: int
        trusted_proxy: str
        embedded_worker: bool
        storage_backend: str
        storage_path: str
        s3_bucket: str
        s3_endpoint_url: str
        s3_region: str
        s3_access_key_id: str
        s3_secret_access_key: str
        s3_sse: str
        s3_sse_kms_key_id: str
        s3_part_size_mb: int
        max_upload_mb: int
        raw_retention_days: int
        session_idle_minutes: int
        session_max_hours: int
        password_min_length: int
        login_free_failures: int
        login_max_delay_minutes: int
        release_approvals: int
        login_rate_per_minute: int
        token_default_days: int
        token_max_days: int
        job_lease_seconds: int
        job_max_attempts: int
        worker_poll_seconds: float
        task_modules: str
        sandbox_enabled: bool
        sandbox_host: str
        sandbox_port: int
        sandbox_public_url: str
        sandbox_hub_port: int
        sandbox_proxy_api_port: int
        sandbox_isolation: str
        sandbox_user_prefix: str
        sandbox_home_root: str
        sandbox_notebook_env: str
        sandbox_token_hours: int
        sandbox_gateway_url: str
        sandbox_access_check_seconds: int
        sandbox_service_secret: str
        log_level: str

    def __init__(self, data: dict[str, Any], sources: dict[str, str] | None = None) -> None:
        self.data = data
        self.sources = sources if sources is not None else {}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return (self.data, self.sources) == (other.data, other.sources)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        """Secrets masked: a settings object may end up in a log or a traceback."""
        shown = ", ".join(f"{name}={value!r}" for name, value, _ in self.masked())
        return f"Settings({shown})"

    # Derived values -------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        return Path(self.data["data_dir"]).expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        url: str = self.data["database_url"]
        if not url:
            return f"sqlite:///{self.data_path / 'cleanroom.db'}"
        return url

    @property
    def effective_storage_path(self) -> Path:
        path = self.data["storage_path"]
        return Path(path).expanduser().resolve() if path else self.data_path / "objects"

    @property
    def key_chain(self) -> list[bytes]:
        """The pseudonym key chain, oldest first: ``hmac_previous_keys`` then ``hmac_key``."""
        previous = [k.strip() for k in str(self.data["hmac_previous_keys"]).split(",")]
        return [k.encode() for k in previous if k] + [str(self.data["hmac_key"]).encode()]

    @property
    def effective_checkpoint_key_path(self) -> Path:
        """The checkpoint signing key's PEM file (``checkpoint_key_path`` or the data
        directory's own)."""
        path = self.data["checkpoint_key_path"]
        return Path(path).expanduser().resolve() if path else self.data_path / CHECKPOINT_KEY_FILE

    @property
    def is_production(self) -> bool:
        return bool(self.data["mode"] == "production")

    @property
    def uses_tls(self) -> bool:
        return str(self.data["public_url"]).lower().startswith("https://")

    def masked(self) -> list[tuple[str, str, str]]:
        """(name, value, source) rows with secrets masked, for display."""
        rows = []
        for s in SETTINGS:
            value = self.data[s.name]
            if s.secret and value:
                shown = "********"
            else:
                shown = str(value)
            rows.append((s.name, shown, self.sources.get(s.name, "default")))
        return rows

    def check_production(self) -> None:
        """Refuse to run production on built-in keys: name the setting to change."""
        public = [n for n in GENERATED if self.data[n] in PUBLIC_KEYS]
        if public:
            raise ConfigurationError(
                " and ".join(f"CLEANROOM_{n.upper()}" for n in public)
                + " is an earlier version's built-in value, public in the source: remove it "
                "(development generates its own keys) or set a long random value."
            )
        if not self.is_production:
            return
        problems = [
            f"CLEANROOM_{n.upper()}"
            for n in ("secret_key", "hmac_key")
            if not self.data[n] or self.sources.get(n, "").startswith("generated")
        ]
        if problems:
            raise ConfigurationError(
                "production mode needs its own keys: set "
                + " and ".join(problems)
                + " to a long random value (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`)."
            )
        for name in ("secret_key", "hmac_key"):
            if len(str(self.data[name])) < 32:
                raise ConfigurationError(
                    f"production mode needs CLEANROOM_{name.upper()} to be at least 32 "
                    "characters long."
                )
        if any(len(k) < 16 for k in self.key_chain):
            raise ConfigurationError(
                "every key in CLEANROOM_HMAC_PREVIOUS_KEYS must be at least 16 bytes long."
            )
        self._check_ledger_keys()

    def _check_ledger_keys(self) -> None:
        """Production's ledger keys (issue 18): its own entry key and a checkpoint key file."""
        ledger_key = str(self.data["ledger_key"])
        if not ledger_key or self.sources.get("ledger_key", "").startswith("generated"):
            raise ConfigurationError(
                "production mode needs its own ledger key: set CLEANROOM_LEDGER_KEY to a long "
                "random value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                ", kept outside the database and never changed."
            )
        if len(ledger_key) < 32:
            raise ConfigurationError(
                "production mode needs CLEANROOM_LEDGER_KEY to be at least 32 characters long."
            )
        if not self.data["checkpoint_key_path"]:
            raise ConfigurationError(
                "production mode needs CLEANROOM_CHECKPOINT_KEY_PATH: the PEM file of the "
                "Ed25519 key that signs ledger checkpoints (make one with `cleanroom audit "
                "new-key FILE`; mode 0600, outside the database)."
            )
        if not self.effective_checkpoint_key_path.is_file():
            raise ConfigurationError(
                f"CLEANROOM_CHECKPOINT_KEY_PATH names {self.effective_checkpoint_key_path}, "
                "which does not exist: make the key with `cleanroom audit new-key FILE`."
            )


def _setting_property(name: str) -> property:
    return property(lambda self: self.data[name], doc=_BY_NAME[name].help)


for _setting in SETTINGS:
    setattr(Settings, _setting.name, _setting_property(_setting.name))
del _setting


def _development_keys(data_dir: Path) -> dict[str, str]:
    """The development instance's own secret and HMAC keys: read from ``keys.toml`` in
    the data directory, generated there (mode 0600) on first start. Two processes starting
    at once agree: the file is created exclusively, and the loser reads the winner's."""
    import secrets

    path = data_dir / KEYS_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = {name: secrets.token_urlsafe(48) for name in GENERATED}
        text = "".join(f'{name} = "{key}"\n' for name, key in keys.items())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(
                    "# Generated by Cleanroom on first start (development mode). Keep it:\n"
                    "# the HMAC key makes the pool's pseudonyms. Production sets its own.\n" + text
                )
            return keys
    try:
        found = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigurationError(
            f"{path} cannot be read ({err}); delete it to regenerate."
        ) from None
    missing = [n for n in GENERATED if not isinstance(found.get(n), str) or not found[n]]
    if missing and set(missing) <= ADDED_LATER:
        found = _add_keys(path, missing)
        missing = []
    if missing:
        raise ConfigurationError(f"{path} lacks {', '.join(missing)}; delete it to regenerate.")
    return {n: found[n] for n in GENERATED}


# Keys added to GENERATED after development data directories existed: appended to an
# existing keys.toml (never regenerating the others, which the pool's pseudonyms depend on).
ADDED_LATER = frozenset({"ledger_key"})


def _add_keys(path: Path, names: list[str]) -> dict[str, Any]:
    """Append generated ``names`` to an existing ``keys.toml``, under an exclusive lock so
    that two processes starting at once add them once; the file's keys afterwards."""
    import fcntl
    import secrets

    with path.open("r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        found = tomllib.loads(fh.read())
        added = {n: secrets.token_urlsafe(48) for n in names if not found.get(n)}
        if added:
            fh.seek(0, os.SEEK_END)
            fh.write("".join(f'{name} = "{key}"\n' for name, key in added.items()))
        return {**found, **added}


def _read_instance_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"instance file {path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigurationError(f"instance file {path}: cannot read it ({exc.strerror})") from None
    section = data.get("cleanroom", data)
    unknown = sorted(set(section) - set(_BY_NAME))
    if unknown:
        raise ConfigurationError(
            f"instance file {path}: unknown setting(s) {', '.join(unknown)}; "
            "`cleanroom config` lists the valid names."
        )
    return dict(section)


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the effective settings from defaults, the instance file, the environment and
    explicit overrides (highest precedence; used by tests and ``create_app(config)``)."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_BY_NAME))
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")

    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    sources: dict[str, str] = {}

    def apply(name: str, raw: Any, source: str) -> None:
        values[name] = _BY_NAME[name].parse(raw, source)
        sources[name] = source

    # data_dir decides where the default instance file lives, so resolve it first.
    if "data_dir" in overrides:
        data_dir = overrides["data_dir"]
    else:
        data_dir = environ.get("CLEANROOM_DATA_DIR", values["data_dir"])
    explicit = environ.get("CLEANROOM_CONFIG")
    instance = Path(explicit) if explicit else Path(data_dir).expanduser() / "cleanroom.toml"
    if explicit and not instance.is_file():
        raise ConfigurationError(f"CLEANROOM_CONFIG points at {instance}, which does not exist.")
    if instance.is_file():
        for name, raw in _read_instance_file(instance).items():
            apply(name, raw, f"file {instance.name}")
    for s in SETTINGS:
        if s.env in environ:
            apply(s.name, environ[s.env], f"env {s.env}")
    for name, raw in overrides.items():
        apply(name, raw, "override")
    if values["mode"] == "development" and not all(values[n] for n in GENERATED):
        for name, key in _development_keys(Path(data_dir).expanduser()).items():
            if not values[name]:
                values[name] = key
                sources[name] = f"generated ({KEYS_FILE})"
    if values["ledger_key"]:
        LEDGER_KEYS[_rendered_url(values, data_dir)] = values["ledger_key"]
    if int(values["deid_k"]) < 2:
        raise ConfigurationError(
            f"setting deid_k ({sources.get('deid_k', 'default')}): k-anonymity needs k of at "
            "least 2."
        )
    return Settings(values, sources)


def _rendered_url(values: Mapping[str, Any], data_dir: Any) -> str:
    """The effective database URL as SQLAlchemy renders an engine's (the key of
    :data:`LEDGER_KEYS`)."""
    from sqlalchemy.engine import make_url

    from hub.db import normalise_url

    url = str(values["database_url"]) or (
        f"sqlite:///{Path(data_dir).expanduser().resolve() / 'cleanroom.db'}"
    )
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - an unusable URL is reported where it is opened
        return url


def settings_table() -> str:
    """The settings as a Markdown table (embedded in the README and docs/configuration.md)."""
    lines = [
        "| setting | environment variable | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        default = "" if s.default == "" else f"`{s.default}`"
        if s.secret and s.default:
            default = "(development value)"
        text = s.help + (" *Secret: masked in output.*" if s.secret else "")
        lines.append(f"| `{s.name}` | `{s.env}` | {default} | {text} |")
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    """docs/configuration.md: how settings are read, then the table."""
    return (
        "# Configuration\n\n"
        "<!-- Generated by `cleanroom config --markdown`; a test fails when it is stale. -->\n\n"
        "Every setting is read from its environment variable, else from the instance file "
        "(TOML; path in `CLEANROOM_CONFIG`, default `<data_dir>/cleanroom.toml`; keys as in "
        "the first column, optionally under a `[cleanroom]` table), else from its default. "
        "`cleanroom config` prints the effective values, with secrets masked, and where each "
        "came from.\n\n" + settings_table()
    )
